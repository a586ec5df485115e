"""The ticket paste block: round trips through what mail and chat do, and clear errors."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import lzma
import re
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lkice.intake import ReportError
from lkice.paste import (
    MAX_TEXT,
    PasteError,
    _canonical,
    _encode,
    decode_paste,
    encode_paste,
    paste_summary,
)
from tests.conftest import plain

FIXTURE = Path(__file__).parent / "data" / "report-udp-blocked.json"
BEGIN = "-----BEGIN LKICE REPORT-----"
END = "-----END LKICE REPORT-----"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load_fixture() -> dict[str, Any]:
    report: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return report


REPORT = load_fixture()


def block_lines(text: str) -> tuple[list[str], int, int]:
    """The text's lines and the indexes of the BEGIN and END lines."""
    lines = text.split("\n")
    return lines, lines.index(BEGIN), lines.index(END)


def make_block(
    data: bytes,
    *,
    version: str = "1",
    codec: str = "xz",
    length: int | None = None,
    sha: str | None = None,
    raw: bytes | None = None,
) -> str:
    """A block written by hand, so each field can be wrong on purpose."""
    if raw is None:
        raw = lzma.compress(data, format=lzma.FORMAT_XZ) if codec == "xz" else zlib.compress(data)
    payload = base64.b64encode(raw).decode("ascii").rstrip("=")
    length = len(data) if length is None else length
    sha = hashlib.sha256(data).hexdigest()[:16] if sha is None else sha
    lines = [payload[i : i + 64] for i in range(0, len(payload), 64)]
    header = f"lkice-paste: {version} codec={codec} len={length} sha256={sha}"
    return "\n".join([BEGIN, header, *lines, END]) + "\n"


def error_of(text: str) -> str:
    with pytest.raises(PasteError) as info:
        decode_paste(text)
    return str(info.value)


# ------------------------------------------------------------------------------------------
# round trips


def test_fixture_round_trip() -> None:
    text = encode_paste(REPORT, paste_summary(REPORT))
    assert decode_paste(text) == REPORT
    assert text.startswith(paste_summary(REPORT) + "\n\n" + BEGIN + "\n")
    lines, begin, end = block_lines(text)
    assert re.fullmatch(r"lkice-paste: 1 codec=xz len=\d+ sha256=[0-9a-f]{16}", lines[begin + 1])
    payload = lines[begin + 2 : end]
    assert all(len(line) == 64 for line in payload[:-1])
    assert 0 < len(payload[-1]) <= 64
    assert all(set(line) <= set(B64) for line in payload)  # no '=' padding line


def test_summary_is_kept_as_is_and_may_be_empty() -> None:
    text = encode_paste(REPORT, "my own words\n  indented line")
    assert text.startswith("my own words\n  indented line\n\n" + BEGIN)
    assert encode_paste(REPORT, "").startswith(BEGIN)


def test_width_is_respected() -> None:
    text = encode_paste(REPORT, "", width=20)
    lines, begin, end = block_lines(text)
    assert {len(line) for line in lines[begin + 2 : end - 1]} == {20}
    assert decode_paste(text) == REPORT
    with pytest.raises(ValueError, match="width"):
        encode_paste(REPORT, "", width=3)


def test_zlib_codec_round_trip() -> None:
    text = _encode(REPORT, "", 64, "zlib")
    assert "codec=zlib" in text
    assert decode_paste(text) == REPORT


def test_xz_is_smaller_than_zlib() -> None:
    assert len(encode_paste(REPORT, "")) < len(_encode(REPORT, "", 64, "zlib"))


def test_floats_and_unicode_survive_exactly() -> None:
    # In ``settings``, the one free-form object of lkice.report/1 (the schema closes the others).
    settings = {
        "x": [0.1, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, 2.0**53 + 1, 1 / 3],
        "name": "Zürich 東京 \u2028 \U0001f600 \udcff",
    }
    report = dict(REPORT, settings=settings)
    assert decode_paste(encode_paste(report, "")) == report


def test_infinity_is_not_json() -> None:
    report = dict(REPORT, inf=float("inf"))
    assert error_of(encode_paste(report, "")) == (
        "the paste is intact, but the data is not JSON (Infinity is not a JSON number)"
    )


