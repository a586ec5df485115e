"""The lab's real Prometheus and Pushgateway: a pushed metric and a scraped one are both
queryable; failures to start are named; no process outlives its ``with`` block."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest, push_to_gateway
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from lkice.lab.server import LabError
from tests.support.prometheus import Prometheus, Pushgateway, Sample, ScrapeJob, prometheus_binaries

_MISSING = prometheus_binaries()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


def _gone(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def exporter() -> Iterator[str]:
    """A tiny HTTP server on a free loopback port serving exposition text: ``host:port``."""
    registry = CollectorRegistry()
    Gauge("lkice_selftest_scraped", "scraped from the test", ["kind"], registry=registry).labels(
        kind="direct"
    ).set(7)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(registry)
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_pushed_and_scraped_metrics_reach_prometheus(exporter: str) -> None:
    with Pushgateway() as gateway:
        with Prometheus(
            [gateway.scrape_job(), ("direct", [exporter], False)], scrape_interval=0.5
        ) as prom:
            registry = CollectorRegistry()
            Gauge("lkice_selftest_value", "self test", ["site"], registry=registry).labels(
                site="lab"
            ).set(42)
            push_to_gateway(gateway.address, job="lkice_selftest", registry=registry, timeout=5)

            def pushed(result: list[Sample]) -> bool:
                return any(s["value"] == 42.0 for s in result)

            result = prom.wait_for('lkice_selftest_value{site="lab"}', pushed, timeout=20)
            assert len(result) == 1
            assert result[0]["value"] == 42.0
            assert result[0]["metric"]["site"] == "lab"
            # honor_labels: the pushed job wins over the scrape job's name.
            assert result[0]["metric"]["job"] == "lkice_selftest"

            scraped = prom.wait_for("lkice_selftest_scraped", timeout=20)
            assert scraped[0]["value"] == 7.0
            assert scraped[0]["metric"]["kind"] == "direct"
            assert scraped[0]["metric"]["job"] == "direct"
            assert prom.query('up{job="direct"}')[0]["value"] == 1.0
            assert prom.query("lkice_no_such_metric") == []
            assert prom.query("1 + 1") == [{"metric": {}, "value": 2.0}]

            healths = {t["labels"]["job"]: t["health"] for t in prom.targets()}
            assert healths == {"pushgateway": "up", "direct": "up"}
            prom_pid, gateway_pid = prom.pid, gateway.pid
        assert _gone(prom_pid)
        assert not _gone(gateway_pid)
    assert _gone(gateway_pid)


def test_wait_for_gives_up_showing_the_last_result() -> None:
    with Prometheus([ScrapeJob("nobody", ["127.0.0.1:9"])], scrape_interval=0.5) as prom:
        with pytest.raises(LabError) as info:
            prom.wait_for('up{job="nobody"}', lambda r: bool(r) and r[0]["value"] == 1, 2)
        message = str(info.value)
        assert "did not reach the expected state within 2 s" in message
        assert "last result:" in message
        assert "nobody http://127.0.0.1:9/metrics" in message
        with pytest.raises(LabError, match="parse error"):
            prom.query("up{")


def test_port_already_taken_is_named() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = Pushgateway(port=port)
        with pytest.raises(LabError, match="address already in use") as info, gateway:
            pass
        assert "prometheus-pushgateway exited with status" in str(info.value)
        assert _gone(gateway.pid)
        prom = Prometheus(port=port)
        with pytest.raises(LabError, match="address already in use"), prom:
            pass
        assert _gone(prom.pid)


def test_bad_flag_is_named() -> None:
    prom = Prometheus(extra_args=["--no-such-flag"])
    with pytest.raises(LabError, match=r"prometheus exited with status .*no-such-flag"), prom:
        pass
    assert _gone(prom.pid)


def test_bad_config_is_named() -> None:
    prom = Prometheus([ScrapeJob("twice", ["127.0.0.1:9"]), ScrapeJob("twice", ["127.0.0.1:9"])])
    with pytest.raises(LabError, match="prometheus exited with status") as info, prom:
        pass
    assert 'multiple scrape configs with job name \\"twice\\"' in str(info.value)
    assert _gone(prom.pid)
