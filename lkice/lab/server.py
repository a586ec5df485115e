"""What the lab's external-process servers (coturn, pion/turn, dnsmasq, tinyproxy; the tests'
Prometheus) share: :class:`LabServer` picks their ports, starts them and waits, bounded, until
they answer (from inside their network namespace when they run in one), keeps their output in a
log file whose tail explains a failure, and stops them (terminate, then kill, both bounded)
however the ``with`` block ends. Also the process helpers the namespace lab uses."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar, TypeVar

__all__ = [
    "LabError",
    "LabServer",
    "free_port",
    "listening_here",
    "netns_argv",
    "poll",
    "tcp_open",
    "terminate",
    "visible",
    "wait_in_netns",
]

_OUTPUT_LIMIT = 4000
_TAIL_LIMIT = 1000  # a log tail is part of an error message: a line, not a file
_TAIL_READ = 64 * 1024


class LabError(Exception):
    """A lab server could not be started; the message says why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on ``host`` right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise LabError(f"no free port found on {host}")


def netns_argv(netns: str | None) -> list[str]:
    """The command prefix that runs a program inside ``netns`` (nothing for the current one)."""
    return [] if netns is None else ["ip", "netns", "exec", netns]


def terminate(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds; reaps it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)  # SIGKILL cannot be refused: this only reaps


