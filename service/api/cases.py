"""Cases: list and filter, one case with its timeline, change status or assignee, add a note.

A token limited to schools sees and changes only cases at those schools; any other case is a
404 exactly like a case that does not exist, so the answer says nothing about other schools.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date
from typing import Annotated, Any, Literal

import rule_engine
from flask_openapi3 import APIBlueprint, Tag
from flask_openapi3.request import validate_request
from pydantic import BaseModel, ConfigDict, Discriminator, Field, RootModel
from pydantic import Tag as PydanticTag
from sqlalchemy import Connection, exists, func, or_, select

from service.api.auth import BEARER, Principal, current_principal, requires
from service.api.common import (
    MAX_ID,
    PageInfo,
    PageQuery,
    Timestamp,
    json_response,
    page_info,
    public_reason,
    visible_schools,
)
from service.api.context import engine, settings
from service.api.problems import documented, problem_response
from service.cases import CaseChange, CaseConflict, CaseEditor, CaseNotFound, PersonCloseReason
from service.indicator_names import INDICATORS
from service.models import Case, CaseEvent, CaseReply, OutboxItem, Referral, School, Student
from service.task_view import ABSENCE_GROUP, evidence_lines, used_indicators

bp = APIBlueprint("cases", __name__, abp_tags=[Tag(name="cases")], abp_security=BEARER)

CaseStatus = Literal["open", "closed"]
ASSIGNEE = "A caseload's staff_id (null: unassigned)."
NOTE = "Why; kept on the case event."
VIA = "api"


# -- schemas ------------------------------------------------------------------------------------


class CaseListQuery(PageQuery):
    school: str | None = Field(
        None, min_length=1, max_length=128, description="School sourcedId or number."
    )
    status: CaseStatus | None = None
    reason: str | None = Field(
        None, min_length=1, max_length=64, description="A referral reason code."
    )
    assignee: str | None = Field(
        None, min_length=1, max_length=64, description="A case manager's staff_id."
    )


class CasePath(BaseModel):
    case_id: int = Field(ge=1, le=MAX_ID)


class CaseSummary(BaseModel):
    id: int
    student_id: str
    school_id: str | None
    status: CaseStatus
    severity: str
    assignee_id: str | None
    revision: int = Field(description="Goes up with every change the staff tools are sent.")
    reasons: list[str] = Field(description="The referral reasons on the case, oldest first.")
    opened_at: Timestamp
    updated_at: Timestamp
    closed_at: Timestamp | None
    close_reason: str | None
    recovering_since: date | None = Field(
        description="No reason has fired since this day (evaluation closes it after "
        "cases.recovery_days)."
    )


class CaseList(PageInfo):
    items: list[CaseSummary]


class StudentView(BaseModel):
    student_id: str
    local_id: str | None
    first_name: str
    last_name: str
    grade_level: str | None
    school_id: str | None


class Explanation(BaseModel):
    """Why a rule referred the student: the values its expression read on that day."""

    as_of: str | None
    indicators: dict[str, float | bool | str | None]
    summary: list[str] = Field(description="The same evidence in words, as staff tasks show it.")


class ReferralView(BaseModel):
    id: int
    origin: str = Field(description="rule (evaluation) or person (POST /referrals).")
    reason: str
    severity: str
    rule_id: str | None
    rule_version: int | None
    rule_expression: str | None
    resource_categories: list[str]
    created_at: Timestamp
    last_fired_on: date | None
    explanation: Explanation


class TimelineEvent(BaseModel):
    id: int
    kind: str = Field(description="opened, reason_added, closed, reopened, reassigned, note...")
    at: Timestamp
    actor: str | None = Field(description="Who, when a person did it (null: evaluation).")
    via: str | None = Field(description="Where: api, a staff tool's name (null: evaluation).")
    detail: dict[str, Any]


class DeliverySummary(BaseModel):
    """The outbox items for the case to one target: counts and the latest, never content."""

    target: str = Field(description="A staff tool, or a family channel once one was chosen.")
    kind: str
    items: int
    by_status: dict[str, int]
    latest_status: str
    latest_reason: str | None
    last_delivered_at: Timestamp | None


class FamilyReply(BaseModel):
    id: int
    contact_id: str
    answer: str = Field(description="got_help, no_help, need_other or unrecognised.")
    at: Timestamp


class CaseDetail(CaseSummary):
    student: StudentView | None
    assignee_name: str | None
    referrals: list[ReferralView]
    timeline: list[TimelineEvent]
    deliveries: list[DeliverySummary]
    family_replies: list[FamilyReply] = Field(description="The answer codes; never the text.")


class CloseCase(BaseModel):
    """Close the case, with a reason; optionally hand it to another case manager too."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["closed"]
    close_reason: PersonCloseReason
    assignee_id: str | None = Field(None, max_length=64, description=ASSIGNEE)
    note: str | None = Field(None, min_length=1, max_length=2000, description=NOTE)


