"""The report: one versioned JSON document, the contract between the agent, support tooling and
the probe fleet (``lkice/schema/report-1.json``).

- :mod:`lkice.report.model`: the dataclasses the probes fill and that write the report;
- :mod:`lkice.report.read`: the typed shape readers get (findings, recommendation, metrics,
  renderers), key for key the schema's (a test checks both ways);
- :mod:`lkice.report.fields`: the vocabularies (timing keys, phases, kinds) defined once;
- :mod:`lkice.report.views`: small pure helpers every reader shares (figures as text).
"""

from __future__ import annotations

from lkice.report.fields import SIGNAL_TIMING_KEYS, TIMING_KEYS
from lkice.report.model import (
    SCHEMA_ID,
    ErrorInfo,
    PathResult,
    Report,
    SignalResult,
    TlsInfo,
    interrupted_error,
    load_schema,
)

__all__ = [
    "SCHEMA_ID",
    "SIGNAL_TIMING_KEYS",
    "TIMING_KEYS",
    "ErrorInfo",
    "PathResult",
    "Report",
    "SignalResult",
    "TlsInfo",
    "interrupted_error",
    "load_schema",
]
