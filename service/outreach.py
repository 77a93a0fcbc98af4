"""What families receive: resources that fit, in their language, never the reason.

FERPA: a text or email names community resources and the school, never grades, absences or
discipline (phones and inboxes are shared). Contacts the SIS marks do-not-contact, contacts who
opted out, and adults who are not parents or guardians receive nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from service.config import ResourceConfig, Settings
from service.models import Contact, ContactPreference, StudentContact

MAX_RESOURCES_PER_MESSAGE = 3


@dataclass(frozen=True)
class Reachable:
    contact_id: str
    language: str
    sms_phone: str | None
    email: str | None


def reachable_contacts(conn: Connection, student_ids: Iterable[str]) -> dict[str, list[Reachable]]:
    """Guardians we may message, per student, in a stable order."""
    ids = sorted(set(student_ids))
    out: dict[str, list[Reachable]] = {}
    for i in range(0, len(ids), 5000):
        q = (
            select(
                StudentContact.student_id,
                Contact.contact_id,
                Contact.language,
                Contact.sms_phone,
                Contact.email,
                ContactPreference.sms_opted_out_at,
                ContactPreference.email_opted_out_at,
            )
            .join(Contact, Contact.contact_id == StudentContact.contact_id)
            .outerjoin(ContactPreference, ContactPreference.contact_id == Contact.contact_id)
            .where(
                StudentContact.student_id.in_(ids[i : i + 5000]),
                StudentContact.active.is_(True),
                Contact.active.is_(True),
                # The association's word wins over the contact's (Ed-Fi legalGuardian).
                func.coalesce(StudentContact.is_guardian, Contact.is_guardian).is_(True),
                StudentContact.no_contact.is_(False),
                Contact.do_not_contact.is_(False),
            )
            .order_by(StudentContact.student_id, StudentContact.priority, Contact.contact_id)
        )
        for sid, cid, lang, sms, email, sms_out, email_out in conn.execute(q):
            out.setdefault(sid, []).append(
                Reachable(cid, lang or "en", None if sms_out else sms, None if email_out else email)
            )
    return out


def pick_resources(settings: Settings, categories: Iterable[str]) -> list[ResourceConfig]:
    wanted = list(dict.fromkeys(categories))
    chosen = [r for c in wanted for r in settings.resources if r.category == c]
    return chosen[:MAX_RESOURCES_PER_MESSAGE]


def _pick(texts: dict[str, str], language: str) -> str:
    return texts.get(language) or texts.get("en") or next(iter(texts.values()), "")


def render_notice(
    settings: Settings,
    language: str,
    medium: str,
    resources: list[ResourceConfig],
    student_first_name: str,
    school_name: str,
) -> dict[str, Any]:
    """The family message: template in the family's language (English when we have none)."""
    lang = language if language in settings.templates.family_notice else "en"
    lines = []
    for r in resources:
        parts = [r.name]
        desc = r.description.get(lang) or r.description.get("en")
        if desc:
            parts.append(desc)
        if r.phone:
            parts.append(r.phone)
        if r.url and medium == "email":
            parts.append(r.url)
        lines.append(" - ".join(parts))
    sep = "\n" if medium == "email" else "; "
    body = settings.templates.family_notice[lang].format(
        district=settings.district.name,
        school=school_name,
        student_first_name=student_first_name,
        resources=sep.join(lines),
    )
    message: dict[str, Any] = {"language": lang, "body": body.strip()}
    if medium == "email":
        message["subject"] = _pick(settings.templates.family_notice_subject, lang)
    return message
