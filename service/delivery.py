"""Turn an outbox intent into a delivery: policy, rendering and the target, at send time.

The dispatcher (`service/outbox.py`) owns claims, states and retries; this module knows what
each intent means. `plan_many` reads the database as it is now, for a whole claimed round with
one query per table, and returns what to do with each item (skip, defer, or send through a
target, and whether the target needs `sending` committed first); `rounds` says which items must
not be planned together (a contact's notices: the family cap and repeated resources count the
earlier one's delivery). `reconcile` asks a target what happened to a delivery whose outcome a
crash lost; `delivered_many` writes what follows deliveries (the links to the tool's items, the
disclosure records) in the same transaction as their delivered marks.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update

from connectors.base import (
    Channel,
    DeliveryResult,
    Destination,
    FamilyMessage,
    Link,
    OutgoingMessage,
    Reconciled,
    TaskUpsert,
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
from service.models import (
    Case,
    ClaimedItem,
    DeliveryLink,
    Disclosure,
    OutboxItem,
    ResourceLink,
)
from service.outreach import contact_states, recent_family_sends_many, resources_for
from service.policy import (
    ChannelChoice,
    ContactState,
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
from service.task_view import aware, build_tasks, disclosed_categories, school_names, student_facts

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


@dataclass(frozen=True)
class Batched:
    """A delivery its target takes together with others: the request, and the target's
    `deliver_many`, which the dispatcher calls once for every such delivery of a round."""

    deliver_many: Callable[[list[Any]], list[DeliveryResult | Exception]]
    request: TaskUpsert | OutgoingMessage


@dataclass
class Send:
    target: str
    # True when a resend could show twice: `sending` is committed before `call`.
    needs_sending_mark: bool
    call: Callable[[], DeliveryResult]
    # Kept on the item: what reconcile and `delivered` need (channel, address, revision...).
    record: dict[str, Any] = field(default_factory=dict)
    # The target drops a repeat of our key: a crash before the delivered mark only causes a
    # repeat it ignores, so the mark may wait for the round's one commit.
    dedupes_by_key: bool = False
    # Set when the target takes batches (`deliver_many`); `call` remains the one-item way.
    batch: Batched | None = None


Plan = Skip | Wait | Send


@dataclass(frozen=True)
class Delivered:
    """A delivery the target confirmed, waiting for its mark."""

    item: ClaimedItem
    record: dict[str, Any]
    result: DeliveryResult


def _batched(target: object, request: TaskUpsert | OutgoingMessage) -> Batched | None:
    deliver_many = getattr(target, "deliver_many", None)
    return Batched(deliver_many, request) if callable(deliver_many) else None


def _sequence_key(item: ClaimedItem) -> Hashable | None:
    """Items with the same key must be planned one after the other's mark: a contact's notices
    (the family cap and already-sent resources count delivered notices) and a manager's digests
    (each starts where the previous delivered one ended)."""
    if item.kind == FAMILY_NOTICE and item.contact_id is not None:
        return ("contact", item.contact_id)
    if item.kind == DIGEST:
        return ("digest", item.target, str((item.payload or {}).get("staff_id")))
    return None


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
        # The configured order decides which channel a family hears on first.
        self._channel_choices = [
            ChannelChoice(c.name, self.channels[c.name].medium)
            for c in settings.channels
            if c.name in self.channels
        ]

    # -- plan ---------------------------------------------------------------------------------

    def plan(self, item: ClaimedItem) -> Plan:
        outcome = self.plan_many([item])[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    @staticmethod
    def rounds(items: Sequence[ClaimedItem]) -> list[list[ClaimedItem]]:
        """The claimed batch in rounds, order kept: the n-th item of one sequence (a contact's
        notices, a manager's digests) goes to round n, to be planned after the earlier ones
        were marked. Nearly everything lands in the first round."""
        out: list[list[ClaimedItem]] = []
        seen: Counter[Hashable] = Counter()
        for item in items:
            key = _sequence_key(item)
            n = 0
            if key is not None:
                n = seen[key]
                seen[key] += 1
            while len(out) <= n:
                out.append([])
            out[n].append(item)
        return out

    def plan_many(self, items: Sequence[ClaimedItem]) -> list[Plan | Exception]:
        """Plan a round with one read per table; each entry is the item's plan or the error
        planning it met (the dispatcher handles it by the taxonomy). Items of one sequence
        (`rounds`) must come in separate calls."""
        plans: dict[int, Plan | Exception] = {}
        tasks = [i for i in items if i.kind == TASK_UPSERT]
        family = [i for i in items if i.kind in (FAMILY_NOTICE, FOLLOW_UP)]
        for group, planner in ((tasks, self._plan_tasks), (family, self._plan_family)):
            if not group:
                continue
            try:
                plans.update(planner(group))
            except Exception as exc:  # a shared read failed: every item of the group met it
                plans.update({i.id: exc for i in group})
        for item in items:
            if item.id in plans:
                continue
            try:
                if item.kind == DIGEST:
                    plans[item.id] = self._plan_digest(item)
                elif item.kind == REFERRER_STATUS:
                    from service.referrals import plan_status  # it builds on the outbox

                    plans[item.id] = plan_status(self, item)
                else:
                    raise PermanentError(f"unknown outbox kind {item.kind!r}")
            except Exception as exc:
                plans[item.id] = exc
        return [plans[i.id] for i in items]

    def _destination(self, name: str) -> Destination:
        found = self.destinations.get(name)
        if found is None:  # the configuration no longer names it: retrying cannot help
            raise PermanentError(f"no destination named {name!r} is configured")
        return found

    def _plan_tasks(self, items: list[ClaimedItem]) -> dict[int, Plan | Exception]:
        plans: dict[int, Plan | Exception] = {}
        wanted: dict[int, tuple[Destination, int, int]] = {}  # item -> destination, case, rev
        for item in items:
            try:
                case_id = int(item.payload["case_id"])
                revision = int(item.payload.get("revision") or 0)
                wanted[item.id] = (self._destination(item.target), case_id, revision)
            except Exception as exc:
                plans[item.id] = exc
        if not wanted:
            return plans
        case_ids = sorted({case_id for _, case_id, _ in wanted.values()})
        keys = {i.id: (i.target, case_subject(wanted[i.id][1])) for i in items if i.id in wanted}
        with self.engine.connect() as conn:
            links = self._links(conn, list(keys.values()))
            newest = self._newest_queued_tasks(conn, case_ids)
            live: list[ClaimedItem] = []
            for item in items:
                if item.id not in wanted:
                    continue
                _, case_id, revision = wanted[item.id]
                link = links.get(keys[item.id])
                if link is not None and link[1] >= revision:
                    plans[item.id] = Skip("superseded", f"revision {link[1]} already delivered")
                elif newest.get((item.target, case_id), 0) > item.id:
                    plans[item.id] = Skip("superseded", "a later revision is queued")
                else:
                    live.append(item)
            tasks = build_tasks(conn, self.settings, [wanted[i.id][1] for i in live])
        for item in live:
            destination, case_id, _ = wanted[item.id]
            try:
                task = tasks.get(case_id)
                if task is None:
                    raise PermanentError(f"case {case_id} no longer exists")
                link = links.get(keys[item.id])
                plans[item.id] = self._task_send(item, destination, case_id, task, link)
            except Exception as exc:
                plans[item.id] = exc
        return plans

    @staticmethod
    def _newest_queued_tasks(conn: Connection, case_ids: list[int]) -> dict[tuple[str, int], int]:
        """The newest task item still to deliver per (destination, case): an older one is
        superseded (the newer one renders the case as it is anyway)."""
        q = (
            select(OutboxItem.target, OutboxItem.case_id, func.max(OutboxItem.id))
            .where(OutboxItem.kind == TASK_UPSERT, OutboxItem.case_id.in_(case_ids),
                   OutboxItem.status.in_(("pending", "sending")))
            .group_by(OutboxItem.target, OutboxItem.case_id)
        )  # fmt: skip
        newest: dict[tuple[str, int], int] = {}
        for target, case_id, top in conn.execute(q):
            if case_id is not None:
                newest[(target, case_id)] = top
        return newest

    def _task_send(
        self,
        item: ClaimedItem,
        destination: Destination,
        case_id: int,
        task: dict[str, Any],
        link: tuple[Link, int] | None,
    ) -> Send:
        subject = case_subject(case_id)
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
            dedupes_by_key=destination.idempotency == "provider_key",
            batch=_batched(destination, TaskUpsert(item.idempotency_key, subject, task, current)),
        )

    def _plan_digest(self, item: ClaimedItem) -> Plan:
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
            dedupes_by_key=destination.idempotency == "provider_key",
        )

    def _plan_family(self, items: list[ClaimedItem]) -> dict[int, Plan | Exception]:
        """Family notices and follow-ups: what they depend on is read for all at once."""
        settings = self.settings
        if settings.templates is None:
            return {
                i.id: PermanentError(
                    "no family_notice templates are configured"
                    if i.kind == FAMILY_NOTICE
                    else "no templates are configured"
                )
                for i in items
            }
        now = self.clock()
        policy = settings.policy
        since = now - timedelta(days=max(policy.family_cap.days, policy.resource_repeat_days))
        notified = [i.contact_id for i in items if i.kind == FAMILY_NOTICE and i.contact_id]
        plans: dict[int, Plan | Exception] = {}
        resource_links: dict[int, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            facts = FamilyFacts.read(conn, items, notified, since)
            for item in items:
                try:
                    if item.kind == FAMILY_NOTICE:
                        plans[item.id] = self._plan_notice(conn, item, facts, now, resource_links)
                    else:
                        plans[item.id] = self._plan_follow_up(item, facts)
                except Exception as exc:
                    plans[item.id] = exc
        if resource_links:
            try:
                with self.engine.begin() as conn:  # before the sends: links work on arrival
                    conn.execute(insert(ResourceLink), list(resource_links.values()))
            except Exception as exc:
                plans.update({item_id: exc for item_id in resource_links})
        return plans

    def _plan_notice(
        self,
        conn: Connection,
        item: ClaimedItem,
        facts: FamilyFacts,
        now: datetime,
        resource_links: dict[int, dict[str, Any]],
    ) -> Plan:
        """`resource_links`: where a link to the resource page is put, to be written before
        the send."""
        settings = self.settings
        assert settings.templates is not None
        policy = settings.policy
        repeat_since = now - timedelta(days=policy.resource_repeat_days)
        assert item.student_id is not None and item.contact_id is not None
        contact = facts.contact(item)
        sends = facts.sends.get(item.contact_id, [])
        student = facts.student(item)
        school = facts.schools.get(student.get("school_id") or "") or "your school"
        if settings.resource_directory is not None:  # imported directory + YAML, ranked
            matches = match_resources(
                conn, settings, item.payload.get("categories") or [], contact.language,
                student.get("grade_level"), student.get("school_id"),
                now.astimezone(ZoneInfo(settings.district.timezone)).date(),
            )  # fmt: skip
            candidates = [m.resource for m in matches]
            why = {m.resource.id: m.why for m in matches}
        else:
            candidates = resources_for(
                settings, item.payload.get("categories") or [],
                item.payload.get("resource_ids") or [],
            )  # fmt: skip
            why = {r.id: f"{r.category}: on the district's own list" for r in candidates}
        decision = decide(
            now=now,
            timezone=settings.district.timezone,
            policy=policy,
            case_open=facts.case_status.get(item.case_id or 0) == "open",
            contact=contact,
            channels=self._channel_choices,
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
            decision.resources, student.get("first_name") or "", school, policy.sms_max_segments,
            more,
        )  # fmt: skip
        if page is not None and token and more and more in rendered.body:
            resource_links[item.id] = {
                "token": token, "resource_ids": [r.id for r in decision.resources],
                "language": rendered.language, "created_at": now,
                "expires_at": now + timedelta(days=page.expires_days),
            }  # fmt: skip
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
        return self._family_send(item, channel, message, record)

    def _family_send(
        self, item: ClaimedItem, channel: Channel, message: FamilyMessage, record: dict[str, Any]
    ) -> Send:
        rate: tuple[str, float] | None = getattr(channel, "rate_limit", None)

        def call() -> DeliveryResult:
            if rate is not None:  # the sender's rate, shared by every worker
                wait_for_slot(self.engine, *rate)
            return channel.send(item.idempotency_key, message)

        # A rate-limited sender takes its slots one message at a time.
        batch = None if rate else _batched(channel, OutgoingMessage(item.idempotency_key, message))
        return Send(
            channel.name,
            channel.idempotency != "provider_key",
            call,
            record,
            dedupes_by_key=channel.idempotency == "provider_key",
            batch=batch,
        )

    def _plan_follow_up(self, item: ClaimedItem, facts: FamilyFacts) -> Plan:
        """The closed-loop question, by text on the notice's channel, under the same consent."""
        settings = self.settings
        assert settings.templates is not None
        assert item.student_id is not None and item.contact_id is not None
        case_status = facts.case_status.get(item.case_id or 0)
        contact = facts.contact(item)
        school = facts.schools.get(facts.student(item).get("school_id") or "") or "your school"
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
        return self._family_send(item, channel, message, record)

    def _queue_follow_ups(self, conn: Connection, notices: list[Delivered], now: datetime) -> None:
        """After notices by text: their follow-ups, due `follow_up_days` later (same
        transaction as the marks)."""
        days = self.settings.policy.follow_up_days
        if not days:
            return
        from service.outbox import enqueue  # the outbox imports this module

        intents = [
            follow_up(
                d.item.case_id, str(d.item.student_id), d.item.contact_id, d.item.id,
                str(d.record.get("channel")), list(d.item.payload.get("categories") or []),
            )
            for d in notices
            if d.record.get("medium") == "sms" and d.item.contact_id is not None
        ]  # fmt: skip
        if not intents:
            return
        enqueue(conn, intents)
        conn.execute(
            update(OutboxItem)
            .where(OutboxItem.idempotency_key.in_([i["idempotency_key"] for i in intents]),
                   OutboxItem.status == "pending")
            .values(next_attempt_at=now + timedelta(days=days))
        )  # fmt: skip

    # -- after a crash ------------------------------------------------------------------------

    def reconcile(self, item: ClaimedItem) -> Reconciled:
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
        self, conn: Connection, item: ClaimedItem, record: dict[str, Any], result: DeliveryResult
    ) -> None:
        self.delivered_many(conn, [Delivered(item, record, result)])

    def delivered_many(self, conn: Connection, deliveries: Sequence[Delivered]) -> None:
        """Links, follow-ups and disclosure records for deliveries just marked, in the marks'
        transaction: a handful of statements however many deliveries."""
        now = self.clock()
        referrer = [d for d in deliveries if d.item.kind == REFERRER_STATUS]
        if referrer:
            from service.referrals import status_delivered

            for d in referrer:  # a status that names no student: nothing is disclosed
                status_delivered(conn, d.item, now)
            deliveries = [d for d in deliveries if d.item.kind != REFERRER_STATUS]
        self._save_links(
            conn, [d for d in deliveries if d.item.kind == TASK_UPSERT and d.result.external_id],
            now,
        )  # fmt: skip
        self._queue_follow_ups(conn, [d for d in deliveries if d.item.kind == FAMILY_NOTICE], now)
        rows = [row for d in deliveries for row in self._disclosures(d, now)]
        if rows:
            conn.execute(insert(Disclosure), rows)

    def _disclosures(self, delivery: Delivered, now: datetime) -> list[dict[str, Any]]:
        """34 CFR 99.32: the records a delivery disclosed, to whom, on what basis."""
        item, record, result = delivery.item, delivery.record, delivery.result
        if item.kind == DIGEST:  # one disclosure per student the digest named
            return [
                {"student_id": sid, "outbox_id": item.id, "disclosed_at": now,
                 "recipient": f"case manager {item.payload.get('staff_id')} via {item.target}",
                 "recipient_kind": "staff_tool", "data_categories": DIGEST_CATEGORIES,
                 "basis": STAFF_BASIS}
                for sid in record.get("student_ids") or []
            ]  # fmt: skip
        if not item.student_id:
            return []
        if result.detail.get("sent") is False:
            return []  # the target chose to send nothing (a Teams card for a non-urgent case)
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
        return [
            {"student_id": item.student_id, "outbox_id": item.id, "disclosed_at": now,
             **disclosure}
        ]  # fmt: skip

    def rejected(self, conn: Connection, item: ClaimedItem, exc: AddressRejected) -> None:
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
    def _links(
        conn: Connection, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[Link, int]]:
        """The stored links for (target, subject) pairs, with the revision each last carried."""
        if not keys:
            return {}
        wanted = set(keys)
        q = select(
            DeliveryLink.target, DeliveryLink.subject, DeliveryLink.external_id,
            DeliveryLink.version, DeliveryLink.last_revision,
        ).where(DeliveryLink.target.in_(sorted({t for t, _ in wanted})),
                DeliveryLink.subject.in_(sorted({s for _, s in wanted})))  # fmt: skip
        return {
            (target, subject): (Link(external_id, version), last_revision)
            for target, subject, external_id, version, last_revision in conn.execute(q)
            if (target, subject) in wanted
        }

    def _save_links(self, conn: Connection, deliveries: list[Delivered], now: datetime) -> None:
        """Keep each task's id in the tool (and its version) for the next revision's update."""
        if not deliveries:
            return
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for d in deliveries:  # in delivery order: the last one's id and version win
            subject = d.record.get("subject") or case_subject(int(d.item.payload["case_id"]))
            revision = int(d.record.get("revision") or d.item.payload.get("revision") or 0)
            before = latest.get((d.item.target, subject))
            latest[(d.item.target, subject)] = {
                "target": d.item.target, "subject": subject, "case_id": d.item.case_id,
                "external_id": d.result.external_id, "version": d.result.version,
                "last_revision": max(revision, before["last_revision"] if before else revision),
                "updated_at": now,
            }  # fmt: skip
        known = self._links(conn, list(latest))
        new = [v for key, v in latest.items() if key not in known]
        if new:
            conn.execute(insert(DeliveryLink), new)
        changed = [
            # An older revision finishing late keeps the id fresh but never moves us back.
            {**v, "last_revision": max(v["last_revision"], known[key][1]),
             "b_target": key[0], "b_subject": key[1]}
            for key, v in latest.items() if key in known
        ]  # fmt: skip
        if changed:
            conn.execute(
                update(DeliveryLink)
                .where(DeliveryLink.target == bindparam("b_target"),
                       DeliveryLink.subject == bindparam("b_subject"))
                .values(external_id=bindparam("external_id"), version=bindparam("version"),
                        last_revision=bindparam("last_revision"),
                        updated_at=bindparam("updated_at")),
                changed,
            )  # fmt: skip


