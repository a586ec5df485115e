"""LiveKit's own browser connection test (livekit-client's ``ConnectionCheck``) in Debian's headless
Chromium, as the client of the network lab.

- :func:`npm_install` installs the pinned livekit-client (``connection_check/package.json``) into
  ``~/.cache/lkice/connection-check-<hash>`` once; :func:`unavailable_reason` says why it cannot
  run here (no chromium, playwright, npm or registry).
- :func:`run_connection_check` runs this file as a child in the lab's client namespace: it serves
  the page on the namespace's loopback (``http://127.0.0.1:PORT``: a secure context, so
  getUserMedia works) and drives Chromium through playwright. The page (``connection_check/``)
  runs the checks one by one and records status, logs, duration and selected candidate pairs.

The child half (:func:`_child`) uses the standard library and playwright only: it runs by path,
without the repository on ``sys.path``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.chromium import CHROMIUM
from tests.support.chromium import CHROMIUM_ARGS as BASE_ARGS

if TYPE_CHECKING:
    from lkice.lab.netlab import NetLab

PAGE_DIR = Path(__file__).resolve().with_name("connection_check")
LIVEKIT_CLIENT = "2.23.0"
# The tests' Chromium flags (tests/support/chromium.py), and no other network use at all.
CHROMIUM_ARGS = [
    *BASE_ARGS,
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--no-pings",
    "--no-proxy-server",
    # publishAudio/publishVideo capture media: a synthetic microphone and camera, no prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
NPM_TIMEOUT = 300.0
CHECKS = (
    "websocket",
    "webrtc",
    "turn",
    "reconnect",
    "publishAudio",
    "publishVideo",
    "connectionProtocol",
    "cloudRegion",
)


class ConnectionCheckUnavailable(Exception):
    """ConnectionCheck cannot run here; the message says why (a reason to skip, not a failure)."""


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lkice"


def package_hash() -> str:
    """Names an install: package.json and its lock (a changed pin is a new directory)."""
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        path = PAGE_DIR / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def install_dir() -> Path:
    return _cache_root() / f"connection-check-{package_hash()}"


def _esm(dest: Path) -> Path:
    return dest / "node_modules" / "livekit-client" / "dist" / "livekit-client.esm.mjs"


def installed(dest: Path | None = None) -> Path | None:
    """The install directory if livekit-client is installed there (nothing is fetched)."""
    dest = dest or install_dir()
    return dest if _esm(dest).is_file() else None


def npm_install(dest: Path | None = None, timeout: float = NPM_TIMEOUT) -> Path:
    """Install the pinned livekit-client into ``dest`` (default :func:`install_dir`) and return
    it; an install already there is reused. Raises :class:`ConnectionCheckUnavailable` when npm
    is missing or the install fails (no registry, a timeout), with npm's output."""
    dest = dest or install_dir()
    if installed(dest):
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise ConnectionCheckUnavailable("needs npm (and Node.js) to install livekit-client")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Installed beside the target and renamed: a concurrent install or a reader never sees half.
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        shutil.copy(PAGE_DIR / "package.json", staging)
        lock = PAGE_DIR / "package-lock.json"
        argv = [npm, "install"]
        if lock.is_file():
            shutil.copy(lock, staging)
            argv = [npm, "ci"]
        argv += ["--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
        process = subprocess.Popen(
            argv,
            cwd=staging,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # npm's children are stopped with it on a timeout
            env={**os.environ, "npm_config_update_notifier": "false"},
        )
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            raise ConnectionCheckUnavailable(
                f"npm {argv[1]} of livekit-client {LIVEKIT_CLIENT} did not finish within "
                f"{timeout:g} s (registry unreachable?): {_tail(output)}"
            ) from None
        if process.returncode != 0 or not _esm(staging).is_file():
            raise ConnectionCheckUnavailable(
                f"npm {argv[1]} of livekit-client {LIVEKIT_CLIENT} failed with status "
                f"{process.returncode} (registry unreachable?): {_tail(output)}"
            )
        try:
            staging.rename(dest)
        except OSError:
            if not installed(dest):  # another install won the race: use it
                raise
        return dest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _tail(output: bytes, limit: int = 1500) -> str:
    text = output.decode(errors="replace").strip()
    return text[-limit:] or "(no output)"


def browser_unavailable_reason() -> str | None:
    """Why no Chromium can be driven here, or None."""
    if not CHROMIUM.exists():
        return "needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs the playwright Python package (pip install playwright; no download)"
    return None


def unavailable_reason(install: bool = True) -> str | None:
    """Why ConnectionCheck cannot run here (no chromium, playwright, npm or registry), or None.
    ``install``: run :func:`npm_install` if livekit-client is not installed yet."""
    reason = browser_unavailable_reason()
    if reason is not None:
        return reason
    if installed():
        return None
    if not install:
        return f"livekit-client {LIVEKIT_CLIENT} is not installed (npm_install())"
    try:
        npm_install()
    except ConnectionCheckUnavailable as exc:
        return str(exc)
    return None


# -- the lab's trust ------------------------------------------------------------------------------


def spki_hashes(pem_files: Sequence[Path]) -> list[str]:
    """base64(SHA-256(SubjectPublicKeyInfo)) of each certificate, as Chromium's
    ``--ignore-certificate-errors-spki-list`` takes them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    hashes: list[str] = []
    for path in pem_files:
        for cert in x509.load_pem_x509_certificates(path.read_bytes()):
            spki = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            hashes.append(base64.b64encode(hashlib.sha256(spki).digest()).decode())
    return hashes


def lab_certificates(lab: NetLab) -> list[Path]:
    """The lab CA and the regions' TURN/TLS certificates (in the lab's work directory)."""
    work = lab.ca_file.parent
    return [lab.ca_file, *sorted(work.glob("turn-*-cert.pem"))]


def livekit_log(lab: NetLab, region: str = "eu", secrets: Sequence[str] = ()) -> str:
    """The lab LiveKit server's log (its stderr, in the lab's work directory), secrets masked."""
    path = lab.ca_file.parent / f"livekit-{region}.log"
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return _redact(text, secrets)


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


# -- reading the results --------------------------------------------------------------------------


def path_of(pair: dict[str, Any]) -> str:
    """How a selected pair carries media: ``udp`` or ``ice/tcp`` (straight to the SFU), or
    ``turn/udp``, ``turn/tcp``, ``turn/tls`` (the client's leg to a TURN relay)."""
    local = pair.get("local") or {}
    if local.get("type") == "relay":
        return f"turn/{local.get('relay_protocol') or '?'}"
    return "ice/tcp" if local.get("protocol") == "tcp" else str(local.get("protocol") or "?")


def selected_pairs(check: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pair a check's peer connections selected, in order (a PC can switch pairs)."""
    return [pair for pc in check.get("peer_connections", []) for pair in pc.get("pairs", [])]


def describe_pair(pair: dict[str, Any]) -> str:
    """``turn/tcp 198.19.0.2:54779 -> host/udp 198.19.0.4:42126`` (local -> remote)."""
    local, remote = pair.get("local") or {}, pair.get("remote") or {}
    return (
        f"{path_of(pair)} {local.get('address')}:{local.get('port')} -> "
        f"{remote.get('type')}/{remote.get('protocol')} {remote.get('address')}:{remote.get('port')}"
    )


def by_name(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in results.get("checks", [])}


# -- the parent: run the child in the client namespace --------------------------------------------


def run_connection_check(
    lab: NetLab,
    url: str,
    token: str,
    *,
    checks: Sequence[str] = CHECKS,
    timeout: float = 300.0,
    per_check_timeout: float = 60.0,
    trust_lab_ca: bool = True,
    secrets: Sequence[str] = (),
) -> dict[str, Any]:
    """Run ConnectionCheck's ``checks`` against ``url`` from the lab's client namespace and
    return the page's results: ``checks`` (per check: ``name``, ``status`` — SUCCESS, FAILED,
    SKIPPED, or NOT_RUN/HARNESS_ERROR from the harness — ``logs``, ``duration_ms`` and
    ``peer_connections`` with their selected candidate ``pairs``), ``total_ms`` (the checks),
    ``wall_s`` (with Chromium's start), ``sdk_logs`` and ``console``. ``token`` (and
    ``secrets``) never appear in what is returned. Raises :class:`ConnectionCheckUnavailable`
    when livekit-client is not installed, RuntimeError when the child fails."""
    dest = installed()
    if dest is None:
        raise ConnectionCheckUnavailable(f"livekit-client {LIVEKIT_CLIENT} is not installed")
    config = {
        "url": url,
        "token": token,
        "checks": list(checks),
        "node_modules": str(dest / "node_modules"),
        "page_dir": str(PAGE_DIR),
        "ignore_spki": spki_hashes(lab_certificates(lab)) if trust_lab_ca else [],
        "timeout": timeout,
        "per_check_timeout": per_check_timeout,
    }
    # As a module of the checkout (it imports tests.support.chromium), wherever pytest ran.
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    proc = lab.run_in_client(
        ["python3", "-m", "tests.support.connection_check", "--child"],
        env={"PYTHONPATH": path},
        input_text=json.dumps(config),
        timeout=timeout + 60.0,  # Chromium's start and teardown on top of the checks
    )
    hidden = [token, *secrets]
    out = _redact(proc.stdout, hidden)
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(
            f"ConnectionCheck child failed ({proc.returncode}): "
            f"{_redact(proc.stderr, hidden)[-3000:]}"
        )
    results: dict[str, Any] = json.loads(out)
    return results


# -- the child: in the client namespace -----------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """The page's files, and ``/node_modules/`` from the install directory."""

    extensions_map = {  # noqa: RUF012 - the base class's attribute, replaced
        ".html": "text/html",
        ".mjs": "text/javascript",  # module scripts need a JavaScript MIME type
        ".js": "text/javascript",
        ".map": "application/json",
        "": "application/octet-stream",
    }
    node_modules = Path()

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        if clean.startswith("/node_modules/"):
            rel = clean[len("/node_modules/") :]
            target = (self.node_modules / rel).resolve()
            if self.node_modules.resolve() in target.parents:
                return str(target)
            return str(self.node_modules / "missing")
        return super().translate_path(path)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the page's requests are not the test's output


@contextlib.contextmanager
def serve(page_dir: Path, node_modules: Path) -> Iterator[str]:
    """Serve the page on loopback; yields its origin (``http://127.0.0.1:PORT``)."""
    handler = type(
        "Handler", (_Handler,), {"node_modules": node_modules}
    )  # one class per server: the install directory is its attribute
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(page_dir))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5.0)


