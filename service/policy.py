"""Send-time policy for family messages, in one place, before any channel is called.

Pure: it takes what the database says now and returns a decision. A refusal is a reason recorded
on the outbox item (`suppressed: opted_out`); a "not now" is a time (quiet hours, the per-family
cap), never a drop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from service.config import PolicyConfig, ResourceConfig


@dataclass(frozen=True)
class ContactState:
    """A guardian as the database says now, with the link to this student."""

    contact_id: str
    found: bool
    active: bool = False
    linked: bool = False  # the student-contact link is still active
    guardian: bool = False
    do_not_contact: bool = False
    no_contact: bool = False  # a restriction on this student's link (court order)
    language: str = "en"
    sms_phone: str | None = None
    email: str | None = None
    sms_opted_out: bool = False
    email_opted_out: bool = False
    all_opted_out: bool = False
    # The SMS provider rejected this very number (invalid, landline): email instead.
    sms_unusable: bool = False


@dataclass(frozen=True)
class ChannelChoice:
    name: str
    medium: str


@dataclass(frozen=True)
class Suppress:
    reason: str


@dataclass(frozen=True)
class Defer:
    until: datetime
    reason: str


@dataclass(frozen=True)
class SendVia:
    channel: str
    medium: str
    address: str
    resources: list[ResourceConfig] = field(default_factory=list)


Decision = Suppress | Defer | SendVia


def choose_channel(state: ContactState, channels: list[ChannelChoice]) -> SendVia | Suppress:
    """The first configured channel the contact can take now."""
    opted_out = False
    for channel in channels:
        address = state.sms_phone if channel.medium == "sms" else state.email
        if channel.medium == "sms" and state.sms_unusable:
            address = None
        if not address:
            continue
        out = state.sms_opted_out if channel.medium == "sms" else state.email_opted_out
        if out or state.all_opted_out:
            opted_out = True
            continue
        return SendVia(channel.name, channel.medium, address)
    return Suppress("opted_out" if opted_out else "no_address")


def next_window_opening(now: datetime, policy: PolicyConfig, timezone: str) -> datetime | None:
    """None when `now` is inside the sending window; else when the window next opens (UTC)."""
    zone = ZoneInfo(timezone)
    local = now.astimezone(zone)
    window = policy.sending_window
    if window is None or window.start <= local.time() < window.end:
        return None
    day = local.date() if local.time() < window.start else local.date() + timedelta(days=1)
    opening = datetime.combine(day, window.start, tzinfo=zone)
    return opening.astimezone(UTC)


def decide(
    *,
    now: datetime,
    timezone: str,
    policy: PolicyConfig,
    case_open: bool,
    contact: ContactState,
    channels: list[ChannelChoice],
    candidates: list[ResourceConfig],
    recent_sends: list[datetime],
    recently_sent_resources: set[str],
) -> Decision:
    """May this family message go out now, where, and with which resources?

    `recent_sends` are this contact's delivered family messages within the cap window;
    `recently_sent_resources` the resource ids sent to them within `resource_repeat_days`.
    """
    if not case_open:
        return Suppress("case_closed")
    if not contact.found or not contact.active or not contact.linked:
        return Suppress("contact_inactive")
    if not contact.guardian:
        return Suppress("not_guardian")
    if contact.do_not_contact:
        return Suppress("do_not_contact")
    if contact.no_contact:
        return Suppress("no_contact_restriction")
    route = choose_channel(contact, channels)
    if isinstance(route, Suppress):
        return route
    if not candidates:
        return Suppress("no_matching_resource")
    fresh = [r for r in candidates if r.id not in recently_sent_resources]
    if not fresh:
        return Suppress("already_sent")
    opening = next_window_opening(now, policy, timezone)
    if opening is not None:
        return Defer(opening, "quiet_hours")
    cap = policy.family_cap
    window_start = now - timedelta(days=cap.days)
    in_window = sorted(t for t in recent_sends if t >= window_start)
    if len(in_window) >= cap.messages:
        # Wait until enough of the window's messages age out to make room for one more.
        until = in_window[len(in_window) - cap.messages] + timedelta(days=cap.days)
        return Defer(until, "family_cap")
    return SendVia(
        route.channel, route.medium, route.address, fresh[: policy.resources_per_message]
    )
