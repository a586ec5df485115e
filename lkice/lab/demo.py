"""``lkice demo``'s labs. :class:`DemoLab`: on loopback, a real coturn handed out by the lab
LiveKit, with a throwaway CA, diagnosed as ``lkice run`` diagnoses a deployment.
:func:`run_in_network_lab`: the namespace lab behind a firewall profile, with ``lkice run``
inside its client namespace."""

from __future__ import annotations

import secrets
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from lkice.credentials import Secret
from lkice.lab.coturn import Coturn, CoturnConfig
from lkice.lab.livekit_server import LabIceServer, LabLiveKit
from lkice.lab.pki import LabPki, make_pki

if TYPE_CHECKING:
    from lkice.probe.train import TrainSettings
    from lkice.render.progress import Progress
    from lkice.report import Report

__all__ = ["API_KEY", "DemoLab", "run_in_network_lab"]

API_KEY = "APIlkicedemo"


class DemoLab:
    """``start()`` (a :class:`~lkice.lab.server.LabError` says why it cannot), then :attr:`livekit_url`, :attr:`turn_port`
    (UDP and TCP), :attr:`tls_port` and :meth:`diagnose`; ``stop()`` or the ``with`` block's
    end stops the servers and removes the CA."""

    def __init__(self) -> None:
        self._user, self._password = "demo", secrets.token_urlsafe(16)
        self._api_secret = Secret(secrets.token_urlsafe(32))
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._pki: LabPki | None = None
        self._coturn: Coturn | None = None
        self._livekit: LabLiveKit | None = None

    @property
    def livekit_url(self) -> str:
        assert self._livekit is not None
        return self._livekit.url

    @property
    def turn_port(self) -> int:
        assert self._coturn is not None
        return self._coturn.port

    @property
    def tls_port(self) -> int:
        assert self._coturn is not None
        return self._coturn.tls_port

    def start(self) -> DemoLab:
        try:
            self._dir = tempfile.TemporaryDirectory(prefix="lkice-demo-")
            self._pki = make_pki(Path(self._dir.name))
            config = CoturnConfig(users={self._user: self._password}, pki=self._pki)
            self._coturn = Coturn(config).start()
            port = self._coturn.port
            # The lab LiveKit hands out the lab's coturn, as a deployment hands out its TURN.
            ice = [
                LabIceServer([f"stun:127.0.0.1:{port}"], "", ""),
                LabIceServer(
                    [
                        f"turn:127.0.0.1:{port}?transport=udp",
                        f"turn:127.0.0.1:{port}?transport=tcp",
                        f"turns:127.0.0.1:{self._coturn.tls_port}?transport=tcp",
                    ],
                    self._user,
                    self._password,
                ),
            ]
            self._livekit = LabLiveKit(
                api_key=API_KEY,
                api_secret=self._api_secret.reveal(),
                ice_servers=ice,
                region="lab",
                ice_tcp_port=0,  # ICE/TCP as LiveKit's 7881, on a free port
            ).start_in_thread()
        except BaseException:
            self.stop()
            raise
        return self

    def diagnose(
        self,
        *,
        deadline: float,
        udp_timeout: float,
        timeout: float,
        train: TrainSettings | None,
        progress: Progress,
    ) -> Report:
        """The diagnosis ``lkice run`` makes of a deployment, with the API key (so the SFU's
        media paths too) and the lab's CA."""
        import asyncio

        from lkice.engine import EngineSettings
        from lkice.job import LiveKitJob, run_engine, setup_deadline, tls_context
        from lkice.livekit import diagnostic_token, parse_livekit_url
        from lkice.probe.path import ProbeSettings
        from lkice.probe.signal import SignalSettings

        assert self._pki is not None
        tls = tls_context([str(self._pki.ca_file)], insecure=False)
        job = LiveKitJob(
            parse_livekit_url(self.livekit_url),
            diagnostic_token(API_KEY, self._api_secret),
            SignalSettings(timeout=timeout, tls_context=tls),
            API_KEY,
            self._api_secret,
            custom_ca=True,  # the lab's throwaway CA
        )
        settings = EngineSettings(
            probe=ProbeSettings(
                udp_timeout=udp_timeout, timeout=timeout, tls_context=tls, train=train
            ),
            deadline=setup_deadline(deadline, train),
        )
        return asyncio.run(run_engine([], settings, job, progress=progress))

    def stop(self) -> None:
        try:
            if self._livekit is not None:
                self._livekit.stop_thread()
                self._livekit = None
        finally:
            if self._coturn is not None:
                self._coturn.stop()
                self._coturn = None
            if self._dir is not None:
                self._dir.cleanup()
                self._dir = None

    def __enter__(self) -> DemoLab:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_in_network_lab(
    profile: str,
    rtt: float,
    jitter: float,
    loss: float,
    lkice_args: Sequence[str],
    announce: Callable[[str], None],
) -> subprocess.CompletedProcess[str]:
    """Build the namespace lab (one region, behind ``profile``, ``rtt`` ms added, ``jitter`` ms
    and ``loss`` % each way), call ``announce`` with its TURN server's name, and run ``lkice run``
    on that server's every transport from the client, with ``lkice_args`` (the output options)
    added. The profile must be known and :func:`lkice.lab.netlab.prerequisites` met; a
    :class:`~lkice.lab.server.LabError` says what failed."""
    from lkice.lab.netlab import Impairment, NetLab

    way = Impairment(delay_ms=rtt / 2, jitter_ms=jitter, loss=loss / 100)
    with NetLab(regions=("eu",), profile=profile) as lab:
        lab.set_impairment("eu", upstream=way, downstream=way)
        host = lab.turn_host("eu")
        announce(host)
        argv = [
            "python3", "-m", "lkice", "run",
            f"stun:{host}:3478", f"turn:{host}:3478?transport=udp", f"turn:{host}:3478?transport=tcp",
            f"turns:{host}:5349?transport=tcp", f"turns:{host}:443?transport=tcp",
            *lab.turn_args(), *lkice_args,
        ]  # fmt: skip
        if lab.web_proxy_url is not None:
            argv += ["--proxy", lab.web_proxy_url]
        return lab.run_in_client(argv, timeout=600)
