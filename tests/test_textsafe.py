"""Text from servers and pastes is shown, never obeyed: escapes made visible in every view and
log line, URL passwords hidden, tracebacks without locals."""

from __future__ import annotations

import io
import json
import logging
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from lkice import logs
from lkice.textsafe import (
    MAX_DEPTH,
    redact_url,
    redact_urls,
    url_password,
    visible,
    visible_lines,
    visible_report,
)

TITLE = "\x1b]0;owned\x07"  # OSC 0: sets the terminal's title
CLIPBOARD = "\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07"  # OSC 52: writes the clipboard
CLEAR = "\x1b[2J\x1b[H"  # CSI 2J: clears the screen
FAKE = "\nlkice: error: FAKE LINE"
UNSAFE = ("Cc", "Cf", "Zl", "Zp", "Cs", "Cn")


def raw_controls(text: str, allowed: str = "") -> list[str]:
    return [ch for ch in text if ch not in allowed and unicodedata.category(ch) in UNSAFE]


# ------------------------------------------------------------------------------------------
# visible


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (TITLE, "\\x1b]0;owned\\x07"),
        (CLEAR, "\\x1b[2J\\x1b[H"),
        (FAKE, "\\nlkice: error: FAKE LINE"),
        ("a\r\tb", "a\\r\\tb"),
        ("\x00\x7f\x85\x9b", "\\x00\\x7f\\x85\\x9b"),  # NUL, DEL, C1 NEL and CSI
        ("\u202eevil\u202c", "\\u202eevil\\u202c"),  # bidi override: text shown reversed
        ("\u2066x\u2069", "\\u2066x\\u2069"),  # bidi isolates
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),  # line and paragraph separators
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
        ("\ud800", "\\ud800"),  # a lone surrogate cannot even be encoded for output
        ("\U000e0041", "\\U000e0041"),  # a tag character
        ("\U0010fffe", "\\U0010fffe"),  # unassigned (a noncharacter)
    ],
)
def test_controls_are_shown_as_escapes(raw: str, shown: str) -> None:
    assert visible(raw) == shown


def test_text_stays_as_it_is() -> None:
    for text in (
        "",
        "plain ASCII ~!@#$%^&*()",
        "Zürich 東京 Ελλάδα 😀",
        "C:\\Users\\x",
        "a\u00a0b",
    ):
        assert visible(text) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_nothing_unsafe_is_left_and_it_is_idempotent(text: str) -> None:
    shown = visible(text)
    assert raw_controls(shown) == []
    assert visible(shown) == shown
    shown.encode("utf-8")  # printable anywhere


def test_visible_lines_keeps_only_line_ends() -> None:
    assert visible_lines(f"one{CLEAR}\ntwo\r\n") == "one\\x1b[2J\\x1b[H\ntwo\\r\n"


def test_visible_report_covers_keys_and_values_and_copies_only_when_needed() -> None:
    clean: dict[str, Any] = {"a": [1, 2.5, None, True, "x", {"b": "c"}]}
    assert visible_report(clean) is clean  # nothing to escape: no copy
    dirty = {f"k{TITLE}": [f"v{CLEAR}", {"n": ("\r", 1)}], "ok": "fine"}
    shown = visible_report(dirty)
    assert shown == {
        "k\\x1b]0;owned\\x07": ["v\\x1b[2J\\x1b[H", {"n": ["\\r", 1]}],
        "ok": "fine",
    }
    assert list(shown) == ["k\\x1b]0;owned\\x07", "ok"]  # key order kept
    assert dirty[f"k{TITLE}"][0] == f"v{CLEAR}"  # the input is not modified
    assert visible_report("a\x07") == "a\\x07"
    assert visible_report(3) == 3


