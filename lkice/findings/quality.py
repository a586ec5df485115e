"""What a call will feel like: delay, jitter, loss and MOS of the best working path per transport
class (high-rtt, high-jitter, high-loss, relay-loss, low-mos), stalls on TCP/TLS (hol-blocking,
stream-hold, shared-hold), and lkice's own loop held while it measured (agent-busy).
"""

from __future__ import annotations

from collections.abc import Sequence

from lkice.findings.common import (
    CLASSES,
    MIN_SAMPLES,
    TRAINS,
    Finding,
    TrainSource,
    _best,
    _Ctx,
    _finding,
    _Hit,
    _join,
    _max_severity,
    _Measure,
    _pct,
    limits_of,
)
from lkice.findings.registry import rule
from lkice.quality import loss_each_way, pooled_loss, same_loss, wilson_interval
from lkice.report.read import QualityDoc
from lkice.report.views import ms as _ms


def _measures(ctx: _Ctx, transport: str, media: bool) -> list[_Measure]:
    """One measurement per working path of the class: the media path (relay echo) when
    ``media``, else the single-leg round trip where there is one."""
    out = []
    for i, p in ctx.of(transport):
        if not p.get("ok"):
            continue
        order: tuple[TrainSource, ...] = TRAINS[::-1] if media else TRAINS
        for source in order:
            q = p.get(source)
            if q and q.get("samples"):
                out.append(_Measure(i, p, source, q))
                break
    if media and any(m.path.get("kind") != "stun" for m in out):
        # A STUN Binding is not the media path: judge media on the paths that carry it.
        out = [m for m in out if m.path.get("kind") != "stun"]
    return out


def _cap(severity: str, m: _Measure | int, preferred: bool) -> str:
    """Full severity only on the class the client will use; critical only from MIN_SAMPLES
    probes or more (``m``: the measure, or the probe count)."""
    if not preferred:
        return "info"
    samples = m if isinstance(m, int) else m.samples
    if severity == "critical" and samples < MIN_SAMPLES:
        return "warning"
    return severity


def _interval(low: float, high: float) -> str:
    return f"95 % interval {low * 100:.1f}-{high * 100:.1f} %"


def _loss_interval(m: _Measure) -> str:
    """The Wilson 95 % interval of a train's loss, converted per crossing ("" without counts)."""
    lost = m.lost
    if lost is None or m.samples <= 0:
        return ""
    low, high = wilson_interval(lost, m.samples)
    return _interval(loss_each_way(low, m.crossings), loss_each_way(high, m.crossings)) + "; "


def _train_counts(m: _Measure) -> tuple[int, int, int] | None:
    """(samples, received, crossings) of a train that got something back, else None."""
    if m.lost is None or m.samples <= 0 or m.lost == m.samples:
        return None
    return m.samples, m.samples - m.lost, m.crossings


def _relay_lost_more(m: _Measure) -> bool:
    """A UDP relay echo that lost clearly more than its own path's Binding train (the same
    network crossed): the difference was lost at the relay (``same_loss``)."""
    if m.source != "relay_quality" or m.path.get("transport") != "udp":
        return False
    binding = m.path.get("quality") or {}
    echo = _train_counts(m)
    own = _train_counts(_Measure(m.index, m.path, "quality", binding)) if binding else None
    if echo is None or own is None:
        return False
    return loss_each_way(1 - echo[1] / echo[0], echo[2]) > loss_each_way(
        1 - own[1] / own[0], own[2]
    ) and not same_loss([[own], [echo]])


