"""The state of the run and what works: stopped or cut by the deadline (interrupted,
incomplete), sockets this computer could not open (agent-local), nothing testable
(nothing-tested), signaling without a measured media path (media-unproven), regions whose
signaling failed (region-failed), and what works (signal-ok, sfu-direct-ok, sfu-ice-tcp-ok,
sfu-relay-ok, turn-ok), with what a one-participant session did not test (sfu-data-untested).
"""

from __future__ import annotations

from lkice.findings.common import (
    CLASSES,
    NOT_EVIDENCE_KINDS,
    Finding,
    Path,
    _Ctx,
    _finding,
    _join,
    _kind,
    _label,
    _mask,
    _Measure,
    _message,
    _path_evidence,
    _pct,
)
from lkice.findings.registry import rule
from lkice.report.views import ms as _ms


@rule(
    ("interrupted", "incomplete"),
    "interrupted: warning; incomplete: warning if some path works, else critical",
    kinds=("deadline", "interrupted"),
)
def _rule_interrupted(ctx: _Ctx) -> list[Finding]:
    out = []
    cut = [(i, p) for i, p in enumerate(ctx.paths) if _kind(p) in ("deadline", "interrupted")]
    if ctx.report.get("interrupted"):
        out.append(
            _finding(
                "interrupted",
                "warning",
                "The test was stopped before it finished, so these results are incomplete.",
                "Paths that had not finished are neither counted as working nor as failing; the "
                "quality figures cover only the part of the run that completed.",
                [f"{len(cut)} of {len(ctx.paths)} paths did not finish"]
                + [_path_evidence(p) for _, p in cut],
                "Run the test again and let it finish (it takes a few seconds).",
                [i for i, _ in cut],
            )
        )
    elif cut:
        # Nothing usable within the time limit is the answer "no usable path" (exit 2), but
        # only that: the unfinished paths are not called blocked.
        usable = any(p.get("ok") for p in ctx.paths)
        out.append(
            _finding(
                "incomplete",
                "warning" if usable else "critical",
                f"{len(cut)} of {len(ctx.paths)} paths did not finish before the overall time "
                "limit, so the results are incomplete."
                if usable
                else f"No path worked within the overall time limit: {len(cut)} of "
                f"{len(ctx.paths)} paths had not finished when it was reached.",
                "Those paths are neither counted as working nor as failing."
                if usable
                else "Within this time no call could have connected; whether the unfinished "
                "paths would have worked later is not known from this run.",
                [_path_evidence(p) for _, p in cut],
                "Run the test again with a longer deadline (--deadline).",
                [i for i, _ in cut],
            )
        )
    return out


@rule(("media-unproven",), "warning")
def _rule_media_unproven(ctx: _Ctx) -> list[Finding]:
    signal = ctx.report.get("signal")
    if not signal or not signal.get("ok") or ctx.indexed:
        return []
    return [
        _finding(
            "media-unproven",
            "warning",
            "The LiveKit server is reachable, but no media path could be tested.",
            "Whether audio and video will flow from this network is not known.",
            [f"signaling to {_mask(str(signal.get('url')))}: works; no path was measured"],
            "Run lkice with the LiveKit API key and secret so it can open test sessions, or "
            "give the TURN servers explicitly.",
        )
    ]


