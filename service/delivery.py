"""Turn an outbox intent into a delivery: policy, rendering and the target, at send time.

The dispatcher (`service/outbox.py`) owns claims, states and retries; this module knows what
each intent means. `plan` reads the database as it is now and returns what to do (skip, defer,
or send through a target, and whether the target needs `sending` committed first);
`reconcile` asks a target what happened to a delivery whose outcome a crash lost; `delivered`
writes what follows a delivery (the link to the tool's item, the disclosure record) in the same
transaction as the delivered mark.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, and_, insert, select, update

from connectors.base import (
    Channel,
    DeliveryResult,
    Destination,
    FamilyMessage,
    Link,
    Reconciled,
)
from connectors.registry import lookup
from service.clock import utcnow
from service.config import Settings
from service.consent import mark_sms_unusable, record_opt_out
from service.errors import AddressRejected, PermanentError
from service.intents import (
    DIGEST,
    FAMILY_NOTICE,
    FOLLOW_UP,
    REFERRER_STATUS,
    TASK_UPSERT,
    case_subject,
    follow_up,
)
from service.models import Case, DeliveryLink, Disclosure, OutboxItem, ResourceLink
from service.outreach import contact_state, recent_family_sends, resources_for
from service.policy import (
    ChannelChoice,
    Defer,
    Suppress,
    choose_channel,
    decide,
    next_window_opening,
)
from service.ratelimit import wait_for_slot
from service.render import fit_family_notice, render_follow_up
from service.resources import match_resources
from service.sms_text import body_digest, sms_size
from service.task_view import aware, build_task, disclosed_categories, school_name, student_facts

STAFF_BASIS = "school official with legitimate educational interest, 34 CFR 99.31(a)(1)"
# A digest line carries the student's identity, school and grade, and that a case changed.
DIGEST_CATEGORIES = ["identity", "enrollment", "case"]
FAMILY_BASIS = "parent or guardian of the student, 34 CFR 99.10 / 99.31(a)"


@dataclass(frozen=True)
class Skip:
    status: Literal["suppressed", "superseded"]
    reason: str


@dataclass(frozen=True)
class Wait:
    until: datetime
    reason: str


@dataclass
class Send:
    target: str
    # True when a resend could show twice: `sending` is committed before `call`.
    needs_sending_mark: bool
    call: Callable[[], DeliveryResult]
    # Kept on the item: what reconcile and `delivered` need (channel, address, revision...).
    record: dict[str, Any] = field(default_factory=dict)


Plan = Skip | Wait | Send


def build_targets(settings: Settings) -> tuple[dict[str, Destination], dict[str, Channel]]:
    """Every configured destination and channel, built by the kind that registered it."""
    destinations: dict[str, Destination] = {
        d.name: lookup("destination", d.kind).factory(settings, d) for d in settings.destinations
    }
    channels: dict[str, Channel] = {
        c.name: lookup("channel", c.kind).factory(settings, c) for c in settings.channels
    }
    return destinations, channels


class Deliverer:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        targets: tuple[dict[str, Destination], dict[str, Channel]] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.settings = settings
        # "Now" for policy (quiet hours, caps) and marks; tests pin it.
        self.clock = lambda: clock().astimezone(UTC)  # SQLite keeps no offset: store UTC
        self.destinations, self.channels = targets or build_targets(settings)

    # -- plan ---------------------------------------------------------------------------------

    def plan(self, item: OutboxItem) -> Plan:
        if item.kind == TASK_UPSERT:
            return self._plan_task(item)
        if item.kind == FAMILY_NOTICE:
            return self._plan_notice(item)
        if item.kind == FOLLOW_UP:
            return self._plan_follow_up(item)
        if item.kind == DIGEST:
            return self._plan_digest(item)
        if item.kind == REFERRER_STATUS:
            from service.referrals import plan_status  # it builds on the outbox: not at import

            return plan_status(self, item)
        raise PermanentError(f"unknown outbox kind {item.kind!r}")

    def _destination(self, name: str) -> Destination:
        found = self.destinations.get(name)
        if found is None:  # the configuration no longer names it: retrying cannot help
            raise PermanentError(f"no destination named {name!r} is configured")
        return found

    def _plan_task(self, item: OutboxItem) -> Plan:
        destination = self._destination(item.target)
        case_id = int(item.payload["case_id"])
        revision = int(item.payload.get("revision") or 0)
        subject = case_subject(case_id)
        with self.engine.connect() as conn:
            link = self._link(conn, item.target, subject)
            if link is not None and link[1] >= revision:
                return Skip("superseded", f"revision {link[1]} already delivered")
            later = conn.execute(
                select(OutboxItem.id).where(
                    OutboxItem.kind == TASK_UPSERT,
                    OutboxItem.target == item.target,
                    OutboxItem.case_id == case_id,
                    OutboxItem.id > item.id,
                    OutboxItem.status.in_(("pending", "sending")),
                )
            ).first()
            if later is not None:
                return Skip("superseded", "a later revision is queued")
            task = build_task(conn, self.settings, case_id)
        if task is None:
            raise PermanentError(f"case {case_id} no longer exists")
        current = link[0] if link else None
        if current is None and destination.idempotency == "stored_link":
            current = destination.find(subject)  # created before a crash lost the link
        creates_blind = destination.idempotency == "none" or (
            destination.idempotency == "stored_link" and current is None
        )
        record = {
            "subject": subject,
            "revision": task["revision"],
            "data_categories": disclosed_categories(task),
        }
        return Send(
            item.target,
            creates_blind,
            lambda: destination.upsert_task(item.idempotency_key, subject, task, current),
            record,
        )

    def _plan_digest(self, item: OutboxItem) -> Plan:
        """A case manager's daily digest, read now; nothing is sent on a quiet day."""
        from service.digest import build_digest

        destination = self._destination(item.target)
        send = getattr(destination, "send_digest", None)
        if send is None:
            raise PermanentError(f"destination {item.target!r} cannot send a digest")
        with self.engine.connect() as conn:
            view = build_digest(conn, self.settings, item)
        if view is None:
            return Skip("suppressed", "no_such_case_manager")
        if not view["cases"]:
            return Skip("suppressed", "nothing_new")
        record = {
            "to": view["email"],
            "counts": view["counts"],
            "student_ids": sorted({c["student_id"] for c in view["cases"]}),
        }
        return Send(
            item.target,
            destination.idempotency != "provider_key",
            lambda: send(item.idempotency_key, view),
            record,
        )

    def _plan_notice(self, item: OutboxItem) -> Plan:
        settings = self.settings
        if settings.templates is None:
            raise PermanentError("no family_notice templates are configured")
        now = self.clock()
        policy = settings.policy
        since = now - timedelta(days=max(policy.family_cap.days, policy.resource_repeat_days))
        repeat_since = now - timedelta(days=policy.resource_repeat_days)
        assert item.student_id is not None and item.contact_id is not None
        with self.engine.connect() as conn:
            case_status = conn.execute(select(Case.status).where(Case.id == item.case_id)).scalar()
            contact = contact_state(conn, item.student_id, item.contact_id)
            sends = recent_family_sends(conn, item.contact_id, since)
            facts = student_facts(conn, [item.student_id]).get(item.student_id, {})
            school = school_name(conn, facts.get("school_id")) or "your school"
            why: dict[str, str] = {}
            if settings.resource_directory is not None:  # imported directory + YAML, ranked
                matches = match_resources(
                    conn, settings, item.payload.get("categories") or [], contact.language,
                    facts.get("grade_level"), facts.get("school_id"),
                    now.astimezone(ZoneInfo(settings.district.timezone)).date(),
                )  # fmt: skip
                candidates = [m.resource for m in matches]
                why = {m.resource.id: m.why for m in matches}
        if settings.resource_directory is None:
            candidates = resources_for(
                settings, item.payload.get("categories") or [],
                item.payload.get("resource_ids") or [],
            )  # fmt: skip
            why = {r.id: f"{r.category}: on the district's own list" for r in candidates}
        decision = decide(
            now=now,
            timezone=settings.district.timezone,
            policy=policy,
            case_open=case_status == "open",
            contact=contact,
            channels=[
                ChannelChoice(c.name, self.channels[c.name].medium) for c in settings.channels
            ],
            candidates=candidates,
            recent_sends=[aware(at) for at, _ in sends],
            recently_sent_resources={
                rid for at, ids in sends if aware(at) >= repeat_since for rid in ids
            },
        )
        if isinstance(decision, Suppress):
            return Skip("suppressed", decision.reason)
        if isinstance(decision, Defer):
            return Wait(decision.until, decision.reason)
        channel = self.channels[decision.channel]
        page = settings.resource_page
        token = secrets.token_urlsafe(8) if page is not None else None
        more = f"{page.public_url.rstrip('/')}/r/{token}" if page is not None else None
        rendered, used = fit_family_notice(
            settings.templates, settings.district.name, contact.language, decision.medium,
            decision.resources, facts.get("first_name") or "", school, policy.sms_max_segments,
            more,
        )  # fmt: skip
        if page is not None and token and more and more in rendered.body:
            with self.engine.begin() as conn:  # before the send: the link must work on arrival
                conn.execute(insert(ResourceLink).values(
                    token=token, resource_ids=[r.id for r in decision.resources],
                    language=rendered.language, created_at=now,
                    expires_at=now + timedelta(days=page.expires_days),
                ))  # fmt: skip
        message = FamilyMessage(
            decision.address, rendered.language, rendered.body, rendered.subject, item.contact_id
        )
        record: dict[str, Any] = {
            "channel": channel.name,
            "medium": decision.medium,
            "to": decision.address,
            "language": rendered.language,
            "resource_ids": [r.id for r in used],
            **({"why": {r.id: why[r.id] for r in used if r.id in why}} if why else {}),
            # Lets reconcile recognise our text in the provider's message list.
            "body_digest": body_digest(rendered.body),
        }
        if decision.medium == "sms":
            size = sms_size(rendered.body)
            record |= {"segments": size.segments, "encoding": size.encoding}
        rate: tuple[str, float] | None = getattr(channel, "rate_limit", None)

        def call() -> DeliveryResult:
            if rate is not None:  # the sender's rate, shared by every worker
                wait_for_slot(self.engine, *rate)
            return channel.send(item.idempotency_key, message)

        return Send(channel.name, channel.idempotency != "provider_key", call, record)

    def _plan_follow_up(self, item: OutboxItem) -> Plan:
        """The closed-loop question, by text on the notice's channel, under the same consent."""
        settings = self.settings
        if settings.templates is None:
            raise PermanentError("no templates are configured")
        assert item.student_id is not None and item.contact_id is not None
        with self.engine.connect() as conn:
            case_status = conn.execute(select(Case.status).where(Case.id == item.case_id)).scalar()
            contact = contact_state(conn, item.student_id, item.contact_id)
            facts = student_facts(conn, [item.student_id]).get(item.student_id, {})
            school = school_name(conn, facts.get("school_id")) or "your school"
        channel = self.channels.get(str(item.payload.get("channel")))
        if channel is None or channel.medium != "sms":
            return Skip("suppressed", "no_sms_channel")
        if case_status != "open":
            return Skip("suppressed", "case_closed")
        route = choose_channel(contact, [ChannelChoice(channel.name, "sms")])
        reachable = contact.found and contact.active and contact.linked and contact.guardian
        if not reachable or contact.do_not_contact or contact.no_contact:
            return Skip("suppressed", "contact_unavailable")
        if isinstance(route, Suppress):
            return Skip("suppressed", route.reason)
        opening = next_window_opening(self.clock(), settings.policy, settings.district.timezone)
        if opening is not None:
            return Wait(opening, "quiet_hours")
        rendered = render_follow_up(
            settings.templates, settings.district.name, contact.language, school
        )
        message = FamilyMessage(route.address, rendered.language, rendered.body, None,
                                item.contact_id)  # fmt: skip
        record = {
            "channel": channel.name, "medium": "sms", "to": route.address,
            "language": rendered.language, "body_digest": body_digest(rendered.body),
            "notice_id": item.payload.get("notice_id"),
        }  # fmt: skip
        rate: tuple[str, float] | None = getattr(channel, "rate_limit", None)

        def call() -> DeliveryResult:
            if rate is not None:
                wait_for_slot(self.engine, *rate)
            return channel.send(item.idempotency_key, message)

        return Send(channel.name, channel.idempotency != "provider_key", call, record)

    def _queue_follow_up(
        self, conn: Connection, item: OutboxItem, record: dict[str, Any], now: datetime
    ) -> None:
        """After a notice by text: the follow-up, due `follow_up_days` later (same transaction)."""
        days = self.settings.policy.follow_up_days
        if not days or record.get("medium") != "sms" or item.contact_id is None:
            return
        from service.outbox import enqueue  # the outbox imports this module

        intent = follow_up(
            item.case_id, str(item.student_id), item.contact_id, item.id,
            str(record.get("channel")), list(item.payload.get("categories") or []),
        )  # fmt: skip
        enqueue(conn, [intent])
        conn.execute(
            update(OutboxItem)
            .where(OutboxItem.idempotency_key == intent["idempotency_key"],
                   OutboxItem.status == "pending")
            .values(next_attempt_at=now + timedelta(days=days))
        )  # fmt: skip

    # -- after a crash ------------------------------------------------------------------------

    def reconcile(self, item: OutboxItem) -> Reconciled:
        """Ask the target whether an item left in `sending` went out."""
        record = item.result or {}
        since = aware(item.sending_at or item.created_at)
        if item.kind == TASK_UPSERT:
            destination = self._destination(item.target)
            subject = record.get("subject") or case_subject(int(item.payload["case_id"]))
            if destination.idempotency == "provider_key":  # the tool drops a repeat of our key
                return Reconciled("not_sent", detail="the provider deduplicates by key")
            if destination.idempotency == "stored_link":
                found = destination.find(subject)
                if found is None:
                    return Reconciled("not_sent")
                if getattr(destination, "update_after_find", False):
                    # The create landed but the rest of the upsert may not have (Planner writes
                    # its details in a second call): send it again, now as an update of `found`.
                    return Reconciled("not_sent", detail="found; updated to be complete")
                return Reconciled("sent", DeliveryResult(found.external_id, found.version))
            return destination.reconcile(item.idempotency_key, subject, since)
        if item.kind == DIGEST:
            return self._destination(item.target).reconcile(
                item.idempotency_key, str(record.get("to")), since
            )
        channel = self.channels.get(record.get("channel") or item.target)
        if channel is None:
            return Reconciled("unknown", detail=f"channel {item.target!r} is not configured")
        if channel.idempotency == "provider_key":
            return Reconciled("not_sent", detail="the provider deduplicates by key")
        digest = record.get("body_digest")
        if digest and getattr(channel, "reconciles_by_body", False):
            return channel.reconcile(  # type: ignore[call-arg]
                item.idempotency_key, str(record.get("to")), since, body_digest=digest
            )
        return channel.reconcile(item.idempotency_key, str(record.get("to")), since)

    # -- what follows a delivery, in the delivered mark's transaction ---------------------------

    def delivered(
        self, conn: Connection, item: OutboxItem, record: dict[str, Any], result: DeliveryResult
    ) -> None:
        now = self.clock()
        if item.kind == REFERRER_STATUS:
            from service.referrals import status_delivered

            status_delivered(conn, item, now)
            return
        if item.kind == TASK_UPSERT and result.external_id:
            self._save_link(conn, item, record, result, now)
        if item.kind == FAMILY_NOTICE:
            self._queue_follow_up(conn, item, record, now)
        if item.kind == DIGEST:  # one disclosure per student the digest named
            if not record.get("student_ids"):
                return
            conn.execute(insert(Disclosure), [
                {"student_id": sid, "outbox_id": item.id, "disclosed_at": now,
                 "recipient": f"case manager {item.payload.get('staff_id')} via {item.target}",
                 "recipient_kind": "staff_tool", "data_categories": DIGEST_CATEGORIES,
                 "basis": STAFF_BASIS}
                for sid in record.get("student_ids") or []
            ])  # fmt: skip
            return
        if not item.student_id:
            return
        if result.detail.get("sent") is False:
            return  # the target chose to send nothing (a Teams card for a non-urgent case)
        if item.kind == TASK_UPSERT:
            disclosure = {
                "recipient": f"staff tool {item.target}",
                "recipient_kind": "staff_tool",
                "data_categories": record.get("data_categories") or ["identity", "case"],
                "basis": STAFF_BASIS,
            }
        else:
            disclosure = {
                "recipient": f"contact {item.contact_id} via {record.get('channel', item.target)}",
                "recipient_kind": "family",
                "data_categories": ["support_offered"],
                "basis": FAMILY_BASIS,
            }
        conn.execute(
            insert(Disclosure).values(
                student_id=item.student_id, outbox_id=item.id, disclosed_at=now, **disclosure
            )
        )

    def rejected(self, conn: Connection, item: OutboxItem, exc: AddressRejected) -> None:
        """Record a provider's final refusal of an address on the contact (the mark's
        transaction). A carrier opt-out means the family texted STOP to us: like a STOP our
        webhook receives, it stops every channel. An invalid number is unusable for SMS."""
        if item.contact_id is None or exc.medium != "sms":
            return
        evidence = {"provider_code": exc.code, "outbox_id": item.id, "to": exc.address,
                    "at": self.clock().isoformat()}  # fmt: skip
        if exc.opted_out:
            record_opt_out(
                conn, [item.contact_id], "all", "carrier_opt_out", evidence, self.clock()
            )
        else:
            mark_sms_unusable(conn, item.contact_id, exc.address, evidence, self.clock())

    @staticmethod
    def _link(conn: Connection, target: str, subject: str) -> tuple[Link, int] | None:
        row = conn.execute(
            select(DeliveryLink.external_id, DeliveryLink.version, DeliveryLink.last_revision)
            .where(DeliveryLink.target == target, DeliveryLink.subject == subject)
        ).first()  # fmt: skip
        return (Link(row[0], row[1]), row[2]) if row else None

    @staticmethod
    def _save_link(
        conn: Connection,
        item: OutboxItem,
        record: dict[str, Any],
        result: DeliveryResult,
        now: datetime,
    ) -> None:
        subject = record.get("subject") or case_subject(int(item.payload["case_id"]))
        revision = int(record.get("revision") or item.payload.get("revision") or 0)
        values = {
            "external_id": result.external_id,
            "version": result.version,
            "last_revision": revision,
            "updated_at": now,
        }
        where = and_(DeliveryLink.target == item.target, DeliveryLink.subject == subject)
        known = conn.execute(select(DeliveryLink.last_revision).where(where)).scalar()
        if known is None:
            conn.execute(
                insert(DeliveryLink).values(
                    target=item.target, subject=subject, case_id=item.case_id, **values
                )
            )
        else:
            # An older revision finishing late keeps the id fresh but never moves us back.
            values["last_revision"] = max(known, revision)
            conn.execute(update(DeliveryLink).where(where).values(**values))
