"""Real Prometheus and Pushgateway (Debian packages ``prometheus`` and
``prometheus-pushgateway``) on free loopback ports, as context managers: started with their state
in a temporary directory, checked ready over ``/-/ready``, stopped and cleaned up however the
block ends. The tests use them to see the metrics lkice exports land in a real Prometheus (test
support: lkice itself never starts one)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import shutil
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

from lkice.lab.server import LabError, LabServer, free_port

INSTALL_HINT = (
    "Prometheus is not installed: install it with "
    "'sudo apt-get install prometheus prometheus-pushgateway' (Debian/Ubuntu)"
)

LISTEN_IP = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
# Loopback only: never through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _binary(name: str) -> str | None:
    return shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None
    )


def prometheus_binaries() -> str | None:
    """Why the lab's Prometheus cannot run here (the missing binaries), or None if it can."""
    missing = [n for n in ("prometheus", "prometheus-pushgateway") if _binary(n) is None]
    if not missing:
        return None
    return f"{', '.join(missing)} not found: {INSTALL_HINT}"


class Sample(TypedDict):
    """One element of an instant vector: its labels and its value."""

    metric: dict[str, str]
    value: float


class ScrapeJob(NamedTuple):
    """A ``scrape_configs`` entry: ``targets`` are ``host:port``; a Pushgateway needs
    ``honor_labels`` so the pushed ``job``/``instance`` labels are kept."""

    job: str
    targets: Sequence[str]
    honor_labels: bool = False
    metrics_path: str = "/metrics"


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the test process dies (even by SIGKILL), so a
    server never outlives it. Tied to the thread that started the server."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: ``with`` still stops it
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _http_get(url: str, timeout: float) -> tuple[int, bytes]:
    """GET ``url``: the status and the body, HTTP errors included (they carry the reason)."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            status: int = response.status
            return status, response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


class _Server(LabServer):
    """What Prometheus and the Pushgateway share: a process on a free loopback port whose
    output goes to a log file in a temporary directory, ready once ``/-/ready`` answers 200."""

    def __init__(
        self, port: int = 0, extra_args: Sequence[str] = (), ready_timeout: float = 30.0
    ) -> None:
        super().__init__(listen_ip=LISTEN_IP, ready_timeout=ready_timeout)
        self.port = port
        self.extra_args = list(extra_args)
        self._last = "no answer"

    @property
    def address(self) -> str:
        """``127.0.0.1:port``, as a scrape target or for ``push_to_gateway``."""
        return f"{LISTEN_IP}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def program(self) -> str | None:
        raise NotImplementedError

    def preexec(self) -> Callable[[], None]:
        return _die_with_parent

    def binary(self) -> str:
        binary = self.program()
        if binary is None:
            raise LabError(prometheus_binaries() or INSTALL_HINT)
        return binary

    def _start(self, binary: str, work: Path) -> None:
        pick_port = not self.port
        for attempt in range(3):
            if pick_port:
                self.port = free_port(LISTEN_IP)
            try:
                self._launch(binary, work)
                return
            except LabError as err:
                # Someone took the port between picking and binding: pick another one.
                if not (pick_port and attempt < 2 and "address already in use" in str(err)):
                    raise

    def ready_here(self) -> bool:
        try:
            code, body = _http_get(f"{self.url}/-/ready", timeout=0.5)
        except OSError as err:
            self._last = str(err)
            return False
        if code == 200:
            return True
        self._last = f"HTTP {code} {body[:100].decode(errors='replace').strip()}"
        return False

    def _wait_ready(self) -> None:
        self._last = "no answer"
        self._poll(
            self.ready_here,
            time.monotonic() + self.ready_timeout,
            lambda: (
                f"did not become ready on {self.address} within {self.ready_timeout:g} s "
                f"(last: {self._last})"
            ),
        )


class Pushgateway(_Server):
    """``with Pushgateway() as gateway:`` then ``push_to_gateway(gateway.address, ...)``, and
    ``gateway.scrape_job()`` in a :class:`Prometheus`'s ``scrape_configs``. In memory only."""

    name = "prometheus-pushgateway"
    dir_prefix = "lkice-pushgateway"
    log_name = "prometheus-pushgateway.log"

    def program(self) -> str | None:
        return _binary("prometheus-pushgateway")

    def argv(self, binary: str, work: Path) -> list[str]:
        return [
            binary,
            f"--web.listen-address={self.address}",
            "--persistence.file=",
            *self.extra_args,
        ]

    def scrape_job(self, job: str = "pushgateway") -> ScrapeJob:
        return ScrapeJob(job, [self.address], honor_labels=True)


