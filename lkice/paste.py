"""The ticket paste block: a report as text that survives email and chat.

End users paste lkice's result into a support ticket; support staff paste the ticket text back
into ``lkice explain``. :func:`encode_paste` writes a short human summary followed by::

    -----BEGIN LKICE REPORT-----
    lkice-paste: 1 codec=xz len=27974 sha256=0123456789abcdef
    /Td6WFoAAAD/EtlBAgAhARwAAAAQz1jM4G1FHMVdAD2IiecjpMb9Ad6w5mG8sm8C
    ...
    -----END LKICE REPORT-----

and :func:`decode_paste` finds that block anywhere in a text and returns the report dict.

Format (version 1)
    The payload is the canonical JSON of the report (``sort_keys``, compact separators,
    ``ensure_ascii``), compressed as an xz stream (LZMA2, ``lc=4 pb=0``, 1 MiB dictionary, no
    xz integrity check) and written as standard base64 without ``=`` padding, ``width`` characters
    a line. The header gives the format version, the codec, the byte length of the canonical JSON
    and the first 16 hex digits of its sha256. ``codec=zlib`` (level 9) is the fallback when Python
    was built without :mod:`lzma`; the decoder reads both.

Why these choices
    * xz rather than zlib: on real reports it is about 25% smaller (fewer lines to paste), and
      ``base64 -d | xz -d`` still reads it by hand. Floats survive exactly because Python's JSON
      writes the shortest repr that round-trips.
    * ``ensure_ascii``: the bytes are always ASCII, so no client can re-encode them and lone
      surrogates cannot break UTF-8 encoding; the size cost only hits non-ASCII text.
    * Standard base64, unpadded: its alphabet ``A-Z a-z 0-9 + /`` holds nothing that markdown or
      chat markup acts on (no ``*``, ``_``, ``~``, backticks, ``>``, ``#``, ``:``, ``<``, ``|``),
      and payload lines have no spaces, so ``+`` never starts a list item. Base85 would save 7% but
      uses exactly those characters. Padding is dropped because a last line of only ``==`` under a
      text line is a markdown heading underline, which a renderer would swallow.
    * The BEGIN/END lines follow the PEM convention; they carry text after the dashes, so markdown
      reads them as neither a rule nor a list item.
    * Everything that carries meaning is self-delimiting once whitespace is removed (the sha256
      field has a fixed width), so the decoder removes *all* whitespace inside the block: lines
      re-wrapped at any width, joined or split, the header joined onto the BEGIN line, all read
      the same.

What the decoder tolerates
    Text before and after the block, markdown fences, CRLF or CR line ends, leading indentation,
    trailing spaces, quote prefixes (``>``, ``> >``, ``>>`` with any spacing), non-breaking and
    zero-width spaces, and dashes turned into en or em dashes around the BEGIN/END words. The
    checksum and length then prove that nothing else changed.

Several blocks in one text
    Ticket threads quote earlier messages, so the same block often appears several times. All
    complete blocks are decoded; if they hold one report (however often), it is returned, and
    damaged copies are ignored because the checksum proves the good one. If they hold different
    reports, :class:`PasteError` says so and asks for one: picking one silently could explain the
    wrong run. If no complete block decodes, the error of the last one is raised.

Bounds and checks
    The text is at most :data:`MAX_TEXT` characters with at most 64 blocks; the header's length
    is at most 4 MiB (``intake.MAX_REPORT_BYTES``: real reports are tens of KB, 1.4 MB with
    60 s trains at 5 ms), so a few KB of paste cannot expand into hundreds of MB of objects.
    An intact block's JSON then goes through :func:`lkice.intake.load_report` (depth, object
    count, schema version, the JSON Schema): "the paste is intact, but ..." names what is
    wrong. :func:`encode_paste` leaves the per-probe series out of a report too large to paste,
    and says so under the summary.

Every failure of :func:`decode_paste` is a :class:`PasteError` (a
:class:`lkice.intake.ReportError`, a :class:`ValueError`) with a message that names what is
wrong; no other exception escapes for any input string. :func:`paste_summary` shows control
characters from the report as escapes (``\\x1b[2J``), never raw.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import itertools
import json
import re
import textwrap
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from lkice.intake import MAX_REPORT_BYTES, ReportError, load_report
from lkice.textsafe import visible

if TYPE_CHECKING:
    from lkice.report.read import ReportDoc

_lzma: ModuleType | None
try:
    import lzma as _lzma
except ImportError:  # pragma: no cover - Python built without liblzma
    _lzma = None

__all__ = ["MAX_TEXT", "PasteError", "decode_paste", "encode_paste", "paste_summary"]

FORMAT_VERSION = 1
BEGIN_LINE = "-----BEGIN LKICE REPORT-----"
END_LINE = "-----END LKICE REPORT-----"
_CODECS = ("xz", "zlib")
_HASH_HEX = 16
# The decoded JSON: as large as any report lkice reads (intake.MAX_REPORT_BYTES, 4 MiB; real
# ones are tens of KB), so a hostile paste cannot expand into hundreds of MB of objects.
_MAX_LEN = MAX_REPORT_BYTES
# The text searched for blocks: a whole ticket thread that quotes the largest paste (1.5 MB of
# base64 for 4 MiB of JSON) several times is fine; gigabytes are not.
MAX_TEXT = 16 * 1024 * 1024
# A thread quotes a block a few times; each block is decoded and validated.
_MAX_BLOCKS = 64
_XZ_MEMLIMIT = 64 * 1024 * 1024

# Dashes may come back as en/em dashes or minus signs from "smart punctuation".
_DASH = "[-\u2010-\u2015\u2212]"
_BEGIN_RE = re.compile(rf"{_DASH}*[ \t]*BEGIN\s+LKICE\s+REPORT[ \t]*{_DASH}*", re.IGNORECASE)
_END_RE = re.compile(rf"{_DASH}*[ \t]*END\s+LKICE\s+REPORT[ \t]*{_DASH}*", re.IGNORECASE)
# Quote prefixes and indentation, any nesting and spacing; \s covers NBSP too.
_PREFIX_RE = re.compile(r"^[\s>]+")
# Zero-width characters some chat clients insert; they are never data.
_INVISIBLE_RE = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
# Inside the block, whitespace and stray quote marks (a quoted line re-wrapped into the middle of
# another) carry no data; '>' is never in the payload alphabet, so dropping it loses nothing.
_NOISE_RE = re.compile(r"[\s>]+")
_VERSION_RE = re.compile(r"lkice[-\u2010-\u2015\u2212]?paste:(\d{1,9})", re.IGNORECASE)
_HEADER_RE = re.compile(
    rf"lkice[-\u2010-\u2015\u2212]?paste:(?P<version>\d{{1,9}})"
    rf"codec=(?P<codec>[A-Za-z0-9]{{1,16}}?)len=(?P<len>\d{{1,12}})"
    rf"sha256=(?P<sha>[0-9a-fA-F]{{{_HASH_HEX}}})",
    re.IGNORECASE,
)
_DECOMPRESS_ERRORS: tuple[type[Exception], ...] = (
    (zlib.error, _lzma.LZMAError) if _lzma is not None else (zlib.error,)
)
_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


class PasteError(ReportError):
    """The text holds no readable lkice report block; the message says what is wrong."""


# --------------------------------------------------------------------------------------------
# encoding


def _canonical(report: Mapping[str, Any]) -> bytes:
    return json.dumps(report, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode(
        "ascii"
    )


def _compress(data: bytes, codec: str) -> bytes:
    if codec == "xz":
        if _lzma is None:  # pragma: no cover - Python built without liblzma
            raise ValueError("this Python has no lzma module; use codec 'zlib'")
        # lc=4 pb=0 suits byte-oriented text (about 1% smaller than the preset); a 1 MiB
        # dictionary covers any report and keeps the decoder's memory small.
        filters = [
            {
                "id": _lzma.FILTER_LZMA2,
                "preset": 9 | _lzma.PRESET_EXTREME,
                "dict_size": 1 << 20,
                "lc": 4,
                "lp": 0,
                "pb": 0,
            }
        ]
        out: bytes = _lzma.compress(
            data, format=_lzma.FORMAT_XZ, check=_lzma.CHECK_NONE, filters=filters
        )
        return out
    if codec == "zlib":
        return zlib.compress(data, 9)
    raise ValueError(f"unknown codec {codec!r}")


def _encode(report: Mapping[str, Any], summary: str, width: int, codec: str) -> str:
    if width < 4:
        raise ValueError(f"width must be at least 4, got {width}")
    data = _canonical(report)
    payload = base64.b64encode(_compress(data, codec)).decode("ascii").rstrip("=")
    sha = hashlib.sha256(data).hexdigest()[:_HASH_HEX]
    lines = [
        BEGIN_LINE,
        f"lkice-paste: {FORMAT_VERSION} codec={codec} len={len(data)} sha256={sha}",
        *(payload[i : i + width] for i in range(0, len(payload), width)),
        END_LINE,
    ]
    block = "\n".join(lines) + "\n"
    head = summary.rstrip()
    return f"{head}\n\n{block}" if head else block


_SERIES_NOTE = (
    "(the quality trains' per-probe series are left out of this paste to keep\n"
    "it within what lkice explain reads; the JSON report has them)"
)


def _without_series(report: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``report`` without the per-probe series (the largest part of a long train);
    every summary figure stays."""
    paths = []
    for path in report.get("paths") or []:
        if isinstance(path, dict):
            path = dict(path)
            for key in ("quality", "relay_quality"):
                if isinstance(path.get(key), dict) and "series" in path[key]:
                    path[key] = {k: v for k, v in path[key].items() if k != "series"}
        paths.append(path)
    return {**report, "paths": paths}


