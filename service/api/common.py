"""What the API's route modules share: JSON answers from pydantic models, paging, timestamps,
and which schools a token may see."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated

from flask import Response
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from sqlalchemy import Connection

from service.api.auth import Principal

# Bigger than any id a row can have on either database: a larger path id is a 422, not a crash
# in the driver ("Python int too large to convert to SQLite INTEGER").
MAX_ID = 2**63 - 1
MAX_PAGE = 200


def _utc(moment: datetime) -> str:
    """UTC ISO-8601 with its offset, whether the database handed back an aware or a naive
    (SQLite) datetime: RFC 3339 wants the offset, and clients parse it without guessing."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


Timestamp = Annotated[datetime, PlainSerializer(_utc, return_type=str, when_used="json")]


def json_response(
    model: BaseModel, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        model.model_dump_json(by_alias=True),
        status=status,
        mimetype="application/json",
        headers=dict(headers or {}),
    )


class PageQuery(BaseModel):
    # An unknown parameter is a 422, not ignored: `?statu=open` must not quietly list everything.
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(50, ge=1, le=MAX_PAGE, description=f"At most {MAX_PAGE} per page.")
    offset: int = Field(0, ge=0, le=MAX_ID, description="How many matches to skip.")


class PageInfo(BaseModel):
    total: int = Field(description="Every match, on all pages.")
    limit: int
    offset: int
    next_offset: int | None = Field(description="The offset of the next page; null on the last.")


def page_info(total: int, query: PageQuery) -> PageInfo:
    following = query.offset + query.limit
    return PageInfo(
        total=total,
        limit=query.limit,
        offset=query.offset,
        next_offset=following if following < total else None,
    )


def visible_schools(conn: Connection, principal: Principal) -> set[str] | None:
    """The school sourcedIds a token may see (None: every school).

    A token's schools may be written as sourcedIds or as school numbers, like caseloads: the
    same rule as the referral routes (`service.referrals.allowed_schools`)."""
    from service.referrals import allowed_schools

    allowed = allowed_schools(conn, principal.schools)
    return None if allowed is None else set(allowed)


def public_reason(reason: str | None) -> str | None:
    """An outbox item's reason without free text: an operator's note and a provider's answer
    stay in the database (they may name a person); the kind of reason is kept."""
    if reason is None:
        return None
    if reason.startswith("resolved by operator: "):
        return reason.partition(" (")[0]  # "resolved by operator: sent", not the note
    if reason.startswith("reconcile: "):
        return "reconcile: the outcome could not be confirmed"
    return reason