def test_padding_added_back_by_hand_is_accepted() -> None:
    text = encode_paste(REPORT, "")
    lines, _, end = block_lines(text)
    payload_len = sum(len(line) for line in lines[block_lines(text)[1] + 2 : end])
    lines[end - 1] += "=" * (-payload_len % 4)
    assert decode_paste("\n".join(lines)) == REPORT


def test_tolerates_smart_dashes_nbsp_and_zero_width_spaces() -> None:
    text = encode_paste(REPORT, "summary")
    text = text.replace("-----BEGIN", "\u2014BEGIN").replace("REPORT-----", "REPORT\u2014")
    text = text.replace("\n", "\n\u00a0\u200b", 40)
    assert decode_paste(text) == REPORT


def test_header_joined_onto_begin_line_and_all_lines_joined() -> None:
    text = encode_paste(REPORT, "summary")
    assert decode_paste(text.replace(BEGIN + "\n", BEGIN + " ")) == REPORT
    lines, begin, end = block_lines(text)
    one_line = " ".join(lines[begin : end + 1])
    assert decode_paste(f"see below: {one_line} thanks") == REPORT


# ------------------------------------------------------------------------------------------
# hypothesis: what clients do to a paste

# What JSON carries between programs (RFC 8259): finite numbers, integers a double holds exactly.
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def reports(draw: st.DrawFn) -> dict[str, Any]:
    """The fixture, with free-form settings of any JSON content."""
    if draw(st.integers(0, 4)) == 0:
        return REPORT
    extra = draw(st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=8))
    return {**REPORT, "settings": {**REPORT.get("settings", {}), **extra}}


def test_a_newer_lkices_fields_are_left_out_and_an_unknown_one_from_this_version_refused() -> None:
    """lkice.report/1 only gains optional fields: a paste from a newer lkice reads here without
    the ones this version does not know; from this version, an unknown field is a mistake."""
    first, *rest = REPORT["paths"]
    paths = [{**first, "from_the_future": {"x": 1}}, *rest]
    newer = {**REPORT, "lkice_version": "99.0.0", "wormhole": [1, 2], "paths": paths}
    assert decode_paste(encode_paste(newer, "")) == {**REPORT, "lkice_version": "99.0.0"}
    same = {**REPORT, "wormhole": [1, 2]}
    assert error_of(encode_paste(same, "")) == (
        "the paste is intact, but the report does not match lkice.report/1: "
        'the report: unexpected field "wormhole"'
    )


# Prose never spells the markers; anything else, including lines starting with '>' or '-', goes.
PROSE = st.text(st.characters(exclude_categories=["Cs"]), max_size=60).filter(
    lambda s: "LKICE" not in s.upper()
)


@st.composite
def mangled(draw: st.DrawFn, text: str) -> str:
    """``text`` after re-wrapping, quoting, fences, prose, indentation and line-end changes."""
    rnd = draw(st.randoms(use_true_random=False))
    lines, begin, end = block_lines(text)
    before, header, payload, after = (
        lines[:begin],
        lines[begin + 1],
        "".join(lines[begin + 2 : end]),
        lines[end + 1 :],
    )
    width = draw(st.integers(20, 200))
    block = [BEGIN, header, *(payload[i : i + width] for i in range(0, len(payload), width)), END]
    if draw(st.booleans()):  # a reflowing client joins the short header onto the BEGIN line
        block[0:2] = [f"{block[0]} {block[1]}"]
    if draw(st.booleans()):
        block = [draw(st.sampled_from(["```", "```text", "~~~"])), *block, "```"]
    lines = [draw(PROSE), *before, *block, *after, draw(PROSE)]
    depth = draw(st.integers(0, 3))
    out = []
    for line in lines:
        prefix = "".join(">" + " " * rnd.randint(0, 2) for _ in range(depth))
        indent = rnd.choice(["", "", " ", "    ", "\t", "\u00a0"])
        trailing = rnd.choice(["", "", " ", "  ", "\t"])
        out.append(indent + prefix + line + trailing)
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return newline.join(out)


@PROPERTY
@given(data=st.data(), report=reports())
def test_any_report_survives_mangling(data: st.DataObject, report: dict[str, Any]) -> None:
    width = data.draw(st.integers(16, 120))
    summary = data.draw(PROSE)
    text = data.draw(mangled(encode_paste(report, summary, width=width)))
    assert decode_paste(text) == report


