"""Bearer tokens with scopes, optionally limited to schools.

A token is shown once, at `casebridge token create`; only its SHA-256 is stored. Every route
declares the scope it needs with `@requires(...)`; `admin` holds every scope.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from flask import Flask, Response, g, request
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from service.api.problems import problem_response
from service.clock import utcnow
from service.models import ApiToken

SCOPES = ("referrals:create", "cases:read", "cases:write", "admin")
TOKEN_PREFIX = "cbt_"
# How stale `last_used_at` may get before a request writes it again (a write per request would
# cost the referral endpoint its throughput).
TOUCH_EVERY = timedelta(minutes=1)
# The OpenAPI security requirement of a protected route.
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Principal:
    token_id: int
    name: str
    scopes: frozenset[str]
    schools: frozenset[str] | None  # None: every school

    def has(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def sees_school(self, school_id: str | None) -> bool:
        return self.schools is None or (school_id is not None and school_id in self.schools)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    engine: Engine,
    name: str,
    scopes: Iterable[str],
    schools: Iterable[str] | None = None,
    expires_in: timedelta | None = None,
) -> tuple[int, str]:
    """A new token: (its id, the token itself, which is not stored and cannot be shown again)."""
    wanted = sorted(set(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if not wanted or unknown:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}; got {unknown or 'none'}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    row = ApiToken(
        name=name,
        token_sha256=digest(token),
        prefix=token[:12],
        scopes=wanted,
        schools=sorted(set(schools)) if schools else None,
        created_at=now,
        expires_at=now + expires_in if expires_in else None,
    )
    with Session(engine) as session, session.begin():
        session.add(row)
        session.flush()
        return row.id, token


def list_tokens(engine: Engine) -> list[ApiToken]:
    with Session(engine) as session:
        return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(engine: Engine, token_id: int) -> bool:
    with engine.begin() as conn:
        done = conn.execute(
            update(ApiToken)
            .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        ).rowcount
    return bool(done)


def authenticate(engine: Engine, token: str) -> Principal | None:
    """The principal behind a presented token, or None (unknown, revoked or expired: one answer,
    so a caller cannot tell which)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    now = utcnow()
    with engine.connect() as conn:
        row = conn.execute(
            select(
                ApiToken.id, ApiToken.name, ApiToken.scopes, ApiToken.schools,
                ApiToken.expires_at, ApiToken.revoked_at, ApiToken.last_used_at,
            ).where(ApiToken.token_sha256 == digest(token))
        ).first()  # fmt: skip
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and _aware(row.expires_at) <= now:
        return None
    if row.last_used_at is None or _aware(row.last_used_at) < now - TOUCH_EVERY:
        with engine.begin() as conn:
            conn.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
    schools = frozenset(row.schools) if row.schools is not None else None
    return Principal(row.id, row.name, frozenset(row.scopes), schools)


def _aware(moment: datetime) -> datetime:
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def current_principal() -> Principal:
    return cast(Principal, g.principal)


def requires(scope: str) -> Callable[[F], F]:
    """401 without a valid token, 403 when the token lacks `scope`; the principal is then
    `current_principal()`."""
    return requires_any(scope)


def requires_any(*scopes: str) -> Callable[[F], F]:
    """Like `requires`, for a route any of several scopes may call (resource search)."""
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise ValueError(f"unknown scope {unknown or 'none'}")
    lacking = (
        f"This token lacks the {scopes[0]} scope."
        if len(scopes) == 1
        else f"This token lacks every one of the scopes {', '.join(scopes)}."
    )

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            refused = check_token(scopes, lacking)  # done already by `token_before_input`
            if refused is not None:
                return refused
            return view(*args, **kwargs)

        # Read by `token_before_input` (the wrappers flask-openapi3 and flask-limiter add copy a
        # function's attributes).
        guarded.required_scopes = (scopes, lacking)  # type: ignore[attr-defined]
        return cast(F, guarded)

    return decorate


def check_token(scopes: tuple[str, ...], lacking: str) -> Response | None:
    """The 401 or 403 answer for this request, or None with `current_principal()` set."""
    if g.get("principal") is not None:
        return None
    from service.api.context import engine

    header = request.headers.get("Authorization", "")
    kind, _, token = header.partition(" ")
    principal = authenticate(engine(), token.strip()) if kind.lower() == "bearer" else None
    if principal is None:
        return problem_response(
            401, "Unauthorized", "Send a valid API token as 'Authorization: Bearer …'."
        )
    if not any(principal.has(scope) for scope in scopes):
        return problem_response(403, "Forbidden", lacking)
    g.principal = principal
    return None


def token_before_input(app: Flask) -> None:
    """Check a guarded route's token before its input is validated: a caller without a valid
    token (or scope) gets 401 (403), never a 422 that describes the route's input."""

    @app.before_request
    def _token_first() -> Response | None:
        view = app.view_functions.get(request.endpoint or "")
        required = getattr(view, "required_scopes", None)
        if required is None or request.method == "OPTIONS":  # a CORS preflight has no token
            return None
        return check_token(*required)
