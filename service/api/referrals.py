"""`/referrals`: person-based referrals in, their status out, and the staff side (the list, one
referral, the unmatched queue, resolving). The domain is `service/referrals.py`.

Who may learn what: a `referrals:create` caller gets the same answer whether the student was
found; the referrer sees only received / assigned / closed through the status token; staff
(`cases:read`, `cases:write`) see referrals of their schools only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from flask import Response, jsonify
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from service import referrals
from service.api.auth import BEARER, Principal, current_principal, requires
from service.api.common import PageInfo, PageQuery, page_info
from service.api.context import engine, settings
from service.api.limits import limiter, referral_limit
from service.api.problems import documented, problem_response

TAG = Tag(name="referrals", description="Person-based referrals and their status")
api = APIBlueprint("referrals", __name__, url_prefix="/referrals", abp_tags=[TAG])

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Text that must say something: spaces alone are stripped to nothing. Declared in the schema so
# the description rejects what the route rejects.
SOMETHING = r"\S"
Role = Literal["teacher", "counselor", "parent_guardian", "student", "community_partner", "other"]
Urgency = Literal["routine", "soon", "urgent"]
Rejection = Literal[
    "duplicate", "not_our_student", "not_enough_information", "not_a_concern", "other"
]
State = Literal["matched", "unmatched", "rejected"]
StatusWord = Literal["received", "assigned", "closed"]


class Form(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# -- the form -------------------------------------------------------------------------------------


class Referrer(Form):
    name: str = Field(min_length=1, max_length=255, pattern=SOMETHING)
    role: Role
    relationship: str = Field(
        min_length=1,
        max_length=128,
        pattern=SOMETHING,
        description="To the student, in the referrer's words: 'math teacher', 'aunt', 'coach'.",
    )
    email: str | None = Field(
        None,
        max_length=255,
        pattern=r"^\s*(|[^@\s]+@[^@\s]+\.[^@\s]+)\s*$",
        description="For the acknowledgement and status emails (optional).",
    )

    @field_validator("email")
    @classmethod
    def _looks_like_email(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not EMAIL.match(value):
            raise ValueError("not an email address")
        return value.lower()


class StudentNamed(Form):
    """The student: their local id (student number or sourcedId), or first and last name with
    the school and birth date. Names match case- and accent-insensitively."""

    # Either the id or both names (the description says so with `anyOf`).
    model_config = ConfigDict(
        json_schema_extra={"anyOf": [{"required": ["local_id"]},
                                     {"required": ["first_name", "last_name"]}]}
    )  # fmt: skip
    local_id: Annotated[str, Field(max_length=64, pattern=SOMETHING)] | SkipJsonSchema[None] = None
    first_name: Annotated[str, Field(max_length=128, pattern=SOMETHING)] | SkipJsonSchema[None] = (
        None
    )
    last_name: Annotated[str, Field(max_length=128, pattern=SOMETHING)] | SkipJsonSchema[None] = (
        None
    )
    school: str | None = Field(None, max_length=255, description="Name, number or sourcedId.")
    birth_date: date | None = None

    @model_validator(mode="after")
    def _someone(self) -> StudentNamed:
        if not (self.local_id or (self.first_name and self.last_name)):
            raise ValueError("name the student: a local_id, or a first_name and last_name")
        return self


class ReferralForm(Form):
    referrer: Referrer
    student: StudentNamed
    concerns: list[str] = Field(
        min_length=1,  # the district's list is added to the description by `district_concerns`
        max_length=12,
        description="From the district's list (`referrals.concerns`); by default attendance, "
        "academics, behavior, basic_needs, housing, health, mental_health, safety, family, other.",
    )
    note: str = Field("", max_length=4000, description="What staff should know, in your words.")
    urgency: Urgency
    family_contact_consent: bool = Field(
        description="May the school contact the family about this concern? Without it the family "
        "hears nothing because of this referral."
    )


class IdempotencyHeader(BaseModel):
    idempotency_key: str | None = Field(
        None,
        alias="Idempotency-Key",
        max_length=255,
        description="A retry with the same key answers with the first referral.",
    )


class Receipt(BaseModel):
    id: str
    status: Literal["received"]
    status_token: str = Field(description="Shown once. Send it to the status URL.")
    status_url: str


# -- the status -----------------------------------------------------------------------------------


class ReferralPath(BaseModel):
    referral_id: str = Field(max_length=64)


class StatusQuery(BaseModel):
    token: str | None = Field(None, max_length=128, description="The status token (or header).")


class StatusHeader(BaseModel):
    status_token: str | None = Field(None, alias="Status-Token", max_length=128)


class ReferralStatus(BaseModel):
    id: str
    status: StatusWord
    received_on: date


# -- the staff side -------------------------------------------------------------------------------


class ListQuery(PageQuery):
    state: State | None = None
    origin: Literal["rule", "person"] | None = None


class ReferrerOut(BaseModel):
    name: str
    role: str
    relationship: str
    email: str | None


class ReferralSummary(BaseModel):
    id: str
    origin: Literal["rule", "person"]
    state: State
    received_at: datetime
    student_id: str | None
    school_id: str | None
    case_id: int | None
    reason: str
    concerns: list[str]
    urgency: Urgency | None
    severity: str


class ReferralDetail(ReferralSummary):
    referrer: ReferrerOut | None = None
    note: str | None = None
    family_contact_ok: bool | None = None
    identification: dict[str, Any] | None = Field(None, description="The student as named.")
    match: str | None = Field(None, description="How the student was found, or why not.")
    status: StatusWord | None = Field(
        None,
        description="The referrer's status. The referrer sees `assigned` only after "
        "`referrals.assigned_status_delay_hours`, and `received` until then.",
    )
    rejection_reason: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    rule_id: str | None = None
    rule_version: int | None = None
    evidence: dict[str, Any] | None = None


class ReferralPage(PageInfo):
    items: list[ReferralSummary]


class UnmatchedPage(PageInfo):
    items: list[ReferralDetail]


class Resolution(Form):
    """Either the student the referral is about, or why it is rejected."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["student_id"]}, {"required": ["reject"]}]}
    )
    student_id: Annotated[str, Field(min_length=1, max_length=128)] | SkipJsonSchema[None] = None
    reject: Rejection | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _one(self) -> Resolution:
        if (self.student_id is None) == (self.reject is None):
            raise ValueError("give exactly one of student_id and reject")
        return self


