"""What every HTTP staff-tool destination shares: one request path with the delivery rules.

- A request rate per destination, and a pause the tool asked for (`Retry-After` on a 429 or
  503) that later calls to that destination respect too.
- A short retry inside one delivery (a burst of 5xx, a 429 asking for a few seconds); anything
  longer leaves as `TransientError(retry_after=...)` so the outbox schedules it and the worker
  moves on to other destinations instead of sleeping.
- Errors in the service's taxonomy. Whether a failure is `TransientError` or `OutcomeUnknown`
  depends on whether repeating the call is safe: a PATCH with an ETag or a webhook with our key
  can be sent again; a POST that creates an item in a tool that issues its own ids cannot, so a
  timeout or a dropped connection *after the request left* is `OutcomeUnknown` and the outbox
  reconciles (`find`) before anything is sent again.
- A circuit breaker per destination: after `breaker_failures` consecutive transient failures the
  destination is paused for `breaker_pause_seconds`; calls during the pause fail at once with a
  `TransientError` whose `retry_after` is the time left, so its items wait and others go on.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
import structlog
from pydantic import Field
from requests.auth import AuthBase
from urllib3.exceptions import NewConnectionError

from connectors.destinations import signing
from connectors.http import RateLimiter, retry_after_seconds
from service.config import DestinationSettings
from service.errors import OutcomeUnknown, PermanentError, TransientError
from service.target_health import circuit_changed

log = structlog.get_logger(__name__)

# Answers that say the tool did not act on the request: always safe to send again.
NOT_PROCESSED = frozenset({429, 502, 503, 504})


class HttpDestinationSettings(DestinationSettings):
    """Settings every HTTP destination kind has (each kind adds its own)."""

    timeout_seconds: float = Field(10.0, gt=0)  # keep below outbox.lease_seconds
    requests_per_second: float | None = Field(None, gt=0)
    max_attempts: int = Field(3, ge=1)  # within one delivery; the outbox retries beyond
    max_inline_wait_seconds: float = Field(5.0, ge=0)
    breaker_failures: int = Field(5, ge=1)
    breaker_pause_seconds: float = Field(60.0, ge=0)
    # Shared secret (Standard Webhooks, `whsec_...`) with which the tool signs status reports
    # sent to `POST /tools/<name>/status`; none: the endpoint refuses this destination.
    status_secret: str | None = None

    def read_status(self, headers: Mapping[str, str], body: bytes) -> tuple[str, Any]:
        """A signed status report from this tool: its message id and our report format.

        Standard Webhooks with `status_secret` here; a kind whose tool signs its own way
        (Zendesk) overrides this. Raises `LookupError` when the tool may not report status,
        `signing.SignatureError` when the request does not check out.
        """
        if not self.status_secret:
            raise LookupError(f"destination {self.name!r} accepts no status reports")
        message_id = signing.verify(self.status_secret, headers, body)
        try:
            return message_id, json.loads(body)
        except ValueError:
            return message_id, None


class CircuitBreaker:
    """Closed -> open after N consecutive failures -> one trial call after the pause."""

    def __init__(
        self, name: str, failures: int, pause: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.threshold = failures
        self.pause = pause
        self.clock = clock
        self.failures = 0
        self.open_until = 0.0
        self.opened = 0  # how often it opened, for tests and logs
        self.is_open = False  # opened and not yet closed by a successful call
        self._lock = threading.Lock()

    def check(self) -> None:
        with self._lock:
            left = self.open_until - self.clock()
            if left > 0:
                raise TransientError(
                    f"{self.name} is paused after {self.failures} failures in a row",
                    retry_after=left,
                )

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            closed, self.is_open = self.is_open, False
        if closed:
            log.info("destination.resumed", destination=self.name)
            circuit_changed(self.name, "closed", 0, 0.0)

    def failure(self) -> float:
        """Count a failure; returns the pause in seconds when this one opened the breaker."""
        with self._lock:
            self.failures += 1
            if self.failures < self.threshold or self.open_until > self.clock():
                return 0.0
            self.open_until = self.clock() + self.pause
            self.opened += 1
            self.is_open = True
            failures = self.failures
        log.warning("destination.paused", destination=self.name, seconds=self.pause)
        # The API (/readyz, /metrics) runs in another process: it reads the state from the DB.
        circuit_changed(self.name, "open", failures, self.pause)
        return self.pause


class TokenAuth:
    """A bearer token from `fetch`, renewed before it expires and once after a 401."""

    def __init__(self, fetch: Callable[[], tuple[str, float]], margin: float = 60.0) -> None:
        self.fetch = fetch  # -> (token, lifetime in seconds)
        self.margin = margin
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        self.fetches = 0

    def header(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires - self.margin:
                self._token, lifetime = self.fetch()
                self._expires = time.monotonic() + lifetime
                self.fetches += 1
            return f"Bearer {self._token}"

    def invalidate(self, used: str) -> None:
        with self._lock:
            if used == f"Bearer {self._token}":
                self._token = None


class _Header(AuthBase):
    def __init__(self, value: str) -> None:
        self.value = value

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = self.value
        return r


def token_from_response(resp: requests.Response, what: str) -> tuple[str, float]:
    """An OAuth2 token endpoint's answer, with its failures in the taxonomy."""
    if resp.status_code in NOT_PROCESSED or resp.status_code >= 500:
        raise TransientError(
            f"{what} token endpoint answered {resp.status_code}",
            retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
        )
    if resp.status_code != 200:
        raise PermanentError(f"{what} token endpoint refused the credentials ({resp.status_code})")
    try:
        body = resp.json()
    except ValueError as exc:
        raise TransientError(f"{what} token endpoint answered no JSON") from exc
    token = body.get("access_token") if isinstance(body, dict) else None
    if not token:
        raise PermanentError(f"{what} token endpoint answered without an access_token")
    return str(token), float(body.get("expires_in") or 3600)


