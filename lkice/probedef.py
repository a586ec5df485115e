"""Probe definitions: TOML files under ``probes/`` naming what a scheduled lkice probes, how
often, with which settings, credentials (by reference only) and labels.

Pure apart from reading the definition itself and, in :func:`to_request`, the secrets it
references. Every mistake is reported with the file, the line and the key, all of them at once,
so a broken definition is fixed in one pass::

    probes/office.toml:12: regions[1].uris[0]: 'turn:' has no host

Format (see ``probes/*.toml`` for complete examples)::

    [probe]
    name = "hamburg-office"            # required: [a-z0-9][a-z0-9_.-]*
    every = "5m"                       # schedule for --daemon: 30s, 5m, 1h30m (1 s .. 24 h)
    labels = { site = "hamburg" }      # Prometheus label names, string values, at most 8

    [settings]                         # all optional; the defaults of lkice run
    deadline_s = 20.0
    udp_timeout_s = 3.0
    timeout_s = 5.0
    quality = { duration_s = 5.0, interval_ms = 20.0 }
    ca_files = ["corp-ca.pem"]         # relative to the definition's directory
    insecure = false
    nameserver = "10.0.0.53"

    [thresholds]                       # optional: this site's own quality limits
    rtt_warn_ms = 150                  # rtt_crit_ms, jitter_warn_ms, loss_warn, loss_crit,
    loss_warn = 0.02                   # mos_warn, mos_crit (defaults: docs/findings.md)

    [credentials]                      # references only: { env = "NAME" } or { file = "path" }
    api_key = { env = "LIVEKIT_API_KEY" }
    api_secret = { file = "/etc/lkice/livekit-secret" }
    # token (token2: a second participant's), turn_username, turn_password, turn_secret
    # (TURN REST), turn_user (plain text)

    [[targets]]                        # LiveKit URLs and/or STUN/TURN URIs
    uri = "wss://acme.livekit.cloud"

    [[regions]]                        # self-hosted regions to compare and rank
    name = "eu"
    uris = ["turn:turn-eu.example.com:3478", "turns:turn-eu.example.com:443?transport=tcp"]
    credentials = { turn_username = { env = "EU_TURN_USER" }, turn_password = { env = "EU_TURN_PASS" } }
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lkice.errors import UsageError

if TYPE_CHECKING:
    from lkice.job import RunRequest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "DefinitionError",
    "ProbeDefinition",
    "RegionDef",
    "SecretRef",
    "load",
    "parse",
    "parse_duration",
    "to_request",
]

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{0,62}")
_DURATION = re.compile(r"(?:([0-9]{1,5})h)?(?:([0-9]{1,7})m)?(?:([0-9]{1,9})s)?")
MAX_LABELS = 8  # bounded label cardinality: metrics multiply by every label
EVERY_MIN_S, EVERY_MAX_S = 1.0, 86400.0  # below 10 s: for tests and demos
SECRET_KEYS = (
    "api_key",
    "api_secret",
    "token",
    "token2",
    "turn_username",
    "turn_password",
    "turn_secret",
)
REGION_SECRET_KEYS = ("turn_username", "turn_password", "turn_secret")
# Quality thresholds a definition may set (lkice.findings.Limits; defaults: docs/findings.md).
_THRESHOLDS = {
    "rtt_warn_ms": (1.0, 10000.0),
    "rtt_crit_ms": (1.0, 10000.0),
    "jitter_warn_ms": (0.1, 1000.0),
    "loss_warn": (0.0, 1.0),
    "loss_crit": (0.0, 1.0),
    "mos_warn": (1.0, 4.5),
    "mos_crit": (1.0, 4.5),
}
_SETTINGS_RANGES = {
    "deadline_s": (0.5, 600.0),
    "udp_timeout_s": (0.1, 30.0),
    "timeout_s": (0.1, 60.0),
}


class DefinitionError(ValueError):
    """One or more mistakes in a definition, each ``file:line: key: message``."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


MAX_SECRET_FILE = 64 * 1024  # a password, a token or a shared secret: far less
MAX_DEFINITION = 1024 * 1024  # a definition is a few KB


