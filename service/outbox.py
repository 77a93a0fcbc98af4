"""The outbox: every outside effect is an intent written with the change that caused it.

Delivery is at least once, and nothing a person would see happens twice:

1. A worker **claims** due items with a lease and a fencing token (`FOR UPDATE SKIP LOCKED` on
   PostgreSQL; one atomic UPDATE on SQLite). Every later mark has the token in its `WHERE`: a
   worker whose lease ran out marks nothing. A background thread renews the lease while the
   worker delivers; a dead worker's items come back when the lease expires, on any host. A
   family notice whose contact has another notice held by a worker waits for a later claim: one
   worker at a time delivers a contact's notices.
2. `Deliverer.plan_many` applies send-time **policy** and **renders** against the data as it is
   now, a claimed batch at a time with one read per table: skip (suppressed, superseded), wait
   (quiet hours, caps) or send. A contact's second notice in the batch is planned in a later
   round, after the first one's mark, so the family cap and repeated resources count it.
3. For a target with no idempotency of its own (SMS, email, a create in a tool that issues its
   own ids), `sending` is **committed before the call** (for a target that takes a batch, for
   the whole batch before its one call). An item found in `sending` after a crash is never
   resent blindly: the target's `reconcile` says sent, not sent, or unknown, and unknown parks
   it in `needs_review` for a person (`casebridge outbox resolve`).
4. The **mark** (`delivered`, with the tool's id, the delivery link and the disclosure record) is
   one transaction; a batch sent in one call, or deliveries whose target drops a repeat of our
   key, share it (an executemany with the token in every WHERE; if any claim was lost it rolls
   back and each is marked alone). Any error outside the taxonomy counts as a failed attempt:
   nothing stays leased and the rest of the batch goes on.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, and_, bindparam, func, or_, select, update

from connectors.base import DeliveryResult
from service.bulk import insert_new, table
from service.clock import utcnow
from service.config import OutboxConfig
from service.delivery import Delivered, Deliverer, Send, Skip, Wait
from service.errors import AddressRejected, OutcomeUnknown, PermanentError, TransientError
from service.intents import FAMILY_NOTICE
from service.logging import carry_context
from service.models import ClaimedItem, OutboxItem

log = structlog.get_logger(__name__)

WORKER = f"{socket.gethostname()}:{os.getpid()}"
CLAIM_LOCK_ID = 0x4F555442  # "OUTB": the PostgreSQL advisory lock claims take in turn
FINAL = ("delivered", "dead", "suppressed", "superseded")


def enqueue(conn: Connection, items: list[dict[str, Any]]) -> int:
    """Add intents in the caller's transaction; an existing key is left alone (not a duplicate)."""
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
            # An intent may wait (a status the referrer may hear only after a delay).
            "next_attempt_at": item.get("not_before", now),
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
    needs_review: int = 0
    superseded: int = 0
    reconciled: int = 0
    lost_claims: int = 0
    by_target: Counter[str] = field(default_factory=Counter)
    suppressed: Counter[str] = field(default_factory=Counter)
    deferred: Counter[str] = field(default_factory=Counter)


def backoff(cfg: OutboxConfig, attempts: int, retry_after: float | None = None) -> float:
    """Seconds until the next attempt: exponential with full jitter, at least `retry_after`."""
    ceiling = min(cfg.max_delay_seconds, cfg.base_delay_seconds * (2 ** max(attempts - 1, 0)))
    delay = random.uniform(ceiling / 2, ceiling) if ceiling else 0.0
    return max(delay, retry_after or 0.0)


# -- claims -----------------------------------------------------------------------------------


def _due(now: datetime) -> Any:
    return and_(
        OutboxItem.status.in_(("pending", "sending")),
        OutboxItem.next_attempt_at <= now,
        or_(OutboxItem.claimed_until.is_(None), OutboxItem.claimed_until < now),
    )