@rule(("signal-ok", "sfu-direct-ok", "sfu-ice-tcp-ok", "sfu-relay-ok", "turn-ok"), "info")
def _rule_works(ctx: _Ctx) -> list[Finding]:
    out = []
    signal = ctx.report.get("signal")
    if signal and signal.get("ok"):
        t = signal.get("timings_ms") or {}
        out.append(
            _finding(
                "signal-ok",
                "info",
                f"The LiveKit server {_join(ctx.signal_hosts())} is reachable"
                + (f" through the web proxy {signal['proxy']}" if signal.get("proxy") else "")
                + " and accepted the join.",
                "Calls can start from this network.",
                [
                    f"signaling to {_mask(str(signal.get('url')))}: join in {_ms(t.get('join'))} ms"
                    f" (connect {_ms(t.get('connect'))} ms)"
                ],
                "Nothing to do.",
            )
        )
    sfu = [(i, p) for i, p in ctx.indexed if p.get("kind") == "sfu" and p.get("ok")]

    def sfu_evidence(p: Path) -> str:
        t = p.get("timings_ms") or {}
        text = f"{_label(p)}: ICE {_ms(t.get('ice'))} ms, DTLS {_ms(t.get('dtls'))} ms"
        session = p.get("sfu") or {}
        rtt = session.get("ice_rtt") or {}
        if rtt.get("received"):
            text += (
                f"; ICE check RTT p50 {_ms(rtt.get('p50_ms'))} ms "
                f"({rtt.get('received')} of {rtt.get('sent')} answered)"
            )
        q = p.get("quality")
        if q and q.get("samples"):
            m = _Measure(0, p, "quality", q)
            text += (
                f"; data round trip p50 {_ms(m.rtt)} ms, loss {_pct(float(q.get('loss') or 0))}"
                f" over {m.count()}"
            )
        elif session.get("data_round_trip") == "measured":
            text += f"; one data round trip through the SFU {_ms(session.get('data_rtt_ms'))} ms"
        elif session.get("participants") == 1:
            text += "; data channels open, data round trip not tested (one participant)"
        return text

    direct = [(i, p) for i, p in sfu if not p.get("relay") and p.get("transport") == "udp"]
    if direct:
        forced = bool((ctx.report.get("signal") or {}).get("force_relay"))
        out.append(
            _finding(
                "sfu-direct-ok",
                "info",
                "Direct UDP to the LiveKit SFU works"
                + (
                    ", but the server tells clients to relay through TURN (force_relay): calls "
                    "use the relay, not this path."
                    if forced
                    else ": the best path for calls."
                ),
                "The server's force_relay setting sends media through TURN instead."
                if forced
                else "Audio and video go straight to the SFU over UDP, with the least delay.",
                [sfu_evidence(p) for _, p in direct],
                "Nothing to do.",
                [i for i, _ in direct],
            )
        )
    icetcp = [(i, p) for i, p in sfu if not p.get("relay") and p.get("transport") == "tcp"]

    def icetcp_evidence(p: Path) -> str:
        t = p.get("timings_ms") or {}
        return (
            f"{_label(p)}: STUN connectivity check answered in {_ms(t.get('binding'))} ms "
            f"(TCP connect {_ms(t.get('connect'))} ms); DTLS and media over ICE/TCP not tested"
        )

    if icetcp:
        out.append(
            _finding(
                "sfu-ice-tcp-ok",
                "info",
                "ICE over TCP to the LiveKit SFU works: the first fallback when UDP is blocked.",
                "If UDP breaks, clients can still reach the SFU directly over TCP.",
                [icetcp_evidence(p) for _, p in icetcp],
                "Nothing to do.",
                [i for i, _ in icetcp],
            )
        )
    relayed = [(i, p) for i, p in sfu if p.get("relay")]
    if relayed:
        seen = {str(p.get("transport")) for _, p in relayed}
        legs = _join(c.upper() for c in CLASSES if c in seen)
        out.append(
            _finding(
                "sfu-relay-ok",
                "info",
                f"Calls through the TURN relay to the LiveKit SFU work (over {legs}).",
                "If direct paths break, clients can fall back to the relay.",
                [sfu_evidence(p) for _, p in relayed],
                "Nothing to do.",
                [i for i, _ in relayed],
            )
        )
    turn_ok = [(i, p) for i, p in ctx.of(kinds=("turn",)) if p.get("ok")]
    if turn_ok:
        classes = [c for c in CLASSES if any(p.get("transport") == c for _, p in turn_ok)]
        names = _join(f"TURN/{c.upper()}" for c in classes)
        best = classes[0]
        out.append(
            _finding(
                "turn-ok",
                "info",
                f"The TURN relay works over {names}"
                + (": UDP, the best transport, is available." if best == "udp" else "."),
                "Clients have a relay to fall back on"
                + (" and can use it over UDP." if best == "udp" else "."),
                [_turn_evidence(p) for _, p in turn_ok],
                "Nothing to do.",
                [i for i, _ in turn_ok],
            )
        )
    return out


def _turn_evidence(p: Path) -> str:
    t = p.get("timings_ms") or {}
    text = f"{_label(p)}: relay allocated"
    if t.get("allocate") is not None:
        text += f" (authenticated Allocate {_ms(t.get('allocate'))} ms)"
    if p.get("relayed_address"):
        text += f", relayed address {p['relayed_address']}"
    return text