def tcp_open(ip: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def poll(check: Callable[[], bool], timeout: float) -> bool:
    """Whether ``check()`` held within ``timeout`` seconds, asked every 50 ms."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def listening_here(ip: str, port: int, timeout: float) -> bool:
    """Poll until ``ip:port`` accepts TCP (run inside a lab namespace by wait_in_netns)."""
    return poll(lambda: tcp_open(ip, port), timeout)


LISTENING_CHECK = (
    "import sys; from lkice.lab.server import listening_here as ready; "
    "sys.exit(0 if ready(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])) else 1)"
)


def visible(text: str, limit: int = _OUTPUT_LIMIT) -> str:
    """A server's or compiler's output fit for an error message: control characters other than
    newline and tab shown as escapes (a terminal sequence must not act), at most ``limit``
    characters."""
    shown = "".join(
        ch if ch in "\n\t" or (ch.isprintable() and ch != "\x7f") else ascii(ch)[1:-1]
        for ch in text
    )
    if len(shown) > limit:
        shown = shown[:limit] + f"... ({len(shown) - limit} more characters)"
    return shown


def wait_in_netns(
    netns: str,
    check: list[str],
    server: subprocess.Popen[bytes],
    timeout: float,
    what: str,
    log_tail: Callable[[], str],
) -> None:
    """Run a readiness check (``python -c check[0] check[1:]``) inside ``netns``, where the
    server's addresses exist, while watching the server itself: if it exits first, say so.
    Bounded by ``timeout`` plus a margin for the checker's own start-up."""
    checker = subprocess.Popen(
        [*netns_argv(netns), sys.executable, "-c", *check],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout + 5.0
    try:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise LabError(
                    f"{what} in namespace {netns} exited with status {server.returncode}: "
                    f"{log_tail()}"
                )
            status = checker.poll()
            if status == 0:
                return
            if status is not None:
                err = (
                    checker.stderr.read().decode(errors="replace").strip() if checker.stderr else ""
                )
                raise LabError(
                    f"{what} in namespace {netns} did not become ready within {timeout:g} s: "
                    f"{log_tail()}" + (f" (readiness check: {err[-300:]})" if err else "")
                )
            time.sleep(0.05)
        raise LabError(f"{what} readiness check in namespace {netns} did not finish in time")
    finally:
        if checker.poll() is None:
            checker.kill()
        checker.wait(5)
        if checker.stderr is not None:
            checker.stderr.close()


_S = TypeVar("_S", bound="LabServer")


class LabServer:
    """One external server process: ``with Server(...) as server:`` or ``start()`` /
    ``stop()`` (a stopped server can be started again).

    A subclass names itself (:attr:`name`, in messages; :attr:`dir_prefix`, its temporary
    directory) and provides :meth:`binary`, :meth:`choose_ports`, :meth:`argv` and the
    readiness checks: :meth:`ready_here` (one poll, from this process) and
    :meth:`ready_check` (a ``python -c`` program run inside the server's namespace)."""

    name: ClassVar[str] = "server"
    dir_prefix: ClassVar[str] = "lkice-server"
    log_name: ClassVar[str] = "server.log"
    # True: the server is told to write :attr:`log_file` itself and its stdout and stderr are
    # discarded; False: they are the log.
    writes_own_log: ClassVar[bool] = False
    # Where stdout goes instead of the log, for a server that reports on it (pion's "ready").
    stdout_name: ClassVar[str | None] = None

    def __init__(
        self, *, listen_ip: str, netns: str | None = None, ready_timeout: float = 10.0
    ) -> None:
        self.listen_ip = listen_ip
        self.netns = netns
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None
        # The last process started, kept after ``stop()`` so a caller can check it is gone.
        self.pid: int | None = None
        self.log_file: Path | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    # -- what a subclass provides --------------------------------------------------------------

    def binary(self) -> str:
        """The server's program; a LabError saying how to install it when it is missing."""
        raise NotImplementedError

    def choose_ports(self) -> None:
        """Fill in the ports left at 0 (with :meth:`pick_port`)."""

    def argv(self, binary: str, work: Path) -> list[str]:
        """The command line (without the namespace prefix); may write files into ``work``."""
        raise NotImplementedError

    def ready_here(self) -> bool:
        """One readiness poll from this process (the server is not in a namespace)."""
        raise NotImplementedError

    def ready_check(self, timeout: float) -> list[str]:
        """``[program, *args]`` for :func:`wait_in_netns`: polls for ``timeout`` seconds inside
        the server's namespace and exits 0 once the server answers."""
        raise NotImplementedError

    def preexec(self) -> Callable[[], None] | None:
        """What the child runs before exec (e.g. to die with its parent); nothing by default."""
        return None

    # -- the lifecycle -------------------------------------------------------------------------

    def pick_port(self, port: int, standard: int) -> int:
        """``port`` if set, else a free one; in a namespace the ``standard`` one (a lab
        namespace is the server's own, so it is free)."""
        if port:
            return port
        return free_port(self.listen_ip) if self.netns is None else standard

    def start(self: _S) -> _S:
        binary = self.binary()
        # In a namespace the directory name carries the namespace's name, so a process left
        # behind can still be traced to its lab from its command line.
        netns = "" if self.netns is None else f"{self.netns}-"
        self._dir = tempfile.TemporaryDirectory(prefix=f"{self.dir_prefix}-{netns}")
        work = Path(self._dir.name)
        self.log_file = work / self.log_name
        try:
            self._start(binary, work)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, binary: str, work: Path) -> None:
        self.choose_ports()
        self._launch(binary, work)

    def _launch(self, binary: str, work: Path) -> None:
        """Start the process (stopping one left from a failed attempt) and wait until ready."""
        assert self.log_file is not None
        if self.process is not None:
            terminate(self.process)
        argv = [*netns_argv(self.netns), *self.argv(binary, work)]
        with contextlib.ExitStack() as files:
            stdout: int | IO[bytes] = subprocess.DEVNULL
            stderr: int | IO[bytes] = subprocess.DEVNULL
            if not self.writes_own_log:
                # Appended to: the log of an attempt that failed explains the next one.
                stderr = files.enter_context(open(self.log_file, "ab"))
                stdout = stderr
            if self.stdout_name is not None:
                stdout = files.enter_context(open(work / self.stdout_name, "wb"))
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=work,
                preexec_fn=self.preexec(),
            )
        self.pid = self.process.pid
        self._wait_ready()

    def _wait_ready(self) -> None:
        if self.netns is not None:
            self._wait_in_netns(self.ready_timeout)
            return
        self._poll(
            self.ready_here,
            time.monotonic() + self.ready_timeout,
            lambda: f"did not become ready within {self.ready_timeout:g} s",
        )

    def _wait_in_netns(self, timeout: float) -> None:
        assert self.netns is not None
        assert self.process is not None
        wait_in_netns(
            self.netns, self.ready_check(timeout), self.process, timeout, self.name, self.log_tail
        )

    def _poll(
        self,
        ready: Callable[[], bool],
        deadline: float,
        failure: Callable[[], str],
        interval: float = 0.05,
    ) -> None:
        """Poll ``ready()`` until it holds, watching the process; a LabError naming its exit
        status, or ``failure()`` once ``deadline`` passes, each with the log's tail."""
        assert self.process is not None
        while True:
            if self.process.poll() is not None:
                raise LabError(
                    f"{self.name} exited with status {self.process.returncode}: {self.log_tail()}"
                )
            if ready():
                return
            if time.monotonic() >= deadline:
                raise LabError(f"{self.name} {failure()}: {self.log_tail()}")
            time.sleep(interval)

    def log_tail(self, lines: int = 5) -> str:
        """The log's last lines on one line, bounded and with control characters shown."""
        if self.log_file is None or not self.log_file.exists():
            return "(no log)"
        with open(self.log_file, "rb") as log:
            # Only the end is read: a long-running server's log can be large.
            log.seek(max(0, log.seek(0, 2) - _TAIL_READ))
            text = log.read().decode(errors="replace").strip()
        return visible(" | ".join(text.splitlines()[-lines:]), _TAIL_LIMIT) or "(empty log)"

    def log_text(self) -> str:
        """Everything the server logged so far (tests read why it refused a request)."""
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

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
