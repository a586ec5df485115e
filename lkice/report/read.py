"""The report as readers get it: a decoded ``lkice.report/1`` document, typed (pure).

``Report.to_dict()`` and :func:`lkice.intake.load_report` give a :class:`ReportDoc`; findings,
the recommendation, metrics and the renderers read it through these types, so mypy knows every
key (a mistyped one is an error) and the vocabularies are ``Literal``. They are key for key the
JSON Schema's objects (``lkice/schema/report-1.json``; ``tests/test_report_model.py`` checks
both ways, and the schema closes its objects). Every key is optional here (``total=False``):
a reader must expect a value to be null or absent wherever the schema allows it, and the schema
says which keys a valid report always has.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

__all__ = [
    "AgentDoc",
    "CadenceDoc",
    "CallDoc",
    "DuringTrainsDoc",
    "ErrorDoc",
    "ErrorKindName",
    "FindingDoc",
    "HolDoc",
    "IceRttDoc",
    "IceServerDoc",
    "LoopStallsDoc",
    "NatDoc",
    "PacingDoc",
    "PathDoc",
    "PathKind",
    "PathTimingsDoc",
    "PhaseName",
    "ProbeDoc",
    "QualityDoc",
    "RankingDoc",
    "RecommendationDoc",
    "RegionDoc",
    "ReportDoc",
    "RttDoc",
    "SeriesDoc",
    "ServerInfoDoc",
    "Severity",
    "SfuDoc",
    "SignalDoc",
    "SignalTimingsDoc",
    "SlipDoc",
    "StagesDoc",
    "SummaryDoc",
    "TcpDoc",
    "TlsDoc",
    "TlsProblem",
    "TransportName",
    "VerdictName",
    "WarmupDoc",
]

TransportName = Literal["udp", "tcp", "tls"]
PathKind = Literal["stun", "turn", "sfu"]
Severity = Literal["critical", "warning", "info"]
VerdictName = Literal["ok", "degraded", "failed"]
NatBehaviourName = Literal[
    "endpoint-independent", "address-dependent", "address-and-port-dependent", "unknown"
]
# lkice.errors.ErrorKind's values (a test checks they agree).
ErrorKindName = Literal[
    "dns",
    "connect_refused",
    "connect_timeout",
    "network_unreachable",
    "udp_no_response",
    "udp_refused",
    "tcp_no_response",
    "server_silent",
    "connection_closed",
    "tls_verify",
    "tls_handshake",
    "auth_rejected",
    "forbidden",
    "quota",
    "capacity",
    "try_alternate",
    "relay_failed",
    "protocol",
    "deadline",
    "interrupted",
    "token_rejected",
    "not_livekit",
    "proxy",
    "gateway",
    "websocket_rejected",
    "join_timeout",
    "not_tested",
    "local",
]
# lkice.errors.Phase's values.
PhaseName = Literal[
    "dns",
    "connect",
    "tls",
    "binding",
    "allocate_challenge",
    "allocate",
    "quality",
    "deallocate",
    "validate",
    "websocket",
    "join",
]
TlsProblem = Literal[
    "untrusted_issuer", "self_signed", "name_mismatch", "expired", "not_yet_valid", "other"
]


class ErrorDoc(TypedDict, total=False):
    kind: ErrorKindName
    message: str
    phase: PhaseName | None


class TlsDoc(TypedDict, total=False):
    version: str | None
    cipher: str | None
    subject: str | None
    issuer: str | None
    not_after: str | None
    not_before: str | None
    sha256: str | None
    verified: bool
    verify_error: str | None
    problem: TlsProblem | None
    names: list[str] | None
    dialled: str | None


class PathTimingsDoc(TypedDict, total=False):
    dns: float | None
    connect: float | None
    proxy: float | None
    tls: float | None
    binding: float | None
    allocate_challenge: float | None
    allocate: float | None
    deallocate: float | None
    ice: float | None
    dtls: float | None


class RttDoc(TypedDict, total=False):
    p50: float
    p95: float
    p99: float
    max: float
    min: float
    mean: float


class HolDoc(TypedDict, total=False):
    detected: bool
    stalls: int
    max_stall_ms: float | None
    stalled_fraction: float
    discounted: int
    shared: int
    shared_max_ms: float | None
    shared_windows: list[list[float]]


class SeriesDoc(TypedDict, total=False):
    sent_ms: list[float]
    rtt_ms: list[float | None]


class TcpDoc(TypedDict, total=False):
    retransmits: int
    spurious: int | None
    out_of_order: int | None
    rtt_ms: float | None
    rttvar_ms: float | None
    connections: int


class CallDoc(TypedDict, total=False):
    rtt_ms: float
    jitter_ms: float
    playout_ms: float
    loss: float
    effective_ms: float


class WarmupDoc(TypedDict, total=False):
    probes: int
    answered: int
    first_echo_ms: float | None
    ms: float


class CadenceDoc(TypedDict, total=False):
    from_probe: int
    interval_ms: float


class SlipDoc(TypedDict, total=False):
    p50: float
    p95: float
    max: float


class PacingDoc(TypedDict, total=False):
    interval_ms: float
    lowered: bool
    cadences: list[CadenceDoc]
    slip_ms: SlipDoc | None
    start_delay_ms: float
    skipped: int
    arrivals: Literal["kernel", "user"]


class QualityDoc(TypedDict, total=False):
    samples: int
    received: int
    rtt_ms: RttDoc | None
    jitter_ms: float | None
    loss: float
    reordered: int
    late: int
    hol: HolDoc | None
    mos: float | None
    interval_ms: float
    duration_ms: float
    series: SeriesDoc
    excluded: int
    tcp: TcpDoc | None
    crossings: int
    loss_ci: list[float]
    loss_each_way: float
    loss_each_way_ci: list[float]
    call: CallDoc | None
    warmup: WarmupDoc | None
    pacing: PacingDoc | None


class IceRttDoc(TypedDict, total=False):
    sent: int
    received: int
    min_ms: float | None
    p50_ms: float | None
    max_ms: float | None


class SfuDoc(TypedDict, total=False):
    participants: int
    channels_open: bool
    data_round_trip: Literal["measured", "not_tested", "failed"]
    data_rtt_ms: float | None
    ice_rtt: IceRttDoc | None


class PathDoc(TypedDict, total=False):
    server: str
    address: str | None
    transport: TransportName
    kind: PathKind
    uri: str
    family: Literal["ipv4", "ipv6"] | None
    ok: bool
    error: ErrorDoc | None
    timings_ms: PathTimingsDoc
    mapped_address: str | None
    relayed_address: str | None
    lifetime_s: int | None
    deallocated: bool | None
    binding_sends: int | None
    server_software: str | None
    other_address: str | None
    response_origin: str | None
    tls: TlsDoc | None
    socket_options: list[str]
    auth: Literal["none", "static", "rest"] | None
    auth_form: Literal["expiry:user", "expiry"] | None
    alternate_server: str | None
    redirected_from: str | None
    notes: list[str]
    quality: QualityDoc | None
    relay_quality: QualityDoc | None
    region: str | None
    relay: str | None
    proxy: str | None
    sfu: SfuDoc | None


class SignalTimingsDoc(TypedDict, total=False):
    dns: float | None
    connect: float | None
    proxy: float | None
    tls: float | None
    validate: float | None
    websocket: float | None
    join: float | None


class ServerInfoDoc(TypedDict, total=False):
    version: str | int | None
    edition: str | int | None
    region: str | int | None
    node_id: str | int | None
    protocol: str | int | None


class IceServerDoc(TypedDict, total=False):
    urls: list[str]
    credentials: bool


class SignalDoc(TypedDict, total=False):
    url: str
    ok: bool
    error: ErrorDoc | None
    address: str | None
    timings_ms: SignalTimingsDoc
    tls: TlsDoc | None
    server: ServerInfoDoc | None
    room: str | None
    ice_servers: list[IceServerDoc]
    force_relay: bool | None
    notes: list[str]
    proxy: str | None


class FindingDoc(TypedDict, total=False):
    id: str
    severity: Severity
    summary: str
    impact: str
    evidence: list[str]
    advice: str
    paths: list[int]


class RankingDoc(TypedDict, total=False):
    region: str | None
    usable: bool
    transport: TransportName | None
    server: str | None
    proxy: str | None
    rtt_ms: float | None
    jitter_ms: float | None
    loss: float | None
    mos: float | None
    hol_max_stall_ms: float | None
    samples: int | None
    distance_ms: float | None
    why: str


class RecommendationDoc(TypedDict, total=False):
    region: str | None
    transport: TransportName | None
    server: str | None
    proxy: str | None
    reason: str
    ranking: list[RankingDoc]


class DuringTrainsDoc(TypedDict, total=False):
    stalls: int
    max_ms: float | None
    total_ms: float
    own_ms: float
    window_ms: float


class LoopStallsDoc(TypedDict, total=False):
    stalls: int
    max_ms: float | None
    threshold_ms: float
    total_ms: float
    own_ms: float
    during_trains: DuringTrainsDoc


class AgentDoc(TypedDict, total=False):
    os: str
    python: str
    loop_stalls: LoopStallsDoc | None


class StagesDoc(TypedDict, total=False):
    signal: float
    regions: float
    turn: float
    sfu: float


class SummaryDoc(TypedDict, total=False):
    paths: int
    ok: int
    failed: int


class RegionDoc(TypedDict, total=False):
    region: str
    url: str
    distance: int | None
    signal: SignalDoc


class NatDoc(TypedDict, total=False):
    server: str
    mapping: NatBehaviourName
    filtering: NatBehaviourName
    nat: bool | None
    evidence: list[str]


class ProbeDoc(TypedDict, total=False):
    name: str
    labels: dict[str, str]
    definition: str


class ReportDoc(TypedDict, total=False):
    schema: Literal["lkice.report/1"]
    lkice_version: str
    started_at: str
    duration_ms: float
    stages_ms: StagesDoc | None
    interrupted: bool
    agent: AgentDoc
    # What the run was allowed (deadlines, TLS verification, proxy, quality train, thresholds):
    # free-form within the schema, read only for display.
    settings: dict[str, Any]
    targets: list[str]
    verdict: VerdictName
    summary: SummaryDoc
    paths: list[PathDoc]
    signal: SignalDoc | None
    regions: list[RegionDoc] | None
    nat: NatDoc | None
    findings: list[FindingDoc] | None
    recommendation: RecommendationDoc | None
    probe: ProbeDoc | None