def _udp_trains(ctx: _Ctx) -> tuple[list[tuple[int, int, int]], list[str], list[int], list[int]]:
    """The run's UDP trains that got something back (not through a proxy): their counts, a
    group key each (server and train: a relay echo is compared with its own Binding too), the
    lost counts and the path indices."""
    trains: list[tuple[int, int, int]] = []
    keys: list[str] = []
    lost: list[int] = []
    indices: list[int] = []
    for i, p in ctx.of("udp"):
        if not p.get("ok") or p.get("proxy"):
            continue
        for source in TRAINS:
            q = p.get(source)
            if not q:
                continue
            m = _Measure(i, p, source, q)
            counts = _train_counts(m)
            if counts is None:
                continue  # nothing back: a broken relay or path, never loss
            trains.append(counts)
            keys.append(f"{p.get('server')} {source}")
            lost.append(counts[0] - counts[1])
            indices.append(i)
    return trains, keys, lost, indices


def _one_loss(trains: Sequence[tuple[int, int, int]], keys: Sequence[str]) -> bool:
    """Whether trains grouped by ``keys`` (``_udp_trains``) agree on one loss (``same_loss``),
    so that a loss they measured is this network's and not one server's or one relay's."""
    groups = [
        [t for t, k in zip(trains, keys, strict=True) if k == key] for key in dict.fromkeys(keys)
    ]
    return same_loss(groups)


def _pooled_udp_loss(ctx: _Ctx) -> tuple[str, float, int, list[int]] | None:
    """Every UDP train of the run that worked, pooled: one network's loss, so that the best of
    several noisy trains cannot hide it (``lkice.quality.pooled_loss``). (evidence, loss each
    way, probes, path indices), or None with fewer than two trains, or when the trains do not
    agree on one loss: where one server (or one relay echo against its own Binding) lost
    clearly more or less, the per-path figures speak; pooling would blame this network for
    one far server's or one relay's loss."""
    trains, keys, lost, indices = _udp_trains(ctx)
    pooled = pooled_loss(trains)
    if pooled is None or pooled.trains < 2 or not _one_loss(trains, keys):
        return None
    crossings = {c for _, _, c in trains}
    servers = {str(ctx.paths[i].get("server")) for i in indices}
    low, high = pooled.each_way_ci
    times = " or ".join(str(c) for c in sorted(crossings))
    evidence = (
        f"all {pooled.trains} UDP trains of this run pooled ({len(servers)} server(s)): "
        f"{pooled.lost} of {pooled.samples} probes lost (per train {min(lost)}-{max(lost)}), "
        f"about {_pct(pooled.each_way)} each way ({_interval(low, high)}; maximum likelihood "
        f"over trains crossing this network {times} times, loss assumed the same each way"
    )
    return evidence, pooled.each_way, pooled.samples, indices


