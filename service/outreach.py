"""What the database says about families: who to tell, and how they can be reached now.

FERPA: families hear about community resources, never the reason. Evaluation queues a notice for
each guardian linked to the student; everything that can change before the send (opt-outs,
do-not-contact, addresses, the link itself) is read again at send time by `contact_state`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from service.config import ResourceConfig, Settings
from service.intents import FAMILY_NOTICE
from service.models import Contact, ContactPreference, OutboxItem, StudentContact
from service.policy import ContactState


def guardian_contacts(conn: Connection, student_ids: Iterable[str]) -> dict[str, list[str]]:
    """Active guardians per student, in the SIS's priority order."""
    ids = sorted(set(student_ids))
    out: dict[str, list[str]] = {}
    for i in range(0, len(ids), 5000):
        q = (
            select(StudentContact.student_id, Contact.contact_id)
            .join(Contact, Contact.contact_id == StudentContact.contact_id)
            .where(
                StudentContact.student_id.in_(ids[i : i + 5000]),
                StudentContact.active.is_(True),
                Contact.active.is_(True),
                # The association's word wins over the contact's (Ed-Fi legalGuardian).
                func.coalesce(StudentContact.is_guardian, Contact.is_guardian).is_(True),
            )
            .order_by(StudentContact.student_id, StudentContact.priority, Contact.contact_id)
        )
        for sid, cid in conn.execute(q):
            out.setdefault(sid, []).append(cid)
    return out


def contact_state(conn: Connection, student_id: str, contact_id: str) -> ContactState:
    """The guardian and their link to this student as they are now."""
    return contact_states(conn, [(student_id, contact_id)])[(student_id, contact_id)]


def contact_states(
    conn: Connection, pairs: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], ContactState]:
    """`contact_state` for many (student, contact) pairs with two queries: the contacts with
    their preferences, and the links between them and the students."""
    wanted = sorted(set(pairs))
    contact_ids = sorted({c for _, c in wanted})
    student_ids = sorted({s for s, _ in wanted})
    contacts = {
        row["contact_id"]: row
        for row in conn.execute(
            select(
                Contact.contact_id, Contact.active, Contact.is_guardian, Contact.do_not_contact,
                Contact.language, Contact.sms_phone, Contact.email,
                ContactPreference.sms_opted_out_at, ContactPreference.email_opted_out_at,
                ContactPreference.all_opted_out_at, ContactPreference.sms_unusable_phone,
            )
            .outerjoin(ContactPreference, ContactPreference.contact_id == Contact.contact_id)
            .where(Contact.contact_id.in_(contact_ids))
        ).mappings()
    }  # fmt: skip
    links = {
        (row["student_id"], row["contact_id"]): row
        for row in conn.execute(
            select(StudentContact.student_id, StudentContact.contact_id, StudentContact.active,
                   StudentContact.is_guardian, StudentContact.no_contact)
            .where(StudentContact.contact_id.in_(contact_ids),
                   StudentContact.student_id.in_(student_ids))
        ).mappings()
    } if contacts else {}  # fmt: skip
    return {
        (sid, cid): _contact_state(cid, contacts.get(cid), links.get((sid, cid)))
        for sid, cid in wanted
    }


def _contact_state(contact_id: str, row: Any, link: Any) -> ContactState:
    if row is None:
        return ContactState(contact_id, found=False)
    link_guardian = link["is_guardian"] if link is not None else None
    guardian = link_guardian if link_guardian is not None else row["is_guardian"]
    return ContactState(
        contact_id,
        found=True,
        active=bool(row["active"]),
        linked=bool(link is not None and link["active"]),
        guardian=bool(guardian),
        do_not_contact=bool(row["do_not_contact"]),
        no_contact=bool(link is not None and link["no_contact"]),
        language=row["language"] or "en",
        sms_phone=row["sms_phone"],
        email=row["email"],
        sms_opted_out=row["sms_opted_out_at"] is not None,
        email_opted_out=row["email_opted_out_at"] is not None,
        all_opted_out=row["all_opted_out_at"] is not None,
        # Only the number that was rejected: a new number from the SIS is tried again.
        sms_unusable=bool(row["sms_phone"]) and row["sms_unusable_phone"] == row["sms_phone"],
    )


def recent_family_sends(
    conn: Connection, contact_id: str, since: datetime
) -> list[tuple[datetime, list[str]]]:
    """This contact's delivered family messages since `since`, with the resource ids each held."""
    return recent_family_sends_many(conn, [contact_id], since).get(contact_id, [])


def recent_family_sends_many(
    conn: Connection, contact_ids: Iterable[str], since: datetime
) -> dict[str, list[tuple[datetime, list[str]]]]:
    """`recent_family_sends` for many contacts in one query."""
    q = select(OutboxItem.contact_id, OutboxItem.delivered_at, OutboxItem.result).where(
        OutboxItem.contact_id.in_(sorted(set(contact_ids))),
        OutboxItem.kind == FAMILY_NOTICE,
        OutboxItem.status == "delivered",
        OutboxItem.delivered_at >= since,
    )
    out: dict[str, list[tuple[datetime, list[str]]]] = {}
    for contact_id, at, result in conn.execute(q):
        out.setdefault(contact_id, []).append((at, list((result or {}).get("resource_ids") or [])))
    return out


def resources_for(
    settings: Settings, categories: Iterable[str], resource_ids: Iterable[str] = ()
) -> list[ResourceConfig]:
    """Resources in the categories, in category order then configuration order."""
    wanted = list(dict.fromkeys(categories))
    chosen = [r for c in wanted for r in settings.resources if r.category == c]
    ids = set(resource_ids)
    if ids:  # an item queued by an older casebridge named its resources
        chosen += [r for r in settings.resources if r.id in ids and r not in chosen]
    return chosen