DAMAGE_OPS = ["flip", "delete", "insert", "truncate", "drop_end", "swap"]
NOT_WHITESPACE = st.characters(exclude_categories=["Cs", "Zs", "Zl", "Zp", "Cc", "Cf"]).filter(
    lambda c: c != ">" and not c.isspace()
)


@PROPERTY
@given(data=st.data(), report=reports(), op=st.sampled_from(DAMAGE_OPS))
def test_damage_gives_paste_error(data: st.DataObject, report: dict[str, Any], op: str) -> None:
    text = encode_paste(report, "summary line", width=data.draw(st.integers(16, 100)))
    lines, begin, end = block_lines(text)
    first, last = begin + 2, end - 1  # payload lines
    if op in ("flip", "delete", "insert"):
        row = data.draw(st.integers(first, last))
        col = data.draw(st.integers(0, len(lines[row]) - 1))
        line = lines[row]
        if op == "flip":
            new = data.draw(st.sampled_from(B64 + "-_*!.~é$").filter(lambda c: c != line[col]))
            lines[row] = line[:col] + new + line[col + 1 :]
        elif op == "delete":
            lines[row] = line[:col] + line[col + 1 :]
        else:
            lines[row] = line[:col] + data.draw(NOT_WHITESPACE) + line[col:]
        damaged = "\n".join(lines)
    elif op == "truncate":
        end_at = len("\n".join(lines[:end]))  # anywhere before the END line
        damaged = text[: data.draw(st.integers(0, end_at))]
    elif op == "drop_end":
        damaged = "\n".join(lines[:end] + lines[end + 1 :])
    else:
        i = data.draw(st.integers(begin, end))
        j = data.draw(st.integers(begin, end).filter(lambda k: lines[k] != lines[i]))
        lines[i], lines[j] = lines[j], lines[i]
        damaged = "\n".join(lines)
    with pytest.raises(PasteError) as info:
        decode_paste(damaged)
    if op == "flip":
        assert re.search(r"checksum|alphabet|compressed|base64|length", str(info.value))


@PROPERTY
@given(text=st.text())
def test_arbitrary_text_only_ever_raises_paste_error(text: str) -> None:
    with pytest.raises(PasteError):
        decode_paste(text)


@PROPERTY
@given(
    garbage=st.text(),
    header=st.sampled_from(
        ["", "lkice-paste: 1", "lkice-paste: 1 codec=xz len=10 sha256=0123456789abcdef"]
    ),
)
def test_garbage_inside_a_block_only_ever_raises_paste_error(garbage: str, header: str) -> None:
    with pytest.raises(PasteError):
        decode_paste(f"{BEGIN}\n{header}\n{garbage}\n{END}\n")


@PROPERTY
@given(
    value=JSON_VALUES | st.dictionaries(st.text(max_size=8), JSON_VALUES),
    codec=st.sampled_from(["xz", "zlib"]),
)
def test_an_intact_block_of_any_json_is_a_report_or_a_paste_error(value: Any, codec: str) -> None:
    """The checksum holds, the content is anything: read by the intake, refused by name."""
    data = json.dumps(value).encode()
    report: Any = None
    message = "the paste is intact, but "
    try:
        report = decode_paste(make_block(data, codec=codec))
    except PasteError as exc:
        message = str(exc)
    assert message.startswith("the paste is intact, but ")
    assert report is None or report == value


# ------------------------------------------------------------------------------------------
# each error message


def test_paste_errors_are_report_errors() -> None:
    """explain turns both into "cannot read the pasted report": one except clause."""
    assert issubclass(PasteError, ReportError)
    assert issubclass(ReportError, ValueError)


def test_no_block() -> None:
    msg = error_of("hello, lkice said it works")
    assert msg == f"no lkice report block found (expected a line '{BEGIN}')"


def test_end_without_begin() -> None:
    text = encode_paste(REPORT, "summary")
    msg = error_of(text[text.index(BEGIN) + 10 :])
    assert "no '-----BEGIN LKICE REPORT-----' line" in msg
    assert "start of the block was cut off" in msg