@rule(
    ("high-rtt", "high-jitter", "high-loss", "relay-loss", "low-mos"),
    "by the thresholds (critical only from MIN_SAMPLES probes, jitter never); info off the "
    "transport class the client will use",
)
def _rule_quality(ctx: _Ctx) -> list[Finding]:
    preferred = ctx.preferred()
    results: dict[str, list[tuple[str, str, int]]] = {}

    def add(fid: str, severity: str, evidence: str, index: int | Sequence[int]) -> None:
        for i in [index] if isinstance(index, int) else index:
            results.setdefault(fid, []).append((severity, evidence, i))

    lim = limits_of(ctx.report)
    pooled = _pooled_udp_loss(ctx)
    for c in CLASSES:
        pref = c == preferred
        if c == "udp" and pooled is not None and pooled[1] > lim.loss_warn:
            # One network's loss over every UDP train: a warning even where the best train,
            # by chance, lost less (picking the best of noisy trains must not hide it).
            evidence, pooled_each_way, probes, indices = pooled
            sev = "critical" if pooled_each_way >= lim.loss_crit else "warning"
            bad = lim.source("loss_crit", "Daily 'bad'")
            evidence += (
                f"; {lim.source('loss_warn', 'Teams')}: under {_pct(lim.loss_warn)}"
                + (f"; {bad} from {_pct(lim.loss_crit)}" if sev == "critical" else "")
                + ")"
            )
            add("high-loss", _cap(sev, probes, pref), evidence, indices)
        rtt_m = _best(_measures(ctx, c, media=False))
        media_m = _best(_measures(ctx, c, media=True))
        if rtt_m is not None and rtt_m.rtt is not None:
            warn, crit = lim.rtt_warn_ms * rtt_m.legs, lim.rtt_crit_ms * rtt_m.legs
            rtt = rtt_m.rtt
            if rtt > warn:
                sev = "critical" if rtt >= crit else "warning"
                target = lim.source("rtt_warn_ms", "Teams target")
                limit = (
                    f"{target} {lim.rtt_warn_ms:.0f} ms"
                    if rtt_m.legs == 1
                    else f"crosses this network twice: {target} 2 x {lim.rtt_warn_ms:.0f} ms"
                )
                if sev == "critical":
                    bad = lim.source("rtt_crit_ms", "Daily 'bad'")
                    limit += f"; {bad} from {lim.rtt_crit_ms * rtt_m.legs:.0f} ms"
                add(
                    "high-rtt",
                    _cap(sev, rtt_m, pref),
                    f"{rtt_m.head()}: p50 {_ms(rtt)} ms over {rtt_m.count()} ({limit})",
                    rtt_m.index,
                )
        if media_m is None:
            continue
        q = media_m.q
        jitter = q.get("jitter_ms")
        if jitter is not None and jitter > lim.jitter_warn_ms:
            who = lim.source("jitter_warn_ms", "Teams and Twilio")
            add(
                "high-jitter",
                _cap("warning", media_m, pref),
                f"{media_m.head()}: jitter {_ms(jitter)} ms over {media_m.count()} ({who}: "
                f"under {lim.jitter_warn_ms:.0f} ms)",
                media_m.index,
            )
        loss = q.get("loss")
        # The thresholds are for one direction of a stream; a probe crosses this network
        # ``crossings`` times (2 per leg: there and back), so the loss one way is estimated
        # from it (lkice.quality.loss_each_way: the same each way).
        crossings = media_m.crossings
        each_way: float | None = None
        if isinstance(loss, (int, float)) and 0 <= loss <= 1:
            each_way = loss_each_way(float(loss), crossings)
        if loss is not None and each_way is not None and each_way > lim.loss_warn:
            sev = "critical" if each_way >= lim.loss_crit else "warning"
            bad = lim.source("loss_crit", "Daily 'bad'")
            # Over TCP/TLS this network loses nothing the application sees (TCP repairs it):
            # what a relay echo loses there is lost at the server or beyond it.
            # The same holds for an SFU echo over a TCP/TLS leg. Over UDP, a relay echo that
            # lost clearly more than the same path's Binding train lost it at the relay.
            server_side = (
                (media_m.source == "relay_quality" or media_m.path.get("kind") == "sfu")
                and c in ("tcp", "tls")
            ) or _relay_lost_more(media_m)
            add(
                "relay-loss" if server_side else "high-loss",
                _cap(sev, media_m, pref),
                f"{media_m.head()}: {_pct(loss)} lost over {media_m.count()}, about "
                f"{_pct(each_way)} each way ({_loss_interval(media_m)}the probe crosses this "
                f"network {crossings} times; {lim.source('loss_warn', 'Teams')}: under "
                f"{_pct(lim.loss_warn)}"
                + (f"; {bad} from {_pct(lim.loss_crit)}" if sev == "critical" else "")
                + ")",
                media_m.index,
            )
        mos = q.get("mos")
        if mos is not None and mos < lim.mos_warn:
            sev = "critical" if mos < lim.mos_crit else "warning"
            g109 = lim.source("mos_crit", "ITU-T G.109 'not recommended'")
            add(
                "low-mos",
                _cap(sev, media_m, pref),
                f"{media_m.head()}: MOS {mos:.2f} over {media_m.count()} "
                f"({lim.source('mos_warn', 'Twilio')} warns under {lim.mos_warn:g}; {g109} "
                f"under {lim.mos_crit:g})",
                media_m.index,
            )
    texts = {
        "high-rtt": (
            "The connection to the media servers has a long delay.",
            "People will talk over each other: answers arrive late, conversation feels sluggish.",
            "Use a media server (region) closer to this network, or check for a VPN or proxy "
            "that sends traffic the long way round.",
        ),
        "high-jitter": (
            "The delay on this network varies a lot from packet to packet (jitter).",
            "Clients must buffer more audio to smooth it out: more delay, and choppy sound when "
            "the buffer runs dry.",
            "Check for a congested link (uploads, backups, Wi-Fi contention) or ask IT for QoS "
            "on real-time traffic.",
        ),
        "high-loss": (
            "This network loses packets on the way to the media servers.",
            "Audio drops out or sounds robotic, video freezes or blurs; over TCP/TLS the loss "
            "turns into stalls instead.",
            "Check Wi-Fi signal and congestion, or try a wired connection; ask IT whether a "
            "link or firewall is dropping traffic.",
        ),
        "relay-loss": (
            "The TURN server's relay loses packets (or holds them longer than the test waited).",
            "Media relayed by this server drops out; the connection to it is TCP/TLS, which "
            "loses nothing on the way, so the loss is at the server or on its own network "
            "(or answers were held past the test's wait), not lost on this one.",
            "Ask the operator to check the TURN server (its load, its relay addresses, the "
            "network between its relays).",
        ),
        "low-mos": (
            "The estimated call quality is poor.",
            "Expect a call most people would find annoying: the delay, jitter and loss above "
            "combine into an estimated MOS below 3 (of 4.4 at best).",
            "Fix the delay, jitter or loss named in the other findings.",
        ),
    }
    out = []
    for fid in ("high-rtt", "high-jitter", "high-loss", "relay-loss", "low-mos"):
        items = results.get(fid)
        if not items:
            continue
        severity = "info"
        for sev, _, _ in items:
            severity = _max_severity(severity, sev)
        summary, impact, advice = texts[fid]
        if severity == "info":
            impact = (
                "Only on a transport the client will not use here (a better one works), so "
                "calls should not feel it unless that one breaks. " + impact
            )
        out.append(
            _finding(
                fid,
                severity,
                summary,
                impact,
                [e for _, e, _ in items],
                advice,
                [i for _, _, i in items],
            )
        )
    return out


