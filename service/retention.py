"""Retention: personal detail casebridge no longer needs is purged on a schedule.

Three categories, each after its own number of days (`retention:` in the configuration; null
keeps that category forever):

- *quarantine payloads*: a record held back from import keeps its row, reason, location and
  counts; the record as it arrived (which may hold names and birth dates) is blanked.
- *message bodies*: texts families sent us (`inbound_messages.body`), their answers to a
  follow-up (`case_replies.text`), any rendered text a channel kept in an outbox item, and
  addresses quoted in a delivery error.
- *closed cases*: a case closed that long ago goes, with what identifies the student in it:
  referrals (the indicator snapshot), events, family replies, outbox items (addresses), the links
  to the tools' items, the tools' status receipts and the provider's message states.

Kept whatever the settings say: the disclosure log (34 CFR 99.32: kept as long as the education
record it describes; a purged case leaves its disclosures with the student id, the case id and
what the disclosure was for) and consent evidence (`consent_events`, `contact_preferences`:
TCPA, at least four years).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, String, cast, delete, func, or_, select, update

from service.clock import utcnow
from service.config import Settings
from service.intents import FAMILY_NOTICE, FOLLOW_UP
from service.logging import scrub
from service.models import (
    Case,
    CaseEvent,
    CaseReply,
    ConsentEvent,
    DeliveryLink,
    Disclosure,
    InboundMessage,
    MessageStatus,
    OutboxItem,
    PersonReferral,
    QuarantinedRecord,
    Referral,
    ReferralStatusToken,
    ResourceQuarantine,
    ToolStatusReceipt,
)

log = structlog.get_logger(__name__)

QUARANTINE = "quarantine payloads"
MESSAGES = "message bodies"
CLOSED_CASES = "closed cases"
CATEGORIES = (QUARANTINE, MESSAGES, CLOSED_CASES)
# Settled items only: a pending or sending item still needs what it holds.
SETTLED = ("delivered", "dead", "suppressed", "superseded")
# Outbox items a person must still settle keep their case (`outbox resolve`).
UNSETTLED = ("pending", "sending", "needs_review")
# Keys under which a channel could keep rendered text in an item's payload or result.
TEXT_KEYS = ("body", "text", "html")
CASE_BATCH = 500
# What a closed case takes with it, in report order (deleted in the reverse order).
CASE_PARTS = (
    "cases",
    "referrals (with their indicator snapshots)",
    "person referrals as sent (referrer, note)",
    "referral status tokens",
    "case events",
    "outbox items (addresses, what was sent)",
    "family answers",
    "links to staff-tool items",
    "staff-tool status receipts",
    "provider message states",
)


@dataclass
class RetentionReport:
    dry_run: bool
    now: datetime
    # category -> cutoff (None: kept forever)
    cutoffs: dict[str, datetime | None] = field(default_factory=dict)
    # (category, what) -> rows purged (or that would be, on a dry run), in report order
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    # Never purged: shown so the reader sees them kept.
    kept: dict[str, int] = field(default_factory=dict)
    # Closed cases past their cutoff that wait for an outbox item a person must settle.
    cases_waiting: int = 0

    def add(self, category: str, what: str, rows: int) -> None:
        self.counts[(category, what)] = self.counts.get((category, what), 0) + max(rows, 0)

    def total(self, category: str) -> int:
        return sum(n for (c, _), n in self.counts.items() if c == category)


def cutoff(now: datetime, days: int | None) -> datetime | None:
    return None if days is None else now - timedelta(days=days)


def run_retention(
    engine: Engine, settings: Settings, now: datetime | None = None, dry_run: bool = False
) -> RetentionReport:
    """Purge (or, with `dry_run`, count) everything past its retention period."""
    now = now or utcnow()
    cfg = settings.retention
    report = RetentionReport(dry_run, now)
    report.cutoffs = {
        QUARANTINE: cutoff(now, cfg.quarantine_payload_days),
        MESSAGES: cutoff(now, cfg.message_body_days),
        CLOSED_CASES: cutoff(now, cfg.closed_case_days),
    }
    steps: list[tuple[str, Callable[[Engine, datetime, RetentionReport], None]]] = [
        (QUARANTINE, _quarantine),
        (MESSAGES, _message_bodies),
        (CLOSED_CASES, _closed_cases),
    ]
    for category, step in steps:
        before = report.cutoffs[category]
        if before is not None:
            step(engine, before, report)
    with engine.connect() as conn:
        report.kept = {
            "disclosure records": conn.execute(select(func.count()).select_from(Disclosure))
            .scalar_one(),
            "consent events": conn.execute(select(func.count()).select_from(ConsentEvent))
            .scalar_one(),
        }  # fmt: skip
    log.info(
        "retention.finished", dry_run=dry_run,
        **{c.replace(" ", "_"): report.total(c) for c in CATEGORIES},
        cases_waiting=report.cases_waiting,
    )  # fmt: skip
    return report


def _count_or_update(
    conn: Connection, dry_run: bool, model: Any, where: Sequence[Any], values: dict[str, Any]
) -> int:
    if dry_run:
        return int(conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one())
    return int(conn.execute(update(model).where(*where).values(**values)).rowcount)


def _quarantine(engine: Engine, before: datetime, report: RetentionReport) -> None:
    """Blank the record as it arrived; the row says where, why and how often."""
    Q, R = QuarantinedRecord, ResourceQuarantine
    with engine.begin() as conn:
        blank = {"payload": {}, "payload_purged_at": report.now}
        report.add(QUARANTINE, "quarantined records", _count_or_update(
            conn, report.dry_run, Q, [Q.last_seen < before, Q.payload_purged_at.is_(None)], blank,
        ))  # fmt: skip
        report.add(QUARANTINE, "quarantined directory records", _count_or_update(
            conn, report.dry_run, R, [R.at < before, R.payload_purged_at.is_(None)], blank,
        ))  # fmt: skip


def _message_bodies(engine: Engine, before: datetime, report: RetentionReport) -> None:
    I, C, O = InboundMessage, CaseReply, OutboxItem  # noqa: E741
    with engine.begin() as conn:
        report.add(MESSAGES, "texts received from families", _count_or_update(
            conn, report.dry_run, I, [I.received_at < before, I.body != ""], {"body": ""},
        ))  # fmt: skip
        report.add(MESSAGES, "follow-up answers", _count_or_update(
            conn, report.dry_run, C, [C.at < before, C.text != ""], {"text": ""},
        ))  # fmt: skip
        # Rendered text a channel kept with a family item (the built-in ones keep a digest).
        maybe_text = or_(*(cast(col, String).like(f'%"{key}"%')
                           for col in (O.payload, O.result) for key in TEXT_KEYS))  # fmt: skip
        rows = conn.execute(
            select(O.id, O.payload, O.result).where(
                O.kind.in_((FAMILY_NOTICE, FOLLOW_UP)), O.status.in_(SETTLED),
                O.created_at < before, maybe_text,
            )
        ).all()  # fmt: skip
        stripped = 0
        for item_id, payload, result in rows:
            new_payload, new_result = _without_text(payload), _without_text(result)
            if (new_payload, new_result) == (payload, result):
                continue
            stripped += 1
            if not report.dry_run:
                conn.execute(
                    update(O).where(O.id == item_id).values(payload=new_payload, result=new_result)
                )
        report.add(MESSAGES, "message text kept in outbox items", stripped)
        # A provider's error quotes the address it refused ("The 'To' number +1... is not
        # valid"): the error stays readable, the address goes.
        errors = conn.execute(
            select(O.id, O.last_error).where(
                O.status.in_(SETTLED), O.created_at < before, O.last_error.is_not(None)
            )
        ).all()  # fmt: skip
        scrubbed = 0
        for item_id, error in errors:
            clean = scrub(error or "")
            if clean != error:
                scrubbed += 1
                if not report.dry_run:
                    conn.execute(update(O).where(O.id == item_id).values(last_error=clean))
        report.add(MESSAGES, "addresses in delivery errors", scrubbed)


def _without_text(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if k not in TEXT_KEYS}


def _closed_cases(engine: Engine, before: datetime, report: RetentionReport) -> None:
    """Delete cases closed before `before`, and what identifies the student in them; keep
    their disclosure rows, made whole first (case id, purpose) since the outbox rows go."""
    busy = (
        select(OutboxItem.id)
        .where(OutboxItem.case_id == Case.id, OutboxItem.status.in_(UNSETTLED))
        .exists()
    )
    with engine.connect() as conn:
        due = list(
            conn.execute(
                select(Case.id)
                .where(Case.status == "closed", Case.closed_at < before, ~busy)
                .order_by(Case.id)
            ).scalars()
        )
        report.cases_waiting = int(
            conn.execute(
                select(func.count())
                .select_from(Case)
                .where(Case.status == "closed", Case.closed_at < before, busy)
            ).scalar_one()
        )
    for what in CASE_PARTS:  # every line in the report, in this order, even when 0
        report.add(CLOSED_CASES, what, 0)
    for start in range(0, len(due), CASE_BATCH):
        ids = due[start : start + CASE_BATCH]
        with engine.begin() as conn:
            _purge_cases(conn, ids, report)
    _rejected_referrals(engine, before, report)


def _rejected_referrals(engine: Engine, before: datetime, report: RetentionReport) -> None:
    """A person's referral staff rejected has no case to go with: it goes as long after it was
    rejected as a closed case after it closed. Unmatched ones wait for a person."""
    rejected = select(PersonReferral.id).where(
        PersonReferral.state == "rejected", PersonReferral.resolved_at < before
    )
    what = "rejected person referrals (referrer, note)"
    report.add(CLOSED_CASES, what, 0)  # the line shows even when nothing goes
    with engine.begin() as conn:
        if report.dry_run:
            n = conn.execute(select(func.count()).select_from(rejected.subquery())).scalar_one()
            report.add(CLOSED_CASES, what, int(n))
            return
        ids = list(conn.execute(rejected).scalars())
        for start in range(0, len(ids), CASE_BATCH):
            batch = ids[start : start + CASE_BATCH]
            conn.execute(
                delete(ReferralStatusToken).where(ReferralStatusToken.person_referral_id.in_(batch))
            )
            gone = conn.execute(delete(PersonReferral).where(PersonReferral.id.in_(batch)))
            report.add(CLOSED_CASES, what, int(gone.rowcount))


def _purge_cases(conn: Connection, ids: list[int], report: RetentionReport) -> None:
    items = conn.execute(
        select(OutboxItem.id, OutboxItem.external_id).where(OutboxItem.case_id.in_(ids))
    ).all()
    item_ids = [i for i, _ in items]
    provider_ids = [e for _, e in items if e]
    # Disclosures outlive the outbox row they came from: copy what the row told about them.
    owner = select(OutboxItem.case_id).where(OutboxItem.id == Disclosure.outbox_id)
    kind = select(OutboxItem.kind).where(OutboxItem.id == Disclosure.outbox_id)
    targets: list[tuple[Any, Any]] = [
        (Case, Case.id.in_(ids)),
        (Referral, Referral.case_id.in_(ids)),
        (PersonReferral, PersonReferral.case_id.in_(ids)),
        (
            ReferralStatusToken,
            ReferralStatusToken.person_referral_id.in_(
                select(PersonReferral.id).where(PersonReferral.case_id.in_(ids))
            ),
        ),
        (CaseEvent, CaseEvent.case_id.in_(ids)),
        (OutboxItem, OutboxItem.case_id.in_(ids)),
        (CaseReply, or_(CaseReply.case_id.in_(ids), CaseReply.outbox_id.in_(item_ids))),
        (DeliveryLink, DeliveryLink.case_id.in_(ids)),
        (ToolStatusReceipt, ToolStatusReceipt.case_id.in_(ids)),
        (MessageStatus, MessageStatus.provider_id.in_(provider_ids)),
    ]
    plan = [(what, model, where) for what, (model, where) in zip(CASE_PARTS, targets, strict=True)]
    if report.dry_run:
        for what, model, where in plan:
            n = conn.execute(select(func.count()).select_from(model).where(where)).scalar_one()
            report.add(CLOSED_CASES, what, int(n))
        return
    if item_ids:
        conn.execute(
            update(Disclosure)
            .where(Disclosure.outbox_id.in_(item_ids))
            .values(
                case_id=func.coalesce(Disclosure.case_id, owner.scalar_subquery()),
                purpose=func.coalesce(Disclosure.purpose, kind.scalar_subquery()),
            )
        )
    # Deleted in reverse: children first, since foreign keys point at outbox items and cases.
    for what, model, where in reversed(plan):
        report.add(CLOSED_CASES, what, int(conn.execute(delete(model).where(where)).rowcount))
