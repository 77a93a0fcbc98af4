"""What the database says about families: who to tell, and how they can be reached now.

FERPA: families hear about community resources, never the reason. Evaluation queues a notice for
each guardian linked to the student; everything that can change before the send (opt-outs,
do-not-contact, addresses, the link itself) is read again at send time by `contact_state`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

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
    row = conn.execute(
        select(
            Contact.active, Contact.is_guardian, Contact.do_not_contact, Contact.language,
            Contact.sms_phone, Contact.email,
            StudentContact.active.label("link_active"), StudentContact.is_guardian.label("link_g"),
            StudentContact.no_contact,
            ContactPreference.sms_opted_out_at, ContactPreference.email_opted_out_at,
            ContactPreference.all_opted_out_at, ContactPreference.sms_unusable_phone,
        )
        .select_from(Contact)
        .outerjoin(
            StudentContact,
            (StudentContact.contact_id == Contact.contact_id)
            & (StudentContact.student_id == student_id),
        )
        .outerjoin(ContactPreference, ContactPreference.contact_id == Contact.contact_id)
        .where(Contact.contact_id == contact_id)
    ).mappings().first()  # fmt: skip
    if row is None:
        return ContactState(contact_id, found=False)
    guardian = row["link_g"] if row["link_g"] is not None else row["is_guardian"]
    return ContactState(
        contact_id,
        found=True,
        active=bool(row["active"]),
        linked=bool(row["link_active"]),
        guardian=bool(guardian),
        do_not_contact=bool(row["do_not_contact"]),
        no_contact=bool(row["no_contact"]),
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
    q = select(OutboxItem.delivered_at, OutboxItem.result).where(
        OutboxItem.contact_id == contact_id,
        OutboxItem.kind == FAMILY_NOTICE,
        OutboxItem.status == "delivered",
        OutboxItem.delivered_at >= since,
    )
    out: list[tuple[datetime, list[str]]] = []
    for at, result in conn.execute(q):
        out.append((at, list((result or {}).get("resource_ids") or [])))
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