class ReopenCase(BaseModel):
    """Reopen a closed case; optionally hand it to another case manager too."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["open"]
    assignee_id: str | None = Field(None, max_length=64, description=ASSIGNEE)
    note: str | None = Field(None, min_length=1, max_length=2000, description=NOTE)


class ReassignCase(BaseModel):
    """Hand the case to another case manager (null: nobody)."""

    model_config = ConfigDict(extra="forbid")
    assignee_id: str | None = Field(max_length=64, description=ASSIGNEE)
    note: str | None = Field(None, min_length=1, max_length=2000, description=NOTE)


def _patch_kind(value: Any) -> str | None:
    """Which of the three changes a body asks for, so an error names only that one's fields."""
    if isinstance(value, dict):
        return {"closed": "close", "open": "reopen", None: "reassign"}.get(value.get("status"))
    kinds: dict[type[BaseModel], str] = {
        CloseCase: "close",
        ReopenCase: "reopen",
        ReassignCase: "reassign",
    }
    return kinds.get(type(value))


PatchUnion = Annotated[
    Annotated[CloseCase, PydanticTag("close")]
    | Annotated[ReopenCase, PydanticTag("reopen")]
    | Annotated[ReassignCase, PydanticTag("reassign")],
    Discriminator(_patch_kind, custom_error_type="invalid_change",
                  custom_error_message="status must be 'closed', 'open' or absent"),
]  # fmt: skip


class CasePatchBody(RootModel[PatchUnion]):
    """Close (with a reason), reopen, or reassign; a status change may reassign too."""

    def change(self) -> CaseChange:
        patch = self.root
        return CaseChange(
            status=getattr(patch, "status", None),
            close_reason=getattr(patch, "close_reason", None),
            change_assignee="assignee_id" in patch.model_fields_set,
            assignee_id=patch.assignee_id,
            note=patch.note,
        )


class NoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000)


class NoteView(BaseModel):
    id: int
    case_id: int
    at: Timestamp
    actor: str | None
    via: str | None
    text: str


# -- reading -----------------------------------------------------------------------------------


def _summary_rows(conn: Connection, ids: list[int]) -> dict[int, list[str]]:
    reasons: dict[int, list[str]] = defaultdict(list)
    q = select(Referral.case_id, Referral.reason).where(Referral.case_id.in_(ids))
    for case_id, reason in conn.execute(q.order_by(Referral.id)):
        if reason not in reasons[case_id]:
            reasons[case_id].append(reason)
    return reasons


def _summary(row: Any, reasons: list[str]) -> dict[str, Any]:
    return {
        "id": row.id, "student_id": row.student_id, "school_id": row.school_id,
        "status": row.status, "severity": row.severity, "assignee_id": row.assignee_id,
        "revision": row.revision, "reasons": reasons, "opened_at": row.opened_at,
        "updated_at": row.updated_at, "closed_at": row.closed_at,
        "close_reason": row.close_reason, "recovering_since": row.recovered_since,
    }  # fmt: skip


def _visible_case(conn: Connection, principal: Principal, case_id: int) -> Any | None:
    """The case row if it exists and the token may see its school; None otherwise (one answer
    for both, on purpose)."""
    row = conn.execute(select(Case.__table__).where(Case.id == case_id)).first()
    if row is None:
        return None
    schools = visible_schools(conn, principal)
    if schools is not None and row.school_id not in schools:
        return None
    return row


def _not_found(case_id: int) -> Any:
    return problem_response(404, "Not Found", f"No case {case_id}.")