def _repairs(q: QualityDoc) -> tuple[int | None, str]:
    """Losses the kernel repaired on a train's TCP connection(s) (None: not fully counted
    here), with the evidence in words ("" when there is none)."""
    tcp = q.get("tcp")
    if not tcp:
        return None, ""
    retransmits = int(tcp.get("retransmits") or 0)
    spurious = tcp.get("spurious")
    behind = tcp.get("out_of_order")
    if spurious is None:
        # No DSACK count (macOS, Windows): a hold longer than the tail-loss probe or the RTO
        # makes the kernel resend with nothing lost, so a resend alone proves no loss.
        if behind:
            return int(behind), (
                f"; the kernel says {behind} segment(s) came in behind a gap (the server "
                "resent them) during the train"
            )
        if retransmits:
            return None, (
                f"; this computer resent {retransmits} segment(s) during the train, which a "
                "hold alone can also cause (this platform does not tell needless resends)"
            )
        return None, ""
    resent = max(0, retransmits - int(spurious))
    words = []
    if resent:
        words.append(f"this computer resent {resent} segment(s)")
    if behind:
        words.append(f"{behind} segment(s) came in behind a gap (the server resent them)")
    if words:
        return resent + int(behind or 0), f"; the kernel says {_join(words)} during the train"
    if behind is None:
        # A direction the platform does not count: no claim either way.
        return None, ""
    return 0, "; the kernel resent nothing and received nothing out of order during the train"


