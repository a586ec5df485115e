"""Findings: a pure rules engine that reads a report (``Report.to_dict()`` shape) and says what
works, what does not, what a call will feel like and what to ask IT (or the operator) for.

No I/O: input is the report dict, output plain dicts::

    {"id", "severity", "summary", "impact", "evidence": [str], "advice", "paths": [int]}

sorted critical, warning, info (stable: rules keep their order within a severity).

Honesty rules, applied everywhere:

- only what the report measured is claimed; a path the agent could not exercise (``not_tested``,
  or a path cut off by the deadline or Ctrl-C) is never evidence of failure;
- evidence names the path (kind, server, address, transport) and the figure with its sample count;
- round trips are compared as measured: a relay echo (data through the TURN relay and back to a
  second allocation of the agent's) and an SFU data round trip (A -> SFU -> B -> SFU -> A, both
  participants on this machine) cross this network twice each way, so the RTT limit applied to
  them is twice the client-to-server limit, and the evidence says so;
- loss is judged per crossing of this network (``crossings``: 2 for a Binding, 4 for an echo),
  with its 95 % interval and probe count, and on UDP also pooled over every train of the run
  that worked (``lkice.quality.pooled_loss``), so that the best of noisy trains cannot hide a
  loss the network has;
- nothing secret is echoed (tokens and ``key=value`` secrets are masked in quoted messages).

Severity (see ``docs/findings.md`` for the table):

- critical: calls will not connect (no path, signaling blocked, credentials or token refused), or
  the measured quality is past the point where the field calls a call bad (loss >= 10 %, Daily
  "bad"; RTT >= 600 ms, Daily "bad", one way already past ITU-T G.114's 150 ms transparent limit
  twice over; MOS < 2.58, ITU-T G.107/G.109 R < 50 "not recommended"). A quality figure can only
  be critical from a train of at least ``MIN_SAMPLES`` probes, and only on the transport class
  the client will actually use (the best one that works: UDP, then TCP, then TLS).
- warning: calls connect but something is worse than the field's targets (RTT > 100 ms, jitter
  > 30 ms, loss > 1 %: Microsoft Teams client-to-edge targets, the same jitter and loss levels
  Twilio warns at; MOS < 3: Twilio), UDP is blocked (media falls back to TURN over TCP/TLS, with
  extra latency and head-of-line stalls), a server advertises something that does not answer.
  Jitter is never critical: no field source gives a failing jitter level, and its effect on the
  call is already in the MOS (the E-model's effective latency adds twice the jitter).
- info: what works, and problems on a transport the client will not use here (it prefers a
  better one that works), which matter only if that better one breaks.

The rules live by family in this package (``signaling``, ``proxy``, ``tls``, ``credentials``,
``reachability``, ``turn_tls``, ``quality``, ``nat``, ``status``; what they share is in
``common``), each registered where its code is with ``registry.rule``: the ids it may emit, the
error kinds it explains, how it picks a severity. ``ORDER`` is the one order they run in,
``REGISTRY`` has them all (``docs/architecture.md``: adding one).
"""

from __future__ import annotations

from typing import Any

# Each rule module registers its rules on import.
from lkice.findings import (  # noqa: F401
    credentials,
    nat,
    proxy,
    quality,
    reachability,
    signaling,
    status,
    tls,
    turn_tls,
)
from lkice.findings.common import (
    _RANK,
    CLASSES,
    JITTER_WARN_MS,
    LIVEKIT_UDP_RANGE,
    LOSS_CRIT,
    LOSS_WARN,
    MIN_SAMPLES,
    MOS_CRIT,
    MOS_WARN,
    NOT_EVIDENCE_KINDS,
    RTT_CRIT_MS,
    RTT_WARN_MS,
    SILENT_KINDS,
    THRESHOLD_KEYS,
    TIMEOUT_KINDS,
    TRAINS,
    UNREACHABLE_KINDS,
    Finding,
    Limits,
    Path,
    TrainSource,
    _Ctx,
    _evidential,
    limits_of,
)
from lkice.findings.quality import AGENT_OWN_SHARE, AGENT_STALL_MS, AGENT_STALLED_TOTAL_MS
from lkice.findings.registry import REGISTRY, Rule, ordered, run
from lkice.report.fields import SEVERITIES
from lkice.report.read import ReportDoc

__all__ = [
    "AGENT_OWN_SHARE",
    "AGENT_STALLED_TOTAL_MS",
    "AGENT_STALL_MS",
    "CLASSES",
    "JITTER_WARN_MS",
    "LIVEKIT_UDP_RANGE",
    "LOSS_CRIT",
    "LOSS_WARN",
    "MIN_SAMPLES",
    "MOS_CRIT",
    "MOS_WARN",
    "NOT_EVIDENCE_KINDS",
    "ORDER",
    "REGISTRY",
    "RTT_CRIT_MS",
    "RTT_WARN_MS",
    "SEVERITIES",
    "SILENT_KINDS",
    "THRESHOLD_KEYS",
    "TIMEOUT_KINDS",
    "TRAINS",
    "UNREACHABLE_KINDS",
    "Finding",
    "Limits",
    "Path",
    "Rule",
    "TrainSource",
    "evaluate",
    "limits_of",
]

# The order the rules run in (and so the order of findings within a severity). Every
# registered rule is listed once (checked on import); path-failed ("unexplained") runs last, as
# it reports the failures no rule before it explained.
ORDER: tuple[str, ...] = (
    "signal",
    "proxy_required",
    "tls",
    "token",
    "credentials",
    "no_path",
    "udp_blocked",
    "only",
    "via_proxy",
    "turn_tls",
    "advertised_dead",
    "server_refused",
    "media_unproven",
    "quality",
    "hol",
    "nat",
    "interrupted",
    "local",
    "nothing_tested",
    "agent_busy",
    "relay_failed",
    "regions",
    "works",
    "sfu_data_untested",
    "unexplained",
)
_RUN = ordered(ORDER)


def evaluate(report: ReportDoc) -> list[dict[str, Any]]:
    """Findings for ``report`` (a ``Report.to_dict()``), most severe first."""
    paths: list[Path] = list(report.get("paths") or [])
    indexed = [(i, p) for i, p in enumerate(paths) if _evidential(p, paths)]
    findings = run(_RUN, _Ctx(report, paths, indexed))
    return sorted(findings, key=lambda f: _RANK[f["severity"]])
