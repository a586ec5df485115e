"""docs/architecture.md keeps one line per module: every module of the package is named there,
and every module it names exists (a rename or a new module cannot leave the map behind)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "architecture.md").read_text("utf-8")


def modules() -> set[str]:
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "lkice").rglob("*.py")
        if p.name != "__init__.py" or p.parent.name == "findings"
    }


def test_every_module_has_its_line() -> None:
    missing = sorted(m for m in modules() if f"`{m}`" not in DOC)
    assert missing == []


def test_every_module_named_exists() -> None:
    named = set(re.findall(r"`(lkice/[\w/]+\.py)`", DOC))
    assert named, "no module found in docs/architecture.md"
    assert sorted(n for n in named if not (ROOT / n).is_file()) == []