@dataclass(frozen=True)
class SecretRef:
    """Where a secret is: an environment variable or a file (never the secret itself)."""

    env: str | None = None
    file: Path | None = None

    def describe(self) -> str:
        return f"${self.env}" if self.env else f"file {self.file}"

    def resolve(self, where: str) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise DefinitionError([f"{where}: environment variable {self.env} is not set"])
            return value
        assert self.file is not None
        try:
            with self.file.open("rb") as handle:
                raw = handle.read(MAX_SECRET_FILE + 1)
        except OSError as exc:
            raise DefinitionError(
                [f"{where}: cannot read {self.file} ({exc.strerror or exc})"]
            ) from None
        if len(raw) > MAX_SECRET_FILE:
            raise DefinitionError(
                [f"{where}: {self.file} is larger than {MAX_SECRET_FILE // 1024} KiB: not a secret"]
            )
        try:
            value = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DefinitionError(
                [f"{where}: {self.file} is not UTF-8 text (save it as UTF-8)"]
            ) from None
        if not value:
            raise DefinitionError([f"{where}: {self.file} is empty"])
        return value


@dataclass(frozen=True)
class RegionDef:
    name: str
    uris: tuple[str, ...]
    credentials: Mapping[str, SecretRef] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeDefinition:
    path: Path
    name: str
    every_s: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    targets: tuple[str, ...] = ()
    regions: tuple[RegionDef, ...] = ()
    credentials: Mapping[str, SecretRef] = field(default_factory=dict)
    turn_user: str = "lkice"
    deadline_s: float = 20.0
    udp_timeout_s: float = 3.0
    timeout_s: float = 5.0
    quality_duration_s: float = 5.0
    quality_interval_ms: float = 20.0
    ca_files: tuple[Path, ...] = ()
    insecure: bool = False
    nameserver: str | None = None
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        every = "once" if self.every_s is None else f"every {format_duration(self.every_s)}"
        return f"{self.name}: {len(self.targets)} target(s), {len(self.regions)} region(s), {every}"


def parse_duration(text: str) -> float | None:
    """``30s``, ``5m``, ``1h30m`` -> seconds; None if it is not such a duration."""
    match = _DURATION.fullmatch(text.strip())
    if not match or not any(match.groups()):
        return None
    h, m, s = (int(g) if g else 0 for g in match.groups())
    return float(h * 3600 + m * 60 + s)