def _left_before_sending(exc: requests.RequestException) -> bool:
    """True when the request surely never reached the tool (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return isinstance(reason, NewConnectionError)
    return False


class ToolHttp:
    """One destination's HTTP session: rate, pause, breaker, short retries, error mapping."""

    def __init__(
        self,
        name: str,
        cfg: HttpDestinationSettings,
        auth: TokenAuth | Callable[[], str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.auth = auth
        self.clock = clock
        self.session = requests.Session()
        self.rate = RateLimiter(cfg.requests_per_second)
        self.breaker = CircuitBreaker(name, cfg.breaker_failures, cfg.breaker_pause_seconds, clock)
        self.sleep: Callable[[float], None] = time.sleep
        self._not_before = 0.0  # a pause the tool asked for, shared by every call
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0}

    def _auth_header(self) -> str | None:
        if self.auth is None:
            return None
        return self.auth.header() if isinstance(self.auth, TokenAuth) else self.auth()

    def _respect_pause(self) -> None:
        with self._lock:
            left = self._not_before - self.clock()
        if left <= 0:
            return
        if left > self.cfg.max_inline_wait_seconds:
            raise TransientError(f"{self.name} asked us to wait", retry_after=left)
        self.sleep(left)

    def request(
        self,
        method: str,
        url: str,
        *,
        safe: bool,
        accept: tuple[int, ...] = (),
        json: Any = None,
        data: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        before_each: Callable[[dict[str, str]], None] | None = None,
    ) -> requests.Response:
        """Send until it succeeds, may not be repeated, or fails for good.

        `safe`: repeating the call cannot create a second item. `accept`: non-2xx statuses the
        caller handles itself (a 404 on a lookup, a 412 on an ETag). `before_each` may change the
        headers of each attempt (a fresh webhook timestamp and signature).
        """
        self.breaker.check()
        attempt = 0
        while True:
            attempt += 1
            try:
                resp = self._once(method, url, safe, json, data, params, headers, before_each)
            except TransientError as exc:
                paused = self.breaker.failure()
                if paused:  # this failure opened the breaker: wait out the pause too
                    raise TransientError(str(exc), retry_after=paused) from exc
                wait = self._backoff(attempt, exc.retry_after)
                if attempt >= self.cfg.max_attempts or wait > self.cfg.max_inline_wait_seconds:
                    raise
                self.stats["retries"] += 1
                log.info("destination.retry", destination=self.name, attempt=attempt)
                self.sleep(wait)
                self.breaker.check()
                continue
            except OutcomeUnknown:
                self.breaker.failure()
                raise
            if resp.status_code in accept or resp.ok:
                self.breaker.success()
                return resp
            if resp.status_code == 401 and isinstance(self.auth, TokenAuth) and attempt == 1:
                self.auth.invalidate(resp.request.headers.get("Authorization", ""))
                continue
            raise PermanentError(f"{self.name}: {method} answered {resp.status_code}: "
                                 f"{resp.text[:200]}")  # fmt: skip

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        base = min(2.0, 0.05 * (2**attempt))
        return max(random.uniform(base / 2, base), retry_after or 0.0)

    def _once(
        self,
        method: str,
        url: str,
        safe: bool,
        json: Any,
        data: bytes | None,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        before_each: Callable[[dict[str, str]], None] | None,
    ) -> requests.Response:
        self._respect_pause()
        self.rate.wait()
        sent_headers = dict(headers or {})
        if before_each:
            before_each(sent_headers)
        auth = self._auth_header()
        self.stats["requests"] += 1
        try:
            resp = self.session.request(
                method,
                url,
                json=json,
                data=data,
                params=params,
                headers=sent_headers,
                auth=_Header(auth) if auth else None,
                timeout=(min(5.0, self.cfg.timeout_seconds), self.cfg.timeout_seconds),
            )
        except requests.RequestException as exc:
            what = f"{self.name}: {method} {type(exc).__name__}"
            if safe or _left_before_sending(exc):
                raise TransientError(what) from exc
            # The request left and no answer came: it may have taken effect.
            raise OutcomeUnknown(what) from exc
        if resp.status_code in NOT_PROCESSED or (resp.status_code >= 500 and safe):
            retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
            if retry_after:
                with self._lock:
                    self._not_before = max(self._not_before, self.clock() + retry_after)
            raise TransientError(
                f"{self.name}: {method} answered {resp.status_code}", retry_after=retry_after
            )
        if resp.status_code >= 500:
            raise OutcomeUnknown(f"{self.name}: {method} answered {resp.status_code}")
        return resp
