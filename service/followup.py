"""The closed loop: a family's answer to "did the resources help?" is kept on the case.

Replies 1 (yes), 2 (no) and 3 (need something else) are read from the family's text within
`REPLY_WINDOW_DAYS` of the last follow-up sent to that number; "no" and "need something else"
queue a new notice in the same categories (resources already sent are not repeated, so it offers
others, or is suppressed as `already_sent` when there are none). Anything else in that window is
kept as `unrecognised`, with the text, for a person to read.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, insert, select

from service.intents import FOLLOW_UP, reply_notice
from service.models import Case, CaseReply, OutboxItem

REPLY_WINDOW_DAYS = 14
ANSWERS = {"1": "got_help", "2": "no_help", "3": "need_other"}


def record_reply(
    conn: Connection, contacts: list[str], body: str, message_sid: str, now: datetime
) -> str | None:
    """Keep the reply on the case of the latest follow-up to these contacts; None when the text
    answers no follow-up."""
    if not contacts:
        return None
    asked = conn.execute(
        select(OutboxItem.id, OutboxItem.case_id, OutboxItem.student_id, OutboxItem.contact_id,
               OutboxItem.payload)
        .where(OutboxItem.kind == FOLLOW_UP, OutboxItem.status == "delivered",
               OutboxItem.contact_id.in_(contacts),
               OutboxItem.delivered_at >= now - timedelta(days=REPLY_WINDOW_DAYS))
        .order_by(OutboxItem.delivered_at.desc(), OutboxItem.id.desc())
    ).first()  # fmt: skip
    if asked is None:
        return None
    item_id, case_id, student_id, contact_id, payload = asked
    answer = ANSWERS.get(body.strip().rstrip(".!"), "unrecognised")
    conn.execute(
        insert(CaseReply).values(
            case_id=case_id, contact_id=contact_id, outbox_id=item_id, answer=answer,
            text=body, message_sid=message_sid, at=now,
        )
    )  # fmt: skip
    if answer in ("no_help", "need_other") and case_id is not None:
        status = conn.execute(select(Case.status).where(Case.id == case_id)).scalar()
        if status == "open":
            from service.outbox import enqueue

            categories = list((payload or {}).get("categories") or [])
            enqueue(conn, [reply_notice(case_id, student_id, contact_id, message_sid, categories)])
    return answer