# -- routes ---------------------------------------------------------------------------------------


def responses(ok: int, model: type[BaseModel], *problems: int) -> dict[str | int, Any]:
    """The OpenAPI responses of a route: its model, and its problem+json statuses."""
    out: dict[str | int, Any] = {ok: model}
    for status, spec in documented(*problems).items():
        out[status] = spec
    return out


def _caller(principal: Principal) -> referrals.Caller:
    return referrals.Caller(principal.token_id, principal.name, principal.schools)


def _status_url(public_id: str) -> str:
    base = (settings().referrals.public_url or "").rstrip("/")
    return f"{base}/referrals/{public_id}/status"


def _aware(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def _detail(found: dict[str, Any]) -> ReferralDetail:
    found = {**found, "received_at": _aware(found["received_at"])}
    if found.get("resolved_at") is not None:
        found["resolved_at"] = _aware(found["resolved_at"])
    return ReferralDetail.model_validate(found)


@api.post(
    "",
    summary="Refer a student (teacher, counselor, parent, student, community partner)",
    security=BEARER,
    responses=responses(201, Receipt, 401, 403, 422, 429),
)
@limiter.limit(referral_limit)
@requires("referrals:create")
def post_referral(body: ReferralForm, header: IdempotencyHeader) -> Any:
    """The answer is the same whether or not the student was found: keep the status token to
    follow the referral (received, assigned, closed)."""
    known = settings().referrals.concerns
    unknown = [c for c in body.concerns if c not in known]
    if unknown:
        params = [{"name": "body.concerns", "reason": f"not a concern: {c!r}"} for c in unknown]
        return problem_response(
            422, "Request does not match the schema",
            f"body.concerns: use {', '.join(known)}", **{"invalid-params": params},
        )  # fmt: skip
    student = body.student
    form = referrals.Submission(
        referrer_name=body.referrer.name,
        referrer_role=body.referrer.role,
        relationship=body.referrer.relationship,
        referrer_email=body.referrer.email,
        concerns=list(dict.fromkeys(body.concerns)),
        note=body.note,
        urgency=body.urgency,
        family_contact_ok=body.family_contact_consent,
        student=referrals.StudentNamed(
            student.local_id or None, student.first_name or None, student.last_name or None,
            student.school or None, student.birth_date,
        ),
    )  # fmt: skip
    try:
        receipt = referrals.receive(
            engine(), settings(), _caller(current_principal()), form, header.idempotency_key
        )
    except referrals.IdempotencyKeyReused:
        params = [{"name": "header.Idempotency-Key", "reason": "already used for another referral"}]
        return problem_response(
            422, "Idempotency-Key reused",
            "This Idempotency-Key was sent with a different referral; use a new key.",
            **{"invalid-params": params},
        )  # fmt: skip
    url = _status_url(receipt.referral_id)
    out = Receipt(id=receipt.referral_id, status="received", status_token=receipt.status_token,
                  status_url=url)  # fmt: skip
    response: Response = jsonify(out.model_dump())
    response.status_code = 201
    response.headers["Location"] = url
    return response


@api.get(
    "/<referral_id>/status",
    summary="A referral's status, for the person who made it",
    responses=responses(200, ReferralStatus, 404, 422),
)
def referral_status(path: ReferralPath, query: StatusQuery, header: StatusHeader) -> Any:
    """With the status token the referral was given (`Status-Token` header or `?token=`), not
    an API token. A wrong token and an unknown id get the same 404."""
    token = header.status_token or query.token
    found = referrals.status_for(engine(), settings(), path.referral_id, token)
    if found is None:
        return problem_response(404, "Not Found", "No referral with this id and status token.")
    return jsonify(ReferralStatus.model_validate(found).model_dump(mode="json"))


@api.get(
    "",
    summary="Referrals, newest first (rule- and person-based)",
    security=BEARER,
    responses=responses(200, ReferralPage, 401, 403, 422),
)
@requires("cases:read")
def list_referrals(query: ListQuery) -> Any:
    page = referrals.list_referrals(
        engine(), _caller(current_principal()), query.state, query.origin, query.limit,
        query.offset,
    )  # fmt: skip
    out = ReferralPage(
        items=[ReferralSummary.model_validate(_detail(i).model_dump()) for i in page.items],
        **page_info(page.total, query).model_dump(),
    )
    return jsonify(out.model_dump(mode="json"))


@api.get(
    "/unmatched",
    summary="The queue: referrals whose student staff must name",
    security=BEARER,
    responses=responses(200, UnmatchedPage, 401, 403, 422),
)
@requires("cases:read")
def unmatched(query: PageQuery) -> Any:
    page = referrals.unmatched_queue(
        engine(), _caller(current_principal()), query.limit, query.offset
    )
    out = UnmatchedPage(
        items=[_detail(i) for i in page.items], **page_info(page.total, query).model_dump()
    )
    return jsonify(out.model_dump(mode="json"))


@api.get(
    "/<referral_id>",
    summary="One referral in full",
    security=BEARER,
    responses=responses(200, ReferralDetail, 401, 403, 404, 422),
)
@requires("cases:read")
def get_referral(path: ReferralPath) -> Any:
    found = referrals.get_referral(engine(), _caller(current_principal()), path.referral_id)
    if found is None:
        return problem_response(404, "Not Found", "No such referral in your schools.")
    return jsonify(_detail(found).model_dump(mode="json"))


@api.post(
    "/<referral_id>/resolve",
    summary="Name the student of an unmatched referral, or reject it",
    security=BEARER,
    responses=responses(200, ReferralDetail, 401, 403, 404, 409, 422),
)
@requires("cases:write")
def resolve(path: ReferralPath, body: Resolution) -> Any:
    """With `student_id` the referral joins or opens that student's case, like a referral that
    matched; with `reject` it closes (the referrer hears "closed", never why)."""
    caller = _caller(current_principal())
    outcome = referrals.resolve(
        engine(), settings(), caller, path.referral_id, body.student_id, body.reject
    )
    if outcome == "not_found":
        return problem_response(404, "Not Found", "No such referral in your schools.")
    if outcome == "not_unmatched":
        return problem_response(409, "Conflict", "The referral is already matched or rejected.")
    if outcome == "unknown_student":
        params = [{"name": "body.student_id", "reason": "no such active student in your schools"}]
        return problem_response(
            422, "Unknown student", "No such active student in your schools.",
            **{"invalid-params": params},
        )  # fmt: skip
    found = referrals.get_referral(engine(), caller, path.referral_id)
    assert found is not None
    return jsonify(_detail(found).model_dump(mode="json"))


def district_concerns(doc: dict[str, Any], concerns: Iterable[str]) -> None:
    """Name the district's concern categories in the description (`referrals.concerns`), so a
    form can offer them and a client learns an unknown one is refused before it sends."""
    form = doc.get("components", {}).get("schemas", {}).get("ReferralForm")
    if form is not None:
        form["properties"]["concerns"]["items"]["enum"] = list(concerns)
