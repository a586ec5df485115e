"""Region recommendation: the nearest *usable* region, pure (no I/O).

Regions are the report's paths grouped by ``path["region"]``; paths without a region form the
single target's own group, named after the target host.

Ranking, best first:

1. the best usable transport class: UDP, then TCP, then TLS. A class is usable in a region when a
   path of that class there worked and can carry media: a TURN allocation or an SFU session. A
   STUN Binding proves UDP reachability, not a relay, so it does not make UDP usable.
2. call quality on that class's best path: MOS (descending, compared to one decimal: closer
   figures are measurement noise), then RTT p50 (ascending; the relay echo for TURN paths, which
   is the media path, the path's own train otherwise), jitter, loss, longest head-of-line stall.

Regions where nothing usable worked come last, nearest first. Only figures the report contains
are used; an unmeasured figure is None and sorts after any measured one.

``distance_ms`` in a ranking row is the shortest single round trip measured to any server of the
region (a STUN Binding train, whatever the transport): how far the region is, used to say when
the nearest region is not the recommendation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from lkice.report.read import PathDoc, QualityDoc, ReportDoc
from lkice.report.views import ms as _ms

__all__ = ["recommend"]

CLASSES = ("udp", "tcp", "tls")
MEDIA_KINDS = ("turn", "sfu")
_INF = float("inf")


def _host(server: str) -> str:
    if server.startswith("["):
        return server[1 : server.find("]")]
    return server.rsplit(":", 1)[0] if ":" in server else server


def _own_name(report: ReportDoc, paths: Sequence[PathDoc]) -> str | None:
    signal = report.get("signal")
    if signal and signal.get("url"):
        rest = str(signal["url"]).split("://", 1)[-1].split("/", 1)[0]
        return _host(rest) if ":" in rest else rest
    for p in paths:
        if p.get("server"):
            return _host(str(p["server"]))
    return None


def _train(p: PathDoc) -> QualityDoc | None:
    """The train that stands for the path's call quality: the relay echo on TURN paths (the
    media path), the path's own train otherwise."""
    order: tuple[Literal["quality", "relay_quality"], ...] = (
        ("relay_quality", "quality") if p.get("kind") == "turn" else ("quality",)
    )
    for source in order:
        q = p.get(source)
        if q and q.get("samples"):
            return q
    return None


def _figures(p: PathDoc) -> dict[str, Any]:
    q = _train(p)
    if q is None:
        return {
            "rtt_ms": None,
            "jitter_ms": None,
            "loss": None,
            "mos": None,
            "hol_max_stall_ms": None,
            "samples": None,
        }
    hol = q.get("hol") or {}
    return {
        "rtt_ms": (q.get("rtt_ms") or {}).get("p50"),
        "jitter_ms": q.get("jitter_ms"),
        "loss": q.get("loss"),
        "mos": q.get("mos"),
        "hol_max_stall_ms": hol.get("max_stall_ms") if hol.get("detected") else None,
        "samples": q.get("samples"),
    }


def _quality_key(f: dict[str, Any]) -> tuple[float, float, float, float, float]:
    mos = f["mos"]
    return (
        -round(float(mos), 1) if mos is not None else _INF,
        float(f["rtt_ms"]) if f["rtt_ms"] is not None else _INF,
        float(f["jitter_ms"]) if f["jitter_ms"] is not None else _INF,
        float(f["loss"]) if f["loss"] is not None else _INF,
        float(f["hol_max_stall_ms"] or 0.0),
    )


def _distance(paths: Sequence[PathDoc]) -> float | None:
    rtts = [
        float(rtt["p50"])
        for p in paths
        if p.get("ok")
        and p.get("kind") in ("stun", "turn")
        and (rtt := (p.get("quality") or {}).get("rtt_ms"))
    ]
    return min(rtts) if rtts else None


def _failed_udp_silently(paths: Sequence[PathDoc]) -> bool:
    udp = [
        p
        for p in paths
        if p.get("transport") == "udp"
        and (p.get("error") or {}).get("kind")
        not in (None, "not_tested", "deadline", "interrupted")
    ]
    return (
        bool(udp)
        and not any(p.get("ok") for p in paths if p.get("transport") == "udp")
        and any(
            (p.get("error") or {}).get("kind") in ("udp_no_response", "connect_timeout")
            for p in udp
        )
    )


