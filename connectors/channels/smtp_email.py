"""Family email through SMTP with `smtplib` (STARTTLS or SMTPS; credentials via ${ENV}).

Each message is multipart text + HTML from the same rendered template, with a `Message-ID`
derived from the outbox key (a resend after a crash carries the same id, which many mail systems
drop as a repeat) and RFC 8058 one-click unsubscribe: `List-Unsubscribe` points at a signed
casebridge URL that works without a login (`service/webhooks.py`), with
`List-Unsubscribe-Post: List-Unsubscribe=One-Click`.

SMTP cannot be asked afterwards whether it accepted a message, so this kind declares "none" and
`reconcile` answers "unknown" (a person checks, `casebridge outbox resolve`) unless the district
chose `after_crash: resend`.
"""

from __future__ import annotations

import html
import re
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Literal

from pydantic import Field

from connectors.base import DeliveryResult, FamilyMessage, Idempotency, Reconciled
from connectors.registry import register
from connectors.smtp import (
    SMTP_POLICY,
    AfterCrash,
    SmtpSender,
    SmtpServerSettings,
    message_id,
    reconcile_after_crash,
)
from service.clock import utcnow
from service.config import ChannelSettings, Settings
from service.consent import unsubscribe_url

_URL = re.compile(r"https?://[^\s<>\"')]+")


class SmtpEmailSettings(ChannelSettings, SmtpServerSettings):
    """Email through SMTP (STARTTLS or SMTPS; credentials via ${ENV})."""

    kind: Literal["smtp_email"]
    # Where families reach casebridge: the unsubscribe link is {public_url}/unsubscribe/...
    public_url: str
    # Signs unsubscribe links (from ${ENV}); changing it breaks links already sent.
    unsubscribe_secret: str = Field(min_length=16)
    # After a crash between the server's answer and our record: "review" parks the message for
    # a person; "resend" sends it again with the same Message-ID.
    after_crash: AfterCrash = "review"


def to_html(text: str, unsubscribe: str, language: str) -> str:
    """The same text as simple HTML: escaped, links clickable, one paragraph per line."""

    def linked(line: str) -> str:
        out, last = [], 0
        for m in _URL.finditer(line):
            out.append(html.escape(line[last : m.start()]))
            url = html.escape(m.group(0), quote=True)
            out.append(f'<a href="{url}">{url}</a>')
            last = m.end()
        out.append(html.escape(line[last:]))
        return "".join(out)

    paragraphs = "".join(f"<p>{linked(line)}</p>" for line in text.splitlines() if line.strip())
    leave = "Darse de baja" if language == "es" else "Unsubscribe"
    footer = (f'<p style="font-size:small;color:#555"><a href="{html.escape(unsubscribe, True)}">'
              f"{leave}</a></p>")  # fmt: skip
    return (f'<!doctype html><html lang="{html.escape(language)}"><body '
            f'style="font-family:sans-serif">{paragraphs}{footer}</body></html>')  # fmt: skip


class SmtpEmailChannel:
    idempotency: Idempotency = "none"
    medium: Literal["sms", "email"] = "email"

    def __init__(self, cfg: SmtpEmailSettings, ca_file: str | None) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.ca_file = ca_file
        self.sender = SmtpSender(cfg, ca_file)

    def build(self, key: str, message: FamilyMessage) -> EmailMessage:
        cfg = self.cfg
        # Long unsubscribe URLs must not be folded into RFC 2047 words, which clients ignore.
        email = EmailMessage(policy=SMTP_POLICY)
        email["From"] = str(Address(cfg.from_name, addr_spec=cfg.from_address))
        email["To"] = message.to
        email["Subject"] = message.subject or ""
        email["Date"] = format_datetime(utcnow())
        email["Message-ID"] = message_id(key, cfg.from_address)
        leave = "Darse de baja" if message.language == "es" else "Unsubscribe"
        text = message.body
        if message.recipient_id:
            url = unsubscribe_url(
                cfg.public_url, cfg.name, cfg.unsubscribe_secret, message.recipient_id
            )
            email["List-Unsubscribe"] = f"<{url}>"
            email["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
            text = f"{message.body}\n\n{leave}: {url}"
        else:
            url = ""
        email.set_content(text)
        email.add_alternative(to_html(message.body, url, message.language), subtype="html")
        email["Content-Language"] = message.language  # after set_content, which drops Content-*
        return email

    def send(self, key: str, message: FamilyMessage) -> DeliveryResult:
        email = self.build(key, message)
        self.sender.send(email, message.to)
        return DeliveryResult(external_id=email["Message-ID"])

    def reconcile(self, key: str, message_to: str, since: datetime) -> Reconciled:
        return reconcile_after_crash(self.cfg.after_crash)


def build(settings: Settings, cfg: SmtpEmailSettings) -> SmtpEmailChannel:
    ca_file = str(settings.resolve(cfg.ca_file)) if cfg.ca_file else None
    return SmtpEmailChannel(cfg, ca_file)


register("channel", "smtp_email", SmtpEmailSettings, build, SmtpEmailChannel.idempotency)
