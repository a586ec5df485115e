"""Text from servers and pastes, made safe to show a person (pure).

A certificate subject, a STUN SOFTWARE attribute, a LiveKit ``server_info.version``, an error
message or a pasted report is written by someone lkice does not trust. Printed raw, such a string
can move the cursor, set the window title (OSC 0), write the clipboard (OSC 52), clear the screen
(CSI 2J), reorder what follows it (bidi overrides) or start a line of its own that looks like
lkice's (``\\nlkice: error: ...``). :func:`visible` turns every such character into an escape
that reads as what it is; everything else, including non-ASCII letters, stays as it was.

:func:`redact_url` and :func:`redact_urls` hide the password of URLs (``http://user:pass@host``)
before a URL goes into a log line or an error message.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "DISPLAY_LIMIT",
    "MAX_DEPTH",
    "clipped",
    "redact_url",
    "redact_urls",
    "url_password",
    "visible",
    "visible_lines",
    "visible_report",
]

# Control (C0, DEL, C1), format (bidi overrides and isolates, zero-width characters, the BOM),
# line and paragraph separators, lone surrogates (they cannot even be encoded for output) and
# unassigned code points (a newer Unicode may make them format characters).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Printable ASCII is always safe: only other characters are looked at one by one, so the
# common all-ASCII string costs one regex search.
_CANDIDATE = re.compile(r"[^\x20-\x7e]")
# Nesting beyond this is not a report (real ones are about 8 deep); deeper values are cut.
MAX_DEPTH = 64
_TOO_DEEP = "(nested too deeply)"


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _replace(match: re.Match[str]) -> str:
    ch = match.group(0)
    if unicodedata.category(ch) in _UNSAFE_CATEGORIES:
        return _escape(ch)
    return ch


# Longest string a view shows whole (a certificate subject, a message, a note).
DISPLAY_LIMIT = 600


def visible(text: str) -> str:
    """``text`` with every control, format, separator, surrogate or unassigned character shown as
    an escape (``\\x1b``, ``\\n``, ``\\u202e``): the result holds no character a terminal, a log
    viewer or a browser acts on. Backslashes are not doubled: this is for reading, not parsing."""
    if _CANDIDATE.search(text) is None:
        return text
    return _CANDIDATE.sub(_replace, text)


def visible_lines(text: str) -> str:
    """:func:`visible` for text of several lines of lkice's own making (a traceback): line ends
    stay, everything else inside the lines is escaped."""
    return "\n".join(visible(line) for line in text.split("\n"))


def _safe(text: str) -> bool:
    return _CANDIDATE.search(text) is None or visible(text) == text


def _children(value: Any) -> Iterator[Any]:
    """A container's keys and values (a list's items), for the walks below."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield key
            yield item
    else:
        yield from value


def _is_visible(value: Any, max_depth: int) -> bool:
    """Whether ``value`` holds no string to escape, no tuple and nothing nested too deep: then it
    is its own visible form and need not be copied. A hot loop (a report has ~10^5 values):
    exact types, C-level iteration, and memory that grows with the depth only."""
    search = _CANDIDATE.search
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        for item in stack[-1]:
            kind = type(item)
            if kind is float or kind is int or kind is bool or item is None:
                continue
            if kind is str:
                if search(item) is not None and not _safe(item):
                    return False
            elif kind is dict or kind is list:
                if len(stack) > max_depth:
                    return False
                if kind is dict:
                    for key in item:
                        if type(key) is str and search(key) is not None and not _safe(key):
                            return False
                    if item:
                        stack.append(iter(item.values()))
                        break
                elif item:
                    stack.append(iter(item))
                    break
            elif isinstance(item, str | Mapping | list | tuple):
                return False  # subclasses and tuples: the copy normalises them
        else:
            stack.pop()
    return True


_END = object()


