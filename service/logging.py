"""Structured logs with no student PII, by construction and as a backstop.

Code logs ids and counts only; the processor below also blanks any field whose name suggests
personal data, in case a future log call forgets.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

PII_KEYS = frozenset(
    {"name", "first_name", "last_name", "email", "phone", "sms", "to", "address", "body",
     "payload", "student_name", "message", "data", "row"}
)  # fmt: skip


def _redact(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event):
        if key in PII_KEYS:
            event[key] = "[redacted]"
    return event


def configure(level: str = "INFO", json: bool = False) -> None:
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
