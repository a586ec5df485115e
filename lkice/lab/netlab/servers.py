"""The lab's TURN servers and certificates: one lab CA with a certificate per region, and a
region's coturn or pion/turn on its addresses and ports (UDP/TCP 3478, TLS 5349 and 443)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lkice.lab.coturn import Coturn, CoturnConfig
from lkice.lab.netlab.addressing import DOMAIN, TURN_PORT, TURN_TLS_ALT_PORT, TURN_TLS_PORT
from lkice.lab.pion import PionConfig, PionTurn
from lkice.lab.pki import LabPki


def make_pki(
    work: Path, token: str, names: Mapping[str, tuple[str, str, str]]
) -> tuple[Path, dict[str, LabPki]]:
    """One lab CA (written to ``work``), one certificate per region naming its host and
    addresses (``names``: region -> host, address, alternate address). Returns the CA file and
    each region's :class:`LabPki`."""
    import trustme

    ca = trustme.CA(
        organization_name="lkice lab", organization_unit_name=f"lkice netlab {token} CA"
    )
    ca_file = work / "lab-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    out: dict[str, LabPki] = {}
    for region, (host, server_ip, alternate_ip) in names.items():
        leaf = ca.issue_cert(host, server_ip, alternate_ip)
        cert_file = work / f"turn-{region}-cert.pem"
        key_file = work / f"turn-{region}-key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(cert_file))
        leaf.private_key_pem.write_to_path(str(key_file))
        key_file.chmod(0o600)
        out[region] = LabPki(
            ca_file, cert_file, key_file, f"O=lkice lab, OU=lkice netlab {token} CA"
        )
    return ca_file, out


def pion_server(
    server_ip: str,
    alternate_ip: str,
    netns: str,
    users: dict[str, str],
    pki: LabPki,
    ready_timeout: float,
) -> PionTurn:
    """pion/turn on a region's addresses and ports, as its coturn would be."""
    return PionTurn(
        PionConfig(
            listen_ip=server_ip,
            port=TURN_PORT,
            tls_port=TURN_TLS_PORT,
            realm=DOMAIN,
            users=users,
            pki=pki,
            extra_ips=(alternate_ip,),
            alt_tls_port=TURN_TLS_ALT_PORT,
            netns=netns,
        ),
        ready_timeout=ready_timeout,
    )


def coturn_server(
    server_ip: str,
    alternate_ip: str,
    netns: str,
    users: dict[str, str],
    pki: LabPki,
    ready_timeout: float,
) -> Coturn:
    """coturn on a region's addresses and ports."""
    return Coturn(
        CoturnConfig(
            listen_ip=server_ip,
            port=TURN_PORT,
            tls_port=TURN_TLS_PORT,
            realm=DOMAIN,
            users=users,
            pki=pki,
            # Two listening addresses enable RFC 5780 and the alternate listeners;
            # the alternate TLS port is 443, where TURN/TLS is found through firewalls.
            extra=[
                f"listening-ip={alternate_ip}",
                f"alt-tls-listening-port={TURN_TLS_ALT_PORT}",
            ],
            netns=netns,
            ready_tcp_ports=(TURN_TLS_ALT_PORT,),
        ),
        ready_timeout=ready_timeout,
    )
