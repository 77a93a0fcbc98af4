"""The outbox for operators (`admin`): look, send dead items again, settle uncertain ones.

The same operations as `casebridge outbox list / retry / resolve` (service/outbox_admin.py).
Items are shown by ids and states only: no rendered text, no address, no provider answer.
"""

from __future__ import annotations

from typing import Any, Literal

from flask_openapi3 import APIBlueprint, Tag
from flask_openapi3.request import validate_request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select

from service.api.auth import BEARER, current_principal, requires
from service.api.common import (
    MAX_ID,
    PageInfo,
    PageQuery,
    Timestamp,
    json_response,
    page_info,
    public_reason,
)
from service.api.context import engine, settings
from service.api.problems import documented, problem_response
from service.models import OutboxItem
from service.outbox_admin import RESOLVABLE, resolve_item, retry_items

bp = APIBlueprint("outbox", __name__, abp_tags=[Tag(name="outbox")], abp_security=BEARER)

OutboxStatus = Literal[
    "pending", "sending", "delivered", "dead", "needs_review", "suppressed", "superseded"
]
ErrorClass = Literal["TransientError", "PermanentError", "OutcomeUnknown", "AddressRejected"]


class OutboxQuery(PageQuery):
    status: OutboxStatus | None = None
    target: str | None = Field(
        None, min_length=1, max_length=64, description="A destination or channel."
    )


class ItemPath(BaseModel):
    item_id: int = Field(ge=1, le=MAX_ID)


class OutboxItemView(BaseModel):
    id: int
    idempotency_key: str
    kind: str
    target: str
    case_id: int | None
    contact_id: str | None
    status: OutboxStatus
    reason: str | None = Field(
        description="Why it is in that status (opted_out, deferred: quiet_hours, attempts "
        "exhausted...), without free text."
    )
    attempts: int
    last_error_class: ErrorClass | None = Field(
        description="The kind of the last failure, as the dispatcher treated it; the error's "
        "text stays in the database (`casebridge outbox list` shows it)."
    )
    due: Timestamp = Field(description="When a worker takes it next (pending, sending).")
    created_at: Timestamp
    delivered_at: Timestamp | None


class OutboxList(PageInfo):
    items: list[OutboxItemView]


class ResolveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: Literal["sent", "not-sent", "drop"] = Field(
        description="sent: it went out (delivered, with its disclosure record); not-sent: send "
        "it now; drop: never send it."
    )
    note: str = Field("", max_length=200, description="What you checked; kept on the item.")


def error_class(status: str, reason: str | None, last_error: str | None) -> ErrorClass | None:
    """The error taxonomy class behind an item's last failure, read from how the dispatcher
    left it (the class itself is not stored; the status and reason follow from it)."""
    if not last_error:
        return None
    reason = reason or ""
    if reason.startswith("address rejected"):
        return "AddressRejected"
    if status == "dead" and reason == "permanent error":
        return "PermanentError"
    if status in ("sending", "needs_review"):
        return "OutcomeUnknown"  # the call may have gone out: reconcile or a person decides
    return "TransientError"  # retried with backoff (and dead once attempts ran out)


def _view(row: Any) -> OutboxItemView:
    return OutboxItemView(
        id=row.id, idempotency_key=row.idempotency_key, kind=row.kind, target=row.target,
        case_id=row.case_id, contact_id=row.contact_id, status=row.status,
        reason=public_reason(row.reason), attempts=row.attempts,
        last_error_class=error_class(row.status, row.reason, row.last_error),
        due=row.next_attempt_at, created_at=row.created_at, delivered_at=row.delivered_at,
    )  # fmt: skip


COLUMNS = (
    OutboxItem.id, OutboxItem.idempotency_key, OutboxItem.kind, OutboxItem.target,
    OutboxItem.case_id, OutboxItem.contact_id, OutboxItem.status, OutboxItem.reason,
    OutboxItem.attempts, OutboxItem.last_error, OutboxItem.next_attempt_at,
    OutboxItem.created_at, OutboxItem.delivered_at,
)  # fmt: skip


def _item(item_id: int) -> Any:
    with engine().connect() as conn:
        return conn.execute(select(*COLUMNS).where(OutboxItem.id == item_id)).first()


def _missing(item_id: int) -> Any:
    return problem_response(404, "Not Found", f"No outbox item {item_id}.")


@bp.get(
    "/outbox",
    summary="Outbox items by status and target",
    operation_id="listOutbox",
    responses={200: OutboxList, **documented(401, 403, 422)},
)
@requires("admin")
@validate_request()
def list_outbox(query: OutboxQuery) -> Any:
    """Oldest first (the order workers take them)."""
    q = select(*COLUMNS)
    if query.status:
        q = q.where(OutboxItem.status == query.status)
    if query.target:
        q = q.where(OutboxItem.target == query.target)
    with engine().connect() as conn:
        total = conn.execute(select(func.count()).select_from(q.subquery())).scalar_one()
        rows = conn.execute(q.order_by(OutboxItem.id).limit(query.limit).offset(query.offset))
        items = [_view(r) for r in rows]
    return json_response(OutboxList(items=items, **page_info(total, query).model_dump()))


@bp.post(
    "/outbox/<int:item_id>/retry",
    summary="Send a dead item again",
    operation_id="retryOutboxItem",
    responses={200: OutboxItemView, **documented(401, 403, 404, 409, 422)},
)
@requires("admin")
@validate_request()
def retry_item(path: ItemPath) -> Any:
    """A dead item goes back to pending with its attempts reset. An item in needs_review may
    have gone out already: resolve it instead, after checking the provider."""
    if _item(path.item_id) is None:
        return _missing(path.item_id)
    if not retry_items(engine(), [path.item_id], None):
        row = _item(path.item_id)
        status = row.status if row else "gone"
        return problem_response(
            409, "Conflict", f"Item {path.item_id} is {status}: only dead items are retried."
        )
    row = _item(path.item_id)
    return json_response(_view(row)) if row else _missing(path.item_id)


@bp.post(
    "/outbox/<int:item_id>/resolve",
    summary="Settle an item whose delivery could not be confirmed",
    operation_id="resolveOutboxItem",
    responses={200: OutboxItemView, **documented(401, 403, 404, 409, 422)},
)
@requires("admin")
@validate_request()
def resolve(path: ItemPath, body: ResolveBody) -> Any:
    """For an item in needs_review (or stuck in sending, pending or dead) after a person checked
    the provider: the same as `casebridge outbox resolve`."""
    row = _item(path.item_id)
    if row is None:
        return _missing(path.item_id)
    if row.status not in RESOLVABLE:
        return problem_response(
            409, "Conflict", f"Item {path.item_id} is {row.status}: nothing to resolve."
        )
    who = f"by {current_principal().name} via api"
    note = f"{body.note}; {who}" if body.note else who
    try:
        resolve_item(engine(), settings(), path.item_id, body.outcome, note)
    except LookupError:  # taken by a worker right now, or settled in between
        row = _item(path.item_id)
        state = f"is {row.status}" if row else "is gone"
        return problem_response(
            409, "Conflict", f"Item {path.item_id} {state} or is being sent right now."
        )
    row = _item(path.item_id)
    return json_response(_view(row)) if row else _missing(path.item_id)
