"""Structured logs for unattended probes (structlog): one JSON object per line when stderr is not
a terminal (journald, files, log shippers), key=value text when it is. The ``lkice`` stdlib
loggers go through the same renderer, so a probe's whole log is one format.

What a log line shows is safe to show: every value has its control characters made visible
(a server's text cannot move the cursor or fake a line, on a terminal or through ``jq -r``),
URLs have their passwords replaced by ``***``, and tracebacks are plain, without the local
variables rich's tracebacks would print (a password among them). :class:`SafeFormatter` does
the same for the plain stdlib lines of the one-shot commands (``cli._setup_logging``).

structlog (and rich, which structlog loads when it is installed) is imported only where a
structlog logger is configured or made: a one-shot ``lkice run`` logs through the stdlib alone,
and does not pay for them at start-up.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Mapping, MutableMapping
from types import TracebackType
from typing import Any, TextIO

from lkice.textsafe import (
    MAX_DEPTH,
    redact_url,
    redact_urls,
    visible,
    visible_lines,
    visible_report,
)

__all__ = [
    "SafeFormatter",
    "configure",
    "configure_plain",
    "format_exception",
    "get_logger",
    "safe_values",
]

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
# Set by structlog's stdlib integration; not values of the event.
_INTERNAL_KEYS = frozenset({"exc_info", "stack_info", "_record", "_from_structlog"})


def _hide_passwords(text: str) -> str:
    """URLs in free text; a value that is one token is read as a URL even without a scheme
    (``--push user:pass@host:9091``, as prometheus_client takes it)."""
    if "@" in text and not any(ch.isspace() for ch in text):
        return redact_url(text)
    return redact_urls(text)


def _safe(value: Any) -> Any:
    if isinstance(value, str):
        return visible(_hide_passwords(value))
    if isinstance(value, Mapping | list | tuple):
        return visible_report(_redact_nested(value))
    if value is None or isinstance(value, bool | int | float):
        return value
    return visible(_hide_passwords(str(value)))  # a Path, an exception, an enum


def _redact_nested(value: Any, depth: int = 0) -> Any:
    """URLs' passwords hidden in the strings of a (small) structure logged as one value;
    deeper than any log value is cut (visible_report bounds it the same way)."""
    if isinstance(value, str):
        return _hide_passwords(value)
    if depth >= MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {k: _redact_nested(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_nested(v, depth + 1) for v in value]
    return value


def safe_values(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: every value (the event too) with URL passwords hidden and control
    characters made visible."""
    return {
        (visible(key) if isinstance(key, str) else key): (
            value if key in _INTERNAL_KEYS else _safe(value)
        )
        for key, value in event_dict.items()
    }


def format_exception(exc_info: _ExcInfo) -> str:
    """A plain traceback without local variables; the exception's own text (which may quote a
    server) is made visible, so only lkice's line structure has line ends."""
    parts: list[str] = []
    for chunk in traceback.TracebackException(*exc_info, capture_locals=False).format():
        if chunk.startswith("  File "):
            parts.append(visible_lines(chunk.rstrip("\n")) + "\n")  # a frame: our own source
        else:
            # "ValueError: message", notes and the chaining sentences: one line each.
            head = chunk[: len(chunk) - len(chunk.lstrip("\n"))]
            body = chunk.strip("\n")
            parts.append(head + visible(redact_urls(body)) + "\n")
    return "".join(parts).rstrip("\n")


def _exc_info(value: Any) -> _ExcInfo | None:
    if isinstance(value, BaseException):
        return (type(value), value, value.__traceback__)
    if isinstance(value, tuple) and len(value) == 3 and value[1] is not None:
        return value
    if value is True:
        info = sys.exc_info()
        return info if info[1] is not None else None
    return None


def _plain_traceback(sio: TextIO, exc_info: Any) -> None:
    """ConsoleRenderer's exception formatter (instead of rich's, which shows locals)."""
    info = _exc_info(exc_info)
    if info is not None:
        sio.write("\n" + format_exception(info))


def _exception_text(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """For JSON: ``exc_info`` becomes an ``exception`` string, plain and without locals
    (structlog's dict tracebacks would carry the locals)."""
    info = _exc_info(event_dict.pop("exc_info", None))
    if info is not None:
        event_dict["exception"] = format_exception(info)
    return event_dict


def configure(*, json_output: bool | None = None, level: int = logging.INFO) -> None:
    """``json_output`` None: JSON unless stderr is a terminal."""
    global _plain_pending
    import structlog

    _plain_pending = False
    if json_output is None:
        json_output = not sys.stderr.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    final: list[Any] = (
        [_exception_text, structlog.processors.JSONRenderer()]
        if json_output
        else [structlog.dev.ConsoleRenderer(colors=False, exception_formatter=_plain_traceback)]
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            safe_values,
            *final,
        ],
    )
    _install(formatter, level)


class SafeFormatter(logging.Formatter):
    """A stdlib formatter whose lines are safe to show: the formatted line with URL passwords
    hidden and control characters made visible; tracebacks plain, without locals."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return visible(redact_urls(super().formatMessage(record)))

    def formatException(self, ei: Any) -> str:
        info = _exc_info(ei)
        return format_exception(info) if info is not None else ""

    def formatStack(self, stack_info: str) -> str:
        return visible_lines(stack_info)


_PLAIN_FORMAT = "lkice: %(levelname)s %(name)s: %(message)s"
_key_value: Any = None  # structlog's KeyValueRenderer, made with the plain configuration
# configure_plain ran before structlog was imported: get_logger finishes it.
_plain_pending = False


def _to_stdlib(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """The event as one ``event=... key=value`` message for the stdlib logger; an exception
    goes along as ``exc_info``, for :class:`SafeFormatter` to format."""
    exc_info = event_dict.pop("exc_info", None)
    message = _key_value(logger, method, event_dict)
    return (message,), ({"exc_info": exc_info} if exc_info else {})


def configure_plain(level: int = logging.WARNING) -> None:
    """The one-shot commands' log (run, demo, probe without a schedule): plain lines on stderr,
    ``lkice: LEVEL logger: message``; structlog events (the sinks' ``push_failed``...) are
    written the same way, as ``event key=value``, never to stdout where the report goes.
    structlog is configured now if it is loaded, else by the first :func:`get_logger`."""
    global _plain_pending
    _install(SafeFormatter(_PLAIN_FORMAT), level)
    _plain_pending = "structlog" not in sys.modules
    if not _plain_pending:
        _configure_structlog_plain()


def _configure_structlog_plain() -> None:
    global _key_value
    import structlog

    _key_value = structlog.processors.KeyValueRenderer(
        key_order=["event"], drop_missing=True, repr_native_str=False
    )
    structlog.configure(
        processors=[safe_values, _to_stdlib],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def _install(formatter: logging.Formatter, level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger("lkice")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def get_logger(name: str) -> Any:
    global _plain_pending
    import structlog

    if _plain_pending:
        _plain_pending = False
        _configure_structlog_plain()
    return structlog.get_logger(name)
