"""lkice as a child process, measured: exit status, output, wall time (from the start and from a
signal), peak RSS (the child's own VmHWM, polled; ``os.wait4``'s ru_maxrss is kept beside it,
but on Linux it is floored by the test process's RSS), and the parsed JSON report; plus the checks every hostile test
makes on what lkice printed (:func:`assert_clean`).

Nothing of lkice is imported here: the child is ``python -m lkice``, as a user runs it, in its own
process group (a signal reaches it the way a terminal's Ctrl-C would), with an environment
cleared of LiveKit/lkice secrets and of web-proxy settings so nothing leaves loopback.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import shutil
import signal as signals
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, quote_plus

__all__ = [
    "LKICE_TREE",
    "REPO",
    "STARTUP_ALLOWANCE_S",
    "Arg",
    "Checks",
    "Outcome",
    "assert_clean",
    "finish",
    "problems",
    "run_lkice",
    "secret_forms",
    "startup_seconds",
]

REPO = Path(__file__).resolve().parents[2]
# The lkice source tree the child runs (default: this one). LKICE_HOSTILE_REPO=/path/to/another
# checkout (e.g. ``git archive HEAD`` unpacked) measures that code with the same tests: the
# issue's "before" figures come from the commit before the fixes.
LKICE_TREE = Path(os.environ.get("LKICE_HOSTILE_REPO") or REPO)
# Deadlines are asserted as bounds on behaviour, not as timings: on top of the goal
# (deadline + 0.5 s), an allowance for Python's start-up (0.15-1 s measured here) and a shared,
# noisy machine, still far below what a deadline that is not kept costs (5-17 s before the
# fix). The goals themselves are measured and printed by tests/bench/hostile_times.py.
STARTUP_ALLOWANCE_S = 2.5
MAX_CAPTURE = 16 * 1024 * 1024  # per stream: a runaway child cannot fill the test's memory
_POLL_S = 0.005
# Environment variables that would carry secrets or a proxy into the child.
_SCRUB = re.compile(r"^(LIVEKIT_|LKICE_)|^(http|https|all|no|ftp)_proxy$", re.IGNORECASE)

Arg = str | bytes

# As root, each child runs in a private mount namespace whose /etc/resolv.conf names a loopback
# address where nothing listens: should lkice ever hand a name to the system resolver (a URL
# it misparses, a bug), the query stays on this machine and fails at once.
_RESOLVER_TRAP = "nameserver 127.0.0.9\noptions timeout:1 attempts:1\n"
_resolv_conf: Path | None = None


def _confined(argv: list[str]) -> list[str]:
    """``argv`` wrapped to run with the loopback-only resolver, when that is possible (root
    and util-linux ``unshare``); the child keeps its pid (unshare and sh exec), so signals and
    ``wait4`` still reach lkice itself."""
    global _resolv_conf
    if os.geteuid() != 0 or os.environ.get("LKICE_HOSTILE_NO_UNSHARE"):
        return argv
    unshare = shutil.which("unshare")
    if unshare is None or not Path("/etc/resolv.conf").exists():
        return argv
    if _resolv_conf is None:
        directory = Path(tempfile.mkdtemp(prefix="lkice-hostile-"))
        _resolv_conf = directory / "resolv.conf"
        _resolv_conf.write_text(_RESOLVER_TRAP)
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return [unshare, "--mount", "--", "/bin/sh", "-c", script, str(_resolv_conf), *argv]


@dataclass
class Outcome:
    """What one lkice run did."""

    argv: list[str]  # printable (bytes arguments shown as repr)
    status: int  # exit status; negative: killed by that signal
    stdout: str  # decoded UTF-8, invalid bytes kept as surrogates (so they can be found)
    stderr: str
    stdout_bytes: bytes
    stderr_bytes: bytes
    wall_s: float  # from start to exit
    # Peak RSS of lkice itself (KiB): the highest VmHWM of the child's /proc status, polled
    # every few ms while it runs (the high-water mark of its own memory since exec).
    peak_rss_kib: int
    started: float  # time.monotonic() at start
    signal_at_s: float | None  # when the signal was sent, seconds from start
    timed_out: bool  # killed by the harness at ``timeout``
    report: dict[str, Any] | None  # the JSON on stdout, when --json was given and it parsed
    json_error: str | None = None
    # os.wait4's ru_maxrss, for reference only: Linux carries the high-water mark of the
    # pre-exec image (a copy of the test process) into it, so it is never below the pytest
    # process's own RSS and cannot bound lkice's memory.
    ru_maxrss_kib: int = 0

    @property
    def after_signal_s(self) -> float | None:
        """Seconds from the signal to the exit."""
        return None if self.signal_at_s is None else self.wall_s - self.signal_at_s

    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss_kib / 1024

    def describe(self) -> str:
        """A one-paragraph summary for assertion messages (control characters escaped)."""
        sig = (
            ""
            if self.after_signal_s is None
            else f", exit {self.after_signal_s:.2f} s after the signal"
        )
        return (
            f"lkice {' '.join(self.argv)[:300]}\n"
            f"  -> status {self.status}, {self.wall_s:.2f} s{sig}, peak RSS {self.peak_rss_mib:.0f} MiB"
            f"{', KILLED at timeout' if self.timed_out else ''}\n"
            f"  stderr: {_tail(self.stderr)}\n  stdout: {_tail(self.stdout)}"
        )

    def error(self, where: str = "signal") -> dict[str, Any] | None:
        """``signal.error`` (or the first path's error with where="path") of the JSON report."""
        if self.report is None:
            return None
        if where == "signal":
            sig = self.report.get("signal") or {}
            found: dict[str, Any] | None = sig.get("error")
            return found
        for path in self.report.get("paths") or []:
            if path.get("error"):
                error: dict[str, Any] = path["error"]
                return error
        return None


def _tail(text: str, limit: int = 1200) -> str:
    shown = text if len(text) <= limit else "..." + text[-limit:]
    return ascii(shown)


def _drain(stream: IO[bytes], sink: bytearray) -> None:
    """Read a pipe to its end, keeping at most MAX_CAPTURE bytes."""
    while True:
        chunk = stream.read(65536)
        if not chunk:
            return
        room = MAX_CAPTURE - len(sink)
        if room > 0:
            sink += chunk[:room]


def child_env(env: Mapping[str, Arg] | Mapping[bytes, Arg] | None = None) -> dict[bytes, bytes]:
    """The child's environment: ours minus secrets and proxies, plus ``env`` (str or bytes)."""
    full: dict[bytes, bytes] = {
        os.fsencode(k): os.fsencode(v) for k, v in os.environ.items() if not _SCRUB.search(k)
    }
    full[b"PYTHONPATH"] = os.fsencode(str(LKICE_TREE))
    full.pop(b"LKICE_DEBUG", None)
    for key, value in (env or {}).items():
        full[os.fsencode(key)] = os.fsencode(value)
    return full


def run_lkice(
    args: Sequence[Arg],
    *,
    env: Mapping[str, Arg] | Mapping[bytes, Arg] | None = None,
    timeout: float,
    send_signal_after: float | None = None,
    signal: int = signals.SIGINT,
    when: Callable[[], bool] | None = None,
    stdin: bytes | None = None,
) -> Outcome:
    """Run ``python -m lkice *args`` and measure it.

    ``send_signal_after``: send ``signal`` to the child's process group this many seconds after
    the start; with ``when``, not before ``when()`` is also true (polled; a kit server's
    ``seen``), and at the latest ``timeout / 2`` seconds in. ``timeout``: the child is killed
    (SIGKILL) then, and the outcome says so."""
    argv: list[Any] = _confined([sys.executable, "-m", "lkice"]) + list(args)
    printable = [a if isinstance(a, str) else repr(a) for a in args]
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(env),
        cwd=LKICE_TREE,
        start_new_session=True,  # its own process group: signals reach it alone
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    out, err = bytearray(), bytearray()
    readers = [
        threading.Thread(target=_drain, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True),
    ]
    for reader in readers:
        reader.start()
    if stdin is not None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(stdin)
        proc.stdin.close()
    signal_at: float | None = None
    timed_out = False
    status_word = 0
    rusage: Any = None
    reaped = False
    hwm_kib = 0
    try:
        while True:
            hwm_kib = max(hwm_kib, _vm_hwm_kib(proc.pid))
            pid, status_word, rusage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                reaped = True
                break
            now = time.monotonic() - started
            if send_signal_after is not None and signal_at is None:
                due = now >= send_signal_after and (when is None or when())
                if due or now >= max(send_signal_after, timeout / 2):
                    os.killpg(proc.pid, signal)
                    signal_at = time.monotonic() - started
            if now >= timeout:
                timed_out = True
                os.killpg(proc.pid, signals.SIGKILL)
                _, status_word, rusage = os.wait4(proc.pid, 0)
                reaped = True
                break
            time.sleep(_POLL_S)
    finally:
        wall = time.monotonic() - started
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signals.SIGKILL)  # anything it left behind in its group
        if not reaped:  # the harness itself was interrupted: reap the killed child
            _, status_word, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status_word)
        for reader in readers:
            reader.join(10)
        proc.stdout.close()
        proc.stderr.close()
    stdout = bytes(out).decode("utf-8", errors="surrogateescape")
    stderr = bytes(err).decode("utf-8", errors="surrogateescape")
    report: dict[str, Any] | None = None
    json_error = None
    if "--json" in args:
        try:
            parsed = json.loads(stdout)
        except ValueError as exc:
            json_error = f"stdout is not JSON: {exc}"
        else:
            if isinstance(parsed, dict):
                report = parsed
            else:
                json_error = "stdout is JSON but not an object"
    return Outcome(
        argv=printable,
        status=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        stdout_bytes=bytes(out),
        stderr_bytes=bytes(err),
        wall_s=wall,
        peak_rss_kib=hwm_kib or int(rusage.ru_maxrss),
        ru_maxrss_kib=int(rusage.ru_maxrss),
        started=started,
        signal_at_s=signal_at,
        timed_out=timed_out,
        report=report,
        json_error=json_error,
    )


