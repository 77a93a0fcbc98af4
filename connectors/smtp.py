"""SMTP sending shared by the family email channel and the case-manager email destination.

One place knows how to connect (STARTTLS, SMTPS or plain, optional login, a private CA) and how
SMTP's answers map onto the error taxonomy, so both senders retry, dead-letter and reconcile
alike.
"""

from __future__ import annotations

import hashlib
import smtplib
import ssl
from email import policy
from email.message import EmailMessage
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from connectors.base import Reconciled
from service.errors import AddressRejected, OutcomeUnknown, PermanentError, TransientError

SMTP_POLICY = policy.SMTP.clone(max_line_length=998)


class SmtpServerSettings(BaseModel):
    """The SMTP server fields both email kinds share (credentials via ${ENV})."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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


# What to do with a message found in `sending` after a crash: SMTP cannot be asked whether it
# took it. "review" parks it for a person; "resend" sends again with the same Message-ID.
AfterCrash = Literal["review", "resend"]


def reconcile_after_crash(after_crash: AfterCrash) -> Reconciled:
    if after_crash == "resend":
        return Reconciled("not_sent", detail="resent with the same Message-ID")
    return Reconciled("unknown", detail="SMTP cannot say whether it took the message")


def message_id(key: str, from_address: str) -> str:
    """A stable Message-ID for an outbox key; the hash keeps ids and case numbers out of it."""
    domain = from_address.rsplit("@", 1)[-1] or "casebridge.invalid"
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}@{domain}>"


class SmtpSender:
    def __init__(self, cfg: SmtpServerSettings, ca_file: str | None) -> None:
        self.cfg = cfg
        self.ca_file = ca_file

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

    def send(self, email: EmailMessage, to: str) -> None:
        """Hand `email` to the server; SMTP's refusals as taxonomy errors."""
        server = self._connect()
        try:
            server.send_message(email)
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()))
            what = f"SMTP refused the recipient: {code} {reply!r}"
            if 500 <= code < 600:
                raise AddressRejected(what, "email", to, False, str(code)) from exc
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
