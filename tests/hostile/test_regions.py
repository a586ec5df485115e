"""Class 4: where the token goes. A ``/settings/regions`` answer with 1,500 entries: lkice
probes a small bounded number of them, sends the token only to hosts the user pointed it at
(the project's own host; between LiveKit Cloud's own domain's hosts), and says in the report what
it skipped.

Names resolve through a dnsmasq of the test's own on loopback (``--nameserver``): the project
is ``proj.livekit.cloud`` (127.0.0.1), its Cloud regions ``r<N>.livekit.cloud`` (127.0.0.2) may
receive the token, those at ``evil<N>.other.test`` (127.0.0.3) must not. A self-hosted project
``lk.lab.test`` shares its parent domain with ``evil.lab.test``, which could be a stranger's (a
public suffix such as ``co.uk``): no token there either. In the IP-literal variant, the project
is 127.0.0.1 and regions at 127.0.0.4 are another host."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from lkice.lab.dns import Dnsmasq, dnsmasq_path
from tests.hostile.harness import Checks, Outcome, run_lkice
from tests.hostile.kit import HostileLiveKit, Region

MAX_ATTEMPTS = 16
ALLOWED, EVIL = 20, 1480


def _regions(allowed_port: int, evil_port: int) -> list[Region]:
    """Evil and allowed regions interleaved by distance, nearest first as LiveKit sorts them."""
    entries = [
        Region(f"r{i}", f"ws://r{i}.livekit.cloud:{allowed_port}", 10 * i) for i in range(ALLOWED)
    ]
    entries += [
        Region(f"evil{i}", f"ws://evil{i}.other.test:{evil_port}", 10 * i + 5) for i in range(EVIL)
    ]
    return sorted(entries, key=lambda r: r.distance)


@contextmanager
def _servers() -> Iterator[tuple[HostileLiveKit, HostileLiveKit, HostileLiveKit]]:
    with ExitStack() as stack:
        allowed = stack.enter_context(HostileLiveKit("127.0.0.2"))
        evil = stack.enter_context(HostileLiveKit("127.0.0.3"))
        project = stack.enter_context(
            HostileLiveKit("127.0.0.1", regions=_regions(allowed.port, evil.port))
        )
        yield project, allowed, evil


def _judge(
    name: str,
    outcome: Outcome,
    token: str,
    project: HostileLiveKit,
    allowed: HostileLiveKit | None,
    evil: HostileLiveKit,
) -> None:
    check = Checks(outcome, name)
    report = outcome.report or {}
    check.that(outcome.report is not None, f"no JSON report on stdout ({outcome.json_error})")
    asked = [r for r in project.requests if r.path.endswith("/settings/regions")]
    check.that(bool(asked), "lkice never asked /settings/regions (the test proves nothing)")
    attempts = evil.signaling_attempts() + (allowed.signaling_attempts() if allowed else 0)
    check.that(
        attempts <= MAX_ATTEMPTS,
        f"{attempts} signaling attempts to regions (at most {MAX_ATTEMPTS}); "
        f"{evil.connections} connections to the other host",
    )
    if allowed is not None:
        check.that(
            allowed.signaling_attempts() > 0,
            "no region on the project's own Cloud domain was probed (regions do not work)",
        )
    leaked = [r for r in evil.requests if r.carried_token or r.contains(token)]
    check.that(
        not leaked,
        f"the token went to {len(leaked)} requests on a host the user never named "
        f"(e.g. Host {leaked[0].host if leaked else None})",
    )
    text = json.dumps((report.get("signal") or {}).get("notes")) + json.dumps(report.get("regions"))
    check.that("skipped" in text.lower(), "the report does not say what was skipped")
    check.clean(secrets=[token])
    check.done()


@pytest.mark.skipif(dnsmasq_path() is None, reason="dnsmasq is not installed (dnsmasq-base)")
def test_regions_by_name_token_stays_in_the_project_domain() -> None:
    token = "tok" + secrets.token_hex(16)
    records = {"proj.livekit.cloud": ["127.0.0.1"]}
    records |= {f"r{i}.livekit.cloud": ["127.0.0.2"] for i in range(ALLOWED)}
    records |= {f"evil{i}.other.test": ["127.0.0.3"] for i in range(EVIL)}
    with _servers() as (project, allowed, evil), Dnsmasq(records) as dns:
        host, port = dns.address
        outcome = run_lkice(
            ["run", f"ws://proj.livekit.cloud:{project.port}", "--token", token,
             "--nameserver", f"{host}:{port}", "--json", "--quality-duration", "0",
             "--deadline", "10"],
            timeout=120,
        )  # fmt: skip
        _judge("regions[names]", outcome, token, project, allowed, evil)


def test_regions_by_address_token_stays_with_the_given_host() -> None:
    token = "tok" + secrets.token_hex(16)
    with ExitStack() as stack:
        evil = stack.enter_context(HostileLiveKit("127.0.0.4"))
        regions = [Region(f"other{i}", f"ws://127.0.0.4:{evil.port}/p{i}", i) for i in range(200)]
        project = stack.enter_context(HostileLiveKit("127.0.0.1", regions=regions))
        outcome = run_lkice(
            ["run", project.url, "--token", token, "--json", "--quality-duration", "0",
             "--deadline", "10"],
            timeout=120,
        )  # fmt: skip
        _judge("regions[addresses]", outcome, token, project, None, evil)


@pytest.mark.skipif(dnsmasq_path() is None, reason="dnsmasq is not installed (dnsmasq-base)")
def test_a_sibling_under_the_same_parent_domain_gets_no_token() -> None:
    token = "tok" + secrets.token_hex(16)
    with ExitStack() as stack:
        evil = stack.enter_context(HostileLiveKit("127.0.0.3"))
        regions = [Region("sibling", f"ws://evil.lab.test:{evil.port}", 1)]
        project = stack.enter_context(HostileLiveKit("127.0.0.1", regions=regions))
        dns = stack.enter_context(
            Dnsmasq({"lk.lab.test": ["127.0.0.1"], "evil.lab.test": ["127.0.0.3"]})
        )
        host, port = dns.address
        outcome = run_lkice(
            ["run", f"ws://lk.lab.test:{project.port}", "--token", token,
             "--nameserver", f"{host}:{port}", "--json", "--quality-duration", "0",
             "--deadline", "10"],
            timeout=120,
        )  # fmt: skip
        _judge("regions[sibling]", outcome, token, project, None, evil)
