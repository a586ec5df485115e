"""``lkice probe``: a definition run once against real coturn servers on loopback, regions and
per-region credentials from the definition, and --check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lkice.lab.coturn import Coturn, CoturnConfig
from tests.conftest import TurnLab, needs_coturn, validate_report

PROBES = Path(__file__).parent.parent / "probes"


def lkice(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lkice", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_check_the_shipped_examples() -> None:
    examples = sorted(str(p) for p in PROBES.glob("*.toml"))
    assert len(examples) >= 3
    result = lkice("probe", "--check", *examples)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == len(examples)


def test_check_names_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[probe]\nname = "office"\n\n[credentials]\nturn_password = "hunter2"\n')
    result = lkice("probe", "--check", str(bad))
    assert result.returncode == 3
    assert f"{bad}:5: credentials.turn_password: a secret must not be written" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@needs_coturn
def test_a_definition_with_two_regions_runs_once(coturn: TurnLab, tmp_path: Path) -> None:
    """Region a is the shared coturn with the definition's top-level credentials; region b is
    a second coturn whose credentials come per region, from a file."""
    with Coturn(CoturnConfig(users={"bob": "b-password-123"})) as other:
        (tmp_path / "b.pass").write_text("b-password-123\n")
        definition = tmp_path / "office.toml"
        definition.write_text(
            f"""
[probe]
name = "office"
every = "5m"
labels = {{ site = "lab" }}

[settings]
quality = {{ duration_s = 1 }}

[credentials]
turn_username = {{ env = "TEST_TURN_USER" }}
turn_password = {{ env = "TEST_TURN_PASSWORD" }}

[[regions]]
name = "a"
uris = ["turn:127.0.0.1:{coturn.port}?transport=udp"]

[[regions]]
name = "b"
uris = ["turn:127.0.0.1:{other.port}?transport=udp"]
credentials = {{ turn_username = {{ env = "TEST_B_USER" }}, turn_password = {{ file = "b.pass" }} }}
"""
        )
        result = lkice(
            "probe",
            "--config",
            str(definition),
            "--json",
            env={
                "TEST_TURN_USER": coturn.user,
                "TEST_TURN_PASSWORD": coturn.password,
                "TEST_B_USER": "bob",
            },
        )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    validate_report(report)
    assert report["probe"] == {
        "name": "office",
        "labels": {"site": "lab"},
        "definition": str(definition),
    }
    regions = {p["region"]: p["ok"] for p in report["paths"]}
    assert regions == {"a": True, "b": True}  # b authenticated with its own credentials
    rec = report["recommendation"]
    assert rec["region"] in ("a", "b")
    assert rec["transport"] == "udp"
    assert {r["region"] for r in rec["ranking"]} == {"a", "b"}
    for secret in (coturn.password, "b-password-123"):
        assert secret not in result.stdout + result.stderr


def test_missing_secret_is_named(tmp_path: Path) -> None:
    definition = tmp_path / "d.toml"
    definition.write_text(
        '[probe]\nname = "d"\n[credentials]\napi_key = { env = "LKICE_TEST_UNSET_KEY" }\n'
        'api_secret = { file = "nope.txt" }\n[[targets]]\nuri = "wss://lk.example.com"\n'
    )
    result = lkice("probe", "--config", str(definition))
    assert result.returncode == 3
    assert "LKICE_TEST_UNSET_KEY is not set" in result.stderr
    assert "nope.txt" in result.stderr
    assert "Traceback" not in result.stderr
