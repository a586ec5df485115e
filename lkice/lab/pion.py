"""Real pion/turn (the TURN library LiveKit's built-in TURN server is made of) on free ports, as a
context manager like :class:`lkice.lab.coturn.Coturn` (both are a
:class:`~lkice.lab.coturn.TurnServer`): started, checked ready over TCP and UDP, stopped and
cleaned up however the block ends.

The server is ``lkice/lab/go/pionturn/main.go``, built offline in GOPATH mode against Debian's
``golang-github-pion-turn.v2-dev`` the first time it is needed and cached per source hash
(``LKICE_PION_TURN`` names a binary built elsewhere instead)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lkice.lab.coturn import TurnServer
from lkice.lab.gobuild import BUILD_TIMEOUT, GOCODE, build_go_program, built_program
from lkice.lab.pki import LabPki
from lkice.lab.server import LabError, visible

__all__ = [
    "INSTALL_HINT",
    "PionConfig",
    "PionTurn",
    "build_pion_turn",
    "pion_turn_path",
    "pion_unavailable_reason",
    "visible",
]

INSTALL_HINT = (
    "pion/turn not available: apt-get install golang-go golang-github-pion-turn.v2-dev "
    "(or set LKICE_PION_TURN to a built lkice pionturn binary)"
)
SOURCE_DIR = Path(__file__).parent / "go" / "pionturn"
PION_TURN_SOURCE = GOCODE / "github.com" / "pion" / "turn"
_READY_FILE = "ready.txt"  # the server's stdout: "ready ..." once every listener is open

RestForm = Literal["pion", "coturn"]


@dataclass
class PionConfig:
    """What :class:`PionTurn` runs; the fields :class:`~lkice.lab.coturn.CoturnConfig` shares
    mean the same here."""

    listen_ip: str = "127.0.0.1"
    port: int = 0  # UDP and TCP; 0: pick a free one
    tls_port: int = 0  # with ``pki`` only
    realm: str = "lab.test"
    users: dict[str, str] = field(default_factory=dict)
    # TURN REST credentials; ``rest_form`` says which username form the server accepts:
    # "pion" (turn.NewLongTermAuthHandler: a bare expiry) or "coturn" (use-auth-secret's
    # "<expiry>:<user>"). Static ``users`` are accepted beside them.
    static_auth_secret: str | None = None
    rest_form: RestForm = "pion"
    pki: LabPki | None = None
    relay_ports: tuple[int, int] | None = None
    # More addresses with the same listeners (each relays on itself), and a second TLS port:
    # what the namespace lab gives a region's coturn.
    extra_ips: tuple[str, ...] = ()
    alt_tls_port: int | None = None
    log_level: str = "info"
    # Close a TCP/TLS connection once a read on it fails, as pion/turn v4 does; 2.1.0 (Debian's,
    # the default here) never closes one, so a client that is not answered waits.
    close_on_read_error: bool = False
    # Run inside this network namespace (``ip netns exec``); ports left at 0 become 3478 / 5349.
    netns: str | None = None


def pion_unavailable_reason() -> str | None:
    """Why no pion/turn server can be had here, or None when one can (built or buildable)."""
    override = os.environ.get("LKICE_PION_TURN")
    if override is not None:
        if os.access(override, os.X_OK) and Path(override).is_file():
            return None
        return f"LKICE_PION_TURN={override!r} is not an executable file"
    if shutil.which("go") is None or not PION_TURN_SOURCE.is_dir():
        return INSTALL_HINT
    return None


def pion_turn_path(build: bool = True) -> str | None:
    """The server binary: ``LKICE_PION_TURN`` if set, else the cached build of this source
    (built now if ``build`` and the toolchain is installed), else None. A build that fails
    raises :class:`LabError`: a broken build is a failure, not a reason to skip."""
    if pion_unavailable_reason() is not None:
        return None
    override = os.environ.get("LKICE_PION_TURN")
    if override is not None:
        return override
    binary = built_program("pionturn", SOURCE_DIR)
    if binary.is_file():
        return str(binary)
    if not build:
        return None
    return str(build_pion_turn())


def build_pion_turn(
    timeout: float = BUILD_TIMEOUT,
    cache_root: Path | None = None,
    source_dir: Path = SOURCE_DIR,
) -> Path:
    """Build the server into ``<cache>/pionturn-<source hash>/pionturn`` (offline, GOPATH mode)
    and return its path; a build already there is reused. Raises :class:`LabError` with the
    compiler's output on failure."""
    if shutil.which("go") is None or not PION_TURN_SOURCE.is_dir():
        raise LabError(INSTALL_HINT)
    return build_go_program("pionturn", source_dir, timeout=timeout, root=cache_root)


class PionTurn(TurnServer):
    """``with PionTurn(config) as server:`` then ``server.port``, ``server.tls_port``."""

    name = "pion/turn"
    dir_prefix = "lkice-pion"
    log_name = "pionturn.log"
    stdout_name = _READY_FILE

    def __init__(self, config: PionConfig, ready_timeout: float = 10.0) -> None:
        super().__init__(
            listen_ip=config.listen_ip,
            port=config.port,
            tls_port=config.tls_port,
            tls=config.pki is not None,
            netns=config.netns,
            ready_timeout=ready_timeout,
        )
        self.config = config

    def binary(self) -> str:
        binary = pion_turn_path()
        if binary is None:
            raise LabError(pion_unavailable_reason() or INSTALL_HINT)
        return binary

    def argv(self, binary: str, work: Path) -> list[str]:
        # Secrets go on the command line: readable by this machine's users, as with any lab
        # server; the values are throwaway.
        c = self.config
        args = [binary, "-listen-ip", c.listen_ip, "-port", str(self.port), "-realm", c.realm]
        args += ["-log-level", c.log_level]
        for name, password in c.users.items():
            args += ["-user", f"{name}={password}"]
        if c.static_auth_secret is not None:
            args += ["-auth-secret", c.static_auth_secret, "-rest-form", c.rest_form]
        if c.pki is not None:
            args += ["-tls-port", str(self.tls_port)]
            args += ["-cert", str(c.pki.cert_file), "-key", str(c.pki.key_file)]
            if c.alt_tls_port is not None:
                args += ["-alt-tls-port", str(c.alt_tls_port)]
        if c.relay_ports is not None:
            args += ["-min-port", str(c.relay_ports[0]), "-max-port", str(c.relay_ports[1])]
        for ip in c.extra_ips:
            args += ["-extra-ip", ip]
        if c.close_on_read_error:
            args.append("-close-on-read-error")
        return args

    def tcp_ports(self) -> list[int]:
        ports = super().tcp_ports()
        if self.config.pki is not None and self.config.alt_tls_port is not None:
            ports.append(self.config.alt_tls_port)
        return ports

    def _announced(self) -> bool:
        assert self._dir is not None
        return (Path(self._dir.name) / _READY_FILE).read_bytes().startswith(b"ready ")

    def _wait_ready(self) -> None:
        """The server's own line says every listener is open; a TCP connect and a UDP
        Binding then prove it answers where the client will look."""
        deadline = time.monotonic() + self.ready_timeout
        within = f"within {self.ready_timeout:g} s"
        self._poll(self._announced, deadline, lambda: f"did not become ready {within}", 0.02)
        if self.netns is not None:
            self._wait_in_netns(max(1.0, deadline - time.monotonic()))
            return
        self._poll(
            self.ready_here,
            deadline,
            lambda: f"announced its listeners but did not answer {within}",
        )
