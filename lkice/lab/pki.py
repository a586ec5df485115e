"""A throwaway certificate authority and a server certificate, made with trustme."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class LabPki:
    ca_file: Path
    cert_file: Path
    key_file: Path
    ca_name: str


def make_pki(
    directory: Path,
    identities: tuple[str, ...] = ("127.0.0.1", "localhost"),
    organization: str = "lkice lab",
    unit: str = "lkice lab CA",
    prefix: str = "lab",
) -> LabPki:
    """Write ``<prefix>-ca.pem``, ``<prefix>-cert.pem`` and ``<prefix>-key.pem`` into ``directory``."""
    ca = trustme.CA(organization_name=organization, organization_unit_name=unit)
    leaf = ca.issue_cert(*identities)
    ca_file = directory / f"{prefix}-ca.pem"
    cert_file = directory / f"{prefix}-cert.pem"
    key_file = directory / f"{prefix}-key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf.cert_chain_pems[0].write_to_path(str(cert_file))
    leaf.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    return LabPki(ca_file, cert_file, key_file, f"O={organization}, OU={unit}")
