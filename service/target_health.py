"""Destinations' circuit states, written by the worker that saw the change, read by the API.

The circuit breaker (`connectors/destinations/http_base.py`) lives in each worker process; the
API that answers `/readyz` and `/metrics` runs in another. So a breaker that opens or closes
calls `circuit_changed`, which writes one row per destination (`target_health`): the last change
any worker saw wins. That is approximate with several workers (each has its own breaker), and
deliberately so: the row says "a worker paused this destination at T until U", which is what an
operator needs, without a write per delivery.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from service.bulk import dialect_insert, table
from service.clock import utcnow
from service.models import TargetHealth

log = structlog.get_logger(__name__)
HOLDER = f"{socket.gethostname()}:{os.getpid()}"

CircuitState = Literal["open", "closed"]

_watched: dict[str, Engine] = {}
_lock = threading.Lock()


def watch(engine: Engine) -> None:
    """Record this process's circuit changes in `engine`'s database (the dispatcher's)."""
    with _lock:
        _watched["engine"] = engine


def circuit_changed(target: str, state: CircuitState, failures: int, pause_seconds: float) -> None:
    """Called by a breaker when it opens or closes. Never raises: a delivery must not fail
    because its health could not be written down."""
    engine = _watched.get("engine")
    if engine is None:  # a destination used outside a dispatcher (tests, check-config)
        return
    now = utcnow()
    values = {
        "state": state,
        "failures": failures,
        "open_until": now + timedelta(seconds=pause_seconds) if state == "open" else None,
        "changed_at": now,
        "holder": HOLDER,
    }
    try:
        with engine.begin() as conn:
            stmt = dialect_insert(conn, table("target_health")).values(target=target, **values)
            conn.execute(stmt.on_conflict_do_update(index_elements=["target"], set_=values))
    except SQLAlchemyError as exc:
        log.warning("target_health.not_recorded", destination=target, error=type(exc).__name__)


@dataclass(frozen=True)
class Circuit:
    target: str
    state: CircuitState
    failures: int
    open_until: datetime | None
    changed_at: datetime
    holder: str

    def trial_due(self, now: datetime) -> bool:
        """Open, but the pause is over: the next delivery is the trial call."""
        return self.state == "open" and self.open_until is not None and self.open_until <= now


def circuits(engine: Engine) -> list[Circuit]:
    """Every destination whose breaker has ever changed, by name."""
    with engine.connect() as conn:
        rows = conn.execute(select(TargetHealth.__table__).order_by(TargetHealth.target)).all()
    return [
        Circuit(
            r.target, "open" if r.state == "open" else "closed", r.failures,
            aware(r.open_until) if r.open_until else None, aware(r.changed_at), r.holder,
        )
        for r in rows
    ]  # fmt: skip


def aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
