"""Run a job now (`admin`): the request is recorded and a `casebridge worker` runs it.

`POST /jobs/sync` answers 202 at once with the request's id and a `Location` to follow; a sync
can take minutes and must not hold (or die with) an HTTP request. Asked again while a request
waits, the answer is that same request: the job runs once.
"""

from __future__ import annotations

from typing import Any, Literal

from flask import url_for
from flask_openapi3 import APIBlueprint, Tag
from flask_openapi3.request import validate_request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from service.api.auth import BEARER, current_principal, requires
from service.api.common import MAX_ID, Timestamp, json_response
from service.api.context import engine
from service.api.problems import documented, problem_response
from service.job_requests import JobName, request_job
from service.models import JobRequest

bp = APIBlueprint("jobs", __name__, abp_tags=[Tag(name="jobs")], abp_security=BEARER)

JobState = Literal["requested", "running", "succeeded", "failed"]


class JobNamePath(BaseModel):
    job: JobName


class JobIdPath(BaseModel):
    job_id: int = Field(ge=1, le=MAX_ID)


class JobView(BaseModel):
    id: int
    job: JobName
    state: JobState = Field(description="requested -> running -> succeeded | failed.")
    requested_by: str
    requested_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    attempts: int = Field(description="Workers that started it (more than 1: one stopped).")
    outcome: str | None
    result: dict[str, Any] | None = Field(description="Counts of what the job did.")


class JobAccepted(JobView):
    """The request, recorded; follow `Location` for its state."""

    model_config = ConfigDict(  # type: ignore[typeddict-unknown-key]
        openapi_extra={
            "description": "Recorded; a worker runs it. Follow Location for its state.",
            "headers": {
                "Location": {"description": "GET this for the job's state and outcome.",
                             "schema": {"type": "string"}},
            },
        }
    )  # fmt: skip
    joined: bool = Field(description="true: a request for this job was already waiting; "
                         "this is that request, and the job runs once.")  # fmt: skip


def _view(job_id: int) -> JobView | None:
    with engine().connect() as conn:
        row = conn.execute(select(JobRequest.__table__).where(JobRequest.id == job_id)).first()
        if row is None:
            return None
        return JobView(
            id=row.id, job=row.job, state=row.state, requested_by=row.requested_by,
            requested_at=row.requested_at, started_at=row.started_at,
            finished_at=row.finished_at, attempts=row.attempts, outcome=row.outcome,
            result=row.result,
        )  # fmt: skip


@bp.post(
    "/jobs/<job>",
    summary="Run sync, evaluate or dispatch now",
    operation_id="requestJob",
    responses={202: JobAccepted, **documented(401, 403, 404, 422)},
)
@requires("admin")
@validate_request()
def run_job(path: JobNamePath) -> Any:
    """Recorded for a worker (`casebridge worker`) to run: nothing runs inside this request.
    The answer is 202 with the request and `Location: /jobs/{id}`."""
    requested = request_job(engine(), path.job, current_principal().name)
    view = _view(requested.id)
    if view is None:  # removed in between (retention); ask again
        return problem_response(404, "Not Found", f"Job request {requested.id} is gone.")
    location = url_for("jobs.get_job", job_id=requested.id)
    accepted = JobAccepted(**view.model_dump(), joined=requested.joined)
    return json_response(accepted, 202, {"Location": location})


@bp.get(
    "/jobs/<job_id>",
    summary="A requested job's state and outcome",
    operation_id="getJob",
    responses={200: JobView, **documented(401, 403, 404, 422)},
)
@requires("admin")
@validate_request()
def get_job(path: JobIdPath) -> Any:
    view = _view(path.job_id)
    if view is None:
        return problem_response(404, "Not Found", f"No job request {path.job_id}.")
    return json_response(view)
