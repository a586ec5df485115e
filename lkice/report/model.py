"""The report: one versioned JSON document, the contract between the agent, support tooling and
the probe fleet (the writing side). ``schema/report-1.json`` describes it; tests validate every report against it.

Field names listed in the schema as required are fixed for ``lkice.report/1``; new optional fields
may be added, renaming or removing one needs ``lkice.report/2``.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

from lkice import __version__
from lkice.errors import ErrorKind, Phase, ProbeError
from lkice.quality import Trains
from lkice.report.fields import SIGNAL_TIMING_KEYS, TIMING_KEYS

if TYPE_CHECKING:
    from lkice.report.read import ReportDoc

SCHEMA_ID = "lkice.report/1"


@dataclass
class ErrorInfo:
    kind: str
    message: str
    phase: str | None = None

    @classmethod
    def from_probe_error(cls, exc: ProbeError) -> ErrorInfo:
        return cls(exc.kind.value, exc.message, exc.phase.value if exc.phase else None)


@dataclass
class TlsInfo:
    version: str | None = None
    cipher: str | None = None
    subject: str | None = None
    issuer: str | None = None
    not_after: str | None = None
    not_before: str | None = None
    sha256: str | None = None
    verified: bool = False
    verify_error: str | None = None
    # A rejected certificate: what was wrong with it, read from the verification and the
    # certificate itself (see probe/tcp.py): untrusted_issuer, self_signed, name_mismatch,
    # expired, not_yet_valid, other.
    problem: str | None = None
    # The names the certificate is for (subjectAltName DNS names and IP addresses, bounded).
    names: list[str] | None = None
    dialled: str | None = None  # the name or address the certificate was checked against


@dataclass
class PathResult:
    """One server address x transport. Mutable while probing, so a deadline or Ctrl-C still
    leaves everything that was measured."""

    server: str
    transport: str
    kind: str
    uri: str
    address: str | None = None
    family: str | None = None
    ok: bool = False
    error: ErrorInfo | None = None
    timings_ms: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(TIMING_KEYS))
    mapped_address: str | None = None
    relayed_address: str | None = None
    lifetime_s: int | None = None
    deallocated: bool | None = None
    binding_sends: int | None = None
    server_software: str | None = None
    other_address: str | None = None
    response_origin: str | None = None
    tls: TlsInfo | None = None
    socket_options: list[str] = field(default_factory=list)
    auth: str | None = None
    # TURN REST: the username form the server took (or the last one tried): "expiry:user"
    # (coturn) or "expiry" (pion/turn).
    auth_form: str | None = None
    alternate_server: str | None = None
    redirected_from: str | None = None
    # lkice.quality.Quality.to_dict(): the Binding train to the server, and data echoed through
    # the TURN relay (see probe/path.py).
    quality: dict[str, Any] | None = None
    relay_quality: dict[str, Any] | None = None
    region: str | None = None  # LiveKit targets: the region whose join offered this server
    relay: str | None = (
        None  # kind "sfu": the TURN URI the session was forced through; None: direct
    )
    # The web proxy (host:port) this path was tunnelled through with HTTP CONNECT; None: direct.
    # The proxy resolves the server's name, so ``address`` is then None.
    proxy: str | None = None
    # kind "sfu", a WebRTC session: participants seated (1 with a single token: no data round
    # trip through the SFU), data channels open, the data round trip, the selected pair's RTT
    # from ICE connectivity checks (probe/sfu.py; the schema's $defs/sfu).
    sfu: dict[str, Any] | None = None

    notes: list[str] = field(default_factory=list)
    # Not reported: the phase in progress, so an interrupted probe can say where it stopped.
    phase: Phase | None = field(default=None, repr=False, compare=False)
    # Not reported: the trains as measured, judged with the run's other trains at its end
    # (lkice.engine.judge_trains); ``quality``/``relay_quality`` are their figures.
    trains: Trains = field(default_factory=Trains, repr=False, compare=False)

    def fail(self, exc: ProbeError) -> None:
        self.ok = False
        if exc.phase is None:
            exc.phase = self.phase
        self.error = ErrorInfo.from_probe_error(exc)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["phase"], data["trains"]
        data["timings_ms"] = {k: _round(v) for k, v in self.timings_ms.items()}
        return data


@dataclass
class SignalResult:
    """LiveKit signaling, step by step, on one connection: DNS, TCP, TLS, GET /rtc/validate, the
    WebSocket upgrade, and the JoinResponse."""

    url: str
    ok: bool = False
    error: ErrorInfo | None = None
    address: str | None = None
    timings_ms: dict[str, float | None] = field(
        default_factory=lambda: dict.fromkeys(SIGNAL_TIMING_KEYS)
    )
    tls: TlsInfo | None = None
    server: dict[str, Any] | None = None  # version, edition, region, node_id, protocol
    room: str | None = None
    ice_servers: list[dict[str, Any]] = field(default_factory=list)  # urls; never credentials
    force_relay: bool | None = None
    proxy: str | None = None  # the web proxy signaling went through; None: direct
    notes: list[str] = field(default_factory=list)

    phase: str | None = field(default=None, repr=False, compare=False)

    def fail(self, exc: ProbeError) -> None:
        self.ok = False
        self.error = ErrorInfo(
            exc.kind.value, exc.message, exc.phase.value if exc.phase else self.phase
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["phase"]
        data["timings_ms"] = {k: _round(v) for k, v in self.timings_ms.items()}
        return data


@dataclass
class Report:
    started_at: datetime
    duration_ms: float
    targets: list[str]
    paths: list[PathResult]
    verdict: str
    settings: dict[str, Any]
    interrupted: bool = False
    # The agent's own event-loop stalls during the trains (see probe/train.py LoopMonitor).
    loop_stalls: dict[str, Any] | None = None
    signal: SignalResult | None = None  # LiveKit targets only
    # LiveKit Cloud: each region from /settings/regions with its own signaling result.
    regions: list[dict[str, Any]] | None = None
    # RFC 5780 NAT behaviour (probe/nat.py NatBehaviour.to_dict()), when it was discovered.
    nat: dict[str, Any] | None = None
    # The answer (lkice.findings, lkice.recommend): derived from everything above, pure.
    findings: list[dict[str, Any]] | None = None
    recommendation: dict[str, Any] | None = None
    # Scheduled probes: the definition's name, labels and file (lkice probe --config).
    probe: dict[str, Any] | None = None
    # Wall time of each stage of the diagnosis (signal, regions, turn, sfu; stages run at once
    # overlap); ``duration_ms`` is the whole diagnosis.
    stages_ms: dict[str, float] | None = None

    def to_dict(self) -> ReportDoc:
        ok = sum(1 for p in self.paths if p.ok)
        doc = {
            "schema": SCHEMA_ID,
            "lkice_version": __version__,
            "started_at": self.started_at.astimezone(timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "duration_ms": _round(self.duration_ms),
            "stages_ms": None
            if self.stages_ms is None
            else {k: _round(v) for k, v in self.stages_ms.items()},
            "interrupted": self.interrupted,
            "agent": {
                "os": platform.system().lower(),
                "python": platform.python_version(),
                "loop_stalls": self.loop_stalls,
            },
            "settings": self.settings,
            "targets": self.targets,
            "signal": None if self.signal is None else self.signal.to_dict(),
            "regions": self.regions,
            "nat": self.nat,
            "verdict": self.verdict,
            "findings": self.findings,
            "recommendation": self.recommendation,
            "probe": self.probe,
            "summary": {"paths": len(self.paths), "ok": ok, "failed": len(self.paths) - ok},
            "paths": [p.to_dict() for p in self.paths],
        }
        return cast("ReportDoc", doc)  # the shape the schema describes (tests validate it)

    def to_json(self, indent: int | None = 2) -> str:
        # allow_nan=False: NaN and Infinity are not JSON; a value like that is a bug to surface.
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, allow_nan=False)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def load_schema() -> dict[str, Any]:
    """The JSON Schema shipped with the package."""
    text = resources.files("lkice").joinpath("schema/report-1.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def interrupted_error(kind: ErrorKind, phase: Phase | None) -> ProbeError:
    where = f" during {phase.value}" if phase else ""
    if kind is ErrorKind.DEADLINE:
        return ProbeError(kind, f"overall deadline reached{where}", phase)
    return ProbeError(kind, f"interrupted{where}", phase)