def _child(config: dict[str, Any]) -> dict[str, Any]:
    from playwright.sync_api import ConsoleMessage, sync_playwright

    timeout_ms = float(config["timeout"]) * 1000.0
    args = list(CHROMIUM_ARGS)
    if config["ignore_spki"]:
        # Trusts the lab's certificates (CA and TURN/TLS leaves) for the network stack, which
        # carries TURN/TLS too; needs a --user-data-dir (launch_persistent_context gives one).
        args.append("--ignore-certificate-errors-spki-list=" + ",".join(config["ignore_spki"]))
    console: list[str] = []
    wall = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="lkice-cc-profile-") as profile,
        serve(Path(config["page_dir"]), Path(config["node_modules"])) as origin,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            args=args,
            headless=True,
            timeout=60_000,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()

            def on_console(message: ConsoleMessage) -> None:
                if message.type in ("error", "warning") and len(console) < 200:
                    console.append(f"{message.type}: {message.text}")

            page.on("console", on_console)
            page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
            page.goto(origin + "/index.html", timeout=30_000)
            page.wait_for_function("window.__lkReady === true", timeout=30_000)
            page.evaluate(
                "([url, token, opts]) => window.__lkRun(url, token, opts)",
                [
                    config["url"],
                    config["token"],
                    {
                        "checks": config["checks"],
                        "perCheckTimeoutMs": float(config["per_check_timeout"]) * 1000.0,
                    },
                ],
            )
            timed_out = False
            try:
                page.wait_for_function(
                    "window.__lkResults && window.__lkResults.done === true",
                    timeout=timeout_ms,
                    polling=500,
                )
            except Exception:  # playwright's TimeoutError: report what finished so far
                timed_out = True
            results: dict[str, Any] = page.evaluate(
                "JSON.parse(JSON.stringify(window.__lkResults))"
            )
        finally:
            context.close()
    results["timed_out"] = timed_out
    results["wall_s"] = round(time.monotonic() - wall, 2)
    results["console"] = console
    results.pop("url", None)
    return results


def main(argv: Sequence[str]) -> int:
    if list(argv) != ["--child"]:
        print("usage: connection_check.py --child < config.json", file=sys.stderr)
        return 2
    config = json.loads(sys.stdin.read())
    results = _child(config)
    sys.stdout.write(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
