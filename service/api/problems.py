"""Errors as RFC 9457 `application/problem+json`: a status, a title, a clear detail, never a
stack trace, and never the caller's input echoed back (it may hold a student's name)."""

from __future__ import annotations

from typing import Any

import structlog
from flask import Flask, Response, json, request
from pydantic import BaseModel, Field, ValidationError
from werkzeug.exceptions import HTTPException

log = structlog.get_logger(__name__)
PROBLEM_JSON = "application/problem+json"


class InvalidParam(BaseModel):
    name: str = Field(description="Where the problem is: body.field, query.field, path.field.")
    reason: str


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    invalid_params: list[InvalidParam] | None = Field(None, alias="invalid-params")


def problem_response(status: int, title: str, detail: str | None = None, **extra: Any) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="casebridge"'
    return response


def documented(*statuses: int) -> dict[str | int, Any]:
    """OpenAPI `responses` entries for problem statuses, declared as problem+json (flask-openapi3
    would otherwise call them application/json)."""
    ref = {"$ref": "#/components/schemas/Problem"}
    # Keyed `str | int` like flask-openapi3's `responses`, so `{200: Model, **documented(...)}`
    # type-checks.
    return {s: {"content": {PROBLEM_JSON: {"schema": ref}}} for s in statuses}


def validation_problem(exc: ValidationError) -> Response:
    """flask-openapi3 calls this when a request does not match its schema."""
    # Which part failed, from the model's name: every header, path and query model says so in
    # its name (`StatusHeader`, `CasePath`, `ListQuery`); anything else is the body.
    title = exc.title.lower()
    prefix = next((part for part in ("header", "path", "query") if part in title), "body")
    params = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = [str(part) for part in error["loc"]]
        name = ".".join([prefix, *loc])
        params.append({"name": name, "reason": error["msg"]})
    detail = "; ".join(f"{p['name']}: {p['reason']}" for p in params)
    return problem_response(422, "Request does not match the schema", detail, **{
        "invalid-params": params
    })  # fmt: skip


def install(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        if exc.response is not None and exc.response.mimetype == PROBLEM_JSON:
            return exc.response  # already a problem (e.g. a validation error)
        return problem_response(exc.code or 500, exc.name, exc.description)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # The type only: an exception's text can carry SQL parameters, i.e. student data.
        log.error("api.unhandled_error", error=type(exc).__name__, path=request.path)
        return problem_response(
            500, "Internal Server Error", "The server could not complete the request; it is logged."
        )