def encode_paste(report: Mapping[str, Any], summary: str, *, width: int = 64) -> str:
    """Return ``summary`` (as given) followed by the armoured report block.

    A report whose JSON is larger than a paste may carry (trains of many minutes) goes without
    its per-probe series, and a note under the summary says so. Raises ``ValueError``/
    ``TypeError`` if the report is not JSON-serialisable, ``ValueError`` if it is too large
    even then.
    """
    codec = "xz" if _lzma is not None else "zlib"
    if len(_canonical(report)) <= _MAX_LEN:
        return _encode(report, summary, width, codec)
    lighter = _without_series(report)
    size = len(_canonical(lighter))
    if size > _MAX_LEN:
        raise ValueError(
            f"the report is {size} bytes of JSON even without its series, more than a paste "
            f"carries ({_MAX_LEN})"
        )
    head = summary.rstrip()
    return _encode(lighter, f"{head}\n{_SERIES_NOTE}" if head else _SERIES_NOTE, width, codec)


# --------------------------------------------------------------------------------------------
# decoding


@dataclass(frozen=True)
class _Block:
    number: int  # 1-based, in text order
    line: int  # 1-based line of the BEGIN marker
    body: str  # normalised text between the markers
    complete: bool


def _normalise(text: str) -> str:
    text = _INVISIBLE_RE.sub("", text)
    # splitlines() also splits on CR alone and Unicode line separators.
    return "\n".join(_PREFIX_RE.sub("", line).rstrip() for line in text.splitlines())


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _find_blocks(text: str) -> list[_Block]:
    begins = list(itertools.islice(_BEGIN_RE.finditer(text), _MAX_BLOCKS + 1))
    if len(begins) > _MAX_BLOCKS:
        raise PasteError(
            f"more than {_MAX_BLOCKS} report blocks in the text: paste only the one to explain"
        )
    ends = [m for m in _END_RE.finditer(text)]
    if not begins:
        if ends:
            raise PasteError(
                f"found the END line (line {_line_of(text, ends[0].start())}) but no "
                f"'{BEGIN_LINE}' line: the start of the block was cut off"
            )
        raise PasteError(f"no lkice report block found (expected a line '{BEGIN_LINE}')")
    blocks: list[_Block] = []
    for i, begin in enumerate(begins):
        limit = begins[i + 1].start() if i + 1 < len(begins) else len(text)
        end = next((e for e in ends if begin.end() <= e.start() < limit), None)
        stop = end.start() if end is not None else limit
        blocks.append(
            _Block(
                number=i + 1,
                line=_line_of(text, begin.start()),
                body=text[begin.end() : stop],
                complete=end is not None,
            )
        )
    return blocks