def _row(name: str | None, paths: Sequence[PathDoc]) -> dict[str, Any]:
    distance = _distance(paths)
    for c in CLASSES:
        usable = [p for p in paths if p.get("ok") and p.get("transport") == c]
        usable = [p for p in usable if p.get("kind") in MEDIA_KINDS]
        if not usable:
            continue
        scored = [(p, _figures(p)) for p in usable]
        # A direct path beats one through the web proxy (one hop and one TCP connection less).
        best, figures = min(
            scored, key=lambda s: (s[0].get("proxy") is not None, _quality_key(s[1]))
        )
        blocked = [x.upper() for x in CLASSES[: CLASSES.index(c)]]
        why = f"{c.upper()} works"
        if blocked:
            if c != "udp" and _failed_udp_silently(paths):
                why += " (UDP is blocked: no answer over UDP)"
            else:
                why += f" ({' and '.join(blocked)} did not work)"
        if best.get("proxy"):
            why += f" only through the web proxy {best['proxy']}"
        if figures["mos"] is not None:
            why += f"; best {best.get('server')}, MOS {figures['mos']:.1f}"
        return {
            "region": name,
            "usable": True,
            "transport": c,
            "server": best.get("server"),
            "proxy": best.get("proxy"),
            **figures,
            "distance_ms": distance,
            "why": why,
        }
    stun_ok = any(p.get("ok") for p in paths if p.get("kind") == "stun")
    if stun_ok:
        why = "only STUN answered: reachable over UDP, but no relay or SFU session worked"
    elif any(p.get("ok") for p in paths):
        why = "nothing that can carry media worked"
    else:
        why = "no path worked"
    return {
        "region": name,
        "usable": False,
        "transport": None,
        "server": None,
        "proxy": None,
        "rtt_ms": None,
        "jitter_ms": None,
        "loss": None,
        "mos": None,
        "hol_max_stall_ms": None,
        "samples": None,
        "distance_ms": distance,
        "why": why,
    }


def _rank_key(row: dict[str, Any]) -> tuple[Any, ...]:
    if not row["usable"]:
        dist = row["distance_ms"]
        return (1, 0, (dist if dist is not None else _INF), 0, 0, 0, 0)
    return (0, CLASSES.index(row["transport"]), row["proxy"] is not None, *_quality_key(row))


def recommend(report: ReportDoc) -> dict[str, Any] | None:
    """The nearest usable region (see the module docstring), or None without paths."""
    paths: list[PathDoc] = list(report.get("paths") or [])
    if not paths:
        return None
    groups: dict[str | None, list[PathDoc]] = {}
    for p in paths:
        groups.setdefault(p.get("region"), []).append(p)
    own = _own_name(report, groups.get(None, []))
    rows = [_row(own if key is None else key, members) for key, members in groups.items()]
    rows.sort(key=_rank_key)  # stable: regions in report order on ties
    top = rows[0]
    if not top["usable"]:
        return {
            "region": None,
            "transport": None,
            "server": None,
            "proxy": None,
            "reason": "No region is usable from this network: "
            + "; ".join(f"{r['region']}: {r['why']}" for r in rows)
            + ".",
            "ranking": rows,
        }
    return {
        "region": top["region"],
        "transport": top["transport"],
        "server": top["server"],
        "proxy": top["proxy"],  # the web proxy the recommended path goes through, if any
        "reason": _reason(top, rows),
        "ranking": rows,
    }


def _reason(top: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    name = top["region"]
    how = str(top["transport"]).upper()
    if top["proxy"]:
        how += f" through the web proxy {top['proxy']}"
    at = f" at {_ms(top['distance_ms'])} ms" if top["distance_ms"] is not None else ""
    measured = [r for r in rows if r["distance_ms"] is not None]
    nearest = min(measured, key=lambda r: r["distance_ms"]) if measured else None
    if len(rows) == 1:
        text = f"{name} works over {how}"
        if top["mos"] is not None:
            text += f" (MOS {top['mos']:.1f}, media round trip p50 {_ms(top['rtt_ms'])} ms"
            text += f" over {top['samples']} probes)"
        return text + "."
    if nearest is None or nearest is top or nearest["distance_ms"] == top["distance_ms"]:
        return f"{name} is the nearest usable region{at} and works over {how}."
    near_name = nearest["region"]
    near_at = _ms(nearest["distance_ms"])
    if not nearest["usable"]:
        problem = f"nothing that carries media works there ({nearest['why']})"
    elif CLASSES.index(nearest["transport"]) > CLASSES.index(top["transport"]):
        blocked = (
            "UDP is blocked there"
            if "UDP is blocked" in nearest["why"]
            else (f"only {str(nearest['transport']).upper()} works there")
        )
        problem = blocked
    elif _fmt_mos(nearest["mos"]) != _fmt_mos(top["mos"]):
        problem = (
            f"its call quality is lower (MOS {_fmt_mos(nearest['mos'])} vs {_fmt_mos(top['mos'])})"
        )
    else:
        problem = (
            f"its media path measured slower (RTT p50 {_ms(nearest['rtt_ms'])} vs "
            f"{_ms(top['rtt_ms'])} ms)"
        )
    return f"{near_name} is nearest ({near_at} ms) but {problem}; {name} works over {how}{at}."


def _fmt_mos(mos: float | None) -> str:
    return "-" if mos is None else f"{mos:.1f}"