def _typed(name: str, value: Any) -> Any:
    """A yes/no indicator as a boolean (the database may have stored 1.0), counts as numbers."""
    if value is not None and INDICATORS.get(name, (None,))[0] == rule_engine.DataType.BOOLEAN:
        return bool(value)
    return value


def _explanation(referral: Any) -> Explanation:
    evidence = referral.evidence or {}
    values = evidence.get("indicators") or {}
    used = used_indicators(referral.rule_expression)
    if ABSENCE_GROUP & set(used):  # the sentence about absences needs both counts
        used += [n for n in ("absent_days", "enrolled_days") if n not in used]
    return Explanation(
        as_of=evidence.get("as_of"),
        indicators={n: _typed(n, values[n]) for n in used if n in values},
        summary=evidence_lines(settings(), used, values) if referral.rule_expression else [],
    )


def _deliveries(conn: Connection, case_id: int) -> list[DeliverySummary]:
    rows = conn.execute(
        select(OutboxItem.target, OutboxItem.kind, OutboxItem.status, OutboxItem.reason,
               OutboxItem.delivered_at)
        .where(OutboxItem.case_id == case_id)
        .order_by(OutboxItem.id)
    ).all()  # fmt: skip
    grouped: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in rows:
        grouped[(row.target, row.kind)].append(row)
    out = []
    for (target, kind), items in grouped.items():
        latest = items[-1]
        delivered = [i.delivered_at for i in items if i.delivered_at is not None]
        out.append(
            DeliverySummary(
                target=target, kind=kind, items=len(items),
                by_status=dict(Counter(i.status for i in items)),
                latest_status=latest.status, latest_reason=public_reason(latest.reason),
                last_delivered_at=max(delivered) if delivered else None,
            )
        )  # fmt: skip
    return out


def case_detail(conn: Connection, row: Any) -> CaseDetail:
    referrals = conn.execute(
        select(Referral.__table__).where(Referral.case_id == row.id).order_by(Referral.id)
    ).all()  # fmt: skip
    student = conn.execute(
        select(Student.student_id, Student.local_id, Student.first_name, Student.last_name,
               Student.grade_level, Student.school_id)
        .where(Student.student_id == row.student_id)
    ).first()  # fmt: skip
    events = conn.execute(
        select(CaseEvent.__table__)
        .where(CaseEvent.case_id == row.id)
        .order_by(CaseEvent.at, CaseEvent.id)
    ).all()  # fmt: skip
    replies = conn.execute(
        select(CaseReply.id, CaseReply.contact_id, CaseReply.answer, CaseReply.at)
        .where(CaseReply.case_id == row.id)
        .order_by(CaseReply.id)
    ).all()  # fmt: skip
    manager = next((c for c in settings().caseloads if c.staff_id == row.assignee_id), None)
    reasons = list(dict.fromkeys(r.reason for r in referrals))
    return CaseDetail(
        **_summary(row, reasons),
        student=StudentView(**student._asdict()) if student else None,
        assignee_name=manager.name if manager else None,
        referrals=[
            ReferralView(
                id=r.id, origin=r.origin, reason=r.reason, severity=r.severity,
                rule_id=r.rule_id, rule_version=r.rule_version,
                rule_expression=r.rule_expression,
                resource_categories=list(r.resource_categories or []),
                created_at=r.created_at, last_fired_on=r.last_fired_on,
                explanation=_explanation(r),
            )
            for r in referrals
        ],
        timeline=[
            TimelineEvent(id=e.id, kind=e.kind, at=e.at, actor=e.actor, via=e.via,
                          detail=dict(e.detail or {}))
            for e in events
        ],
        deliveries=_deliveries(conn, row.id),
        family_replies=[FamilyReply(**r._asdict()) for r in replies],
    )  # fmt: skip


# -- routes ------------------------------------------------------------------------------------


