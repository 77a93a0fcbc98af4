"""The case task by email to the assigned case manager: the universal fallback destination.

Each revision of a case is one email to the address `caseloads` gives the case manager, with the
case id in the subject and threaded under the first revision's message (`In-Reply-To`). Sent
through the SMTP sender the family email channel uses (`connectors/smtp.py`). The same kind sends
each case manager's daily digest (`service/digest.py`) when `digest: true`.

SMTP has no idempotency key and cannot be asked afterwards what it took, so the kind declares
"none": `sending` is committed before the call, and after a crash `reconcile` answers "unknown"
(a person checks and settles it with `casebridge outbox resolve`) unless the district chose
`after_crash: resend`, which sends again with the same `Message-ID` (many mail systems drop the
repeat). A delivered revision is recorded in `delivery_links`, so a replay of the same revision
is superseded and never mailed twice.
"""

from __future__ import annotations

from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Literal

from connectors.base import DeliveryResult, Idempotency, Link, Reconciled
from connectors.destinations.task_text import task_text
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
from service.config import DestinationSettings, Settings
from service.errors import PermanentError
from service.intents import task_key


class EmailDestinationSettings(DestinationSettings, SmtpServerSettings):
    """Case tasks (and the daily digest) by email to the assigned case manager, over SMTP."""

    kind: Literal["email"]
    # Where a task goes when the case has no case manager (None: the item is dead-lettered).
    unassigned_to: str | None = None
    # Send each case manager a daily digest (schedules.digest_cron) through this destination.
    digest: bool = False
    # After a crash between the server's answer and our record: "review" parks the email for a
    # person; "resend" sends it again with the same Message-ID.
    after_crash: AfterCrash = "review"


class EmailDestination:
    idempotency: Idempotency = "none"

    def __init__(self, cfg: EmailDestinationSettings, ca_file: str | None) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.sender = SmtpSender(cfg, ca_file)

    def _message(self, key: str, to: str, subject: str, body: str) -> EmailMessage:
        cfg = self.cfg
        email = EmailMessage(policy=SMTP_POLICY)
        email["From"] = str(Address(cfg.from_name, addr_spec=cfg.from_address))
        email["To"] = to
        email["Subject"] = subject
        email["Date"] = format_datetime(utcnow())
        email["Message-ID"] = message_id(key, cfg.from_address)
        email.set_content(body)
        return email

    def upsert_task(
        self, key: str, subject: str, task: dict[str, Any], link: Link | None
    ) -> DeliveryResult:
        to = (task.get("assignee") or {}).get("email") or self.cfg.unassigned_to
        if not to:
            raise PermanentError(f"{subject} has no case manager and no unassigned_to address")
        revision = task.get("revision")
        if task.get("status") == "closed":
            what = "closed"
        elif revision == 1 and link is None:
            what = "opened"
        else:
            what = f"updated (revision {revision})"
        email = self._message(key, to, f"[{subject}] Support case {what}", task_text(task))
        # Thread every revision under the first one's message.
        first = message_id(task_key(self.name, int(task["case_id"]), 1), self.cfg.from_address)
        if email["Message-ID"] != first:
            email["In-Reply-To"] = first
            email["References"] = first
        self.sender.send(email, to)
        return DeliveryResult(external_id=email["Message-ID"], version=str(revision))

    def send_digest(self, key: str, view: dict[str, Any]) -> DeliveryResult:
        from service.digest import digest_text  # it loads the outbox: not at registration

        counts = view["counts"]
        subject = (f"Case digest {view['day']}: {counts['opened']} new, {counts['changed']} "
                   f"changed, {counts['closed']} closed")  # fmt: skip
        email = self._message(key, view["email"], subject, digest_text(view))
        self.sender.send(email, view["email"])
        return DeliveryResult(external_id=email["Message-ID"])

    def find(self, subject: str) -> Link | None:
        return None  # mail cannot be searched; the kind is "none", not "stored_link"

    def reconcile(self, key: str, subject: str, since: datetime) -> Reconciled:
        return reconcile_after_crash(self.cfg.after_crash)


def build(settings: Settings, cfg: EmailDestinationSettings) -> EmailDestination:
    ca_file = str(settings.resolve(cfg.ca_file)) if cfg.ca_file else None
    return EmailDestination(cfg, ca_file)


register("destination", "email", EmailDestinationSettings, build, EmailDestination.idempotency)
