"""The report's vocabularies, defined once (pure): the writers, the schema and every reader use
these; a test checks them against ``lkice/schema/report-1.json`` and ``lkice.errors``."""

from __future__ import annotations

__all__ = [
    "SETUP_STEPS",
    "SEVERITIES",
    "SFU_TIMING_KEYS",
    "SIGNAL_STEPS",
    "SIGNAL_TIMING_KEYS",
    "TIMING_KEYS",
    "TIMING_KEYS_ALL",
    "VERDICTS",
]

# Every STUN/TURN path carries these in ``timings_ms`` (None: not reached). "proxy": the HTTP
# CONNECT round trip when the path went through a web proxy ("connect" is then the TCP connect
# to the proxy).
TIMING_KEYS = (
    "dns",
    "connect",
    "proxy",
    "tls",
    "binding",
    "allocate_challenge",
    "allocate",
    "deallocate",
)
# An SFU media path also has its WebRTC session's ICE and DTLS (lkice.probe.sfu).
SFU_TIMING_KEYS = ("ice", "dtls")
# What a path's ``timings_ms`` may hold, in the order the steps run.
TIMING_KEYS_ALL = (*TIMING_KEYS, *SFU_TIMING_KEYS)
# LiveKit signaling, step by step.
SIGNAL_TIMING_KEYS = ("dns", "connect", "proxy", "tls", "validate", "websocket", "join")

# The set-up steps a reader shows or exports for a path (in order; "deallocate" comes after the
# verdict and "allocate_challenge" is part of "allocate"), and for signaling.
SETUP_STEPS = ("dns", "connect", "proxy", "tls", "binding", "allocate", "ice", "dtls")
SIGNAL_STEPS = ("dns", "connect", "proxy", "tls", "validate", "websocket", "join")

# Findings' severities, most severe first, and the verdicts (lkice.report.read has them as
# Literal types; a test checks they agree).
SEVERITIES = ("critical", "warning", "info")
VERDICTS = ("ok", "degraded", "failed")