@rule(("region-failed",), "warning")
def _rule_regions(ctx: _Ctx) -> list[Finding]:
    """Regions whose own signaling failed (measured: not cut by the deadline or Ctrl-C)."""
    failed = []
    for region in ctx.report.get("regions") or []:
        signal = region.get("signal") or {}
        kind = str((signal.get("error") or {}).get("kind") or "")
        if signal.get("ok") or not kind or kind in NOT_EVIDENCE_KINDS:
            continue
        failed.append((str(region.get("region")), _mask(str(region.get("url"))), signal))
    if not failed:
        return []
    names = _join(name for name, _, _ in failed)
    return [
        _finding(
            "region-failed",
            "warning",
            f"LiveKit signaling to region {names} failed from this network.",
            "Clients sent to that region cannot start calls from here; other regions may work.",
            [
                f"region {name} ({url}): {_message(signal.get('error'))}"
                for name, url, signal in failed
            ],
            "Check the region's URL with the operator; if it is right, ask IT whether "
            "connections to it are allowed (the errors name the step that failed).",
        )
    ]


@rule(("agent-local",), "warning", kinds=("local",))
def _rule_local(ctx: _Ctx) -> list[Finding]:
    """Paths this computer could not even open a socket for: said as such, never as a network
    fault (they are not evidence: see NOT_EVIDENCE_KINDS)."""
    local = [(i, p) for i, p in enumerate(ctx.paths) if _kind(p) == "local"]
    if not local:
        return []
    return [
        _finding(
            "agent-local",
            "warning",
            f"{len(local)} path(s) could not be tested because this computer could not open "
            "the connection (no free local port, or too many open files).",
            "This says nothing about the network: those paths are neither counted as working "
            "nor as failing.",
            [_path_evidence(p) for _, p in local],
            "Close other programs that hold many connections, or test fewer servers at once, "
            "and run lkice again.",
            [i for i, _ in local],
        )
    ]


@rule(("nothing-tested",), "warning", kinds=("not_tested",))
def _rule_nothing_tested(ctx: _Ctx) -> list[Finding]:
    """No path was tried, or none could be (every one not testable here) and no signaling
    either: the verdict must not read as "ok" on no evidence."""
    if ctx.report.get("signal") is not None or ctx.report.get("interrupted"):
        return []
    untestable = [(i, p) for i, p in enumerate(ctx.paths) if _kind(p) == "not_tested"]
    if len(untestable) != len(ctx.paths):
        return []
    return [
        _finding(
            "nothing-tested",
            "warning",
            "No connection could be tested: "
            + (
                f"lkice could not test any of the {len(untestable)} path(s) from here."
                if untestable
                else "no path was tried."
            ),
            "Nothing here says whether calls would work from this network.",
            [_path_evidence(p) for _, p in untestable] or ["no path in the report"],
            "See each path's reason; run lkice with a STUN/TURN or LiveKit target it can test.",
            [i for i, _ in untestable],
        )
    ]


@rule(("sfu-data-untested",), "info")
def _rule_sfu_data_untested(ctx: _Ctx) -> list[Finding]:
    one = [
        (i, p)
        for i, p in ctx.indexed
        if p.get("kind") == "sfu"
        and p.get("ok")
        and (p.get("sfu") or {}).get("data_round_trip") == "not_tested"
    ]
    if not one:
        return []
    return [
        _finding(
            "sfu-data-untested",
            "info",
            f"Media sessions to the LiveKit SFU were tested with one participant ({len(one)} "
            "path(s)): ICE, DTLS and the data channels to the SFU work; the data round trip "
            "through the SFU was not tested.",
            "That the SFU forwards data between participants, and that round trip's delay "
            "(and, with a quality train, its loss and jitter), need a second participant: "
            "those are not known from this run.",
            [
                f"{_label(p)}: {(p.get('sfu') or {}).get('participants')} participant, data "
                "channels open; no data round trip"
                for _, p in one
            ],
            "To test the round trip too, give a second participant's token for the same room "
            "(--token2, or token2 in the probe definition), or the API key and secret.",
            [i for i, _ in one],
        )
    ]