def _udp_loss(ctx: _Ctx) -> list[str]:
    """Evidence of loss on this network measured over UDP (where nothing is repaired): none
    when the run's UDP trains do not agree on one loss (a far server's or a relay's own)."""
    if not _one_loss(*_udp_trains(ctx)[:2]):
        return []
    out = []
    for i, p in ctx.of("udp"):
        for source in TRAINS:
            q = p.get(source) or {}
            if p.get("ok") and q.get("samples") and float(q.get("loss") or 0.0) > 0:
                m = _Measure(i, p, source, q)
                out.append(f"{m.head()}: {_pct(float(q['loss']))} lost over {m.count()}")
    return out


@rule(
    ("hol-blocking", "stream-hold", "shared-hold"),
    "warning if UDP does not carry media, else info; shared-hold: info",
)
def _rule_hol(ctx: _Ctx) -> list[Finding]:
    """Head-of-line stalls on TCP/TLS, worded by the evidence of loss behind them: repairs the
    kernel counted (loss and HOL), loss measured over UDP on this network (HOL plausible), or
    none (a hold without loss, never called loss). Holds that a UDP train of the run had at the
    same moment are not TCP's doing: said apart (``shared-hold``), never as HOL."""
    hits: list[_Hit] = []
    held: list[_Hit] = []
    shared: list[_Hit] = []
    for i, p in ctx.indexed:
        if not p.get("ok") or p.get("transport") not in ("tcp", "tls"):
            continue
        for source in TRAINS:
            q = p.get(source) or {}
            hol = q.get("hol") or {}
            if hol.get("detected"):
                # The kernel counted every repair either way and there was none: the stalls
                # were holds without a loss behind them here (a freeze on the way that no UDP
                # train of the run happened to witness, a middlebox), not head-of-line blocking.
                # Through a web proxy the counters see only the hop to the proxy.
                unrepaired = _repairs(q)[0] == 0 and not p.get("proxy")
                (held if unrepaired else hits).append((i, p, source, q, hol))
            if hol.get("shared"):
                shared.append((i, p, source, q, hol))
    out = []
    if hits:
        out.append(_hol_blocking(ctx, hits))
    if held:
        out.append(_stream_hold(ctx, held))
    if shared:
        out.append(_shared_hold(shared))
    return out


def _stream_hold(ctx: _Ctx, held: Sequence[_Hit]) -> Finding:
    """Stalls on TCP/TLS trains whose kernel counters show no repair: holds, said as holds."""
    n_ms = max(float(h[4].get("max_stall_ms") or 0.0) for h in held)
    stalls = sum(int(h[4].get("stalls") or 0) for h in held)
    udp_ok = ctx.works("udp")
    evidence = []
    for i, p, source, q, hol in held:
        m = _Measure(i, p, source, q)
        evidence.append(
            f"{m.head()}: {hol.get('stalls')} stall(s), longest {_ms(hol.get('max_stall_ms'))} "
            f"ms beyond the typical RTT, over {m.count()}{_repairs(q)[1]}"
        )
    return _finding(
        "stream-hold",
        "info" if udp_ok else "warning",
        f"TCP/TLS was held {stalls} time(s), for up to {_ms(n_ms)} ms, while this computer's "
        "kernel repaired nothing: something on the way or on this computer held the data (a "
        "busy link, a Wi-Fi scan, a middlebox that repairs traffic beyond it).",
        "When media goes over TCP or TLS, a hold stops all the audio behind it: freezes of up "
        f"to {_ms(n_ms)} ms, then a burst."
        + (
            " Here UDP works, so clients will use it and should not feel this."
            if udp_ok
            else " Here UDP does not work, so calls will go this way."
        ),
        evidence,
        "Nothing to do while UDP stays open."
        if udp_ok
        else "If calls freeze now and then, check the Wi-Fi and any middlebox on the way; "
        "opening UDP avoids holds on TCP altogether.",
        [h[0] for h in held],
    )