def _claimable(now: datetime) -> Any:
    """Due, unless it is a family notice whose contact has another notice held by a worker now.

    A contact's notices are delivered by one worker at a time, so the family cap and the
    no-repeat rule see each other's deliveries (a guardian of siblings gets one notice per
    case). Within one claimed batch, `Deliverer.rounds` does the same.
    """
    held = select(OutboxItem.contact_id).where(
        OutboxItem.kind == FAMILY_NOTICE,
        OutboxItem.status.in_(("pending", "sending")),
        OutboxItem.claimed_until >= now,
        OutboxItem.contact_id.is_not(None),
    )
    return and_(
        _due(now),
        or_(
            OutboxItem.kind != FAMILY_NOTICE,
            OutboxItem.contact_id.is_(None),
            OutboxItem.contact_id.not_in(held),
        ),
    )


def claim(
    engine: Engine, limit: int, lease_seconds: float, now: datetime | None = None
) -> tuple[str, list[ClaimedItem]]:
    """Take up to `limit` due items under a new fencing token."""
    token = str(uuid.uuid4())
    now = now or utcnow()
    values = {
        "claim_token": token,
        "claimed_until": now + timedelta(seconds=lease_seconds),
        "claimed_by": WORKER,
    }
    with engine.begin() as conn:
        due = select(OutboxItem.id).where(_claimable(now)).order_by(OutboxItem.id).limit(limit)
        if conn.dialect.name == "postgresql":
            # Claims take turns (a few milliseconds each), so each sees the leases the others
            # committed: `_claimable` keeps a contact's notices with one worker.
            conn.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_ID)))
            # Rows a worker is marking right now are skipped, not waited on.
            ids = list(conn.execute(due.with_for_update(skip_locked=True)).scalars())
            if not ids:
                return token, []
            conn.execute(update(OutboxItem).where(OutboxItem.id.in_(ids)).values(**values))
        else:
            # One statement: SQLite's write lock makes it atomic against another process.
            conn.execute(
                update(OutboxItem)
                .where(OutboxItem.id.in_(due.scalar_subquery()), _claimable(now))
                .values(**values)
            )
        rows = conn.execute(
            select(OutboxItem.__table__)
            .where(OutboxItem.claim_token == token)
            .order_by(OutboxItem.id)
        ).mappings()
        return token, [ClaimedItem(**r) for r in rows]


class LeaseKeeper:
    """Renews the lease of every item still held under `token` while the worker delivers."""

    def __init__(
        self,
        engine: Engine,
        token: str,
        lease_seconds: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.token = token
        self.lease = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=carry_context(self._run), name="outbox-lease", daemon=True
        )  # its log lines keep the dispatch's run_id

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        update(OutboxItem)
                        .where(
                            OutboxItem.claim_token == self.token,
                            OutboxItem.claimed_until.is_not(None),
                        )
                        .values(claimed_until=self.clock() + timedelta(seconds=self.lease))
                    )
            except Exception as exc:  # a missed renewal only risks the lease: the fence holds
                log.warning("outbox.lease_renewal_failed", error=type(exc).__name__)


# -- fenced marks -------------------------------------------------------------------------------

RELEASE = {"claimed_until": None, "claimed_by": None, "claim_token": None}
OUTBOX = table("outbox")


def _mark(
    conn: Connection, item: ClaimedItem, token: str, values: dict[str, Any], keep: bool = False
) -> bool:
    """Update the item if this worker still holds it; False means the claim was lost."""
    changes = values if keep else {**values, **RELEASE}
    done = conn.execute(
        update(OutboxItem)
        .where(OutboxItem.id == item.id, OutboxItem.claim_token == token)
        .values(**changes)
    )
    return done.rowcount == 1


def _mark_alone(engine: Engine, item: ClaimedItem, token: str, values: dict[str, Any]) -> bool:
    with engine.begin() as conn:
        return _mark(conn, item, token, values)


def _mark_many(
    conn: Connection,
    token: str,
    marks: list[tuple[ClaimedItem, dict[str, Any]]],
    keep: bool = False,
) -> bool:
    """The fenced `_mark` for many items: one executemany per set of changed columns. True when
    this worker still held every one of them; otherwise the caller rolls back and marks them
    one by one, so each lost claim is found and counted."""
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for item, values in marks:
        changes = values if keep else {**values, **RELEASE}
        row = {f"v_{k}": v for k, v in changes.items()} | {"b_id": item.id, "b_token": token}
        shapes.setdefault(tuple(sorted(changes)), []).append(row)
    done = 0
    for columns, rows in shapes.items():
        statement = (
            update(OUTBOX)
            .where(OUTBOX.c.id == bindparam("b_id"), OUTBOX.c.claim_token == bindparam("b_token"))
            .values({c: bindparam(f"v_{c}", type_=OUTBOX.c[c].type) for c in columns})
        )
        done += conn.execute(statement, rows).rowcount
    return done == len(marks)