def nested(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


def test_visible_report_is_iterative_and_bounded() -> None:
    assert visible_report(nested(MAX_DEPTH - 1)) == nested(MAX_DEPTH - 1)
    cut = visible_report(nested(100_000))  # far beyond the recursion limit
    text = json.dumps(cut)
    assert text.count("[") == MAX_DEPTH
    assert '"(nested too deeply)"' in text


# ------------------------------------------------------------------------------------------
# URL passwords


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pass@host:9091/x", "http://user:***@host:9091/x"),
        ("https://user:p%40ss@host", "https://user:***@host"),
        ("user:pass@pushgw:9091", "user:***@pushgw:9091"),  # no scheme: prometheus_client's form
        ("https://u:pa/ss@host/x", "https://u:***@host/x"),  # an unencoded '/' in the password
        ("http://user@host/", "http://user@host/"),  # a user name alone is kept
        ("http://host:9091/a@b", "http://host:9091/a@b"),  # an '@' in the path is no user info
        ("pushgw:9091", "pushgw:9091"),
        ("", ""),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_urls_in_free_text_and_the_password_itself() -> None:
    text = "push to http://bob:s3cret@gw:9091/metrics failed; proxy wss://a:b@c/x and mail@host"
    assert redact_urls(text) == (
        "push to http://bob:***@gw:9091/metrics failed; proxy wss://a:***@c/x and mail@host"
    )
    assert url_password("http://bob:s%3Acret@gw") == "s%3Acret"
    assert url_password("bob:s3cret@gw:9091") == "s3cret"
    assert url_password("http://gw:9091") is None


# ------------------------------------------------------------------------------------------
# logs


class _Captured:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def captured(capsys: pytest.CaptureFixture[str]) -> Iterator[_Captured]:
    """stderr as the log handlers see it (they are made in the test, on capsys's stream);
    lkice's logging restored afterwards."""
    root = logging.getLogger("lkice")
    handlers, level, propagate = root.handlers[:], root.level, root.propagate
    try:
        yield _Captured(capsys)
    finally:
        root.handlers[:], root.level, root.propagate = handlers, level, propagate
        structlog.reset_defaults()


PASSWORD = "-".join(["hunter2", "secret"])  # never spelled in a source line a traceback shows


def crash(password: str) -> None:
    secret = password  # a local rich's tracebacks would print
    raise RuntimeError(f"server said {CLEAR}{FAKE}: bad {len(secret)}")


@pytest.mark.parametrize("json_output", [False, True])
def test_structlog_lines_are_safe(captured: _Captured, json_output: bool) -> None:
    logs.configure(json_output=json_output)
    log = logs.get_logger("lkice.test")
    log.error(
        "push_failed",
        gateway="http://bob:s3cret-pw@gw:9091",
        error=f"cert subject CN=x{TITLE}, issuer {FAKE}",
        problems=[f"a{CLIPBOARD}", {"k": "http://u:s3cret-pw@h"}],
    )
    try:
        crash(PASSWORD)
    except RuntimeError:
        log.exception("run_crashed", run=1)
    logging.getLogger("lkice.probe.x").warning("stdlib %s", f"SOFTWARE {CLEAR}")
    out = captured.getvalue()
    assert raw_controls(out, allowed="\n") == []
    assert "s3cret-pw" not in out
    assert PASSWORD not in out  # no locals in any traceback
    assert "lkice: error: FAKE" not in out.replace("\\nlkice: error: FAKE", "")
    assert "Traceback (most recent call last)" in out
    if json_output:
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[0]["gateway"] == "http://bob:***@gw:9091"
        assert (
            lines[0]["error"]
            == "cert subject CN=x\\x1b]0;owned\\x07, issuer \\nlkice: error: FAKE LINE"
        )
        assert lines[0]["problems"] == [
            "a\\x1b]52;c;Y3VybCBldmlsIHwgc2g=\\x07",
            {"k": "http://u:***@h"},
        ]
        assert (
            "RuntimeError: server said \\x1b[2J\\x1b[H\\nlkice: error: FAKE LINE"
            in lines[1]["exception"]
        )
        assert lines[2]["event"] == "stdlib SOFTWARE \\x1b[2J\\x1b[H"
    else:
        assert "gateway=http://bob:***@gw:9091" in out
        assert "RuntimeError: server said \\x1b[2J\\x1b[H\\nlkice: error: FAKE LINE" in out


def test_console_renderer_never_uses_rich_tracebacks(captured: _Captured) -> None:
    logs.configure(json_output=False)
    log = logs.get_logger("lkice.test")
    try:
        crash(PASSWORD)
    except RuntimeError:
        log.exception("run_crashed")
    out = captured.getvalue()
    assert PASSWORD not in out
    assert "╭" not in out
    assert "locals" not in out
    assert 'in crash\n    raise RuntimeError(f"server said' in out  # a plain frame


def test_plain_logging_of_the_one_shot_commands(captured: _Captured) -> None:
    logs.configure_plain(logging.INFO)
    logging.getLogger("lkice.probe.path").info("turn %s: ok", f"host{TITLE}")
    logs.get_logger("lkice.daemon").error(
        "push_failed", gateway="user:pw-secret@gw:9091", error="push to http://user:***@gw failed"
    )
    try:
        crash(PASSWORD)
    except RuntimeError:
        logging.getLogger("lkice.x").exception("crashed at %s", "http://a:pw-secret@h/")
    out = captured.getvalue()
    lines = out.splitlines()
    assert lines[0] == "lkice: INFO lkice.probe.path: turn host\\x1b]0;owned\\x07: ok"
    # structlog events go to stderr with the rest, never to stdout where the report is.
    assert lines[1].startswith("lkice: ERROR lkice.daemon: event=push_failed gateway=")
    assert "crashed at http://a:***@h/" in lines[2]
    assert "pw-secret" not in out
    assert PASSWORD not in out
    assert raw_controls(out, allowed="\n") == []
    assert "RuntimeError: server said \\x1b[2J\\x1b[H\\nlkice: error: FAKE LINE" in out


def test_safe_formatter_alone() -> None:
    formatter = logs.SafeFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("lkice", logging.WARNING, __file__, 1, "got %r and %s", None, None)
    record.args = ("x", f"y{CLEAR}{FAKE} via https://u:pw@h")
    assert formatter.format(record) == (
        "WARNING got 'x' and y\\x1b[2J\\x1b[H\\nlkice: error: FAKE LINE via https://u:***@h"
    )


# ------------------------------------------------------------------------------------------
# live progress (rich)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_server_text_as_text() -> None:
    from lkice.errors import ErrorKind, ProbeError
    from lkice.render.progress import progress_for
    from lkice.report import ErrorInfo, PathResult

    stream = _Terminal()
    progress = progress_for(True, stream)
    progress.stage(f"signaling{TITLE}")
    path = PathResult(
        server=f"[bold red]turn{CLEAR}.example[/]:3478",
        transport="tls",
        kind="turn",
        uri="turns:x",
        relay=f"turn:{CLIPBOARD}",
    )
    path.error = ErrorInfo.from_probe_error(ProbeError(ErrorKind.TLS_VERIFY, f"issuer{FAKE}"))
    progress.path_done(path)
    progress.close()
    out = stream.getvalue()
    for hostile in (TITLE, CLEAR, CLIPBOARD, "\x1b]"):
        assert hostile not in out
    assert "[bold red]turn\\x1b[2J\\x1b[H.example[/]:3478" in out  # markup shown, not applied
    assert "\\x1b]52;c;" in out