def _hol_blocking(ctx: _Ctx, hits: Sequence[_Hit]) -> Finding:
    worst = max(hits, key=lambda h: float(h[4].get("max_stall_ms") or 0.0))
    n_ms = worst[4].get("max_stall_ms")
    udp_ok = ctx.works("udp")
    evidence = []
    repaired: list[int | None] = []
    for i, p, source, q, hol in hits:
        m = _Measure(i, p, source, q)
        count, kernel = _repairs(q)
        repaired.append(count)
        evidence.append(
            f"{m.head()}: {hol.get('stalls')} stalls, longest {_ms(hol.get('max_stall_ms'))} ms "
            f"beyond the typical RTT, {_pct(float(hol.get('stalled_fraction') or 0.0))} of the "
            f"train held, over {m.count()}{kernel}"
        )
    stalls = sum(int(h[4].get("stalls") or 0) for h in hits)
    classes = {str(h[1].get("transport")) for h in hits}
    transports = _join(f"TURN/{c.upper()}" for c in CLASSES if c in classes)
    udp_loss = _udp_loss(ctx)
    lossy = any(r for r in repaired)
    works = f"{transports} {'works' if len(classes) == 1 else 'work'}, but"
    up_to = f"stalls of up to {_ms(n_ms)} ms were measured."
    # Loss is named only where it was measured: repairs the kernel counted, or UDP losing.
    said_loss = True
    if all(h[1].get("proxy") for h in hits):
        summary = f"{works} TCP through the web proxy holds audio back: {up_to}"
        said_loss = lossy
    elif lossy:
        summary = f"{works} packet loss on this network makes TCP hold audio back: {up_to}"
    elif udp_loss and not all(r == 0 for r in repaired):
        summary = (
            f"{works} packets are lost on this network (measured over UDP), and TCP most "
            f"likely holds audio back while it resends them: {up_to}"
        )
        evidence += udp_loss
    else:
        summary = (
            f"{works} TCP/TLS stalled {stalls} times, for up to {_ms(n_ms)} ms, with no loss "
            "measured: something on the way held the data (a proxy, a busy link)."
        )
        said_loss = False
    impact = (
        "When media goes over TCP or TLS, "
        + (
            "every lost packet stops the audio behind it until TCP has resent it"
            if said_loss
            else "anything held on the way stops all the audio behind it"
        )
        + f": freezes of up to {_ms(n_ms)} ms, then a burst."
        + (
            " Here UDP works, so clients will use it and should not feel this."
            if udp_ok
            else " Here UDP does not work, so calls will go this way."
        )
    )
    advice = (
        "Nothing to do while UDP stays open."
        if udp_ok
        else "Ask IT to open UDP (see the UDP advice): UDP has no head-of-line blocking."
    )
    return _finding(
        "hol-blocking",
        "info" if udp_ok else "warning",
        summary,
        impact,
        evidence,
        advice,
        [h[0] for h in hits],
    )


def _shared_hold(
    shared: Sequence[_Hit],
) -> Finding:
    count = sum(int(h[4].get("shared") or 0) for h in shared)
    longest = max(float(h[4].get("shared_max_ms") or 0.0) for h in shared)
    evidence = [
        f"{_Measure(i, p, source, q).head()}: {hol.get('shared')} hold(s) of up to "
        f"{_ms(hol.get('shared_max_ms'))} ms, each at a moment when a UDP train of this run "
        f"was held at least half as long{_repairs(q)[1]}"
        for i, p, source, q, hol in shared
    ]
    # A repair on the same train means TCP may have held for longer than the shared moment
    # alone: the holds are then not cleared of TCP.
    repaired = any((_repairs(h[3])[0] or 0) > 0 for h in shared)
    tail = (
        "; the kernel also repaired segments on these trains, so TCP may have added to them."
        if repaired
        else ", so they were not TCP's doing."
    )
    return _finding(
        "shared-hold",
        "info",
        f"All traffic was held at the same moments, UDP too: {count} hold(s) of up to "
        f"{_ms(longest)} ms on TCP/TLS matched holds on UDP{tail}",
        "Something on the way or on this computer held every connection at once (a Wi-Fi "
        "scan or roaming, a busy router, a VPN client, a paused virtual machine): a call would "
        "freeze for a moment at such times whatever the transport. They are not counted as "
        "head-of-line stalls.",
        evidence,
        "If calls freeze now and then, check the Wi-Fi (background scans, roaming), VPN "
        "software and what else this computer is doing.",
        [h[0] for h in shared],
    )


