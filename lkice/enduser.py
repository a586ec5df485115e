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
    from lkice.probedef import ProbeDefinition

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
    """The build-time default (target, token, token2), if this build has one."""
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
            definition = load(config)
            _only_local_secrets(definition, folder)
            return to_request(definition, system_proxy_env(os.environ)), str(config)
        except DefinitionError as exc:
            raise UsageError("\n".join(exc.problems)) from None
    default = embedded()
    if default is None:
        return None
    request = RunRequest(
        targets=(str(default["target"]),),
        token=default.get("token") or os.environ.get("LIVEKIT_TOKEN"),
        token2=default.get("token2") or os.environ.get("LIVEKIT_TOKEN2"),
        api_key=os.environ.get("LIVEKIT_API_KEY"),
        api_secret=os.environ.get("LIVEKIT_API_SECRET"),
        proxy_env=system_proxy_env(os.environ),  # the user's HTTPS_PROXY, as their browser uses it
    )
    return request, "the default built into this program"


def _only_local_secrets(definition: ProbeDefinition, folder: Path) -> None:
    """An ``lkice.toml`` can arrive next to the program by a download nobody looked at. It may
    name secrets only as files in its own folder: an environment variable (an AWS key, say) or
    a file elsewhere would be sent, as a TURN username or credential, to a server it names."""
    from lkice.probedef import DefinitionError

    refs = dict(definition.credentials)
    for region in definition.regions:
        refs.update({f"region.{region.name}.{k}": v for k, v in region.credentials.items()})
    problems = []
    home = folder.resolve()
    for key, ref in refs.items():
        if ref.env is not None:
            problems.append(
                f"{definition.path}: {key}: an {CONFIG_NAME} beside the program may not read "
                f"environment variables (${ref.env}): put the secret in a file next to it"
            )
        elif ref.file is not None and ref.file.resolve().parent != home:
            problems.append(
                f"{definition.path}: {key}: an {CONFIG_NAME} beside the program may read only "
                f"files next to it, not {ref.file}"
            )
    if problems:
        raise DefinitionError(problems)


def output_dir(preferred: Path) -> Path:
    """``preferred`` if files can be written there, else the current folder. The check creates
    a file of its own (never through a link someone left there) and removes it."""
    for folder in (preferred, Path.cwd()):
        probe = folder / f".lkice-write-test-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
            os.close(fd)
            probe.unlink()
            return folder
        except OSError:
            continue
    return Path.cwd()


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def output_names(folder: Path, now: datetime | None = None) -> tuple[Path, Path]:
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return folder / f"lkice-{stamp}-paste.txt", folder / f"lkice-{stamp}.html"


def wait_for_key() -> None:
    """Keep a double-clicked console window open on Windows until the user has read it."""
    if sys.platform == "win32" and sys.stdin is not None and sys.stdin.isatty():
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            input("\nPress Enter to close this window.")