def _alphabet_problems(block: _Block, skip: int) -> list[str]:
    """Describe characters outside base64, skipping the first ``skip`` data characters (header)."""
    problems: list[str] = []
    seen = 0
    # The body starts on the BEGIN line itself, so its first line has the BEGIN line's number.
    for offset, line in enumerate(block.body.split("\n")):
        for ch in line:
            if _NOISE_RE.fullmatch(ch):
                continue
            seen += 1
            if seen > skip and ch not in _B64_CHARS and ch != "=":  # '=' is checked later
                problems.append(f"line {block.line + offset} ({ch!r})")
    return problems


def _decompress(raw: bytes, codec: str, size: int) -> bytes:
    """Decompress at most ``size + 1`` bytes, so a length lie cannot exhaust memory."""
    try:
        if codec == "xz":
            if _lzma is None:  # pragma: no cover - Python built without liblzma
                raise PasteError(
                    "the block uses codec xz but this Python has no lzma module to read it"
                )
            xz = _lzma.LZMADecompressor(format=_lzma.FORMAT_XZ, memlimit=_XZ_MEMLIMIT)
            out: bytes = xz.decompress(raw, max_length=size + 1)
            eof, unused = xz.eof, xz.unused_data
        else:
            zd = zlib.decompressobj()
            out = zd.decompress(raw, size + 1)
            eof, unused = zd.eof, zd.unused_data
    except _DECOMPRESS_ERRORS as exc:
        raise PasteError(
            f"the compressed data is corrupt ({codec}: {exc}): the paste was altered"
        ) from None
    except MemoryError:
        raise PasteError("the compressed data asks for too much memory to decode") from None
    if len(out) > size:
        raise PasteError(
            f"length mismatch: the header says {size} bytes but the data decodes to more"
        )
    if not eof:
        raise PasteError(
            f"the compressed data ends early ({len(out)} of {size} bytes decoded): "
            "the paste was cut off or lines were lost"
        )
    if unused:
        raise PasteError(
            f"{len(unused)} bytes of extra data after the compressed stream: the paste was altered"
        )
    return out


