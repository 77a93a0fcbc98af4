"""Structured logs with no student PII, by construction and as a backstop.

One configuration for every process: structlog events and the standard library's records
(twilio, urllib3, alembic, APScheduler...) go through the same processors and one handler, as
JSON lines for the service roles and readable lines for a person at a terminal.

Code logs ids and counts only. Two backstops catch what a future log call or a library lets
slip: `redact_pii` blanks fields whose name suggests personal data and scrubs e-mail addresses
and phone numbers from every string, and `_scrubbing_record_factory` does the same to each
standard-library record as it is created, so no handler (not even one added later) sees a raw
address. Names and birth dates have no shape a pattern could catch: the sources must not log them.

Every line of a unit of work carries `run_id` (one per CLI command, scheduled job run, worker
pass or API request) and, while the work is about one case, `case_id`: bound with structlog's
contextvars (`run_context`, `bound_contextvars`).
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import structlog
from structlog.contextvars import bind_contextvars, bound_contextvars, clear_contextvars

if TYPE_CHECKING:
    from flask import Flask

PII_KEYS = frozenset(
    {"name", "first_name", "last_name", "given_name", "family_name", "middle_name",
     "preferred_name", "full_name", "student_name", "username", "email", "phone", "sms",
     "sms_phone", "voice_phone", "to", "from", "from_address", "address", "street", "body",
     "text", "message", "subject", "payload", "data", "row", "record", "birth_date",
     "birthdate", "date_of_birth", "dob"}
)  # fmt: skip
PII_SUFFIXES = ("_name", "_email", "_phone", "_address", "_body", "_text", "_birth_date")
REDACTED = "[redacted]"

# An e-mail address, plain or URL-encoded (a query string in a library's request log).
_EMAIL = r"[A-Za-z0-9._%+-]+(?:@|%40)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
# E.164 (plain or URL-encoded +), North American with punctuation, or 10-11 bare digits.
_PHONE = (
    r"(?:\+|%2B)\d{10,15}(?!\d)"
    r"|\(\d{3}\)\s?\d{3}[ .-]\d{4}(?!\d)"
    r"|(?<![\w.])\d{3}[.-]\d{3}[.-]\d{4}(?![\w])"
    r"|(?<![\w.%+:/-])1?\d{10}(?![\w.:-])"
)
_PII_PATTERN = re.compile(f"{_EMAIL}|{_PHONE}")

SERVICE_ROLES = frozenset({"worker", "scheduler", "serve", "all-in-one"})
_HANDLER_NAME = "casebridge"


def scrub(text: str) -> str:
    """`text` with e-mail addresses and phone numbers replaced."""
    return _PII_PATTERN.sub(REDACTED, text)


def _is_pii_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in PII_KEYS or lowered.endswith(PII_SUFFIXES)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, MutableMapping | dict):
        return {k: REDACTED if _is_pii_key(str(k)) else _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    return value


def redact_pii(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The last line of defence: blank PII-named fields, scrub addresses from every string."""
    for key in list(event):
        # structlog's bookkeeping (_record...), and a traceback still to be formatted (it is
        # scrubbed as text once `format_exc_info` has turned it into one).
        if key.startswith("_") or key in ("exc_info", "stack_info"):
            continue
        event[key] = REDACTED if _is_pii_key(key) else _clean(event[key])
    return event


_original_factory: Callable[..., logging.LogRecord] | None = None


def _scrubbing_record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every standard-library record, as it is created: its message with addresses scrubbed.

    Runs only for records that pass the level check, before any handler sees them."""
    assert _original_factory is not None
    record = _original_factory(*args, **kwargs)
    if isinstance(record.msg, str):
        try:
            message = record.getMessage()
        except Exception:  # a library's broken format string: leave it to logging's own report
            return record
        record.msg, record.args = scrub(message), None
    return record


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is now (pytest and click swap it), never a closed one."""

    def __init__(self) -> None:
        super().__init__()
        self.set_name(_HANDLER_NAME)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(level: str = "INFO", json: bool = False, stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library once, for the whole process.

    `json`: one JSON object per line (the service roles, log shippers); otherwise a readable
    line. Library loggers go through the same processors, so their lines are JSON too."""
    global _original_factory
    level_no = logging.getLevelName(level.upper())
    if not isinstance(level_no, int):
        raise ValueError(f"unknown log level {level!r}")
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    before: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        stamp,
    ]
    structlog.configure(
        processors=[*before, redact_pii, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=before,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # a traceback is text: scrubbed next
            redact_pii,
            renderer,
        ],
    )
    handler: logging.Handler = logging.StreamHandler(stream) if stream else _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_no)
    if _original_factory is None:
        _original_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_scrubbing_record_factory)


def reset() -> None:
    """Undo `configure` (tests): our handler, the record factory, structlog's defaults."""
    global _original_factory
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    if _original_factory is not None:
        logging.setLogRecordFactory(_original_factory)
        _original_factory = None
    structlog.reset_defaults()
    clear_contextvars()


def new_run_id() -> str:
    return uuid.uuid4().hex


def bind_run(**ids: Any) -> str:
    """Bind a fresh `run_id` (and `ids`) for the rest of this context: a whole CLI command."""
    run_id = new_run_id()
    bind_contextvars(run_id=run_id, **ids)
    return run_id


@contextmanager
def run_context(job: str, **ids: Any) -> Iterator[str]:
    """Bind a fresh `run_id` (and `job`, and any ids given) to every log line inside."""
    run_id = new_run_id()
    with bound_contextvars(run_id=run_id, job=job, **ids):
        yield run_id


T = TypeVar("T")


def carry_context(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn` running in a copy of the caller's context: a thread it starts logs with the same
    run_id (threads do not inherit contextvars). One copy per call: a context cannot be
    entered by two threads at once."""
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.run(fn, *args, **kwargs)


def bind_requests(app: Flask) -> None:
    """One `run_id` per API request, returned as `X-Request-Id` so a caller can quote it."""
    from flask import request

    @app.before_request
    def _start_request() -> None:
        clear_contextvars()  # gunicorn reuses threads: nothing from the previous request
        # The route's rule, not the path: paths carry tokens (unsubscribe links).
        bind_contextvars(run_id=new_run_id(), request=f"{request.method} {request.url_rule}")

    @app.after_request
    def _request_id(response: Any) -> Any:
        run_id = structlog.contextvars.get_contextvars().get("run_id")
        if run_id:
            response.headers["X-Request-Id"] = run_id
        return response

    @app.teardown_request
    def _end_request(_exc: BaseException | None) -> None:
        clear_contextvars()
