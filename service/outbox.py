"""The outbox: every outside effect is a row written with the change that caused it.

Delivery is at least once: an item is claimed, delivered outside any transaction, then marked.
What makes "at least once" safe is the idempotency key, deterministic from what caused the item,
which every destination and channel honours (a second delivery of a key changes nothing).
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, or_, select, update

from connectors.base import DeliveryResult
from service.bulk import insert_new, table
from service.clock import utcnow
from service.config import OutboxConfig
from service.errors import PermanentError, TransientError
from service.models import Disclosure, OutboxItem

log = structlog.get_logger(__name__)

LEASE = timedelta(minutes=5)
# Test-only switch: the process dies at this point of a delivery, as a power cut would.
FAULT_ENV = "CASEBRIDGE_FAULT_INJECT"

Deliver = Callable[[OutboxItem], DeliveryResult]


def enqueue(conn: Connection, items: list[dict[str, Any]]) -> int:
    """Add items in the caller's transaction; an existing key is left alone (not a duplicate)."""
    if not items:
        return 0
    now = utcnow()
    rows = [
        {
            "idempotency_key": item["idempotency_key"],
            "kind": item["kind"],
            "target": item["target"],
            "case_id": item.get("case_id"),
            "student_id": item.get("student_id"),
            "contact_id": item.get("contact_id"),
            "payload": item["payload"],
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for item in items
    ]
    # Staged and inserted in one statement: an existing key is skipped, and the rowcount is
    # exact on every driver (executemany's is -1 on psycopg).
    return insert_new(conn, table("outbox"), "idempotency_key", rows)


@dataclass
class DispatchReport:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    by_target: dict[str, int] = field(default_factory=dict)


def backoff(cfg: OutboxConfig, attempts: int, retry_after: float | None = None) -> float:
    """Seconds until the next attempt: exponential with full jitter, at least `retry_after`."""
    ceiling = min(cfg.max_delay_seconds, cfg.base_delay_seconds * (2 ** max(attempts - 1, 0)))
    delay = random.uniform(ceiling / 2, ceiling) if ceiling else 0.0
    return max(delay, retry_after or 0.0)


WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_dead_claims(engine: Engine) -> int:
    """Free leases held by workers on this host that died, so a restart redelivers at once.

    Leases of workers on other hosts are left to expire: we cannot see those processes.
    """
    host = socket.gethostname()
    now = utcnow()
    with engine.begin() as conn:
        held = conn.execute(
            select(OutboxItem.id, OutboxItem.claimed_by).where(
                OutboxItem.status == "pending",
                OutboxItem.claimed_until > now,
                OutboxItem.claimed_by.like(f"{host}:%"),
            )
        ).all()
        dead = [
            item_id
            for item_id, owner in held
            if owner and owner != WORKER and not _pid_alive(int(owner.rsplit(":", 1)[1]))
        ]
        if dead:
            conn.execute(
                update(OutboxItem)
                .where(OutboxItem.id.in_(dead))
                .values(claimed_until=None, claimed_by=None)
            )
    return len(dead)


def _claim(engine: Engine, limit: int) -> list[OutboxItem]:
    """Take due items with a lease; on PostgreSQL, concurrent workers skip each other's rows."""
    now = utcnow()
    with engine.begin() as conn:
        q = (
            select(OutboxItem.__table__)
            .where(
                OutboxItem.status == "pending",
                OutboxItem.next_attempt_at <= now,
                or_(OutboxItem.claimed_until.is_(None), OutboxItem.claimed_until < now),
            )
            .order_by(OutboxItem.id)
            .limit(limit)
        )
        if conn.dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        rows = conn.execute(q).mappings().all()
        if rows:
            conn.execute(
                update(OutboxItem)
                .where(OutboxItem.id.in_([r["id"] for r in rows]))
                .values(claimed_until=now + LEASE, claimed_by=WORKER)
            )
    return [OutboxItem(**dict(r)) for r in rows]


def _fault(point: str) -> None:
    if os.environ.get(FAULT_ENV) == point:
        os._exit(75)


def dispatch(
    engine: Engine,
    deliver: Deliver,
    cfg: OutboxConfig,
    disclosures: Callable[[OutboxItem, DeliveryResult], list[dict[str, Any]]],
    on_item: Callable[[], None] | None = None,
) -> DispatchReport:
    """Deliver every due item once; failures are scheduled again or dead-lettered."""
    report = DispatchReport()
    release_dead_claims(engine)
    while True:
        items = _claim(engine, cfg.batch_size)
        if not items:
            return report
        for item in items:
            _fault("before_delivery")
            try:
                result = deliver(item)
            except TransientError as exc:
                _failed(engine, item, cfg, str(exc), exc.retry_after, report)
            except PermanentError as exc:
                _failed(engine, item, cfg, str(exc), None, report, permanent=True)
            else:
                _fault("after_delivery")
                with engine.begin() as conn:
                    conn.execute(
                        update(OutboxItem)
                        .where(OutboxItem.id == item.id)
                        .values(
                            status="delivered",
                            attempts=item.attempts + 1,
                            delivered_at=utcnow(),
                            external_id=result.external_id,
                            claimed_until=None,
                            claimed_by=None,
                            last_error=None,
                        )
                    )
                    records = disclosures(item, result)
                    if records:
                        conn.execute(Disclosure.__table__.insert(), records)  # type: ignore[attr-defined]
                report.delivered += 1
                report.by_target[item.target] = report.by_target.get(item.target, 0) + 1
            if on_item:
                on_item()


def _failed(
    engine: Engine,
    item: OutboxItem,
    cfg: OutboxConfig,
    error: str,
    retry_after: float | None,
    report: DispatchReport,
    permanent: bool = False,
) -> None:
    attempts = item.attempts + 1
    dead = permanent or attempts >= cfg.max_attempts
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_error": error[:2000],
        "claimed_until": None,
        "claimed_by": None,
        "status": "dead" if dead else "pending",
    }
    if not dead:
        values["next_attempt_at"] = utcnow() + timedelta(
            seconds=backoff(cfg, attempts, retry_after)
        )
    with engine.begin() as conn:
        conn.execute(update(OutboxItem).where(OutboxItem.id == item.id).values(**values))
    if dead:
        report.dead += 1
        log.warning("outbox.dead", item=item.id, target=item.target, attempts=attempts)
    else:
        report.retried += 1
        log.info("outbox.retry", item=item.id, target=item.target, attempts=attempts)
