"""Redaction: replace public addresses and host names in a report by stable placeholders.

A report travels (pasted into a ticket, attached to a chat); the network it describes need not.
``redact_report`` returns a new report in which every IP address that is not loopback becomes
``ip-N`` and every host name other than ``localhost`` becomes ``host-N``, wherever it appears:
servers, addresses, URIs, error messages, notes, evidence. The same value always gets the same
placeholder within one report (host names compared case-insensitively, addresses in their
canonical form), so the structure of the diagnosis survives: "ip-1 answered on TCP, not UDP".
Ports, timings and everything else stay as they were.

Every string of the result, keys included, also has its control characters made visible
(:func:`lkice.textsafe.visible`): a redacted report is made to be shared and read.

Pure: no I/O, the input is not modified.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from lkice.textsafe import visible_report

if TYPE_CHECKING:
    from lkice.report.read import ReportDoc

__all__ = ["Redactor", "redact_report"]

# Values of these keys are not free text and never carry a host (and "lkice.report/1" looks like
# one): they are copied unchanged.
_VERBATIM_KEYS = frozenset({"schema", "lkice_version", "started_at", "sha256", "not_after"})

# Dotted names ending in these are file names in messages ("_ssl.c", "report.json"), not hosts.
_FILE_SUFFIXES = frozenset(
    {"json", "py", "pyc", "txt", "html", "pem", "crt", "key", "log", "toml", "cfg", "yaml", "yml"}
)
# A single-label host name is recognised in free text only in a URI or as name:port; these words
# are never taken for one.
_NOT_HOSTS = frozenset(
    {"localhost", "stun", "stuns", "turn", "turns", "ws", "wss", "http", "https", "udp", "tcp"}
)

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_PATTERN = re.compile(
    # a URI: scheme, then the host (bracketed IPv6, IPv4 or a name)
    r"(?P<scheme>\b(?i:stuns?|turns?|wss?|https?):(?://)?)"
    r"(?P<uhost>\[[0-9A-Fa-f:.%\w]+\]|[A-Za-z0-9_.-]+)"
    # an IPv6 address in brackets ([2001:db8::1]:3478)
    r"|\[(?P<v6b>[0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]"
    # a dotted host name: the last label is a word, so IPv4 addresses do not match
    rf"|(?<![\w.-])(?P<name>(?:{_LABEL}\.)+[A-Za-z][A-Za-z0-9-]{{0,61}}[A-Za-z])(?![\w-]|\.[\w-])"
    # an IPv6 address
    r"|(?<![\w:.])(?P<v6>(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?:%[\w-]+(?:\.\w+)*)?)(?![\w:])"
    # an IPv4 address
    r"|(?<![\w.])(?P<v4>\d{1,3}(?:\.\d{1,3}){3})(?!\.?\d)"
    # a single-label name followed by a port (turnserver:3478)
    r"|(?<![\w.:/-])(?P<hp>[A-Za-z][A-Za-z0-9_-]*)(?=:\d{1,5}\b)"
)
_PLACEHOLDER = re.compile(r"(?:host|ip)-\d+")


class Redactor:
    """Consistent placeholders over everything passed through one instance."""

    def __init__(self) -> None:
        self.hosts: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self._bare: re.Pattern[str] | None = None

    def text(self, value: str) -> str:
        """One string with every host and address in it replaced."""
        out = _PATTERN.sub(self._replace, value)
        if self._bare is not None:
            out = self._bare.sub(lambda m: self._host(m.group(0)), out)
        return out

    def learn(self, value: Any) -> None:
        """Walk a structure once so single-label names seen as ``name:port`` or in a URI are also
        replaced where they appear bare ("... turnserver refused ...")."""
        self._walk(value)
        single = sorted((h for h in self.hosts if "." not in h), key=len, reverse=True)
        if single:
            names = "|".join(re.escape(h) for h in single)
            self._bare = re.compile(rf"(?<![\w.-])(?i:{names})(?![\w-])")

    def _walk(self, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key not in _VERBATIM_KEYS:
                    self._walk(item)
        elif isinstance(value, list):
            for item in value:
                self._walk(item)
        elif isinstance(value, str):
            _PATTERN.sub(self._replace, value)

    def value(self, value: Any, key: str | None = None) -> Any:
        """A redacted deep copy of a JSON-like value."""
        if isinstance(value, dict):
            return {k: self.value(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(item, key) for item in value]
        if isinstance(value, str) and key not in _VERBATIM_KEYS:
            return self.text(value)
        return value

    def _replace(self, match: re.Match[str]) -> str:
        groups = match.groupdict()
        if groups["scheme"] is not None:
            host = groups["uhost"]
            if host.startswith("["):
                return groups["scheme"] + "[" + self._address(host[1:-1]) + "]"
            dots = len(host) - len(host.rstrip("."))  # a sentence's full stop
            return groups["scheme"] + self._any(host[: len(host) - dots]) + "." * dots
        if groups["v6b"] is not None:
            return "[" + self._address(groups["v6b"]) + "]"
        if groups["name"] is not None:
            name: str = groups["name"]
            # "report.json" is a file; "turn.empresa.com.py" (Paraguay) is a host.
            if name.count(".") == 1 and name.rsplit(".", 1)[1].lower() in _FILE_SUFFIXES:
                return name
            return self._host(name)
        for group in ("v6", "v4"):
            if groups[group] is not None:
                return self._address(groups[group])
        name = groups["hp"]
        if name.lower() in _NOT_HOSTS or _PLACEHOLDER.fullmatch(name):
            return name
        return self._host(name)

    def _any(self, host: str) -> str:
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return host if _PLACEHOLDER.fullmatch(host) else self._host(host)
        return self._address(host)

    def _host(self, name: str) -> str:
        key = name.lower().rstrip(".")
        if key == "localhost":
            return name
        if key not in self.hosts:
            self.hosts[key] = f"host-{len(self.hosts) + 1}"
        return self.hosts[key]

    def _address(self, text: str) -> str:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            return text  # looked like one, is not (a time of day, a hex word)
        mapped = getattr(address, "ipv4_mapped", None)
        if address.is_loopback or (mapped is not None and mapped.is_loopback):
            return text
        key = address.compressed
        if key not in self.addresses:
            self.addresses[key] = f"ip-{len(self.addresses) + 1}"
        return self.addresses[key]


def redact_report(report: Mapping[str, Any]) -> ReportDoc:
    """A deep copy of ``report`` with hosts and non-loopback addresses replaced by placeholders,
    and control characters made visible in every string (after redaction, which reads the
    strings as they came)."""
    redactor = Redactor()
    redactor.learn(report)
    result: dict[str, Any] = visible_report(redactor.value(report))
    return cast("ReportDoc", result)  # the same shape, placeholders where the names were
