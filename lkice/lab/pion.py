"""Real pion/turn (the TURN library LiveKit's built-in TURN server is made of) on free ports, as a
context manager like :class:`lkice.lab.coturn.Coturn`: started, checked ready over TCP and UDP,
stopped and cleaned up however the block ends.

The server is ``lkice/lab/go/pionturn/main.go``, built offline in GOPATH mode against Debian's
``golang-github-pion-turn.v2-dev`` the first time it is needed and cached per source hash
(``LKICE_PION_TURN`` names a binary built elsewhere instead)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

from lkice.lab.coturn import (
    _COTURN_READY,
    LabError,
    _tcp_open,
    _udp_binding_ok,
    free_port,
    netns_argv,
    terminate,
    wait_in_netns,
)
from lkice.lab.pki import LabPki

__all__ = [
    "INSTALL_HINT",
    "PionConfig",
    "PionTurn",
    "build_pion_turn",
    "pion_turn_path",
    "pion_unavailable_reason",
]

INSTALL_HINT = (
    "pion/turn not available: apt-get install golang-go golang-github-pion-turn.v2-dev "
    "(or set LKICE_PION_TURN to a built lkice pionturn binary)"
)
SOURCE_DIR = Path(__file__).parent / "go" / "pionturn"
GOCODE = Path("/usr/share/gocode/src")
PION_TURN_SOURCE = GOCODE / "github.com" / "pion" / "turn"
BUILD_TIMEOUT = 180.0  # a cold build takes ~10 s here; the bound is for a starved machine
_OUTPUT_LIMIT = 4000

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


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lkice"


def source_hash(source_dir: Path = SOURCE_DIR) -> str:
    """Names a build: the server's source files (a changed source is a new binary)."""
    digest = hashlib.sha256()
    for path in sorted(source_dir.glob("*.go")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


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
    binary = _cache_root() / f"pionturn-{source_hash()}" / "pionturn"
    if binary.is_file():
        return str(binary)
    if not build:
        return None
    return str(build_pion_turn())


def _gopath_links(gopath: Path) -> None:
    """GOPATH mode resolves ``github.com/pion/X/vN`` only where a ``vN`` directory exists;
    Debian installs some major versions (transport v2) at the package root, so link them."""
    pion = GOCODE / "github.com" / "pion"
    for gomod in sorted(pion.glob("*/go.mod")):
        match = re.search(r"^module\s+(\S+/v(\d+))\s*$", gomod.read_text(), re.MULTILINE)
        if match is None or (gomod.parent / f"v{match.group(2)}").exists():
            continue
        link = gopath / "src" / match.group(1)
        if link.is_symlink() or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another build made it meanwhile
            link.symlink_to(gomod.parent, target_is_directory=True)


def visible(text: str, limit: int = _OUTPUT_LIMIT) -> str:
    """Compiler output fit for an error message: control characters other than newline and
    tab shown as escapes (a terminal sequence must not act), at most ``limit`` characters."""
    shown = "".join(
        ch if ch in "\n\t" or (ch.isprintable() and ch != "\x7f") else ascii(ch)[1:-1]
        for ch in text
    )
    if len(shown) > limit:
        shown = shown[:limit] + f"... ({len(shown) - limit} more characters)"
    return shown


def build_pion_turn(
    timeout: float = BUILD_TIMEOUT,
    cache_root: Path | None = None,
    source_dir: Path = SOURCE_DIR,
) -> Path:
    """Build the server into ``<cache>/pionturn-<source hash>/pionturn`` (offline, GOPATH mode)
    and return its path; a build already there is reused. Raises :class:`LabError` with the
    compiler's output on failure."""
    go = shutil.which("go")
    if go is None or not PION_TURN_SOURCE.is_dir():
        raise LabError(INSTALL_HINT)
    root = cache_root or _cache_root()
    target_dir = root / f"pionturn-{source_hash(source_dir)}"
    binary = target_dir / "pionturn"
    if binary.is_file():
        return binary
    gopath = root / "gopath"
    gopath.mkdir(parents=True, exist_ok=True)
    _gopath_links(gopath)
    target_dir.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed: a concurrent build or a reader never sees half a file.
    partial = target_dir / f".pionturn-{os.getpid()}.partial"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}:{GOCODE.parent}",
        "GOCACHE": str(root / "go-build"),
        "GOFLAGS": "",
        "GOPROXY": "off",  # never the network, whatever the environment says
        "CGO_ENABLED": "0",
    }
    start = time.monotonic()
    process = subprocess.Popen(
        [go, "build", "-o", str(partial), "."],
        cwd=source_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the compiler's children are stopped with it on a timeout
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        partial.unlink(missing_ok=True)
        raise LabError(
            f"building pion/turn server did not finish within {timeout:g} s: "
            f"{visible(output.decode(errors='replace')) or '(no output)'}"
        ) from None
    if process.returncode != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise LabError(
            f"building pion/turn server ({source_dir}) failed with status {process.returncode} "
            f"after {time.monotonic() - start:.1f} s:\n"
            f"{visible(output.decode(errors='replace')) or '(no output)'}"
        )
    os.replace(partial, binary)
    return binary


class PionTurn:
    """``with PionTurn(config) as server:`` then ``server.port``, ``server.tls_port``."""

    def __init__(self, config: PionConfig, ready_timeout: float = 10.0) -> None:
        self.config = config
        self.ready_timeout = ready_timeout
        self.port = config.port
        self.tls_port = config.tls_port
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.log_file: Path | None = None
        self._stdout: Path | None = None

    def argv(self, binary: str) -> list[str]:
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

    def start(self) -> PionTurn:
        binary = pion_turn_path()
        if binary is None:
            raise LabError(pion_unavailable_reason() or INSTALL_HINT)
        netns = self.config.netns
        prefix = "lkice-pion-" if netns is None else f"lkice-pion-{netns}-"
        self._dir = tempfile.TemporaryDirectory(prefix=prefix)
        work = Path(self._dir.name)
        if not self.port:
            self.port = free_port(self.config.listen_ip) if netns is None else 3478
        if self.config.pki is not None and not self.tls_port:
            self.tls_port = free_port(self.config.listen_ip) if netns is None else 5349
        self.log_file = work / "pionturn.log"
        self._stdout = work / "ready.txt"
        # Secrets go on the command line: readable by this machine's users, as with any lab
        # server; the values are throwaway.
        with self.log_file.open("wb") as log, self._stdout.open("wb") as out:
            self.process = subprocess.Popen(
                [*netns_argv(netns), *self.argv(binary)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                cwd=work,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _tcp_ports(self) -> list[int]:
        ports = [self.port]
        if self.config.pki is not None:
            ports.append(self.tls_port)
            if self.config.alt_tls_port is not None:
                ports.append(self.config.alt_tls_port)
        return ports

    def _announced(self) -> bool:
        assert self._stdout is not None
        return self._stdout.read_bytes().startswith(b"ready ")

    def _wait_ready(self) -> None:
        """The server's own line says every listener is open; a TCP connect and a UDP
        Binding then prove it answers where the client will look."""
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        ip = self.config.listen_ip
        while not self._announced():
            if self.process.poll() is not None:
                raise LabError(
                    f"pion/turn exited with status {self.process.returncode}: {self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise LabError(
                    f"pion/turn did not become ready within {self.ready_timeout:g} s: "
                    f"{self.log_tail()}"
                )
            time.sleep(0.02)
        if self.config.netns is not None:
            ports = ",".join(str(p) for p in self._tcp_ports())
            remaining = max(1.0, deadline - time.monotonic())
            wait_in_netns(
                self.config.netns,
                [_COTURN_READY, ip, ports, str(self.port), str(remaining)],
                self.process,
                remaining,
                "pion/turn",
                self.log_tail,
            )
            return
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LabError(
                    f"pion/turn exited with status {self.process.returncode}: {self.log_tail()}"
                )
            if all(_tcp_open(ip, p) for p in self._tcp_ports()) and _udp_binding_ok(ip, self.port):
                return
            time.sleep(0.05)
        raise LabError(
            f"pion/turn announced its listeners but did not answer within "
            f"{self.ready_timeout:g} s: {self.log_tail()}"
        )

    def log_tail(self, lines: int = 5) -> str:
        if self.log_file is None or not self.log_file.exists():
            return "(no log)"
        text = self.log_file.read_text(errors="replace").strip()
        return visible(" | ".join(text.splitlines()[-lines:]), 1000) or "(empty log)"

    def log_text(self) -> str:
        """Everything pion logged so far (tests read why it refused a request)."""
        if self.log_file is None or not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
        self.process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> PionTurn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
