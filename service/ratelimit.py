"""A per-sender send rate shared by every worker, on any host: one row per sender in the
database holds the next free slot.

Taking a slot is one atomic statement, `UPDATE send_rates SET next_at = max(next_at, now) +
interval ... RETURNING next_at` (a row lock on PostgreSQL, the write lock on SQLite), so N
workers together never exceed the rate, and a worker that dies after taking a slot only wastes
that slot. The worker then sleeps until its slot. Slots are wall-clock seconds: hosts need NTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine, func, update

from service.bulk import dialect_insert, table
from service.models import SendRate


def take_slot(
    engine: Engine, sender: str, per_second: float, clock: Callable[[], float] = time.time
) -> float:
    """Reserve `sender`'s next slot; returns the seconds to wait before using it."""
    interval = 1.0 / per_second
    now = clock()
    with engine.begin() as conn:
        conn.execute(
            dialect_insert(conn, table("send_rates")).on_conflict_do_nothing(),
            [{"sender": sender, "next_at": 0.0}],
        )
        later = func.greatest if conn.dialect.name == "postgresql" else func.max
        next_at = conn.execute(
            update(SendRate)
            .where(SendRate.sender == sender)
            .values(next_at=later(SendRate.next_at, now) + interval)
            .returning(SendRate.next_at)
        ).scalar_one()
    return max(0.0, next_at - interval - now)


def wait_for_slot(engine: Engine, sender: str, per_second: float) -> None:
    delay = take_slot(engine, sender, per_second)
    if delay > 0:
        time.sleep(delay)