def format_duration(seconds: float) -> str:
    total = int(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"


def load(path: Path | str) -> ProbeDefinition:
    """Read and check a definition file (secrets are not read here: see to_request)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_DEFINITION + 1)
    except OSError as exc:
        raise DefinitionError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    if len(raw) > MAX_DEFINITION:
        raise DefinitionError(
            [f"{path}: larger than {MAX_DEFINITION // 1024} KiB: not a probe definition"]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DefinitionError([f"{path}: not UTF-8 text"]) from None
    return parse(text, path)


def parse(text: str, path: Path) -> ProbeDefinition:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "(at line N, column M)"; keep its words, in our file:line form.
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        line = found.group(1) if found else "?"
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise DefinitionError([f"{path}:{line}: not valid TOML: {message}"]) from None
    return _Checker(text, path).check(data)


class _Checker:
    def __init__(self, text: str, path: Path) -> None:
        self.lines = text.splitlines()
        self.path = path
        self.problems: list[str] = []

    # -- reporting ------------------------------------------------------------------------------

    def fail(self, key: str, message: str) -> None:
        # A value quoted in the message may be anything the file holds: one line, bounded.
        from lkice.textsafe import visible

        shown = visible(message)
        if len(shown) > 300:
            shown = shown[:300] + "..."
        self.problems.append(f"{self.path}:{self._line(key)}: {key}: {shown}")

    def _line(self, key: str) -> int | str:
        """The line a key path is written on: its table header, then its ``name =`` within;
        arrays of tables counted by their headers. Best effort: the table's line if the key
        itself is not found (inline tables, dotted keys)."""
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", key)
        start, end = 0, len(self.lines)
        table: list[str] = []
        best: int | str = "?"
        for part in parts:
            if part.startswith("["):
                index = int(part[1:-1])
                header = re.compile(r"\s*\[\[\s*" + re.escape(".".join(table)) + r"\s*\]\]")
                hits = [i for i in range(start, end) if header.match(self.lines[i])]
                if index < len(hits):
                    start = hits[index]
                    best = start + 1
                    following = [i for i in range(start + 1, end) if self._is_header(i)]
                    end = following[0] if following else end
                continue
            table.append(part)
            header = re.compile(r"\s*\[\[?\s*" + re.escape(".".join(table)) + r"\s*\]?\]\s*(#.*)?$")
            assign = re.compile(r"\s*" + re.escape(part) + r"\s*=")
            for i in range(start, end):
                if header.match(self.lines[i]):
                    start = i
                    best = i + 1
                    following = [j for j in range(i + 1, len(self.lines)) if self._is_header(j)]
                    end = following[0] if following else len(self.lines)
                    break
                if assign.match(self.lines[i]) or re.search(
                    r"[{,]\s*" + re.escape(part) + r"\s*=", self.lines[i]
                ):
                    best = i + 1
                    start = i
                    break
        return best

    def _line_number(self, problem: str) -> int:
        """Problems in file order, so they read top to bottom."""
        found = re.match(re.escape(str(self.path)) + r":(\d+):", problem)
        return int(found.group(1)) if found else 0

    def _is_header(self, i: int) -> bool:
        return bool(re.match(r"\s*\[", self.lines[i]))

    # -- checks ---------------------------------------------------------------------------------

    def table(self, value: Any, key: str, allowed: Sequence[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(key, f"expected a table, got {type(value).__name__}")
            return {}
        for k in value:
            if k not in allowed:
                self.fail(f"{key}.{k}", f"unknown key (expected one of: {', '.join(allowed)})")
        return value

    def string(self, value: Any, key: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.fail(key, "expected a non-empty string")
            return None
        return value

    def number(self, value: Any, key: str, low: float, high: float) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, "expected a number")
            return None
        if not low <= float(value) <= high:
            self.fail(key, f"{value} is out of range ({low:g} to {high:g})")
            return None
        return float(value)

    def uri(self, value: Any, key: str) -> str | None:
        from lkice.livekit import is_livekit_url, parse_livekit_url
        from lkice.uri import parse_ice_uri

        text = self.string(value, key)
        if text is None:
            return None
        try:
            if is_livekit_url(text):
                parse_livekit_url(text)
            else:
                parse_ice_uri(text)
        except UsageError as exc:
            self.fail(key, str(exc))
            return None
        return text

    def secret(self, value: Any, key: str) -> SecretRef | None:
        if isinstance(value, str):
            self.fail(
                key,
                'a secret must not be written in the definition: use { env = "NAME" } or '
                '{ file = "/path" }',
            )
            return None
        ref = self.table(value, key, ("env", "file"))
        if not ref:
            return None
        if len(ref) != 1:
            self.fail(key, "give exactly one of env or file")
            return None
        if "env" in ref:
            name = self.string(ref["env"], f"{key}.env")
            if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                self.fail(f"{key}.env", f"{name!r} is not an environment variable name")
                return None
            return None if name is None else SecretRef(env=name)
        file = self.string(ref["file"], f"{key}.file")
        return None if file is None else SecretRef(file=self.path.parent / file)

    def secrets(self, value: Any, key: str, allowed: Sequence[str]) -> dict[str, SecretRef]:
        out: dict[str, SecretRef] = {}
        for k, v in self.table(value, key, allowed).items():
            if k in allowed:
                ref = self.secret(v, f"{key}.{k}")
                if ref is not None:
                    out[k] = ref
        return out

    def check(self, data: dict[str, Any]) -> ProbeDefinition:
        top = self.table(
            data,
            "(top level)",
            ("probe", "settings", "thresholds", "credentials", "targets", "regions"),
        )
        probe = self.table(top.get("probe", {}), "probe", ("name", "every", "labels"))
        name = None
        if "name" not in probe:
            self.problems.append(f"{self.path}:1: probe.name: missing (every probe needs a name)")
        else:
            name = self.string(probe["name"], "probe.name")
            if name is not None and not _NAME.fullmatch(name):
                self.fail("probe.name", f"{name!r}: use lower-case letters, digits, '_', '.', '-'")
        every = None
        if "every" in probe:
            text = self.string(probe["every"], "probe.every")
            every = parse_duration(text) if text else None
            if text and every is None:
                self.fail("probe.every", f"{text!r} is not a duration (30s, 5m, 1h30m)")
            elif every is not None and not EVERY_MIN_S <= every <= EVERY_MAX_S:
                self.fail("probe.every", f"{text} is out of range (1s to 24h)")
                every = None
        labels: dict[str, str] = {}
        raw_labels = probe.get("labels", {})
        if not isinstance(raw_labels, dict):
            self.fail("probe.labels", 'expected a table of label = "value"')
        else:
            if len(raw_labels) > MAX_LABELS:
                self.fail("probe.labels", f"{len(raw_labels)} labels: at most {MAX_LABELS}")
            for k, v in raw_labels.items():
                if not _LABEL.fullmatch(k) or k.startswith("__"):
                    self.fail(f"probe.labels.{k}", "not a Prometheus label name")
                elif k in ("job", "instance", "probe", "region", "transport", "kind"):
                    self.fail(f"probe.labels.{k}", "reserved: lkice sets this label itself")
                elif self.string(v, f"probe.labels.{k}") is not None:
                    labels[k] = str(v)

        settings = self.table(
            top.get("settings", {}),
            "settings",
            (*_SETTINGS_RANGES, "quality", "ca_files", "insecure", "nameserver"),
        )
        numbers: dict[str, float] = {}
        for k, (low, high) in _SETTINGS_RANGES.items():
            if k in settings:
                value = self.number(settings[k], f"settings.{k}", low, high)
                if value is not None:
                    numbers[k] = value
        quality = self.table(
            settings.get("quality", {}), "settings.quality", ("duration_s", "interval_ms")
        )
        duration = interval = None
        if "duration_s" in quality:
            duration = self.number(quality["duration_s"], "settings.quality.duration_s", 0, 300)
        if "interval_ms" in quality:
            interval = self.number(quality["interval_ms"], "settings.quality.interval_ms", 5, 1000)
        ca_files: list[Path] = []
        raw_ca = settings.get("ca_files", [])
        if not isinstance(raw_ca, list):
            self.fail("settings.ca_files", "expected a list of file names")
        else:
            for i, f in enumerate(raw_ca):
                text = self.string(f, f"settings.ca_files[{i}]")
                if text is not None:
                    ca_files.append(self.path.parent / text)
        insecure = settings.get("insecure", False)
        if not isinstance(insecure, bool):
            self.fail("settings.insecure", "expected true or false")
            insecure = False
        nameserver = None
        if "nameserver" in settings:
            nameserver = self.string(settings["nameserver"], "settings.nameserver")

        thresholds: dict[str, float] = {}
        for k, v in self.table(top.get("thresholds", {}), "thresholds", tuple(_THRESHOLDS)).items():
            if k in _THRESHOLDS:
                low, high = _THRESHOLDS[k]
                value = self.number(v, f"thresholds.{k}", low, high)
                if value is not None:
                    thresholds[k] = value

        creds_table = top.get("credentials", {})
        turn_user = "lkice"
        if isinstance(creds_table, dict) and "turn_user" in creds_table:
            turn_user = self.string(creds_table["turn_user"], "credentials.turn_user") or turn_user
            creds_table = {k: v for k, v in creds_table.items() if k != "turn_user"}
        credentials = self.secrets(creds_table, "credentials", SECRET_KEYS)

        targets: list[str] = []
        raw_targets = top.get("targets", [])
        if not isinstance(raw_targets, list):
            self.fail("targets", "expected [[targets]] tables")
            raw_targets = []
        for i, t in enumerate(raw_targets):
            entry = self.table(t, f"targets[{i}]", ("uri",))
            if "uri" not in entry:
                self.fail(f"targets[{i}]", "missing uri")
                continue
            uri = self.uri(entry["uri"], f"targets[{i}].uri")
            if uri is not None:
                targets.append(uri)

        regions: list[RegionDef] = []
        raw_regions = top.get("regions", [])
        if not isinstance(raw_regions, list):
            self.fail("regions", "expected [[regions]] tables")
            raw_regions = []
        seen: set[str] = set()
        for i, r in enumerate(raw_regions):
            key = f"regions[{i}]"
            entry = self.table(r, key, ("name", "uris", "credentials"))
            region = self.string(entry.get("name"), f"{key}.name") if "name" in entry else None
            if "name" not in entry:
                self.fail(key, "missing name")
            elif region is not None and not re.fullmatch(
                r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", region
            ):
                self.fail(f"{key}.name", f"{region!r}: letters, digits, '.', '_' or '-'")
                region = None
            elif region in seen:
                self.fail(f"{key}.name", f"region {region!r} is defined twice")
                region = None
            raw_uris = entry.get("uris")
            uris: list[str] = []
            if not isinstance(raw_uris, list) or not raw_uris:
                self.fail(f"{key}.uris", "expected a non-empty list of URIs")
            else:
                for j, u in enumerate(raw_uris):
                    uri = self.uri(u, f"{key}.uris[{j}]")
                    if uri is not None:
                        uris.append(uri)
            region_creds = self.secrets(
                entry.get("credentials", {}), f"{key}.credentials", REGION_SECRET_KEYS
            )
            if region is not None:
                seen.add(region)
                regions.append(RegionDef(region, tuple(uris), region_creds))
        if not targets and not raw_regions:
            self.problems.append(
                f"{self.path}:1: targets: nothing to probe: add [[targets]] or [[regions]]"
            )
        if self.problems:
            raise DefinitionError(sorted(self.problems, key=self._line_number))
        assert name is not None
        return ProbeDefinition(
            path=self.path,
            name=name,
            every_s=every,
            labels=labels,
            targets=tuple(targets),
            regions=tuple(regions),
            credentials=credentials,
            turn_user=turn_user,
            deadline_s=numbers.get("deadline_s", 20.0),
            udp_timeout_s=numbers.get("udp_timeout_s", 3.0),
            timeout_s=numbers.get("timeout_s", 5.0),
            quality_duration_s=5.0 if duration is None else duration,
            quality_interval_ms=20.0 if interval is None else interval,
            ca_files=tuple(ca_files),
            insecure=bool(insecure),
            nameserver=nameserver,
            thresholds=thresholds,
        )


def to_request(definition: ProbeDefinition, env: Mapping[str, str] | None = None) -> RunRequest:
    """The run a definition asks for, with its secrets read now (every unreadable one named).
    ``env``: whose HTTPS_PROXY/https_proxy and NO_PROXY apply (a service's environment file is
    where a proxy and its credentials belong); None: connect directly."""
    from lkice.job import RunRequest

    problems: list[str] = []
    where = str(definition.path)

    def read(refs: Mapping[str, SecretRef], key: str, prefix: str) -> str | None:
        ref = refs.get(key)
        if ref is None:
            return None
        try:
            return ref.resolve(f"{where}: {prefix}{key} ({ref.describe()})")
        except DefinitionError as exc:
            problems.extend(exc.problems)
            return None

    creds = definition.credentials
    values = {k: read(creds, k, "credentials.") for k in SECRET_KEYS}
    turn_by_uri: dict[str, tuple[str, str]] = {}
    turn_secret_by_uri: dict[str, str] = {}
    for i, region in enumerate(definition.regions):
        prefix = f"regions[{i}].credentials."
        user = read(region.credentials, "turn_username", prefix)
        password = read(region.credentials, "turn_password", prefix)
        rest = read(region.credentials, "turn_secret", prefix)
        for uri in region.uris:
            if user is not None and password is not None:
                turn_by_uri[uri] = (user, password)
            elif rest is not None:
                turn_secret_by_uri[uri] = rest
    if problems:
        raise DefinitionError(problems)
    return RunRequest(
        targets=definition.targets,
        regions=tuple(f"{r.name}={u}" for r in definition.regions for u in r.uris),
        api_key=values["api_key"],
        api_secret=values["api_secret"],
        token=values["token"],
        token2=values["token2"],
        username=values["turn_username"],
        credential=values["turn_password"],
        turn_secret=values["turn_secret"],
        turn_user=definition.turn_user,
        ca_files=tuple(str(p) for p in definition.ca_files),
        insecure=definition.insecure,
        nameserver=definition.nameserver,
        deadline=definition.deadline_s,
        udp_timeout=definition.udp_timeout_s,
        timeout=definition.timeout_s,
        quality_duration=definition.quality_duration_s,
        quality_interval=definition.quality_interval_ms,
        turn_by_uri=turn_by_uri,
        turn_secret_by_uri=turn_secret_by_uri,
        thresholds=dict(definition.thresholds),
        proxy_env=dict(env or {}),
    )