# An agent stall this long holds at least two audio packets' worth of timing; this much in all
# during the trains is past scheduling noise (the loop monitor's threshold is 10 ms per wake-up).
AGENT_STALL_MS = 50.0
AGENT_STALLED_TOTAL_MS = 100.0
# A stall the loop's own thread spent computing for at least this share was lkice's own work.
AGENT_OWN_SHARE = 0.5


@rule(("agent-busy",), "info")
def _rule_agent_busy(ctx: _Ctx) -> list[Finding]:
    """lkice's own event loop stalled while trains ran: answers that came in then were left
    out (``lkice.quality``), and what held the loop is named from the CPU time its thread used
    over the stalls: lkice's own work, or the computer (a processor busy with other programs,
    a paused process). Never the network, and never a warning: the network's verdict stands on
    the figures that were kept. Stalls outside the trains (start-up, handshakes) touch no figure
    and are not reported here."""
    stalls = (ctx.report.get("agent") or {}).get("loop_stalls") or {}
    during = stalls.get("during_trains")
    if not isinstance(during, dict):
        return []  # no train ran (or a report from before the trains were told apart)
    longest = float(during.get("max_ms") or 0.0)
    total_ms = float(during.get("total_ms") or 0.0)
    if longest < AGENT_STALL_MS and total_ms < AGENT_STALLED_TOTAL_MS:
        return []
    own_ms = min(total_ms, float(during.get("own_ms") or 0.0))
    excluded = discounted = trains = 0
    for p in ctx.paths:
        for source in TRAINS:
            q = p.get(source) or {}
            left = int(q.get("excluded") or 0)
            agent = int((q.get("hol") or {}).get("discounted") or 0)
            if left or agent:
                trains += 1
                excluded += left
                discounted += agent
    window = float(during.get("window_ms") or 0.0)
    evidence = [
        f"while the trains ran ({_ms(window)} ms), lkice's event loop woke late "
        f"{during.get('stalls')} times (more than {_ms(stalls.get('threshold_ms'))} ms late "
        f"counts), longest {_ms(longest)} ms, {_ms(total_ms)} ms in all; its own thread "
        f"computed for {_ms(own_ms)} ms of that"
    ]
    if excluded:
        evidence.append(
            f"{excluded} answers on {trains} train(s) arrived while lkice could not look: left "
            "out of jitter, late answers and stall figures"
        )
    if discounted:
        evidence.append(f"{discounted} stall(s) released while lkice was held: not counted")
    if own_ms >= AGENT_OWN_SHARE * total_ms:
        return [
            _finding(
                "agent-busy",
                "info",
                f"lkice itself could not keep up during {_ms(total_ms)} ms of the test (its own "
                "work held its clock); figures in those moments were left out.",
                "Answers that came in while lkice was busy are not counted against the network. "
                "This says nothing about the network or about calls on this computer.",
                evidence,
                "For figures of the network alone, test fewer servers at once or use a longer "
                "--quality-interval.",
            )
        ]
    return [
        _finding(
            "agent-busy",
            "info",
            f"This computer was too busy during {_ms(total_ms)} ms of the test (lkice waited "
            "for the processor); figures in those moments were left out.",
            "Answers that came in then are not counted against the network. A computer this "
            "busy may also make a call stutter, whatever the network does.",
            evidence,
            "Close programs that keep the processor busy (or let updates and backups finish) "
            "and run lkice again for figures of the network alone.",
        )
    ]
