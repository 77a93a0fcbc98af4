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

import hashlib
import html
import re
import smtplib
import ssl
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Literal

from pydantic import Field

from connectors.base import DeliveryResult, FamilyMessage, Idempotency, Reconciled
from connectors.registry import register
from service.clock import utcnow
from service.config import ChannelSettings, Settings
from service.consent import unsubscribe_url
from service.errors import AddressRejected, OutcomeUnknown, PermanentError, TransientError

SMTP_POLICY = policy.SMTP.clone(max_line_length=998)
_URL = re.compile(r"https?://[^\s<>\"')]+")


class SmtpEmailSettings(ChannelSettings):
    """Email through SMTP (STARTTLS or SMTPS; credentials via ${ENV})."""

    kind: Literal["smtp_email"]
    host: str
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: str | None = None
    from_address: str
    from_name: str = ""
    # A private CA's certificate (PEM) to trust for the server; the system store otherwise.
    ca_file: str | None = None
    timeout_seconds: float = Field(20.0, gt=0, le=120)
    # Where families reach casebridge: the unsubscribe link is {public_url}/unsubscribe/...
    public_url: str
    # Signs unsubscribe links (from ${ENV}); changing it breaks links already sent.
    unsubscribe_secret: str = Field(min_length=16)
    # After a crash between the server's answer and our record: "review" parks the message for
    # a person; "resend" sends it again with the same Message-ID.
    after_crash: Literal["review", "resend"] = "review"


def message_id(key: str, from_address: str) -> str:
    """A stable Message-ID for an outbox key; the hash keeps ids and case numbers out of it."""
    domain = from_address.rsplit("@", 1)[-1] or "casebridge.invalid"
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}@{domain}>"


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

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def _connect(self) -> smtplib.SMTP:
        cfg = self.cfg
        try:
            if cfg.security == "ssl":
                server: smtplib.SMTP = smtplib.SMTP_SSL(
                    cfg.host, cfg.port, timeout=cfg.timeout_seconds, context=self._context()
                )
            else:
                server = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_seconds)
                if cfg.security == "starttls":
                    server.starttls(context=self._context())
            if cfg.username:
                server.login(cfg.username, cfg.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise PermanentError(f"SMTP login refused: {exc.smtp_code}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            # Nothing was handed over yet: safe to try again later.
            raise TransientError(f"SMTP connection: {type(exc).__name__}: {exc}") from exc
        return server

    def send(self, key: str, message: FamilyMessage) -> DeliveryResult:
        email = self.build(key, message)
        server = self._connect()
        try:
            server.send_message(email)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            what = f"SMTP refused the recipient: {code} {reply!r}"
            if 500 <= code < 600:
                raise AddressRejected(what, "email", message.to, False, str(code)) from exc
            raise TransientError(what) from exc
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            what = f"SMTP refused the message: {exc.smtp_code} {exc.smtp_error!r}"
            if 500 <= exc.smtp_code < 600:
                raise PermanentError(what) from exc
            raise TransientError(what) from exc
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            # The message may have been taken before the line dropped.
            raise OutcomeUnknown(f"SMTP: connection lost while sending: {exc}") from exc
        finally:
            try:
                server.quit()
            except (smtplib.SMTPException, OSError):
                server.close()
        return DeliveryResult(external_id=email["Message-ID"])

    def reconcile(self, key: str, message_to: str, since: datetime) -> Reconciled:
        if self.cfg.after_crash == "resend":
            return Reconciled("not_sent", detail="resent with the same Message-ID")
        return Reconciled("unknown", detail="SMTP cannot say whether it took the message")


def build(settings: Settings, cfg: SmtpEmailSettings) -> SmtpEmailChannel:
    ca_file = str(settings.resolve(cfg.ca_file)) if cfg.ca_file else None
    return SmtpEmailChannel(cfg, ca_file)


register("channel", "smtp_email", SmtpEmailSettings, build, SmtpEmailChannel.idempotency)