def test_cut_off_counts_the_data_that_arrived() -> None:
    text = encode_paste(REPORT, "")
    lines, begin, _ = block_lines(text)
    kept = lines[: begin + 2 + 3]  # BEGIN, header and three payload lines of 64
    msg = error_of("\n".join(kept))
    assert "has no END line: the paste was cut off after 192 characters of data" in msg


def test_checksum_mismatch() -> None:
    data = json.dumps({"schema": "lkice.report/1"}).encode()
    msg = error_of(make_block(data, sha="0" * 16))
    real = hashlib.sha256(data).hexdigest()[:16]
    assert msg == (
        f"checksum mismatch: the data was altered (expected sha256 0000000000000000, got {real})"
    )


def test_characters_outside_the_alphabet_are_located() -> None:
    text = encode_paste(REPORT, "one\ntwo")
    lines, begin, _ = block_lines(text)
    row = begin + 4
    lines[row] = "!" + lines[row][1:]
    lines[row + 1] = lines[row + 1][:5] + "_*" + lines[row + 1][7:]
    msg = error_of("\n".join(lines))
    assert msg.startswith(
        f"3 characters outside the base64 alphabet at line {row + 1} ('!'); "
        f"line {row + 2} ('_'); line {row + 2} ('*')"
    )


def test_one_character_outside_the_alphabet_is_singular() -> None:
    text = encode_paste(REPORT, "")
    lines, begin, _ = block_lines(text)
    lines[begin + 2] = "-" + lines[begin + 2][1:]  # a dash at a line start, as a list would
    assert error_of("\n".join(lines)) == (
        f"1 character outside the base64 alphabet at line {begin + 3} ('-'): the paste was altered"
    )


def test_length_mismatch_short_and_long() -> None:
    data = json.dumps({"schema": "lkice.report/1", "a": 1}).encode()
    assert error_of(make_block(data, length=len(data) + 5)) == (
        f"length mismatch: the header says {len(data) + 5} bytes, the data decodes to {len(data)}"
    )
    assert error_of(make_block(data, length=len(data) - 5)) == (
        f"length mismatch: the header says {len(data) - 5} bytes but the data decodes to more"
    )


def test_unsupported_version() -> None:
    msg = error_of(make_block(b"{}", version="7"))
    assert msg.startswith("unsupported paste format version 7 (this lkice reads 1)")


def test_unknown_codec() -> None:
    msg = error_of(make_block(b"{}", codec="brotli", raw=b"xyz"))
    assert msg.startswith("unknown compression 'brotli' in the header")


def test_missing_and_damaged_header() -> None:
    text = encode_paste(REPORT, "")
    lines, begin, _ = block_lines(text)
    no_header = lines[: begin + 1] + lines[begin + 2 :]
    assert "has no header line (expected 'lkice-paste: 1" in error_of("\n".join(no_header))
    lines[begin + 1] = lines[begin + 1].replace("sha256=", "sha=")
    assert "has a damaged header line" in error_of("\n".join(lines))


def test_header_without_data() -> None:
    header = "lkice-paste: 1 codec=xz len=2 sha256=0123456789abcdef"
    assert "has a header but no data" in error_of(f"{BEGIN}\n{header}\n{END}")


def test_absurd_declared_length() -> None:
    assert "more than any report" in error_of(make_block(b"{}", length=10**11))
    # The bomb of issue 12: 7 KB of paste claiming 32 MiB of tiny objects is refused unread.
    data = b"[" + b"{}," * (11 * 2**20) + b"{}]"
    bomb = make_block(data)
    assert len(bomb) < 16_000
    assert error_of(bomb) == (
        f"the header claims {len(data)} bytes, more than any report ({4 * 2**20})"
    )


def test_a_report_of_long_trains_fits() -> None:
    """60 s trains at 5 ms (12,000 probes a path, as a real lkice demo run): ~1 MB, well within."""
    sent = [round(i * 5.0 + (i % 7) * 0.013, 3) for i in range(12_000)]
    rtt = [None if i % 97 == 0 else round(0.8 + (i % 13) * 0.071, 3) for i in range(12_000)]
    report = json.loads(json.dumps(REPORT))
    quality = {
        "samples": 12_000,
        "rtt_ms": {"p50": 1.0, "p95": 1.5, "p99": 1.7, "max": 2.0},
        "jitter_ms": 0.1,
        "loss": 0.01,
        "reordered": 0,
        "hol": None,
        "mos": 4.4,
        "series": {"sent_ms": sent, "rtt_ms": rtt},
    }
    for path in report["paths"]:
        path["quality"] = quality
    text = encode_paste(report, "")
    assert len(_canonical(report)) > 900_000
    assert decode_paste(text) == report


