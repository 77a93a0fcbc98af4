"""Case tasks as Zendesk Support tickets, with plain `requests`.

- Auth: API token (`{email}/token:{api_token}`, HTTP Basic).
- Create: `POST /api/v2/tickets.json` with `external_id` = our subject ("case-12") and the
  `Idempotency-Key` header = the outbox key, so a create repeated after a lost answer returns the
  first ticket instead of a second one.
- Lookup: `GET /api/v2/tickets.json?external_id=case-12` (`find`: before a create, after a crash).
- Update: `PUT /api/v2/tickets/{id}.json` (subject, status, priority) with the case as an internal
  note. A closed case is `solved` (not `closed`, which Zendesk never lets anyone change again).

Zendesk issues the ticket ids, so the idempotency is "stored_link"; the Idempotency-Key is a second
guard. zenpy is not used: it has no Idempotency-Key support and retries 429s on its own schedule.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from connectors.base import DeliveryResult, FindsItsLink, Idempotency, Link
from connectors.destinations.http_base import HttpDestinationSettings, ToolHttp
from connectors.destinations.signing import TOLERANCE_SECONDS, SignatureError
from connectors.destinations.task_text import task_text
from connectors.registry import register
from service.config import Settings

PRIORITY = {"high": "high", "medium": "normal", "low": "low"}


class ZendeskSettings(HttpDestinationSettings):
    """Case tasks as Zendesk tickets (external_id + Idempotency-Key)."""

    kind: Literal["zendesk"]
    base_url: str  # https://<subdomain>.zendesk.com
    email: str
    api_token: str  # from ${ENV}
    group_id: int | None = None
    tags: list[str] = ["casebridge"]
    # The signing secret of a Zendesk webhook that a trigger calls on status or assignee changes
    # (POST /tools/<name>/status); see docs/destinations.md for the trigger's JSON body.
    webhook_signing_secret: str | None = None

    def read_status(self, headers: Mapping[str, str], body: bytes) -> tuple[str, Any]:
        lowered = {k.lower(): v for k, v in headers.items()}
        signature = lowered.get("x-zendesk-webhook-signature")
        if signature is None or not self.webhook_signing_secret:
            return super().read_status(headers, body)  # Standard Webhooks, if configured
        stamp = lowered.get("x-zendesk-webhook-signature-timestamp", "")
        mac = hmac.new(self.webhook_signing_secret.encode(), stamp.encode() + body, hashlib.sha256)
        if not hmac.compare_digest(base64.b64encode(mac.digest()).decode(), signature):
            raise SignatureError("the Zendesk webhook signature does not match")
        try:
            sent = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            raise SignatureError("the Zendesk signature timestamp is not a time") from None
        if abs((datetime.now(UTC) - sent).total_seconds()) > TOLERANCE_SECONDS:
            raise SignatureError("the Zendesk signature timestamp is outside five minutes")
        # Zendesk retries a delivery with the same invocation id.
        message_id = (
            lowered.get("x-zendesk-webhook-invocation-id")
            or hashlib.sha256(stamp.encode() + body).hexdigest()
        )
        return message_id, translate_trigger(json.loads(body or b"null"))


def translate_trigger(event: Any) -> Any:
    """The trigger's JSON (placeholders filled by Zendesk) as our `task.status` report."""
    if not isinstance(event, dict):
        return None
    status = str(event.get("status") or "").lower()
    data: dict[str, Any] = {"task_id": event.get("external_id"), "actor": event.get("actor")}
    if event.get("event") == "assignee_changed":
        data.update(action="reassigned", assignee=event.get("assignee_email"))
    elif status in ("solved", "closed"):
        data["action"] = "completed"
    elif status in ("new", "open", "pending", "hold"):
        data["action"] = "reopened"
    return {"type": "task.status", "data": {k: v for k, v in data.items() if v}}


class ZendeskDestination(FindsItsLink):
    idempotency: Idempotency = "stored_link"

    def __init__(self, name: str, cfg: ZendeskSettings) -> None:
        self.name = name
        self.cfg = cfg
        self.base = f"{cfg.base_url.rstrip('/')}/api/v2"
        pair = base64.b64encode(f"{cfg.email}/token:{cfg.api_token}".encode()).decode()
        header = f"Basic {pair}"
        self.http = ToolHttp(name, cfg, lambda: header)

    def _ticket(self, subject: str, task: dict[str, Any]) -> dict[str, Any]:
        ticket: dict[str, Any] = {
            "subject": f"{task['title']} [{subject}]",
            "status": "solved" if task.get("status") == "closed" else "open",
            "priority": PRIORITY.get(str(task.get("severity")), "normal"),
            "comment": {"body": task_text(task), "public": False},
        }
        if self.cfg.group_id is not None:
            ticket["group_id"] = self.cfg.group_id
        return ticket

    def upsert_task(
        self, key: str, subject: str, task: dict[str, Any], link: Link | None
    ) -> DeliveryResult:
        ticket = self._ticket(subject, task)
        if link is None:
            ticket.update(external_id=subject, tags=list(self.cfg.tags))
            resp = self.http.request(  # the Idempotency-Key makes a repeat return the same ticket
                "POST", f"{self.base}/tickets.json", safe=True, json={"ticket": ticket},
                headers={"Idempotency-Key": key},
            )  # fmt: skip
            op = "create"
        else:
            resp = self.http.request(
                "PUT", f"{self.base}/tickets/{link.external_id}.json", safe=True,
                json={"ticket": ticket},
            )  # fmt: skip
            op = "update"
        saved = resp.json()["ticket"]
        return DeliveryResult(str(saved["id"]), None, {"op": op})

    def find(self, subject: str) -> Link | None:
        resp = self.http.request(
            "GET", f"{self.base}/tickets.json", safe=True, params={"external_id": subject}
        )
        tickets = resp.json().get("tickets") or []
        return Link(str(tickets[0]["id"])) if tickets else None


def build(settings: Settings, cfg: ZendeskSettings) -> ZendeskDestination:
    return ZendeskDestination(cfg.name, cfg)


register("destination", "zendesk", ZendeskSettings, build, ZendeskDestination.idempotency)