@dataclass
class FamilyFacts:
    """What planning a round of family items reads from the database, read once."""

    case_status: dict[int, str]
    contacts: dict[tuple[str, str], ContactState]
    sends: dict[str, list[tuple[datetime, list[str]]]]
    students: dict[str, dict[str, Any]]
    schools: dict[str, str]

    @classmethod
    def read(
        cls, conn: Connection, items: list[ClaimedItem], notified: list[str], since: datetime
    ) -> FamilyFacts:
        """`notified`: the contacts whose delivered notices since `since` count (caps, repeats)."""
        case_ids = sorted({i.case_id for i in items if i.case_id is not None})
        students = student_facts(conn, sorted({str(i.student_id) for i in items}))
        return cls(
            case_status=dict(
                conn.execute(select(Case.id, Case.status).where(Case.id.in_(case_ids))).all()
            ),
            contacts=contact_states(conn, [(str(i.student_id), str(i.contact_id)) for i in items]),
            sends=recent_family_sends_many(conn, notified, since) if notified else {},
            students=students,
            schools=school_names(conn, [s.get("school_id") for s in students.values()]),
        )

    def contact(self, item: ClaimedItem) -> ContactState:
        return self.contacts[(str(item.student_id), str(item.contact_id))]

    def student(self, item: ClaimedItem) -> dict[str, Any]:
        return self.students.get(str(item.student_id), {})
