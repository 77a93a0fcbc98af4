"""Case tasks as signed webhooks (Standard Webhooks), for any tool that can receive one.

Each delivery POSTs `{"type": "case.task", "timestamp": ..., "data": <task>}` (schema:
`docs/webhook-task.schema.json`) with `webhook-id` = the outbox idempotency key, the same on every
retry of that revision, so the receiver drops repeats: idempotency "provider_key". A new revision
of the case is a new id (`task:<destination>:case-12:rev-3`); `data.task_id` ("case-12") names the
task across revisions.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, Literal

from connectors.base import DeliveryResult, Idempotency, Link, Reconciled
from connectors.destinations import signing
from connectors.destinations.http_base import HttpDestinationSettings, ToolHttp
from connectors.registry import register
from service.config import Settings

EVENT_TYPE = "case.task"


class WebhookSettings(HttpDestinationSettings):
    """Signed case-task webhooks (Standard Webhooks) to one URL."""

    kind: Literal["webhook"]
    url: str
    secret: str  # whsec_<base64>, from ${ENV}


def payload(task: dict[str, Any], now: datetime | None = None) -> bytes:
    """The body as sent: compact, keys sorted, so a retry carries the same bytes."""
    moment = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    event = {"type": EVENT_TYPE, "timestamp": moment, "data": task}
    return json.dumps(event, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


class WebhookDestination:
    idempotency: Idempotency = "provider_key"

    def __init__(self, name: str, cfg: WebhookSettings) -> None:
        self.name = name
        self.cfg = cfg
        signing.secret_bytes(cfg.secret)  # a malformed secret fails at start, not at send
        self.http = ToolHttp(name, cfg)

    def upsert_task(
        self, key: str, subject: str, task: dict[str, Any], link: Link | None
    ) -> DeliveryResult:
        body = payload(task)

        def sign(headers: dict[str, str]) -> None:  # a fresh timestamp on every attempt
            headers.update(signing.headers(self.cfg.secret, key, body, int(time.time())))
            headers["Content-Type"] = "application/json"

        resp = self.http.request("POST", self.cfg.url, safe=True, data=body, before_each=sign)
        return DeliveryResult(external_id=subject, detail={"status": resp.status_code})

    def find(self, subject: str) -> Link | None:
        return None  # the receiver keys on webhook-id; nothing to search

    def reconcile(self, key: str, subject: str, since: datetime) -> Reconciled:
        return Reconciled("not_sent")  # sending again is safe: the receiver drops the repeat


def build(settings: Settings, cfg: WebhookSettings) -> WebhookDestination:
    return WebhookDestination(cfg.name, cfg)


register("destination", "webhook", WebhookSettings, build, WebhookDestination.idempotency)