def _block_data(block: _Block) -> bytes:
    """The block's JSON bytes, with the length and checksum proven."""
    compact = _NOISE_RE.sub("", block.body)
    where = f"the block at line {block.line}"
    if not block.complete:
        header = _HEADER_RE.match(compact)
        chars = len(compact) - (header.end() if header else 0)
        raise PasteError(
            f"{where} has no END line: the paste was cut off after {chars} characters of data "
            f"(expected a line '{END_LINE}')"
        )
    vm = _VERSION_RE.match(compact)
    if vm is None:
        raise PasteError(
            f"{where} has no header line (expected 'lkice-paste: {FORMAT_VERSION} codec=... "
            f"len=... sha256=...' right after the BEGIN line); found {compact[:24]!r}"
        )
    version = int(vm.group(1))
    if version != FORMAT_VERSION:
        raise PasteError(
            f"unsupported paste format version {version} (this lkice reads {FORMAT_VERSION}); "
            "a newer lkice wrote it"
        )
    hm = _HEADER_RE.match(compact)
    if hm is None:
        raise PasteError(
            f"{where} has a damaged header line (expected 'lkice-paste: {FORMAT_VERSION} "
            f"codec=xz len=<bytes> sha256=<{_HASH_HEX} hex digits>')"
        )
    codec = hm.group("codec").lower()
    if codec not in _CODECS:
        raise PasteError(
            f"unknown compression {codec!r} in the header (this lkice reads {', '.join(_CODECS)})"
        )
    size = int(hm.group("len"))
    if size > _MAX_LEN:
        raise PasteError(f"the header claims {size} bytes, more than any report ({_MAX_LEN})")
    expected_sha = hm.group("sha").lower()

    payload = compact[hm.end() :]
    bad = _alphabet_problems(block, hm.end())
    if bad:
        shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        noun = "character" if len(bad) == 1 else "characters"
        raise PasteError(
            f"{len(bad)} {noun} outside the base64 alphabet at {shown}: the paste was altered"
        )
    # Padding is optional on input (the encoder omits it; a hand-edit or tool may add it back).
    stripped = payload.rstrip("=")
    if "=" in stripped:
        raise PasteError("a '=' inside the base64 data: the paste was altered")
    if not stripped:
        raise PasteError(f"{where} has a header but no data")
    if len(stripped) % 4 == 1:
        raise PasteError(
            f"the base64 data has {len(stripped)} characters, which no encoding produces: "
            "a character was lost or added"
        )
    try:
        raw = base64.b64decode(stripped + "=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - alphabet checked above
        raise PasteError(f"the base64 data is malformed ({exc})") from None
    # b64decode ignores the unused low bits of the last character; re-encoding catches a change
    # there, so every altered character is an error.
    if base64.b64encode(raw).decode("ascii").rstrip("=") != stripped:
        raise PasteError("the base64 data was altered (its last character is not canonical)")

    data = _decompress(raw, codec, size)
    if len(data) != size:
        raise PasteError(
            f"length mismatch: the header says {size} bytes, the data decodes to {len(data)}"
        )
    actual_sha = hashlib.sha256(data).hexdigest()[:_HASH_HEX]
    if actual_sha != expected_sha:
        raise PasteError(
            f"checksum mismatch: the data was altered (expected sha256 {expected_sha}, "
            f"got {actual_sha})"
        )
    return data


def _report_of(data: bytes) -> ReportDoc:
    try:
        return load_report(data)
    except ReportError as exc:
        # The checksum held: nothing was damaged in transit; the writer made it so.
        raise PasteError(f"the paste is intact, but {exc}") from None


def _decode_block(block: _Block) -> ReportDoc:
    return _report_of(_block_data(block))


def decode_paste(text: str) -> ReportDoc:
    """Find the report block in ``text`` (a whole ticket is fine), verify it, return the report.

    Raises :class:`PasteError` (and nothing else) when there is no block or it was damaged.
    """
    try:
        return _decode_text(text)
    except PasteError:
        raise
    except Exception as exc:  # a bug must still not show users a traceback
        raise PasteError(f"could not read the paste ({type(exc).__name__}: {exc})") from exc


def _decode_text(text: str) -> ReportDoc:
    if not isinstance(text, str):
        raise PasteError(f"expected the pasted text, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise PasteError(
            f"the text is {len(text)} characters, more than a ticket with a report holds "
            f"(at most {MAX_TEXT}): paste only the message with the report block"
        )
    norm = _normalise(text)
    blocks = _find_blocks(norm)
    complete = [b for b in blocks if b.complete]
    if not complete:
        _decode_block(blocks[-1])  # raises the cut-off error
    good: dict[str, tuple[_Block, ReportDoc]] = {}
    last_error: PasteError | None = None
    seen: dict[bytes, ReportDoc | PasteError] = {}  # a quoted copy is read once
    for block in complete:
        try:
            data = _block_data(block)
            known = seen.get(data)
            if known is None:
                try:
                    known = _report_of(data)
                except PasteError as exc:
                    known = exc
                seen[data] = known
            if isinstance(known, PasteError):
                raise known
            report = known
        except PasteError as exc:
            last_error = exc
            continue
        # The checksummed bytes are the encoder's canonical JSON: the same report, the same bytes.
        good.setdefault(hashlib.sha256(data).hexdigest(), (block, report))
        if len(good) > 1:
            break  # two different reports are already the answer: the rest is not read
    if len(good) == 1:
        return next(iter(good.values()))[1]
    if len(good) > 1:
        lines = ", ".join(str(b.line) for b, _ in good.values())
        raise PasteError(
            f"{len(good)} different report blocks found (at lines {lines}); "
            "paste only the one to explain"
        )
    assert last_error is not None
    if len(complete) > 1:
        raise PasteError(
            f"none of the {len(complete)} report blocks is readable; last: {last_error}"
        )
    raise last_error


# --------------------------------------------------------------------------------------------
# the human summary above the block

_WIDTH = 72
_SEVERITY_RANK = {"critical": 0, "error": 1, "high": 1, "warning": 2, "medium": 2, "low": 3}


def _clean(value: object) -> str:
    """One line of plain text: control and format characters shown as escapes (``\\x1b``,
    ``\\t``), odd spaces as spaces, runs of spaces as one."""
    text = "".join(
        ch if ch.isprintable() else " " if ch.isspace() else ascii(ch)[1:-1]
        for ch in visible(str(value))
    )
    return " ".join(text.split())


def _fit(text: str, width: int = _WIDTH) -> str:
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def _when(started_at: object) -> str:
    if not isinstance(started_at, str):
        return "time unknown"
    try:
        moment = datetime.datetime.fromisoformat(started_at)
    except ValueError:
        return _clean(started_at)
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc)
        return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _target_host(uri: str) -> str:
    # "turns:host:443?transport=tcp" / "wss://host/path" -> "host:443" / "host"
    rest = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*:(//)?", "", uri)
    return re.split(r"[?/]", rest, maxsplit=1)[0] or uri


def _targets_line(targets: object) -> str:
    if not isinstance(targets, list) or not targets:
        return "targets: none recorded"
    hosts: list[str] = []
    for t in targets:
        host = _clean(_target_host(str(t)))
        if host not in hosts:
            hosts.append(host)
    head = f"targets ({len(targets)} URIs): "
    shown: list[str] = []
    for i, host in enumerate(hosts):
        more = len(hosts) - i - 1
        candidate = head + ", ".join([*shown, host]) + (f", +{more} more" if more else "")
        if shown and len(candidate) > _WIDTH:
            return _fit(head + ", ".join(shown) + f", +{len(hosts) - i} more")
        shown.append(host)
    return _fit(head + ", ".join(shown))


def _findings_lines(findings: object, limit: int = 5) -> list[str]:
    if not isinstance(findings, list) or not findings:
        return []
    items = [f for f in findings if isinstance(f, dict)]

    def rank(f: dict[str, Any]) -> int:
        return _SEVERITY_RANK.get(str(f.get("severity", "")).lower(), 4)

    # sorted() is stable: within a severity the report's own order stays.
    ordered = sorted(items, key=rank)
    lines = [
        _fit(
            f"[{_clean(f.get('severity') or 'info')}] "
            f"{_clean(f.get('summary') or f.get('id') or '(no summary)')}"
        )
        for f in ordered[:limit]
    ]
    if len(ordered) > limit:
        lines.append(f"(+{len(ordered) - limit} more findings in the report)")
    return lines


def _recommendation_lines(rec: object) -> list[str]:
    if not isinstance(rec, dict):
        return []
    parts = []
    if rec.get("transport"):
        parts.append(_clean(rec["transport"]))
    if rec.get("server"):
        parts.append(f"via {_clean(rec['server'])}")
    if rec.get("region"):
        parts.append(f"(region {_clean(rec['region'])})")
    lines = [_fit("recommended: " + (" ".join(parts) or "see report"))]
    if rec.get("reason"):
        wrapped = textwrap.wrap(_clean(rec["reason"]), _WIDTH - 2)
        if len(wrapped) > 2:
            wrapped = [wrapped[0], _fit(" ".join(wrapped[1:]), _WIDTH - 2)]
        lines.extend("  " + w for w in wrapped)
    return lines


def paste_summary(report: Mapping[str, Any]) -> str:
    """A short plain-text summary for the top of a paste: at most 15 lines of 72 columns."""
    verdict = _clean(report.get("verdict") or "unknown").upper()
    counts = report.get("summary")
    if isinstance(counts, dict) and "paths" in counts:
        usable = f"{_clean(counts.get('ok', '?'))} of {_clean(counts['paths'])} paths usable"
    else:
        usable = "path counts unknown"
    lines = [_fit(f"lkice verdict: {verdict} ({usable})")]
    if report.get("interrupted"):
        lines.append("(the run was interrupted: the report is partial)")
    version = _clean(report.get("lkice_version") or "?")
    lines.append(_fit(f"lkice {version}, run at {_when(report.get('started_at'))}"))
    lines.append(_targets_line(report.get("targets")))
    lines.extend(_findings_lines(report.get("findings")))
    lines.extend(_recommendation_lines(report.get("recommendation")))
    lines.append("Support: paste this whole message into 'lkice explain'.")
    return "\n".join(lines[:15])