def test_text_too_large_for_a_ticket() -> None:
    msg = error_of("x" * (MAX_TEXT + 1))
    assert msg.startswith(f"the text is {MAX_TEXT + 1} characters, more than a ticket")


def test_too_many_blocks() -> None:
    one = encode_paste(REPORT, "")
    assert "more than 64 report blocks" in error_of(one * 65)
    assert decode_paste(one * 64) == REPORT


def test_base64_length_no_encoder_writes() -> None:
    text = encode_paste(REPORT, "")
    lines, _, end = block_lines(text)
    payload_len = sum(len(line) for line in lines[block_lines(text)[1] + 2 : end])
    cut = (payload_len % 4 - 1) % 4 or 4  # drop characters so that length % 4 == 1
    lines[end - 1] = lines[end - 1][:-cut]
    assert "a character was lost or added" in error_of("\n".join(lines))


def test_padding_inside_the_data() -> None:
    text = encode_paste(REPORT, "")
    lines, begin, _ = block_lines(text)
    lines[begin + 3] = "=" + lines[begin + 3][1:]
    assert error_of("\n".join(lines)) == "a '=' inside the base64 data: the paste was altered"


def test_non_canonical_last_character() -> None:
    raw = b"\x00"  # "AA" in base64; "AB" decodes to the same byte
    text = make_block(b"{}", raw=raw).replace("\nAA\n", "\nAB\n")
    assert "last character is not canonical" in error_of(text)


def test_corrupt_truncated_and_extended_compressed_data() -> None:
    data = json.dumps({"schema": "lkice.report/1", "v": list(range(50))}).encode()
    raw = lzma.compress(data, format=lzma.FORMAT_XZ)
    broken = raw[:30] + bytes([raw[30] ^ 0xFF]) + raw[31:]
    assert "the compressed data is corrupt (xz:" in error_of(make_block(data, raw=broken))
    assert "the compressed data ends early" in error_of(make_block(data, raw=raw[:-20]))
    assert "extra data after the compressed stream" in error_of(make_block(data, raw=raw + b"ab"))
    z = zlib.compress(data)
    zbroken = z[:10] + bytes([z[10] ^ 0xFF]) + z[11:]
    assert "corrupt (zlib:" in error_of(make_block(data, codec="zlib", raw=zbroken))


def test_decodes_but_not_json_or_not_a_report() -> None:
    intact = "the paste is intact, but "
    assert error_of(make_block(b"not json")).startswith(intact + "the data is not JSON (")
    assert error_of(make_block(b"[1, 2]")) == (
        intact + "the data is not an lkice report (an array of 2, not an object)"
    )
    other = json.dumps({"schema": "other.thing/1"}).encode()
    assert error_of(make_block(other)) == (
        intact + 'the data is not an lkice report (schema field is "other.thing/1")'
    )
    assert "(schema field is null)" in error_of(make_block(b"{}"))
    deep = b"[" * 900 + b"]" * 900
    assert error_of(make_block(deep)) == (
        intact + "the data is nested deeper than 64 levels, more than any report"
    )
    deeper = b"[" * 100_000 + b"]" * 100_000
    assert error_of(make_block(deeper)) == (
        intact + "the data has more than 20000 objects and arrays, more than any report"
    )


def test_intact_but_not_a_valid_report() -> None:
    """The shapes of issue 12 that reached "internal error": each named, from the checksum up."""
    intact = "the paste is intact, but "
    cases = {
        "bare": ({"schema": "lkice.report/1"}, "the report: missing lkice_version, started_at"),
        "paths": (dict(REPORT, paths="abc"), 'paths: expected array, got a string "abc"'),
        "duration": (dict(REPORT, duration_ms="12"), "duration_ms: expected number, got a string"),
        "findings": (dict(REPORT, findings={"a": 1}), "findings: expected array or null, got an"),
        "newer": (
            dict(REPORT, schema="lkice.report/99"),
            "the report was written by a newer lkice: lkice.report/99; "
            "this lkice reads lkice.report/1",
        ),
    }
    for name, (report, expected) in cases.items():
        msg = error_of(encode_paste(report, ""))
        assert msg.startswith(intact), name
        assert expected in msg, (name, msg)


