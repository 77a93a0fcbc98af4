"""flask-limiter, keyed by the caller's token (or address, without one). Routes opt in with
`@limiter.limit(...)`; nothing else is limited."""

from __future__ import annotations

from flask import request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from service.api.auth import digest


def caller_key() -> str:
    kind, _, token = request.headers.get("Authorization", "").partition(" ")
    if kind.lower() == "bearer" and token.strip():
        return "token:" + digest(token.strip())[:16]
    return "addr:" + (get_remote_address() or "unknown")


limiter = Limiter(key_func=caller_key, default_limits=[], headers_enabled=True)


def referral_limit() -> str:
    from service.api.context import settings

    return settings().api.referral_rate_limit