class Prometheus(_Server):
    """``with Prometheus([gateway.scrape_job()]) as prom:`` then ``prom.query(expr)`` or
    ``prom.wait_for(expr, predicate)``. ``scrape_configs`` are :class:`ScrapeJob` or plain
    ``(job, targets, honor_labels)`` tuples; every job is scraped each ``scrape_interval``."""

    name = "prometheus"
    dir_prefix = "lkice-prometheus"
    log_name = "prometheus.log"

    def __init__(
        self,
        scrape_configs: Sequence[ScrapeJob | tuple[str, Sequence[str], bool]] = (),
        scrape_interval: float = 1.0,
        port: int = 0,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__(port, extra_args, ready_timeout)
        self.scrape_configs = [
            job if isinstance(job, ScrapeJob) else ScrapeJob(*job) for job in scrape_configs
        ]
        self.scrape_interval = scrape_interval

    def program(self) -> str | None:
        return _binary("prometheus")

    def config(self) -> dict[str, Any]:
        """The configuration, as data (written as JSON, which is YAML)."""
        interval = _duration(self.scrape_interval)
        return {
            "global": {
                "scrape_interval": interval,
                # The default (10 s) may not exceed the interval: Prometheus refuses that.
                "scrape_timeout": _duration(min(self.scrape_interval, 10.0)),
                "evaluation_interval": interval,
            },
            "scrape_configs": [
                {
                    "job_name": job.job,
                    "honor_labels": job.honor_labels,
                    "metrics_path": job.metrics_path,
                    "static_configs": [{"targets": list(job.targets)}],
                }
                for job in self.scrape_configs
            ],
        }

    def argv(self, binary: str, work: Path) -> list[str]:
        conf = work / "prometheus.yml"
        conf.write_text(json.dumps(self.config(), indent=2) + "\n")
        return [
            binary,
            f"--config.file={conf}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address={self.address}",
            # No --web.enable-lifecycle / --web.enable-admin-api: read-only over HTTP.
            *self.extra_args,
        ]

    def _wait_ready(self) -> None:
        """Ready, and every configured target discovered: Prometheus applies its scrape
        targets a few seconds after it says it is ready."""
        started = time.monotonic()
        super()._wait_ready()
        expected = sum(len(job.targets) for job in self.scrape_configs)
        deadline = started + self.ready_timeout
        while True:
            found = len(self.targets())
            if found >= expected:
                return
            if time.monotonic() >= deadline:
                raise LabError(
                    f"prometheus found {found} of its {expected} scrape targets within "
                    f"{self.ready_timeout:g} s: {self.log_tail()}"
                )
            time.sleep(0.1)

    def _api(self, path: str, params: dict[str, str] | None = None) -> Any:
        if self.process is None:
            raise LabError("prometheus is not running")
        url = f"{self.url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            code, body = _http_get(url, timeout=5.0)
        except OSError as err:
            raise LabError(f"prometheus at {self.address} did not answer {path}: {err}") from err
        try:
            reply = json.loads(body)
        except ValueError as err:
            raise LabError(f"prometheus {path}: HTTP {code}, not JSON: {body[:200]!r}") from err
        if code != 200 or not isinstance(reply, dict) or reply.get("status") != "success":
            error = reply.get("error") if isinstance(reply, dict) else reply
            raise LabError(f"prometheus {path} failed (HTTP {code}): {error}")
        return reply.get("data")

    def query(self, expr: str) -> list[Sample]:
        """An instant query now: one :class:`Sample` per series (a scalar is one sample with no
        labels)."""
        data = self._api("/api/v1/query", {"query": expr})
        kind = data.get("resultType")
        result = data.get("result")
        if kind == "vector":
            return [
                Sample(metric=dict(item.get("metric", {})), value=float(item["value"][1]))
                for item in result
            ]
        if kind == "scalar":
            return [Sample(metric={}, value=float(result[1]))]
        raise LabError(f"prometheus query {expr!r} gave a {kind}, not an instant vector")

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[Sample]], bool] = bool,
        timeout: float = 20.0,
        interval: float = 0.5,
    ) -> list[Sample]:
        """Query ``expr`` every ``interval`` seconds (at least 0.5) until ``predicate`` holds for
        the result, which is returned; after ``timeout`` raise a LabError showing the last result
        and the scrape targets' health. By default, waits for a non-empty result."""
        interval = max(interval, 0.5)
        attempts = max(1, math.ceil(timeout / interval) + 1)
        deadline = time.monotonic() + timeout
        result: list[Sample] = []
        for attempt in range(attempts):
            result = self.query(expr)
            if predicate(result):
                return result
            if attempt + 1 == attempts or time.monotonic() >= deadline:
                break
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        shown = json.dumps(result)
        if len(shown) > 500:
            shown = shown[:500] + "…"
        raise LabError(
            f"prometheus: {expr!r} did not reach the expected state within {timeout:g} s; "
            f"last result: {shown}; targets: {self.targets_summary()}"
        )

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets as the API gives them (``labels``, ``health``,
        ``lastError``, ``scrapeUrl``...)."""
        data = self._api("/api/v1/targets", {"state": "active"})
        targets: list[dict[str, Any]] = data.get("activeTargets", [])
        return targets

    def targets_summary(self) -> str:
        """One line per target: job, URL, health and last error (for failure messages)."""
        try:
            targets = self.targets()
        except LabError as err:
            return f"(unavailable: {err})"
        if not targets:
            return "(none)"
        return "; ".join(
            f"{t.get('labels', {}).get('job', '?')} {t.get('scrapeUrl', '?')} "
            f"{t.get('health', '?')}" + (f" ({t['lastError']})" if t.get("lastError") else "")
            for t in targets
        )


def _duration(seconds: float) -> str:
    """Seconds as a Prometheus duration (``1s``, ``500ms``)."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"