# ------------------------------------------------------------------------------------------
# several blocks


def quoted(text: str) -> str:
    return "\n".join("> " + line for line in text.split("\n"))


def test_the_same_report_quoted_again_is_fine() -> None:
    text = encode_paste(REPORT, "first")
    thread = f"Thanks, see below.\n\nOn Monday you wrote:\n{quoted(text)}\n\n{quoted(quoted(text))}"
    assert decode_paste(thread) == REPORT


def test_a_damaged_copy_next_to_a_good_one_is_ignored() -> None:
    text = encode_paste(REPORT, "")
    lines, begin, _ = block_lines(text)
    lines[begin + 5] = lines[begin + 5][::-1]
    assert decode_paste("\n".join(lines) + "\n" + quoted(text)) == REPORT
    assert decode_paste(text + "\n" + "\n".join(lines[: begin + 6])) == REPORT  # cut-off copy


def test_two_different_reports_are_refused() -> None:
    other = copy.deepcopy(REPORT)
    other["verdict"] = "ok"
    text = encode_paste(REPORT, "old run") + "\nnew run:\n" + encode_paste(other, "")
    msg = error_of(text)
    assert msg.startswith("2 different report blocks found (at lines ")
    assert msg.endswith("paste only the one to explain")


def test_two_damaged_blocks() -> None:
    data = json.dumps(REPORT).encode()
    bad = make_block(data, sha="f" * 16)
    assert error_of(bad + bad).startswith(
        "none of the 2 report blocks is readable; last: checksum mismatch"
    )


# ------------------------------------------------------------------------------------------
# paste_summary

FINDINGS = [
    {"id": "tls-slow", "severity": "warning", "summary": "TLS handshakes take 90 ms"},
    {"id": "info-1", "severity": "info", "summary": "IPv6 was not tried"},
    {
        "id": "udp-blocked",
        "severity": "critical",
        "summary": "UDP is blocked to turn.eu.lab.test:3478;\tmedia will fall back to TCP and "
        "suffer head-of-line stalls whenever a packet is lost on the way",
    },
    {"id": "x", "severity": "warning", "summary": "second warning"},
    {"id": "y", "severity": "critical", "summary": "second critical"},
    {"id": "z", "severity": "info", "summary": "third info"},
    {"id": "w", "severity": "info", "summary": "fourth info"},
]


def check_shape(summary: str) -> list[str]:
    lines = summary.split("\n")
    assert len(lines) <= 15
    assert all(len(line) <= 72 for line in lines), [line for line in lines if len(line) > 72]
    assert "\t" not in summary
    assert all(line.isprintable() for line in lines)
    return lines


def test_summary_of_the_fixture() -> None:
    lines = check_shape(paste_summary(REPORT))
    assert lines[0] == "lkice verdict: DEGRADED (3 of 5 paths usable)"
    assert lines[1] == "lkice 0.1.0, run at 2026-11-23 22:27:03 UTC"
    assert lines[2].startswith("targets (5 URIs): turn.eu.lab.test:3478, ")
    assert not any(line.startswith("[") for line in lines)  # no findings in this report
    assert not any(line.startswith("recommended") for line in lines)


def test_summary_puts_critical_findings_first() -> None:
    report = dict(REPORT, findings=FINDINGS)
    lines = check_shape(paste_summary(report))
    shown = [line for line in lines if line.startswith("[")]
    assert [line.split("]")[0] + "]" for line in shown] == [
        "[critical]",
        "[critical]",
        "[warning]",
        "[warning]",
        "[info]",
    ]
    # The tab is shown, not obeyed (nor turned into a space that hides it).
    assert shown[0].startswith("[critical] UDP is blocked to turn.eu.lab.test:3478;\\tmedia")
    assert shown[0].endswith("...")
    assert shown[1] == "[critical] second critical"
    assert "(+2 more findings in the report)" in lines


