"""SMS through Twilio's Messages API, with the real `twilio` library.

`messages.create` has no idempotency key, so this kind declares "none": the outbox commits
`sending` before the call and, after a crash or a timeout, `reconcile` lists Twilio's messages to
that number since the attempt and looks for our text (by its digest) instead of sending again.

Errors map onto the one taxonomy (`service/errors.py`):
- 21610 (the recipient replied STOP at the carrier): `AddressRejected(opted_out=True)`; the outbox
  records an SMS opt-out and never retries;
- 21211 / 21614 (invalid, or not a mobile number): `AddressRejected`; the outbox marks the number
  unusable for SMS and plans the notice again, which picks email;
- 20429 / HTTP 429, a refused connection: `TransientError` (backoff; twilio-python does not retry);
- a read timeout, a dropped connection or a 5xx after the request left: `OutcomeUnknown` (the
  message may exist: reconcile first).

The per-sender rate (`rate_per_second`) is enforced by the delivery core across every worker
through `rate_limit` (`service/ratelimit.py`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

import phonenumbers
import requests
from pydantic import Field, model_validator
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from connectors.base import DeliveryResult, FamilyMessage, Idempotency, Reconciled
from connectors.registry import register
from service.config import ChannelSettings, Settings
from service.errors import AddressRejected, OutcomeUnknown, PermanentError, TransientError
from service.sms_text import body_digest as digest_of

OPTED_OUT = 21610
INVALID_NUMBERS = frozenset({21211, 21614})
TOO_MANY_REQUESTS = 20429
# Reconcile looks this far before the attempt's start: clocks differ between us and Twilio.
CLOCK_SLACK = timedelta(minutes=5)


class TwilioSmsSettings(ChannelSettings):
    """SMS through Twilio (Messaging Service SID or from-number; credentials via ${ENV})."""

    kind: Literal["twilio_sms"]
    account_sid: str
    auth_token: str
    messaging_service_sid: str | None = None
    from_number: str | None = None
    # Where Twilio reaches casebridge (behind the proxy): status callbacks are sent to
    # {public_url}/webhooks/twilio/{name}/status and every webhook signature is checked against
    # the public URL, not the one the proxy forwards to.
    public_url: str
    rate_per_second: float = Field(1.0, gt=0, le=1000)
    timeout_seconds: float = Field(10.0, gt=0, le=60)
    default_region: str = "US"  # how a number without a country code is read
    # Only for tests and Twilio's regional edges; None is https://api.twilio.com.
    api_base_url: str | None = None
    # HELP gets this reply in the family's language ({district} and {contact} are filled in).
    district_contact: str = "your school's front office"
    help_reply: dict[str, str] = {
        "en": "{district}: for help call {contact}. Reply STOP to opt out.",
        "es": "{district}: para ayuda llame a {contact}. Responda STOP para no recibir mensajes.",
    }
    # One confirmation at most. Twilio's Advanced Opt-Out already answers the standard keywords,
    # so by default we confirm only plain-language requests it does not recognise.
    confirm_keywords: bool = False
    stop_reply: dict[str, str] = {
        "en": "{district}: you will get no more messages from us. Reply START to resume.",
        "es": "{district}: no recibirá más mensajes. Responda START para volver a recibirlos.",
    }

    @model_validator(mode="after")
    def _one_sender(self) -> TwilioSmsSettings:
        if bool(self.messaging_service_sid) == bool(self.from_number):
            raise ValueError("set exactly one of messaging_service_sid and from_number")
        return self

    @property
    def status_callback(self) -> str:
        return f"{self.public_url.rstrip('/')}/webhooks/twilio/{self.name}/status"


def e164(number: str, region: str) -> str | None:
    """The number in E.164, or None when it cannot be a valid phone number."""
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


class TwilioSmsChannel:
    idempotency: Idempotency = "none"
    medium: Literal["sms", "email"] = "sms"
    # The outbox passes the digest of our text to `reconcile` (kept with the `sending` mark).
    reconciles_by_body = True

    def __init__(self, cfg: TwilioSmsSettings) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.client = Client(
            cfg.account_sid, cfg.auth_token,
            http_client=TwilioHttpClient(timeout=cfg.timeout_seconds),
        )  # fmt: skip
        if cfg.api_base_url:
            self.client.api.base_url = cfg.api_base_url.rstrip("/")
        sender = cfg.messaging_service_sid or cfg.from_number
        self.rate_limit: tuple[str, float] = (
            f"twilio:{cfg.account_sid}:{sender}",
            cfg.rate_per_second,
        )

    def send(self, key: str, message: FamilyMessage) -> DeliveryResult:
        to = e164(message.to, self.cfg.default_region)
        if to is None:  # Twilio would answer 21211; do not spend a request on it
            raise AddressRejected("not a valid phone number", "sms", message.to, False, "21211")
        params: dict[str, Any] = {
            "to": to,
            "body": message.body,
            "status_callback": self.cfg.status_callback,
        }
        if self.cfg.messaging_service_sid:
            params["messaging_service_sid"] = self.cfg.messaging_service_sid
        else:
            params["from_"] = self.cfg.from_number
        try:
            created = self.client.messages.create(**params)
        except TwilioRestException as exc:
            raise self._error(exc, message.to) from exc
        except requests.ConnectTimeout as exc:
            raise TransientError("Twilio: connect timeout") from exc
        except requests.ReadTimeout as exc:
            raise OutcomeUnknown("Twilio: no answer after the request was sent") from exc
        except requests.ConnectionError as exc:
            if _never_connected(exc):
                raise TransientError("Twilio: connection refused") from exc
            raise OutcomeUnknown("Twilio: connection lost mid-request") from exc
        return DeliveryResult(
            external_id=created.sid,
            detail={"status": created.status, "segments": created.num_segments},
        )

    @staticmethod
    def _error(exc: TwilioRestException, address: str) -> Exception:
        code = int(exc.code) if exc.code else 0
        what = f"Twilio {exc.status} code {code}: {exc.msg}"
        if code == OPTED_OUT:
            return AddressRejected(what, "sms", address, True, str(code))
        if code in INVALID_NUMBERS:
            return AddressRejected(what, "sms", address, False, str(code))
        if code == TOO_MANY_REQUESTS or exc.status == 429:
            return TransientError(what, retry_after=1.0)
        if exc.status >= 500:  # the message may exist: reconcile before any resend
            return OutcomeUnknown(what)
        return PermanentError(what)

    def reconcile(
        self, key: str, message_to: str, since: datetime, body_digest: str | None = None
    ) -> Reconciled:
        """Look for our text among Twilio's messages to that number since the attempt.

        Filtered by `To` on Twilio's side and by creation time here: a message Twilio accepted
        but has not sent yet has no DateSent, so a DateSent filter would miss exactly it.
        """
        to = e164(message_to, self.cfg.default_region) or message_to
        try:
            listed = self.client.messages.list(to=to, limit=200)
        except (TwilioRestException, requests.RequestException) as exc:
            # Still unknown: stay `sending` and ask again at the next claim.
            raise OutcomeUnknown(f"Twilio message list failed: {exc}") from exc
        recent = [
            m for m in listed if m.date_created is None or m.date_created >= since - CLOCK_SLACK
        ]
        if body_digest is not None:
            for m in recent:
                if m.body is not None and digest_of(m.body) == body_digest:
                    return Reconciled("sent", DeliveryResult(m.sid, detail={"status": m.status}))
            return Reconciled("not_sent")
        if recent:  # something went to that number, but we cannot tell whether it is ours
            return Reconciled("unknown", detail=f"{len(recent)} message(s) to that number")
        return Reconciled("not_sent")


def _never_connected(exc: requests.ConnectionError) -> bool:
    """True when the request cannot have left (refused, DNS): safe to retry as new."""
    text = repr(exc.args[0]) if exc.args else ""
    return "NewConnectionError" in text or "NameResolutionError" in text


def build(settings: Settings, cfg: TwilioSmsSettings) -> TwilioSmsChannel:
    return TwilioSmsChannel(cfg)


register("channel", "twilio_sms", TwilioSmsSettings, build, TwilioSmsChannel.idempotency)
