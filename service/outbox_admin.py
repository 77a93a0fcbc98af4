"""What an operator does with the outbox: look, retry dead items, settle uncertain ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, Row, select, update

from connectors.base import DeliveryResult
from service.clock import utcnow
from service.config import Settings
from service.delivery import Deliverer
from service.models import ClaimedItem, OutboxItem

# Items a person may settle: not yet final, and not held by a live worker right now.
RESOLVABLE = ("needs_review", "sending", "pending", "dead")


def list_items(
    engine: Engine, statuses: Sequence[str], case_id: int | None, limit: int
) -> list[Row[Any]]:
    q = (
        select(
            OutboxItem.id, OutboxItem.kind, OutboxItem.target, OutboxItem.case_id,
            OutboxItem.contact_id, OutboxItem.status, OutboxItem.reason, OutboxItem.last_error,
            OutboxItem.attempts, OutboxItem.next_attempt_at,
        )
        .where(OutboxItem.status.in_(list(statuses)))
        .order_by(OutboxItem.id)
        .limit(limit)
    )  # fmt: skip
    if case_id is not None:
        q = q.where(OutboxItem.case_id == case_id)
    with engine.connect() as conn:
        return list(conn.execute(q))


def retry_items(engine: Engine, ids: list[int], status: str | None) -> int:
    """Dead items (or the given ids, if dead) go back to pending with attempts reset."""
    q = update(OutboxItem).where(OutboxItem.status == "dead")
    if ids:
        q = q.where(OutboxItem.id.in_(ids))
    elif status != "dead":
        # needs_review may have gone out: only `resolve` settles it.
        return 0
    with engine.begin() as conn:
        return int(
            conn.execute(
                q.values(
                    status="pending",
                    attempts=0,
                    next_attempt_at=utcnow(),
                    reason="retried by operator",
                    last_error=None,
                )
            ).rowcount
        )


def resolve_item(engine: Engine, settings: Settings, item_id: int, outcome: str, note: str) -> str:
    """`sent`: mark delivered with its disclosure; `not-sent`: queue to send; `drop`: dead."""
    now = utcnow()
    with engine.begin() as conn:
        row = conn.execute(select(OutboxItem.__table__).where(OutboxItem.id == item_id)).first()
        if row is None:
            raise LookupError(f"no outbox item {item_id}")
        item = ClaimedItem(**row._asdict())
        if item.status not in RESOLVABLE:
            raise LookupError(f"item {item_id} is {item.status}: nothing to resolve")
        if (
            item.claimed_until is not None
            and item.claimed_until.replace(tzinfo=now.tzinfo) > now
            and item.status == "sending"
        ):
            raise LookupError(f"item {item_id} is being sent by {item.claimed_by} right now")
        reason = f"resolved by operator: {outcome}" + (f" ({note})" if note else "")
        common = {"claimed_until": None, "claimed_by": None, "claim_token": None}
        if outcome == "sent":
            status = "delivered"
            conn.execute(
                update(OutboxItem)
                .where(OutboxItem.id == item_id)
                .values(status=status, delivered_at=now, reason=reason, **common)
            )
            # The family or the tool got it: record the disclosure like any delivery.
            deliverer = Deliverer(engine, settings, targets=({}, {}))
            deliverer.delivered(conn, item, item.result or {}, DeliveryResult(item.external_id))
        elif outcome == "not-sent":
            status = "pending"
            conn.execute(
                update(OutboxItem)
                .where(OutboxItem.id == item_id)
                .values(status=status, next_attempt_at=now, reason=reason, sending_at=None,
                        **common)
            )  # fmt: skip
        else:
            status = "dead"
            conn.execute(
                update(OutboxItem)
                .where(OutboxItem.id == item_id)
                .values(status=status, reason=reason, **common)
            )
    return status