def test_summary_shows_the_recommendation() -> None:
    rec = {
        "region": "eu",
        "transport": "tls",
        "server": "turn.eu.lab.test:443",
        "reason": "UDP is blocked on this network; TLS on 443 passes the firewall and had "
        "the lowest latency of the working paths, with no loss over 250 probes " * 3,
    }
    report = dict(REPORT, findings=FINDINGS, recommendation=rec, interrupted=True)
    lines = check_shape(paste_summary(report))
    assert "recommended: tls via turn.eu.lab.test:443 (region eu)" in lines
    assert "(the run was interrupted: the report is partial)" in lines
    assert lines[-1] == "Support: paste this whole message into 'lkice explain'."
    assert "recommended" not in paste_summary(dict(REPORT, recommendation=None))


def test_summary_of_a_bare_report_does_not_fail() -> None:
    lines = check_shape(paste_summary({"schema": "lkice.report/1"}))
    assert lines[0] == "lkice verdict: UNKNOWN (path counts unknown)"
    odd = {"targets": ["x" * 200, "wss://a.example/rtc?x=1"], "started_at": "yesterday"}
    check_shape(paste_summary(odd | {"findings": ["not a dict", {}], "recommendation": {}}))


@settings(max_examples=100, deadline=None)
@given(
    report=st.dictionaries(
        st.sampled_from(
            [
                "verdict",
                "summary",
                "targets",
                "findings",
                "recommendation",
                "started_at",
                "lkice_version",
            ]
        ),
        JSON_VALUES,
    )
)
def test_summary_shape_for_any_values(report: dict[str, Any]) -> None:
    try:
        summary = paste_summary(report)
    except Exception as exc:  # pragma: no cover - reported by the assertion
        raise AssertionError(f"paste_summary raised {exc!r}") from exc
    check_shape(summary)


# ------------------------------------------------------------------------------------------
# hostile text in the summary, oversized reports

CSI_CLEAR = "\x1b[2J\x1b[H"
OSC52 = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x07"


def raw_controls(text: str) -> list[str]:
    """Characters a terminal acts on, other than the line ends the text is made of."""
    import unicodedata

    return [
        ch
        for ch in text
        if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs")
    ]


def test_summary_shows_escape_codes_instead_of_obeying_them() -> None:
    findings = [
        {"id": "x", "severity": "critical", "summary": f"clear{CSI_CLEAR}clip{OSC52}"},
        {"id": "y", "severity": "warning", "summary": "ok\nlkice: error: FAKE LINE"},
    ]
    rec = {"transport": "tls", "server": "\u202eevil", "region": "eu\u2028x", "reason": "r\rs"}
    report = dict(
        REPORT,
        findings=findings,
        recommendation=rec,
        lkice_version=f"9{OSC52}",
        targets=[f"turn:a{CSI_CLEAR}b:3478"],
    )
    summary = paste_summary(report)
    lines = check_shape(summary)
    assert raw_controls(summary) == []
    assert not any(line.startswith("lkice: error") for line in lines)
    assert "clear\\x1b[2J\\x1b[Hclip\\x1b]52;c;" in summary
    assert "ok\\nlkice: error: FAKE LINE" in summary
    assert "via \\u202eevil (region eu\\u2028x)" in summary
    assert "lkice 9\\x1b]52;c;" in summary


def test_a_report_too_large_for_a_paste_goes_without_its_series() -> None:
    report = json.loads(json.dumps(REPORT))
    quality = {
        "samples": 60_000,
        "rtt_ms": {"p50": 1.0, "p95": 1.5, "p99": 1.7, "max": 2.0},
        "jitter_ms": 0.1,
        "loss": 0.0,
        "reordered": 0,
        "hol": None,
        "mos": 4.4,
        "series": {"sent_ms": [i * 5.001 for i in range(60_000)], "rtt_ms": [1.25] * 60_000},
    }
    for path in report["paths"]:
        path["quality"] = quality
    assert len(_canonical(report)) > 4 * 2**20
    text = encode_paste(report, "summary")
    assert text.startswith("summary\n(the quality trains' per-probe series are left out")
    back = plain(decode_paste(text))
    assert all("series" not in p["quality"] for p in back["paths"])
    assert back["paths"][0]["quality"]["samples"] == 60_000
    assert {k: v for k, v in back.items() if k != "paths"} == {
        k: v for k, v in report.items() if k != "paths"
    }
    report["padding"] = "x" * (5 * 2**20)
    with pytest.raises(ValueError, match="more than a paste carries"):
        encode_paste(report, "")
