"""A TLS-inspecting proxy for the namespace lab, as corporate firewalls run them: connections
redirected to it (nftables DNAT in the firewall namespace) get a TLS handshake with a
certificate for the name the client asked for, signed by the proxy's own CA; the proxy then
opens its own TLS connection to the original destination (``SO_ORIGINAL_DST``) and relays the
plaintext both ways. A client that trusts only the real CA sees the proxy's issuer instead.

``python3 -m lkice.lab.intercept`` reads one JSON line on stdin ({"host", "port",
"organization", "unit"}: where to listen, and the name of the proxy's own CA), prints ``ready``
and serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import struct
import sys
from typing import Any

import trustme

__all__ = ["main"]

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h


def _original_destination(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack("!H", raw[2:4])[0]
    return socket.inet_ntoa(raw[4:8]), port


class _Proxy:
    def __init__(self, ca: trustme.CA) -> None:
        self.ca = ca
        self._contexts: dict[str, ssl.SSLContext] = {}
        self.context = self._context_for("unknown.invalid")
        self.context.sni_callback = self._sni

    def _context_for(self, name: str) -> ssl.SSLContext:
        # One certificate per requested name (SNI), as inspecting proxies mint them.
        if name not in self._contexts:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(name).configure_cert(context)
            self._contexts[name] = context
        return self._contexts[name]

    def _sni(self, ssl_object: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        if name:
            ssl_object.context = self._context_for(name)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            host, port = _original_destination(writer.get_extra_info("socket"))
            # The upstream leg: the proxy does not check the server (as many do not).
            upstream = ssl.create_default_context()
            upstream.check_hostname = False
            upstream.verify_mode = ssl.CERT_NONE
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=upstream), 5.0
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
            writer.close()


def main() -> int:
    config: dict[str, Any] = json.loads(sys.stdin.readline())
    ca = trustme.CA(
        organization_name=str(config.get("organization", "Contoso")),
        organization_unit_name=str(config.get("unit", "Contoso TLS Inspection CA")),
    )
    proxy = _Proxy(ca)

    async def serve() -> None:
        server = await asyncio.start_server(
            proxy.handle, config["host"], int(config["port"]), ssl=proxy.context
        )
        async with server:
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