def visible_report(value: Any, *, max_depth: int = MAX_DEPTH) -> Any:
    """A decoded JSON value with :func:`visible` applied to every string, keys and values
    alike: ``value`` itself when nothing needs escaping (no copy), else a copy. Iterative (no
    recursion limit to hit); containers nested deeper than ``max_depth`` are replaced by a short
    note. Tuples become lists; other values stay as they are."""
    if _is_visible(value, max_depth):
        return value
    if isinstance(value, str):
        return visible(value)
    root: Any = {} if isinstance(value, Mapping) else []
    # (the source's keys and values, the copy being filled)
    stack: list[tuple[Iterator[Any], Any]] = [(_children(value), root)]
    while stack:
        items, target = stack[-1]
        if isinstance(target, dict):
            key = next(items, _END)
            if key is _END:
                stack.pop()
                continue
            item = next(items)
            key = visible(key) if isinstance(key, str) else key
        else:
            item = next(items, _END)
            if item is _END:
                stack.pop()
                continue
        if isinstance(item, Mapping | list | tuple):
            if len(stack) >= max_depth:
                copy: Any = _TOO_DEEP
            else:
                copy = {} if isinstance(item, Mapping) else []
                stack.append((_children(item), copy))
        else:
            copy = visible(item) if isinstance(item, str) else item
        if isinstance(target, dict):
            target[key] = copy
        else:
            target.append(copy)
    return root


# scheme://[userinfo@]host...: the authority ends at the first '/', '?', '#' or whitespace;
# the userinfo is everything before its last '@'.
_URL_AUTHORITY = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<authority>[^/?#\s]*)")
_MASK = "***"


def _mask_authority(authority: str) -> str:
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return authority
    user, colon, _password = userinfo.partition(":")
    return f"{user}:{_MASK}@{hostport}" if colon else authority


def redact_url(url: str) -> str:
    """``url`` with the password in its user info replaced by ``***``
    (``http://user:pass@host/`` -> ``http://user:***@host/``); a user name alone is kept.
    A URL without a scheme (``user:pass@host:9091``) is read from its authority."""
    match = _URL_AUTHORITY.match(url)
    scheme = match.group("scheme") if match is not None else ""
    rest = url[len(scheme) :]
    cut = re.search(r"[/?#\s]", rest)
    end = cut.start() if cut is not None else len(rest)
    authority = rest[:end]
    if "@" not in authority and "@" in rest:
        # An unencoded '/', '?' or '#' in a password ends the authority early; what precedes the
        # last '@' is then taken as user info, unless it starts with host:port.
        head, _, tail = rest.rpartition("@")
        user, colon, after = head.partition(":")
        if colon and not re.match(r"\d*(?:[/?#]|$)", after):
            return f"{scheme}{user}:{_MASK}@{tail}"
        return url
    return scheme + _mask_authority(authority) + rest[end:]


def redact_urls(text: str) -> str:
    """Every ``scheme://user:password@`` in free text (an error message, a log value) with its
    password replaced by ``***``."""
    if "@" not in text:
        return text
    return _URL_AUTHORITY.sub(
        lambda m: m.group("scheme") + _mask_authority(m.group("authority")), text
    )


def url_password(url: str) -> str | None:
    """The password in ``url``'s user info as written (percent-encoded), or None: to hide it
    wherever else it shows up, e.g. in an exception's text that quotes the URL its own way."""
    masked = redact_url(url)
    if masked == url:
        return None
    # The masked URL is the same text with the password replaced by ***: what was cut out.
    prefix = masked.index(_MASK)
    suffix = len(masked) - prefix - len(_MASK)
    return url[prefix : len(url) - suffix] or None


def clipped(value: Any, limit: int = DISPLAY_LIMIT, *, max_depth: int = MAX_DEPTH) -> Any:
    """A copy of a decoded report with every string longer than ``limit`` cut, saying how much
    was left out: for views a person reads (text, HTML), so a small paste of repeated text
    cannot print megabytes. The JSON and the paste keep everything."""
    if max_depth < 0:
        return None
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return f"{value[:limit]}... ({len(value) - limit} more characters)"
    if isinstance(value, dict):
        return {k: clipped(v, limit, max_depth=max_depth - 1) for k, v in value.items()}
    if isinstance(value, list):
        return [clipped(v, limit, max_depth=max_depth - 1) for v in value]
    return value
