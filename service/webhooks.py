"""What families and providers send back: Twilio status callbacks, inbound texts, and the
one-click email unsubscribe. Registered by the app factory (`service/api.py`).

Every Twilio request is checked with `RequestValidator` against the configured *public* URL (the
one Twilio signed, not the one a proxy forwards to); a bad signature is a 403 and changes
nothing. Twilio retries webhooks, and callbacks arrive duplicated and out of order: a message's
state only moves forward, and an inbound text is acted on once (its MessageSid is the key).
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

import structlog
from flask import Blueprint, Response, abort, current_app, request
from itsdangerous import BadSignature
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from service.clock import utcnow
from service.config import Settings
from service.consent import (
    classify,
    contacts_with_phone,
    is_stop_keyword,
    mark_sms_unusable,
    record_opt_in,
    record_opt_out,
    unsubscribe_serializer,
)
from service.followup import record_reply
from service.intents import FAMILY_NOTICE
from service.models import Contact, InboundMessage, MessageStatus, OutboxItem

log = structlog.get_logger(__name__)
blueprint = Blueprint("families", __name__)

# How far along a message is; a callback never moves it back (Twilio's documented states).
STATUS_RANK = {
    "accepted": 1, "scheduled": 1, "queued": 2, "sending": 3, "sent": 4,
    "delivered": 6, "undelivered": 6, "failed": 6, "canceled": 6, "read": 7,
}  # fmt: skip
# Final delivery errors that say the number cannot take texts (unknown handset, landline).
UNREACHABLE_CODES = frozenset({"30005", "30006"})
CARRIER_OPT_OUT = "21610"  # the recipient had replied STOP to this sender at the carrier


def _settings() -> Settings:
    settings: Settings = current_app.config["CASEBRIDGE_SETTINGS"]
    return settings


def _engine() -> Engine:
    engine: Engine = current_app.config["CASEBRIDGE_ENGINE"]
    return engine


def _channel(name: str, kind: str) -> Any:
    for cfg in _settings().channels:
        if cfg.name == name and cfg.kind == kind:
            return cfg
    abort(404)


def _verified_twilio(name: str) -> Any:
    """The channel's settings, after the request's Twilio signature checked out."""
    cfg = _channel(name, "twilio_sms")
    url = cfg.public_url.rstrip("/") + request.path
    if request.query_string:
        url += "?" + request.query_string.decode()
    signature = request.headers.get("X-Twilio-Signature", "")
    form = request.form.to_dict()
    if not RequestValidator(cfg.auth_token).validate(url, form, signature):
        log.warning("webhook.bad_signature", channel=name, path=request.path)
        abort(403)
    return cfg


@blueprint.post("/webhooks/twilio/<name>/status")
def twilio_status(name: str) -> Any:
    _verified_twilio(name)
    sid = request.form.get("MessageSid") or request.form.get("SmsSid") or ""
    status = (request.form.get("MessageStatus") or request.form.get("SmsStatus") or "").lower()
    if not sid or status not in STATUS_RANK:
        return Response(status=204)  # nothing we track; Twilio must not retry it
    error = request.form.get("ErrorCode") or None
    moved = record_status(_engine(), name, sid, status, error, utcnow())
    if moved and status in ("undelivered", "failed") and error in UNREACHABLE_CODES:
        _unreachable(sid, request.form.get("To") or "", error)
    if moved and status in ("undelivered", "failed") and error == CARRIER_OPT_OUT:
        _carrier_opt_out(sid, request.form.get("To") or "")
    return Response(status=204)


def record_status(
    engine: Engine, channel: str, sid: str, status: str, error: str | None, now: datetime
) -> bool:
    """Move the message to `status` if that is forward; False for a duplicate or a late one."""
    rank = STATUS_RANK[status]
    values = {"status": status, "rank": rank, "error_code": error, "updated_at": now}
    for _ in range(2):  # a concurrent first callback may insert between our two statements
        with engine.begin() as conn:
            moved = conn.execute(
                update(MessageStatus)
                .where(MessageStatus.provider_id == sid, MessageStatus.rank < rank)
                .values(**values)
            ).rowcount
            if moved:
                return True
            known = conn.execute(
                select(MessageStatus.rank).where(MessageStatus.provider_id == sid)
            ).scalar()
            if known is not None:
                return False
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(MessageStatus).values(provider_id=sid, channel=channel, **values)
                    )
                return True
            except IntegrityError:
                continue
    return False


def _carrier_opt_out(sid: str, to: str) -> None:
    """21610 after the fact: the number replied STOP at the carrier. No more texts to it."""
    with _engine().begin() as conn:
        contact = conn.execute(
            select(OutboxItem.contact_id).where(
                OutboxItem.external_id == sid, OutboxItem.kind == FAMILY_NOTICE
            )
        ).scalar()
        if contact:
            evidence = {"message_sid": sid, "provider_code": CARRIER_OPT_OUT, "to": to}
            # Like a STOP our inbound webhook receives: every channel (TCPA revocation).
            record_opt_out(conn, [contact], "all", "twilio_status", evidence, utcnow())


def _unreachable(sid: str, to: str, code: str) -> None:
    with _engine().begin() as conn:
        contact = conn.execute(
            select(OutboxItem.contact_id).where(
                OutboxItem.external_id == sid, OutboxItem.kind == FAMILY_NOTICE
            )
        ).scalar()
        if contact and to:
            evidence = {"message_sid": sid, "provider_code": code, "to": to}
            mark_sms_unusable(conn, contact, to, evidence, utcnow())


@blueprint.post("/webhooks/twilio/<name>/inbound")
def twilio_inbound(name: str) -> Any:
    cfg = _verified_twilio(name)
    from connectors.channels.twilio_sms import e164

    sid = request.form.get("MessageSid") or request.form.get("SmsSid") or ""
    sender = e164(request.form.get("From") or "", cfg.default_region) or (
        request.form.get("From") or ""
    )
    body = request.form.get("Body") or ""
    if not sid or not sender:
        abort(400)
    action = classify(body)
    now = utcnow()
    reply: str | None = None
    with _engine().begin() as conn:
        seen = select(InboundMessage.provider_id).where(InboundMessage.provider_id == sid)
        if conn.execute(seen).first():
            return _twiml(None)  # Twilio retried the webhook: acted on already, no second reply
        contacts = contacts_with_phone(conn, sender)
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(InboundMessage).values(
                        provider_id=sid, channel=name, from_address=sender, body=body,
                        action=action, contact_ids=contacts, received_at=now,
                    )
                )  # fmt: skip
        except IntegrityError:
            return _twiml(None)
        evidence = {"message_sid": sid, "text": body, "from": sender, "at": now.isoformat()}
        language = _language(conn, contacts)
        fill = {"district": _settings().district.name, "contact": cfg.district_contact}
        if action == "opt_out":
            fresh = record_opt_out(conn, contacts, "all", "sms_reply", evidence, now)
            # One confirmation at most, and none for a contact already out. Twilio's Advanced
            # Opt-Out answers the standard keywords itself.
            if fresh and (cfg.confirm_keywords or not is_stop_keyword(body)):
                reply = _pick(cfg.stop_reply, language).format(**fill)
        elif action == "opt_in" and contacts:
            record_opt_in(conn, contacts, "sms_reply", evidence, now)
        elif action == "help":
            reply = _pick(cfg.help_reply, language).format(**fill)
        else:  # perhaps an answer to a follow-up (1, 2, 3): kept on the case
            answer = record_reply(conn, contacts, body, sid, now)
            if answer is not None:
                conn.execute(
                    update(InboundMessage)
                    .where(InboundMessage.provider_id == sid)
                    .values(action="reply")
                )
    log.info("webhook.inbound", channel=name, action=action, contacts=len(contacts))
    return _twiml(reply)


def _language(conn: Any, contacts: list[str]) -> str:
    if not contacts:
        return "en"
    lang = conn.execute(select(Contact.language).where(Contact.contact_id == contacts[0])).scalar()
    return str(lang or "en")


def _pick(texts: dict[str, str], language: str) -> str:
    return texts.get(language) or texts.get("en") or next(iter(texts.values()))


def _twiml(reply: str | None) -> Response:
    twiml = MessagingResponse()
    if reply:
        twiml.message(reply)
    return Response(str(twiml), mimetype="application/xml")


# -- email: one-click unsubscribe (RFC 8058), no login ---------------------------------------


_PAGE = """<!doctype html><html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>
<body style="font-family:sans-serif;max-width:32em;margin:2em auto;padding:0 1em">
<h1 style="font-size:1.3em">{title}</h1><p>{text}</p>{form}</body></html>"""


@blueprint.route("/unsubscribe/<name>/<token>", methods=["GET", "POST"])
def unsubscribe(name: str, token: str) -> Any:
    cfg = _channel(name, "smtp_email")
    try:
        data = unsubscribe_serializer(cfg.unsubscribe_secret).loads(token)
        contact_id = str(data["c"])
    except (BadSignature, KeyError, TypeError):
        abort(404)  # a forged or damaged link changes nothing
    district = escape(_settings().district.name)
    if request.method == "GET":
        # A link scanner follows GETs: only a POST (the button, or the mail client's one-click
        # `List-Unsubscribe=One-Click`) unsubscribes.
        form = ('<form method="post"><button type="submit" style="font-size:1.1em">'
                "Unsubscribe / Darse de baja</button></form>")  # fmt: skip
        page = _PAGE.format(lang="en", title=f"{district}: email", form=form,
                            text="Stop emails from us? / ¿Dejar de recibir correos?")  # fmt: skip
        return Response(page, mimetype="text/html")
    now = utcnow()
    evidence = {
        "via": "one_click" if request.form.get("List-Unsubscribe") == "One-Click" else "page",
        "channel": name,
        "at": now.isoformat(),
    }
    with _engine().begin() as conn:
        known = conn.execute(select(Contact.contact_id).where(Contact.contact_id == contact_id))
        if known.first() is not None:
            record_opt_out(conn, [contact_id], "email", "unsubscribe_link", evidence, now)
    done = "You will get no more emails from us. / No recibirá más correos."
    page = _PAGE.format(lang="en", title=f"{district}: unsubscribed", form="", text=done)
    return Response(page, mimetype="text/html")


# -- the resource page a text links to ---------------------------------------------------------

_PAGE_TEXT = {
    "en": ("Free resources near you", "This link has expired. Please contact your school."),
    "es": ("Recursos gratuitos cerca de usted",
           "Este enlace ya no es válido. Comuníquese con su escuela."),
}  # fmt: skip


@blueprint.get("/r/<token>")
def resource_page(token: str) -> Any:
    """Resources only: the page names no student, no family and no reason."""
    from service.clock import utcnow as now_utc
    from service.models import CommunityResource, ResourceLink
    from service.task_view import aware

    settings = _settings()
    with _engine().connect() as conn:
        link = conn.execute(select(ResourceLink.__table__).where(ResourceLink.token == token))
        row = link.mappings().first()
        if row is None:
            abort(404)
        language = row["language"] if row["language"] in _PAGE_TEXT else "en"
        title, expired = _PAGE_TEXT[language]
        district = escape(settings.district.name)
        if aware(row["expires_at"]) < now_utc():
            page = _PAGE.format(lang=language, title=district, form="", text=escape(expired))
            return Response(page, status=410, mimetype="text/html")
        ids = list(row["resource_ids"])
        imported = {
            r.resource_id: r
            for r in conn.execute(
                select(CommunityResource).where(CommunityResource.resource_id.in_(ids))
            ).scalars()
        }  # fmt: skip
    listed = {r.id: r for r in settings.resources}
    entries = []
    for rid in ids:
        if rid in listed:
            r = listed[rid]
            desc = r.description.get(language) or r.description.get("en") or ""
            name, phone, url = r.name, r.phone, r.url
        elif rid in imported:
            c = imported[rid]
            name, desc, phone, url = c.name, "", c.phone or "", c.url or ""
        else:
            continue
        parts = [f"<strong>{escape(name)}</strong>"]
        if desc:
            parts.append(escape(desc))
        if phone:
            parts.append(f'<a href="tel:{escape(phone, True)}">{escape(phone)}</a>')
        if url:
            parts.append(f'<a href="{escape(url, True)}">{escape(url)}</a>')
        entries.append("<li>" + "<br>".join(parts) + "</li>")
    body = f"<ul style='padding-left:1.2em;line-height:1.5'>{''.join(entries)}</ul>"
    page = _PAGE.format(lang=language, title=f"{district}: {escape(title)}", form=body, text="")
    return Response(page, mimetype="text/html")