def _vm_hwm_kib(pid: int) -> int:
    """The process's peak resident set since its last exec (VmHWM), in KiB; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def startup_seconds(samples: int = 3) -> dict[str, float]:
    """Python start-up as the child pays it: ``lkice --help`` (the interpreter, click, lkice's
    lazy CLI) and ``lkice run`` up to a usage error (the command's heavier imports), medians."""
    figures: dict[str, float] = {}
    for name, args in (
        ("help", ["--help"]),
        ("run_usage_error", ["run", "stun:127.0.0.1:0"]),
    ):
        walls = [run_lkice(args, timeout=30).wall_s for _ in range(samples)]
        figures[name] = statistics.median(walls)
    return figures


# -- what must never reach stdout or stderr ----------------------------------------------------

_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs"}  # Cs: bytes that were not UTF-8
_MARKERS = (
    "Traceback (most recent call last)",
    "Traceback",
    "Task exception was never retrieved",
    "lkice: internal error",
    "exception was never retrieved",
)


def _printable_runs(data: bytes, minimum: int = 6) -> list[bytes]:
    return [m.group() for m in re.finditer(rb"[\x21-\x7e]{%d,}" % minimum, data)]


def secret_forms(secret: str | bytes) -> set[str]:
    """The secret and the forms of it that are cheap to derive: raw, repr'd or backslash-
    escaped (through its printable runs), URL-quoted, hex, and base64 (standard and URL-safe, at
    every byte alignment, as it sits inside ``user:password`` in a Basic header)."""
    raw = secret if isinstance(secret, bytes) else secret.encode("utf-8", "surrogateescape")
    forms: set[str] = set()
    text = raw.decode("utf-8", "surrogateescape")
    if raw.isascii() and raw.decode().isprintable():
        forms.add(text)
    forms.update(run.decode() for run in _printable_runs(raw))
    forms.add(quote(raw, safe=""))
    forms.add(quote_plus(raw, safe=""))
    forms.add(binascii.hexlify(raw).decode())
    forms.add(binascii.hexlify(raw).decode().upper())
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw + b"\0\0").decode()
        inner = encoded[4 if offset else 0 : -8]
        if len(inner) >= 8:
            forms.add(inner)
            forms.add(inner.replace("+", "-").replace("/", "_"))
    return {f for f in forms if len(f) >= 6}


