"""Outbox intents and their idempotency keys, built in one place.

An intent says what should happen, not how it reads: the staff task and the family message are
rendered from the data as it is when a worker sends them. A key is deterministic from what
caused the item, so the same change enqueued twice (a re-run, a retry) is one item.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

TASK_UPSERT = "task_upsert"
FAMILY_NOTICE = "family_notice"
FOLLOW_UP = "follow_up"
# Family notices pick their channel when sent (the first the contact can use then).
FAMILY_TARGET = "family"


def case_subject(case_id: int) -> str:
    """How a case is named in a staff tool and in `delivery_links`."""
    return f"case-{case_id}"


def task_key(destination: str, case_id: int, revision: int) -> str:
    return f"task:{destination}:case-{case_id}:rev-{revision}"


def notice_key(case_id: int, revision: int, contact_id: str) -> str:
    return f"notice:case-{case_id}:rev-{revision}:contact-{contact_id}"


def task_upserts(
    destinations: Iterable[str], case_id: int, student_id: str, revision: int
) -> list[dict[str, Any]]:
    """Bring each destination's task for the case up to `revision`."""
    return [
        {
            "idempotency_key": task_key(name, case_id, revision),
            "kind": TASK_UPSERT,
            "target": name,
            "case_id": case_id,
            "student_id": student_id,
            "payload": {"case_id": case_id, "revision": revision},
        }
        for name in destinations
    ]


def family_notices(
    case_id: int, student_id: str, revision: int, contact_ids: Iterable[str], categories: list[str]
) -> list[dict[str, Any]]:
    """Tell each guardian about resources in `categories` (never why)."""
    return [
        {
            "idempotency_key": notice_key(case_id, revision, contact_id),
            "kind": FAMILY_NOTICE,
            "target": FAMILY_TARGET,
            "case_id": case_id,
            "student_id": student_id,
            "contact_id": contact_id,
            "payload": {"categories": sorted(categories)},
        }
        for contact_id in contact_ids
    ]


def follow_up_key(notice_id: int) -> str:
    return f"follow-up:notice-{notice_id}"


def follow_up(
    case_id: int | None, student_id: str, contact_id: str, notice_id: int, channel: str,
    categories: list[str],
) -> dict[str, Any]:  # fmt: skip
    """Ask the guardian, on the channel the notice went by, whether the resources helped."""
    return {
        "idempotency_key": follow_up_key(notice_id),
        "kind": FOLLOW_UP,
        "target": channel,
        "case_id": case_id,
        "student_id": student_id,
        "contact_id": contact_id,
        "payload": {"notice_id": notice_id, "channel": channel, "categories": categories},
    }


def reply_notice(
    case_id: int, student_id: str, contact_id: str, message_sid: str, categories: list[str]
) -> dict[str, Any]:
    """A new notice after a family answered "no" or "need something else" (other resources:
    the ones already sent are not repeated)."""
    return {
        "idempotency_key": f"notice:case-{case_id}:reply-{message_sid}:contact-{contact_id}",
        "kind": FAMILY_NOTICE,
        "target": FAMILY_TARGET,
        "case_id": case_id,
        "student_id": student_id,
        "contact_id": contact_id,
        "payload": {"categories": sorted(categories)},
    }


DIGEST = "digest"


def digest_key(destination: str, staff_id: str, local_day: str) -> str:
    return f"digest:{destination}:{staff_id}:{local_day}"


def digest(destination: str, staff_id: str, local_day: str, until: str) -> dict[str, Any]:
    """A case manager's daily digest of cases that changed up to `until` (UTC ISO), rendered
    when sent: the window starts where the previous digest's ended."""
    return {
        "idempotency_key": digest_key(destination, staff_id, local_day),
        "kind": DIGEST,
        "target": destination,
        "case_id": None,
        "student_id": None,
        "payload": {"staff_id": staff_id, "day": local_day, "until": until},
    }


# -- person-based referrals: what the referrer hears (service/referrals.py) ----------------------

REFERRER_STATUS = "referrer_status"


def referrer_status_key(referral: str, state: str) -> str:
    """One message per referral and state: a re-run, a retry or a case that closes and reopens
    tells the referrer each state once."""
    return f"referrer:{referral}:status-{state}"  # the public id reads "ref_..."


def referrer_status(
    channel: str, referral: str, state: str, student_id: str | None, case_id: int | None
) -> dict[str, Any]:
    """Tell the person who made referral `referral` (its public id) that it reached `state`
    (received, assigned, closed). The address is read from the referral when sent."""
    return {
        "idempotency_key": referrer_status_key(referral, state),
        "kind": REFERRER_STATUS,
        "target": channel,
        "case_id": case_id,
        "student_id": student_id,
        "payload": {"referral": referral, "state": state},
    }