@bp.get(
    "/cases",
    summary="List cases, filtered and paged",
    operation_id="listCases",
    responses={200: CaseList, **documented(401, 403, 422)},
)
@requires("cases:read")
@validate_request()
def list_cases(query: CaseListQuery) -> Any:
    """Newest first. `total` counts every match; page with `offset` and `limit` (at most 200)."""
    with engine().connect() as conn:
        q = select(Case.__table__)
        schools = visible_schools(conn, current_principal())
        if schools is not None:
            q = q.where(Case.school_id.in_(sorted(schools)))
        if query.school:
            by_number = select(School.school_id).where(School.identifier == query.school)
            q = q.where(or_(Case.school_id == query.school, Case.school_id.in_(by_number)))
        if query.status:
            q = q.where(Case.status == query.status)
        if query.assignee:
            q = q.where(Case.assignee_id == query.assignee)
        if query.reason:
            q = q.where(
                exists().where(Referral.case_id == Case.id, Referral.reason == query.reason)
            )
        total = conn.execute(select(func.count()).select_from(q.subquery())).scalar_one()
        rows = conn.execute(
            q.order_by(Case.id.desc()).limit(query.limit).offset(query.offset)
        ).all()
        reasons = _summary_rows(conn, [r.id for r in rows])
    items = [CaseSummary(**_summary(r, reasons.get(r.id, []))) for r in rows]
    return json_response(CaseList(items=items, **page_info(total, query).model_dump()))


@bp.get(
    "/cases/<int:case_id>",
    summary="One case with its timeline",
    operation_id="getCase",
    responses={200: CaseDetail, **documented(401, 403, 404, 422)},
)
@requires("cases:read")
@validate_request()
def get_case(path: CasePath) -> Any:
    """The case, the student, each referral with its explanation (rule, version, expression,
    indicator values), the case events, the outbox deliveries summarised per target, and the
    family's replies (answer codes only: no message bodies anywhere)."""
    with engine().connect() as conn:
        row = _visible_case(conn, current_principal(), path.case_id)
        if row is None:
            return _not_found(path.case_id)
        return json_response(case_detail(conn, row))


@bp.patch(
    "/cases/<int:case_id>",
    summary="Close, reopen or reassign a case",
    operation_id="updateCase",
    responses={200: CaseSummary, **documented(401, 403, 404, 409, 422)},
)
@requires("cases:write")
@validate_request()
def patch_case(path: CasePath, body: CasePatchBody) -> Any:
    """The change goes through the case state machine: the revision goes up, each staff tool's
    task is queued at the new revision in the same transaction, and a case event records the
    token's name as actor (via "api"). A change to what the case already is changes nothing.
    A case closed here stays closed through the cooldown unless a new reason fires."""
    principal = current_principal()
    change = body.change()
    if change.change_assignee and change.assignee_id is not None:
        known = {c.staff_id for c in settings().caseloads}
        if change.assignee_id not in known:
            return problem_response(
                422, "Request does not match the schema",
                "body.assignee_id: not a case manager in the configured caseloads",
                **{"invalid-params": [{"name": "body.assignee_id",
                                       "reason": "not a case manager in the caseloads"}]},
            )  # fmt: skip
    try:
        with engine().begin() as conn:
            if _visible_case(conn, principal, path.case_id) is None:
                raise CaseNotFound(path.case_id)
            CaseEditor(conn, settings(), principal.name, VIA).change(path.case_id, change)
            row = conn.execute(select(Case.__table__).where(Case.id == path.case_id)).one()
            reasons = _summary_rows(conn, [row.id]).get(row.id, [])
    except CaseNotFound:
        return _not_found(path.case_id)
    except CaseConflict as exc:
        return problem_response(409, "Conflict", f"Cannot reopen case {path.case_id}: {exc}.")
    return json_response(CaseSummary(**_summary(row, reasons)))


@bp.post(
    "/cases/<int:case_id>/notes",
    summary="Add a note to a case's timeline",
    operation_id="addCaseNote",
    responses={201: NoteView, **documented(401, 403, 404, 422)},
)
@requires("cases:write")
@validate_request()
def add_note(path: CasePath, body: NoteBody) -> Any:
    """A note is a case event with the token's name as actor. It does not change the case (no
    new revision) and is not sent to the staff tools: the task shows the case, not its notes."""
    principal = current_principal()
    with engine().begin() as conn:
        if _visible_case(conn, principal, path.case_id) is None:
            return _not_found(path.case_id)
        event_id = CaseEditor(conn, settings(), principal.name, VIA).note(path.case_id, body.text)
        event = conn.execute(select(CaseEvent.__table__).where(CaseEvent.id == event_id)).one()
    view = NoteView(id=event.id, case_id=event.case_id, at=event.at, actor=event.actor,
                    via=event.via, text=body.text)  # fmt: skip
    return json_response(view, 201)