def _find_controls(text: str, allow: str) -> list[str]:
    found: list[str] = []
    for i, ch in enumerate(text):
        if ch in allow or unicodedata.category(ch) not in _FORBIDDEN_CATEGORIES:
            continue
        context = text[max(0, i - 40) : i + 40]
        found.append(f"U+{ord(ch):04X} at {i}: {context!a}")
        if len(found) >= 5:
            break
    return found


def problems(
    outcome: Outcome,
    *,
    secrets: Iterable[str | bytes] = (),
    files: Iterable[Path] = (),
    allow_tab: bool = False,
    injected_lines: Sequence[str] = ("lkice: error: FAKE LINE",),
) -> list[str]:
    """Everything :func:`assert_clean` objects to, as sentences (empty: clean)."""
    found: list[str] = []
    allow = "\n\t" if allow_tab else "\n"
    streams = {"stdout": outcome.stdout, "stderr": outcome.stderr}
    blobs = dict(streams)
    for path in files:
        with contextlib.suppress(OSError):
            blobs[str(path)] = path.read_bytes().decode("utf-8", "surrogateescape")
    for name, text in streams.items():
        for marker in _MARKERS:
            if marker in text:
                at = text.index(marker)
                found.append(f"{name} holds {marker!r}: {text[max(0, at - 200) : at + 600]!a}")
                break
        for control in _find_controls(text, allow):
            found.append(f"{name} holds a raw control character {control}")
        for line in text.splitlines():
            for fake in injected_lines:
                # At the margin (or one space in), it reads as lkice's own line; lkice's own
                # wrapped continuation lines are indented further.
                if line.startswith((fake, " " + fake)):
                    found.append(f"{name} holds an injected line: {line[:120]!a}")
    for secret in secrets:
        for form in secret_forms(secret):
            for name, text in blobs.items():
                if form in text:
                    at = text.index(form)
                    shown = text[max(0, at - 60) : at].replace(form, "<SECRET>")
                    found.append(
                        f"{name} holds a seeded secret (as {len(form)} chars) after {shown!a}"
                    )
    return found


