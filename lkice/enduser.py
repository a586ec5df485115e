"""The double-click mode: ``lkice`` started without arguments by someone who was sent a link.

What to test comes, in this order, from
1. ``lkice.toml`` next to the executable: a probe definition (``probes/`` format), so IT can drop
   one beside the binary (a token file next to it is referenced as ``{ file = "token.txt" }``);
2. the default embedded when the binary was built (``packaging/binary/build.sh --target URL
   --token TOKEN``): ``lkice/embedded.json`` inside the package.
Without either, the usual help is shown.

The run shows its progress, then writes the ticket paste block and the HTML report next to the
executable (or, when that folder is not writable, in the current folder), says where, and on
Windows waits for Enter so the window does not vanish.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lkice.errors import UsageError

if TYPE_CHECKING:
    from lkice.job import RunRequest

__all__ = ["CONFIG_NAME", "default_request", "executable_dir", "output_dir"]

CONFIG_NAME = "lkice.toml"
EMBEDDED = "embedded.json"


def executable_dir() -> Path:
    """The folder of the binary (frozen) or of the ``lkice`` script. The one-file binary's
    launcher (packaging/binary/launcher.py) runs the program from the user's cache and names
    itself in ``LKICE_PROGRAM``."""
    launcher = os.environ.get("LKICE_PROGRAM")
    if launcher and getattr(sys, "frozen", False):
        return Path(launcher).resolve().parent
    return Path(sys.executable if getattr(sys, "frozen", False) else sys.argv[0]).resolve().parent


def embedded() -> dict[str, Any] | None:
    """The build-time default (target, token), if this build has one."""
    try:
        text = resources.files("lkice").joinpath(EMBEDDED).read_text("utf-8")
    except (FileNotFoundError, OSError):
        return None
    data = json.loads(text)
    return data if isinstance(data, dict) and data.get("target") else None


def default_request(folder: Path) -> tuple[RunRequest, str] | None:
    """(what to run, where it came from), or None when there is nothing to run."""
    from lkice.job import RunRequest
    from lkice.probe.proxy import system_proxy_env
    from lkice.probedef import DefinitionError, load, to_request

    config = folder / CONFIG_NAME
    if config.exists():
        try:
            return to_request(load(config), system_proxy_env(os.environ)), str(config)
        except DefinitionError as exc:
            raise UsageError("\n".join(exc.problems)) from None
    default = embedded()
    if default is None:
        return None
    request = RunRequest(
        targets=(str(default["target"]),),
        token=default.get("token") or os.environ.get("LIVEKIT_TOKEN"),
        api_key=os.environ.get("LIVEKIT_API_KEY"),
        api_secret=os.environ.get("LIVEKIT_API_SECRET"),
        proxy_env=system_proxy_env(os.environ),  # the user's HTTPS_PROXY, as their browser uses it
    )
    return request, "the default built into this program"


def output_dir(preferred: Path) -> Path:
    """``preferred`` if files can be written there, else the current folder."""
    for folder in (preferred, Path.cwd()):
        probe = folder / ".lkice-write-test"
        try:
            probe.write_text("")
            probe.unlink()
            return folder
        except OSError:
            continue
    return Path.cwd()


def output_names(folder: Path, now: datetime | None = None) -> tuple[Path, Path]:
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return folder / f"lkice-{stamp}-paste.txt", folder / f"lkice-{stamp}.html"


def wait_for_key() -> None:
    """Keep a double-clicked console window open on Windows until the user has read it."""
    if sys.platform == "win32" and sys.stdin is not None and sys.stdin.isatty():
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            input("\nPress Enter to close this window.")