# -- the dispatcher -----------------------------------------------------------------------------


@dataclass
class _Confirmed:
    """A delivery the target confirmed, waiting for its delivered mark."""

    item: ClaimedItem
    target: str
    record: dict[str, Any]
    result: DeliveryResult
    # `sending` was committed before the call: an error from now on leaves it to reconcile.
    sending: bool


class Dispatcher:
    def __init__(self, engine: Engine, deliverer: Deliverer, cfg: OutboxConfig) -> None:
        self.engine = engine
        self.deliverer = deliverer
        self.clock = deliverer.clock  # one "now" for claims, policy and marks
        self.cfg = cfg
        self.report = DispatchReport()
        # Called between one-by-one sends and after each batch; it may raise to stop (a worker
        # told to stop ends after the text in hand, not after the whole batch).
        self.between_sends: Callable[[], None] = lambda: None

    def run(self, on_item: Callable[[], None] | None = None) -> DispatchReport:
        """Deliver every due item; returns when nothing is due."""
        if on_item:
            self.between_sends = on_item
        while True:
            token, items = claim(
                self.engine, self.cfg.batch_size, self.cfg.lease_seconds, self.clock()
            )
            if not items:
                return self.report
            with LeaseKeeper(self.engine, token, self.cfg.lease_seconds, self.clock):
                self.deliver(items, token)
            self.between_sends()

    def one(self, item: ClaimedItem, token: str) -> None:
        self.deliver([item], token)

    def deliver(self, items: list[ClaimedItem], token: str) -> None:
        """Deliver a claimed batch. What a crash left in `sending` is reconciled first, one by
        one; the rest is planned, sent and marked round by round (`Deliverer.rounds`), each
        round with a few statements whatever its size."""
        fresh: list[ClaimedItem] = []
        for item in items:
            if item.status != "sending" or self._reconcile_first(item, token):
                fresh.append(item)
        for round_ in self.deliverer.rounds(fresh):
            self._deliver_round(round_, token)

    def _deliver_round(self, items: list[ClaimedItem], token: str) -> None:
        settles: list[tuple[ClaimedItem, dict[str, Any]]] = []
        # Keyed by the target's own `deliver_many`: a destination and a channel may share a name.
        batches: dict[object, list[tuple[ClaimedItem, Send]]] = {}
        singles: list[tuple[ClaimedItem, Send]] = []
        for item, plan in zip(items, self.deliverer.plan_many(items), strict=True):
            if isinstance(plan, Exception):
                self._error(item, token, plan)
            elif isinstance(plan, Skip):
                settles.append((item, {"status": plan.status, "reason": plan.reason}))
                if plan.status == "superseded":
                    self.report.superseded += 1
                else:
                    self.report.suppressed[plan.reason] += 1
            elif isinstance(plan, Wait):  # quiet hours, caps: not an attempt
                settles.append(
                    (item, {"status": "pending", "next_attempt_at": plan.until,
                            "reason": f"deferred: {plan.reason}"})
                )  # fmt: skip
                self.report.deferred[plan.reason] += 1
            elif plan.batch is not None:
                batches.setdefault(plan.batch.deliver_many, []).append((item, plan))
            else:
                singles.append((item, plan))
        self._settle_many(token, settles)
        for group in batches.values():
            self._send_batch(group, token)
        # Deliveries a repeat cannot show twice (the target drops our key) share one mark.
        acknowledged: list[_Confirmed] = []
        for n, (item, plan) in enumerate(singles):
            if n:
                try:
                    self.between_sends()
                except BaseException:  # a stop: what was sent is marked before it is honoured
                    self._mark_delivered(acknowledged, token)
                    raise
            confirmed = self._send_one(item, token, plan)
            if confirmed is None:
                continue
            if plan.dedupes_by_key:
                acknowledged.append(confirmed)
            else:  # marked before the next call, as the single-item contract has it
                self._mark_delivered([confirmed], token)
        self._mark_delivered(acknowledged, token)

    def _send_one(self, item: ClaimedItem, token: str, plan: Send) -> _Confirmed | None:
        sending = False
        try:
            if plan.needs_sending_mark:
                if not self._mark_sending(item, token, plan):
                    return None
                sending = True
            result = plan.call()
        except Exception as exc:
            self._error(item, token, exc, sending=sending)
            return None
        return _Confirmed(item, plan.target, plan.record, result, sending)

    def _send_batch(self, group: list[tuple[ClaimedItem, Send]], token: str) -> None:
        """One target's deliveries in one `deliver_many` call: `sending` committed first for
        those that need it (one transaction), then the call, then the marks (one transaction)."""
        held = self._mark_sending_many([(i, p) for i, p in group if p.needs_sending_mark], token)
        ready = [(i, p) for i, p in group if not p.needs_sending_mark or i.id in held]
        if not ready:
            return
        first = ready[0][1].batch
        assert first is not None
        outcomes: list[DeliveryResult | Exception]
        try:
            outcomes = first.deliver_many([p.batch.request for _, p in ready if p.batch])
            if len(outcomes) != len(ready):
                raise OutcomeUnknown(
                    f"{ready[0][1].target} answered {len(outcomes)} of {len(ready)}"
                )
        except Exception as exc:  # the same for every entry (see DeliversTasksInBatches)
            outcomes = [exc] * len(ready)
        confirmed: list[_Confirmed] = []
        for (item, plan), outcome in zip(ready, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self._error(item, token, outcome, sending=plan.needs_sending_mark)
            else:
                confirmed.append(
                    _Confirmed(item, plan.target, plan.record, outcome, plan.needs_sending_mark)
                )
        self._mark_delivered(confirmed, token)

    def _error(
        self,
        item: ClaimedItem,
        token: str,
        exc: Exception,
        sending: bool = False,
        reconciling: bool = False,
    ) -> None:
        """What an error means for the item. `sending`: the target may have it (`sending` was
        committed before the call); `reconciling`: the error came from asking the target about
        an earlier attempt."""
        if isinstance(exc, OutcomeUnknown):
            self._uncertain(item, token, str(exc))
        elif isinstance(exc, TransientError):
            if reconciling:  # we still don't know whether it went out: ask again later
                self._uncertain(item, token, f"reconcile: {exc}")
            else:  # by contract, a transient error means the call did not take effect
                self._failed(item, token, str(exc), exc.retry_after)
        elif isinstance(exc, AddressRejected):
            self._rejected(item, token, exc)
        elif isinstance(exc, PermanentError):
            if reconciling:  # it may have gone out: a person decides, never a blind resend
                self._park(item, token, f"reconcile: {exc}")
            else:
                self._failed(item, token, str(exc), None, permanent=True)
        else:
            # Outside the taxonomy: a failed attempt, never a stalled batch or a held lease.
            message = f"{type(exc).__name__}: {exc}"
            log.error(
                "outbox.unexpected_error",
                outbox_id=item.id,
                case_id=item.case_id,
                error=type(exc).__name__,
            )
            if sending:
                self._uncertain(item, token, message)
            else:
                self._failed(item, token, message, None)

    def _reconcile_first(self, item: ClaimedItem, token: str) -> bool:
        """True when the item should be planned and sent (the target says it never went out)."""
        try:
            return self._reconcile(item, token)
        except Exception as exc:
            self._error(item, token, exc, sending=True, reconciling=True)
            return False

    def _mark_sending(self, item: ClaimedItem, token: str, plan: Send) -> bool:
        """Commit `sending` before a call that cannot be repeated safely."""
        with self.engine.begin() as conn:
            ok = _mark(conn, item, token, self._sending_values(plan), keep=True)
        if ok:
            item.status, item.target, item.result = "sending", plan.target, plan.record
            item.sending_at = self.clock()
        else:
            self._lost(item)
        return ok

    def _mark_sending_many(self, group: list[tuple[ClaimedItem, Send]], token: str) -> set[int]:
        """`_mark_sending` for a batch in one transaction; the ids still held."""
        if not group:
            return set()
        with self.engine.connect() as conn, conn.begin() as tx:
            ok = _mark_many(conn, token, [(i, self._sending_values(p)) for i, p in group], True)
            if not ok:
                tx.rollback()
        if not ok:  # a claim was lost: one by one, so the others still go
            return {item.id for item, plan in group if self._mark_sending(item, token, plan)}
        now = self.clock()
        for item, plan in group:
            item.status, item.target, item.result = "sending", plan.target, plan.record
            item.sending_at = now
        return {item.id for item, _ in group}

    def _sending_values(self, plan: Send) -> dict[str, Any]:
        return {"status": "sending", "sending_at": self.clock(), "target": plan.target,
                "result": plan.record}  # fmt: skip

    def _reconcile(self, item: ClaimedItem, token: str) -> bool:
        """An item left in `sending`: find out before anything is sent again.

        True when the caller should go on and send it (the target says it never went out).
        """
        verdict = self.deliverer.reconcile(item)
        self.report.reconciled += 1
        if verdict.outcome == "sent":
            result = verdict.result or DeliveryResult(None)
            self._mark_delivered(
                [_Confirmed(item, item.target, item.result or {}, result, True)], token
            )
            return False
        if verdict.outcome == "unknown":
            self._park(item, token, f"reconcile: {verdict.detail or 'unknown'}")
            return False
        with self.engine.begin() as conn:
            ok = _mark(
                conn, item, token,
                {"status": "pending", "reason": "reconciled: not sent", "sending_at": None},
                keep=True,
            )  # fmt: skip
        if not ok:
            self._lost(item)
            return False
        item.status = "pending"
        return True

    def _park(self, item: ClaimedItem, token: str, reason: str) -> None:
        """Whether it went out cannot be known: a person settles it (`outbox resolve`)."""
        self._settle(item, token, {"status": "needs_review", "reason": reason[:255]})
        self.report.needs_review += 1
        log.warning(
            "outbox.needs_review", outbox_id=item.id, case_id=item.case_id, target=item.target
        )

    def _delivered_values(self, confirmed: _Confirmed) -> dict[str, Any]:
        result = confirmed.result
        return {
            "status": "delivered",
            "reason": None,
            "target": confirmed.target,
            "attempts": confirmed.item.attempts + 1,
            "delivered_at": self.clock(),
            "external_id": result.external_id,
            "result": {**confirmed.record, **({"detail": result.detail} if result.detail else {})},
            "last_error": None,
        }

    def _mark_delivered(self, confirmed: list[_Confirmed], token: str) -> None:
        """The delivered marks with their links and disclosures, all in one transaction. When
        a claim was lost (or the transaction failed), each is marked on its own instead."""
        if not confirmed:
            return
        if len(confirmed) > 1:
            try:
                with self.engine.connect() as conn, conn.begin() as tx:
                    marks = [(c.item, self._delivered_values(c)) for c in confirmed]
                    ok = _mark_many(conn, token, marks)
                    if ok:
                        self.deliverer.delivered_many(conn, self._delivered_rows(confirmed))
                    else:
                        tx.rollback()
            except Exception as exc:
                log.warning("outbox.batch_mark_failed", error=type(exc).__name__)
                ok = False
            if ok:
                for c in confirmed:
                    self._count_delivered(c)
                return
        for c in confirmed:
            try:
                self._delivered(c, token)
            except Exception as exc:
                self._error(c.item, token, exc, sending=c.sending)

    def _delivered_rows(self, confirmed: list[_Confirmed]) -> list[Delivered]:
        for c in confirmed:
            c.item.target = c.target
        return [Delivered(c.item, c.record, c.result) for c in confirmed]

    def _delivered(self, confirmed: _Confirmed, token: str) -> None:
        item = confirmed.item
        with self.engine.begin() as conn:
            ok = _mark(conn, item, token, self._delivered_values(confirmed))
            if ok:
                self.deliverer.delivered_many(conn, self._delivered_rows([confirmed]))
        if ok:
            self._count_delivered(confirmed)
        else:
            # Another worker holds it now. A provider-key or linked target absorbs its redelivery;
            # a `sending` item is reconciled by that worker, not resent.
            self._lost(item)

    def _count_delivered(self, confirmed: _Confirmed) -> None:
        self.report.delivered += 1
        self.report.by_target[confirmed.target] += 1

    def _settle(self, item: ClaimedItem, token: str, values: dict[str, Any]) -> None:
        if not _mark_alone(self.engine, item, token, values):
            self._lost(item)

    def _settle_many(self, token: str, settles: list[tuple[ClaimedItem, dict[str, Any]]]) -> None:
        """Skips and waits of a round in one transaction (one by one when a claim was lost)."""
        if not settles:
            return
        with self.engine.connect() as conn, conn.begin() as tx:
            ok = _mark_many(conn, token, settles)
            if not ok:
                tx.rollback()
        if not ok:
            for item, values in settles:
                self._settle(item, token, values)

    def _failed(
        self,
        item: ClaimedItem,
        token: str,
        error: str,
        retry_after: float | None,
        permanent: bool = False,
    ) -> None:
        attempts = item.attempts + 1
        dead = permanent or attempts >= self.cfg.max_attempts
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_error": error[:2000],
            "status": "dead" if dead else "pending",
            "reason": ("permanent error" if permanent else "attempts exhausted") if dead else None,
            "sending_at": None,
        }
        if not dead:
            values["next_attempt_at"] = self.clock() + timedelta(
                seconds=backoff(self.cfg, attempts, retry_after)
            )
        if not _mark_alone(self.engine, item, token, values):
            self._lost(item)
            return
        if dead:
            self.report.dead += 1
            log.warning(
                "outbox.dead",
                outbox_id=item.id,
                case_id=item.case_id,
                target=item.target,
                attempts=attempts,
            )
        else:
            self.report.retried += 1
            log.info(
                "outbox.retry",
                outbox_id=item.id,
                case_id=item.case_id,
                target=item.target,
                attempts=attempts,
            )

    def _uncertain(self, item: ClaimedItem, token: str, error: str) -> None:
        """The call may have gone out: keep `sending`, so the next claim reconciles first."""
        attempts = item.attempts + 1
        if attempts >= self.cfg.max_attempts:
            values: dict[str, Any] = {
                "status": "needs_review",
                "reason": "outcome unknown after the last attempt",
                "attempts": attempts,
                "last_error": error[:2000],
            }
            self.report.needs_review += 1
        else:
            values = {
                "status": "sending",
                "attempts": attempts,
                "last_error": error[:2000],
                "next_attempt_at": self.clock() + timedelta(seconds=backoff(self.cfg, attempts)),
            }
            self.report.retried += 1
        if not _mark_alone(self.engine, item, token, values):
            self._lost(item)

    def _rejected(self, item: ClaimedItem, token: str, exc: AddressRejected) -> None:
        """The provider refused the address for good (no message was created).

        Recorded on the contact in the same transaction as the mark, and the notice goes back to
        planning: after an invalid number the policy picks email; after a carrier opt-out it
        suppresses the notice (`opted_out`). The refused address is never tried again.
        """
        replan = exc.medium == "sms"
        attempts = item.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_error": str(exc)[:2000],
            "sending_at": None,
            "status": "pending" if replan else "dead",
            "reason": f"address rejected ({exc.code or exc.medium})",
        }
        if replan:
            values["next_attempt_at"] = self.clock()
        with self.engine.begin() as conn:
            ok = _mark(conn, item, token, values)
            if ok:
                self.deliverer.rejected(conn, item, exc)
        if not ok:
            self._lost(item)
        elif replan:
            self.report.retried += 1
        else:
            self.report.dead += 1
        log.warning(
            "outbox.address_rejected",
            outbox_id=item.id,
            case_id=item.case_id,
            code=exc.code,
            replan=replan,
        )

    def _lost(self, item: ClaimedItem) -> None:
        self.report.lost_claims += 1
        log.warning(
            "outbox.claim_lost", outbox_id=item.id, case_id=item.case_id, target=item.target
        )


def dispatch(
    engine: Engine,
    deliverer: Deliverer,
    cfg: OutboxConfig,
    on_item: Callable[[], None] | None = None,
) -> DispatchReport:
    """Deliver every due item once; failures are scheduled again, dead-lettered or parked."""
    return Dispatcher(engine, deliverer, cfg).run(on_item)
