"""structlog set-up: JSON lines for daemons, a readable console for people.

Every module gets its logger with ``structlog.get_logger(__name__)`` and logs key-value
events (``log.info("task.done", tokens=12)``); agent, task and trace ids are bound with
``structlog.contextvars.bound_contextvars`` around each handler so they reach every line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from lmteams import tracing

__all__ = ("configure", "redact", "span_ids")

_SECRET_KEYS = frozenset({"password", "token", "nkey_seed", "seed", "creds", "secret"})


def span_ids(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """With tracing on, the OpenTelemetry trace and span of the line (find its spans by them)."""
    ids = tracing.ids()
    if ids is not None:
        event_dict["otel_trace_id"], event_dict["otel_span_id"] = ids
    return event_dict


def redact(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Blank out values whose key names a secret, so credentials never reach a log line."""
    for key in event_dict.keys() & _SECRET_KEYS:
        if event_dict[key]:
            event_dict[key] = "***"
    return event_dict


class _CurrentStderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was configured.

    Test runners and embedding programs swap ``sys.stderr``; a stream bound at configure time
    may be closed by the time a late log line (a server stopping) is written.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(*, json: bool = False, level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog once per process.

    ``json=True`` writes one JSON object a line (for daemons and log shippers);
    otherwise a coloured console renderer is used when the stream is a terminal.
    Without ``stream``, lines go to the current ``sys.stderr``.
    """
    out: Any = stream if stream is not None else _CurrentStderr()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        span_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    if json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
