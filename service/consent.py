"""Consent: opt-outs and resumptions the family made, with evidence, and what a reply means.

TCPA: revocation "by any reasonable means" counts, across channels, so a plain-language "stop
texting me" is an opt-out like STOP. `contact_preferences` holds where a contact stands now;
`consent_events` keeps every change with its evidence (message id, text, time).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from itsdangerous import URLSafeSerializer
from sqlalchemy import Connection, insert, select, update

from service.bulk import dialect_insert, table
from service.models import ConsentEvent, Contact, ContactPreference

Scope = Literal["sms", "email", "all"]
Action = Literal["opt_out", "opt_in", "help", "other"]

# Keywords carriers and Twilio always honour, as the whole message.
STOP_WORDS = frozenset(
    {"stop", "stopall", "unsubscribe", "end", "quit", "cancel", "revoke", "optout", "stop all"}
)
START_WORDS = frozenset({"start", "unstop"})
HELP_WORDS = frozenset({"help", "info", "ayuda"})
# Plain language, English and Spanish: "any reasonable means" (checked after the keywords).
_PLAIN_STOP = re.compile(
    r"\b(stop|quit|don'?t|do not|no more|unsubscribe|remove me|take me off)\b.{0,30}"
    r"\b(text|texting|message|messages|messaging|contact|sms|list)\b"
    r"|\bno more (texts|messages)\b|\bleave (me|us) alone\b"
    r"|\b(para|pare|deja|dejen|dejar) de (enviar|mandar|escribir)\b|\bno (me )?(envíen|manden)\b"
    r"|\bbasta\b|\bno más mensajes\b|\bno mas mensajes\b",
    re.IGNORECASE,
)


def _words(body: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", body.strip().lower()).split())


def is_stop_keyword(body: str) -> bool:
    """One of the keywords carriers honour on their own (Twilio confirms those itself)."""
    return _words(body) in STOP_WORDS


def classify(body: str) -> Action:
    """What a family's text asks for."""
    words = _words(body)
    if words in STOP_WORDS:
        return "opt_out"
    if words in START_WORDS:
        return "opt_in"
    if words in HELP_WORDS:
        return "help"
    if _PLAIN_STOP.search(body.lower()):
        return "opt_out"
    return "other"


def contacts_with_phone(conn: Connection, phone: str) -> list[str]:
    q = select(Contact.contact_id).where(Contact.sms_phone == phone).order_by(Contact.contact_id)
    return list(conn.execute(q).scalars())


def contacts_with_email(conn: Connection, email: str) -> list[str]:
    q = select(Contact.contact_id).where(Contact.email == email).order_by(Contact.contact_id)
    return list(conn.execute(q).scalars())


def _ensure_rows(conn: Connection, contact_ids: Iterable[str]) -> None:
    rows = [{"contact_id": c} for c in contact_ids]
    if rows:
        stmt = dialect_insert(conn, table("contact_preferences")).on_conflict_do_nothing()
        conn.execute(stmt, rows)


def _event(
    conn: Connection, contact_ids: list[str], action: str, scope: str, via: str,
    evidence: dict[str, Any], now: datetime,
) -> None:  # fmt: skip
    if contact_ids:
        conn.execute(
            insert(ConsentEvent),
            [
                {"contact_id": c, "action": action, "scope": scope, "via": via,
                 "evidence": evidence, "at": now}
                for c in contact_ids
            ],
        )  # fmt: skip


_COLUMN = {"sms": "sms_opted_out_at", "email": "email_opted_out_at", "all": "all_opted_out_at"}


def record_opt_out(
    conn: Connection,
    contact_ids: list[str],
    scope: Scope,
    via: str,
    evidence: dict[str, Any],
    now: datetime,
) -> list[str]:
    """Opt the contacts out; returns those who were not already out (for one confirmation)."""
    _ensure_rows(conn, contact_ids)
    column = getattr(ContactPreference, _COLUMN[scope])
    fresh: list[str] = []
    for cid in contact_ids:
        done = conn.execute(
            update(ContactPreference)
            .where(ContactPreference.contact_id == cid, column.is_(None),
                   ContactPreference.all_opted_out_at.is_(None))
            .values({_COLUMN[scope]: now, "evidence": evidence})
        )  # fmt: skip
        if done.rowcount:
            fresh.append(cid)
    _event(conn, contact_ids, "opt_out", scope, via, evidence, now)
    return fresh


def record_opt_in(
    conn: Connection, contact_ids: list[str], via: str, evidence: dict[str, Any], now: datetime
) -> None:
    """START/UNSTOP: texts resume, and a "stop everything" given by text is lifted."""
    _ensure_rows(conn, contact_ids)
    conn.execute(
        update(ContactPreference)
        .where(ContactPreference.contact_id.in_(contact_ids))
        .values(sms_opted_out_at=None, all_opted_out_at=None, evidence=evidence)
    )
    _event(conn, contact_ids, "opt_in", "sms", via, evidence, now)


def mark_sms_unusable(
    conn: Connection, contact_id: str, phone: str, evidence: dict[str, Any], now: datetime
) -> None:
    """The provider will never deliver to this number: texts skip it, email is used."""
    _ensure_rows(conn, [contact_id])
    conn.execute(
        update(ContactPreference)
        .where(ContactPreference.contact_id == contact_id)
        .values(sms_unusable_phone=phone)
    )
    _event(conn, [contact_id], "address_unusable", "sms", "provider_error", evidence, now)


# -- email unsubscribe links (RFC 8058 one-click; no login) -----------------------------------

UNSUBSCRIBE_SALT = "casebridge-unsubscribe"


def unsubscribe_serializer(secret: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret, salt=UNSUBSCRIBE_SALT)


def unsubscribe_url(public_url: str, channel: str, secret: str, contact_id: str) -> str:
    """The signed link for this contact: an opaque token, no name or address in it."""
    token = unsubscribe_serializer(secret).dumps({"c": contact_id})
    return f"{public_url.rstrip('/')}/unsubscribe/{channel}/{token}"
