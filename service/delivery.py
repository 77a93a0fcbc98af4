"""Route outbox items to the configured destinations and channels; log each disclosure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from connectors.base import Channel, DeliveryResult, Destination
from connectors.registry import lookup
from service.clock import utcnow
from service.config import Settings
from service.errors import PermanentError
from service.models import OutboxItem

STAFF_BASIS = "school official with legitimate educational interest, 34 CFR 99.31(a)(1)"
FAMILY_BASIS = "parent or guardian of the student, 34 CFR 99.10 / 99.31(a)"


def build_targets(settings: Settings) -> tuple[dict[str, Destination], dict[str, Channel]]:
    destinations: dict[str, Destination] = {
        d.name: lookup("destination", d.kind).factory(settings, d) for d in settings.destinations
    }
    channels: dict[str, Channel] = {
        c.name: lookup("channel", c.kind).factory(settings, c) for c in settings.channels
    }
    return destinations, channels


def make_deliver(settings: Settings) -> Callable[[OutboxItem], DeliveryResult]:
    destinations, channels = build_targets(settings)

    def deliver(item: OutboxItem) -> DeliveryResult:
        if item.kind == "task" and item.target in destinations:
            return destinations[item.target].upsert_task(item.idempotency_key, item.payload)
        if item.kind == "family_message" and item.target in channels:
            return channels[item.target].send(item.idempotency_key, item.payload)
        # The configuration no longer names this target: retrying cannot help.
        raise PermanentError(f"no {item.kind} target named {item.target!r} is configured")

    return deliver


def disclosure_records(item: OutboxItem, result: DeliveryResult) -> list[dict[str, Any]]:
    """What left the system for whom (34 CFR 99.32); written with the delivered mark."""
    if not item.student_id:
        return []
    if item.kind == "task":
        categories = ["identity", "enrollment", "case"]
        reasons = item.payload.get("reasons") or []
        text = repr([r.get("evidence") for r in reasons])
        for word, category in (
            ("absent", "attendance"),
            ("failures", "grades"),
            ("incidents", "discipline"),
        ):
            if word in text:
                categories.append(category)
        return [
            {
                "student_id": item.student_id,
                "recipient": f"staff tool {item.target}",
                "recipient_kind": "staff_tool",
                "data_categories": categories,
                "basis": STAFF_BASIS,
                "outbox_id": item.id,
                "disclosed_at": utcnow(),
            }
        ]
    return [
        {
            "student_id": item.student_id,
            "recipient": f"contact {item.contact_id} via {item.target}",
            "recipient_kind": "family",
            "data_categories": ["support_offered"],
            "basis": FAMILY_BASIS,
            "outbox_id": item.id,
            "disclosed_at": utcnow(),
        }
    ]
