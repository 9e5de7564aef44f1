"""structlog set-up: JSON lines (journald) or a console format in a terminal.

Third-party stdlib loggers (pymodbus, aiomqtt) go through the same processors,
so every line in the journal has one shape, with the same bound context (the hub,
and the compartment, parcel or command being handled) and the same redaction.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

# keys whose values never reach a log line, whoever logs them (defence in depth: no
# code of ours logs a code, a key, a password or a signature; a library might)
SECRET_KEYS = frozenset(
    {"code", "pin", "password", "passwd", "secret", "key", "private_key", "signature", "token"}
)


def redact(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    for name in SECRET_KEYS.intersection(event_dict):
        event_dict[name] = "[redacted]"
    return event_dict


LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure(
    *, level: str = "info", json: bool | None = None, stream: TextIO | None = None
) -> None:
    out = stream or sys.stdout
    as_json = (not out.isatty()) if json is None else json
    level_no = LEVELS[level]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        redact,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(level_no, logging.INFO))


def bind(**context: Any) -> None:
    """Context for every line logged from here on in this task and the tasks it starts
    (``hub`` at start-up; ``compartment``, ``parcel``, ``command`` around an action)."""
    structlog.contextvars.bind_contextvars(**context)


bound = structlog.contextvars.bound_contextvars  # the same, for a ``with`` block