def assert_clean(
    outcome: Outcome,
    *,
    secrets: Iterable[str | bytes] = (),
    files: Iterable[Path] = (),
    allow_tab: bool = False,
    injected_lines: Sequence[str] = ("lkice: error: FAKE LINE",),
) -> None:
    """No traceback, no unretrieved task exception, no internal error, no raw control character
    (Cc/Cf/Zl/Zp, or bytes that were not UTF-8) other than newline (and tab if allowed), no
    line that a server injected, and none of ``secrets`` in any derivable form on stdout,
    stderr or in ``files``."""
    found = problems(
        outcome, secrets=secrets, files=files, allow_tab=allow_tab, injected_lines=injected_lines
    )
    assert not found, "\n".join(found) + "\n" + outcome.describe()


class Checks:
    """Soft assertions over one outcome: every unmet expectation is listed at once, so a failing
    test shows the whole "before" picture (kind, message, time, memory, output), not the first
    difference only."""

    def __init__(self, outcome: Outcome, name: str = "") -> None:
        self.outcome = outcome
        self.name = name
        self.failures: list[str] = []

    def that(self, condition: bool, message: str) -> None:
        if not condition:
            self.failures.append(message)

    def clean(
        self,
        *,
        secrets: Iterable[str | bytes] = (),
        files: Iterable[Path] = (),
        allow_tab: bool = False,
        injected_lines: Sequence[str] = ("lkice: error: FAKE LINE",),
    ) -> None:
        self.failures += problems(
            self.outcome,
            secrets=secrets,
            files=files,
            allow_tab=allow_tab,
            injected_lines=injected_lines,
        )

    def report(self) -> str:
        """The unmet expectations and the outcome, or "" when all were met."""
        note(self.name, self.outcome, failures=len(self.failures))
        if not self.failures:
            return ""
        return "\n".join(f"- {f}" for f in self.failures) + "\n" + self.outcome.describe()

    def done(self) -> None:
        finish(self)


def finish(*checks: Checks) -> None:
    """Fail with every unmet expectation of every outcome (each one's figures noted)."""
    reports = [(c.name, c.report()) for c in checks]
    failed = [f"[{name}]\n{text}" for name, text in reports if text]
    if failed:
        raise AssertionError("\n\n".join(failed))


def note(name: str, outcome: Outcome, **extra: Any) -> None:
    """Print one line of figures (seen with ``pytest -s``) and, when LKICE_HOSTILE_FIGURES names
    a file, append it there as JSON (the before/after table of issue 12 is made from these)."""
    sig = outcome.report.get("signal") if outcome.report else None
    error = (sig or {}).get("error") or outcome.error("path")
    row = {
        "name": name,
        "status": outcome.status,
        "wall_s": round(outcome.wall_s, 3),
        "after_signal_s": None
        if outcome.after_signal_s is None
        else round(outcome.after_signal_s, 3),
        "peak_rss_mib": round(outcome.peak_rss_mib, 1),
        "ru_maxrss_mib": round(outcome.ru_maxrss_kib / 1024, 1),
        "kind": None if error is None else error.get("kind"),
        "message": None if error is None else str(error.get("message"))[:200],
        "timed_out": outcome.timed_out,
        "stderr_tail": outcome.stderr[-300:],
        **extra,
    }
    print(f"\nFIGURES {json.dumps(row, ensure_ascii=True)}")
    target = os.environ.get("LKICE_HOSTILE_FIGURES")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=True) + "\n")
