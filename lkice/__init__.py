"""lkice: ICE/TURN connectivity diagnostics for LiveKit deployments.

Data flows one way: targets -> probes (I/O) -> measurements -> verdict -> renderers.
The public API is what ``__all__`` names; everything else is private.
"""

from __future__ import annotations

__version__ = "0.1.0"

from lkice.errors import ErrorKind, ProbeError, UsageError
from lkice.uri import IceUri, Transport, parse_ice_uri

__all__ = [
    "ErrorKind",
    "IceUri",
    "ProbeError",
    "Transport",
    "UsageError",
    "__version__",
    "parse_ice_uri",
]
