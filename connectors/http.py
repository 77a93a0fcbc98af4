"""HTTP behaviour every API source shares, written once.

Timeouts on connect and read; retries with exponential backoff and jitter on 429, 502, 503, 504
and connection errors, honouring `Retry-After`; one token refresh on a 401; a request rate and a
concurrency cap shared by all threads of a source; and a non-2xx or non-JSON answer is never taken
as data. Errors leave as the service's taxonomy: `TransientError` or `PermanentError`.
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import requests
import structlog
import tenacity
from pydantic import Field
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase, HTTPBasicAuth

from service.config import Strict
from service.errors import PermanentError, TransientError

log = structlog.get_logger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# A token is renewed when this share of its lifetime is left (at most `margin_seconds`): a fixed
# 60 s margin made a 5-second token look expired at once, so every request fetched a new one.
RENEW_SHARE = 0.1


class HttpStatusError(PermanentError):
    """A non-2xx answer that retrying will not change (404, 403, 400...); `status` says which."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _request_failed(url: str, exc: requests.RequestException) -> Exception:
    """A network failure may pass (retry); a malformed URL or scheme is configuration (never)."""
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return TransientError(f"{url}: {type(exc).__name__}")
    return PermanentError(f"{url}: {type(exc).__name__} (check the configured URL)")


class HttpSettings(Strict):
    """Politeness and patience toward a district's API (shared by every API source)."""

    connect_timeout_seconds: float = Field(5.0, gt=0)
    read_timeout_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(6, ge=1)
    backoff_base_seconds: float = Field(0.5, ge=0)
    backoff_max_seconds: float = Field(30.0, ge=0)
    requests_per_second: float | None = Field(None, gt=0)
    concurrency: int = Field(4, ge=1, le=32)


class Auth(Protocol):
    """Something that authorises a request and can be told its credential went stale."""

    def apply(self, session: requests.Session) -> AuthBase | None: ...

    def invalidate(self, used: AuthBase | None) -> None:
        """The credential `used` got a 401; drop it unless another thread already renewed it."""
        ...


class NoAuth:
    def apply(self, session: requests.Session) -> AuthBase | None:
        return None

    def invalidate(self, used: AuthBase | None) -> None:
        return None


class _Bearer(AuthBase):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token}"
        return r


class OAuth2ClientCredentials:
    """A client-credentials token, refreshed before it expires and on demand after a 401."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        margin_seconds: float = 60.0,
        timeout: tuple[float, float] = (5.0, 30.0),
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self.margin = margin_seconds  # the most a long-lived token is renewed early by
        self.timeout = timeout
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = threading.Lock()
        self.fetches = 0

    def _fetch(self, session: requests.Session) -> None:
        data = {"grant_type": "client_credentials"}
        if self.scope:
            data["scope"] = self.scope
        try:
            resp = session.post(
                self.token_url,
                data=data,
                auth=HTTPBasicAuth(self.client_id, self.client_secret),
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise _request_failed(self.token_url.split("?")[0], exc) from exc
        if resp.status_code in RETRY_STATUSES:
            raise TransientError(f"token endpoint answered {resp.status_code}")
        if resp.status_code != 200:
            raise PermanentError(f"token endpoint refused the credentials ({resp.status_code})")
        body = _json(resp)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise PermanentError("token endpoint answered without an access_token")
        self._token = token
        lifetime = float(body.get("expires_in") or 3600)
        self._renew_at = time.monotonic() + lifetime - min(self.margin, lifetime * RENEW_SHARE)
        self.fetches += 1

    def apply(self, session: requests.Session) -> AuthBase | None:
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                self._fetch(session)
            assert self._token is not None
            return _Bearer(self._token)

    def invalidate(self, used: AuthBase | None) -> None:
        with self._lock:
            # Many threads see the same expired token at once: renew it once, not once each.
            if isinstance(used, _Bearer) and used.token == self._token:
                self._token = None


class OAuth1Signed:
    """OAuth 1.0a HMAC-SHA256 request signing (OneRoster 1.1), by requests-oauthlib."""

    def __init__(self, client_key: str, client_secret: str) -> None:
        from requests_oauthlib import OAuth1

        self._auth = OAuth1(client_key, client_secret, signature_method="HMAC-SHA256")

    def apply(self, session: requests.Session) -> AuthBase | None:
        return self._auth  # a fresh nonce and timestamp are signed into every request

    def invalidate(self, used: AuthBase | None) -> None:
        return None


class RateLimiter:
    """At most `per_second` request starts per second across threads (None: unlimited)."""

    def __init__(self, per_second: float | None) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


@dataclass(frozen=True)
class HttpPolicy:
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    requests_per_second: float | None = None
    concurrency: int = 4

    @classmethod
    def from_settings(cls, h: HttpSettings) -> HttpPolicy:
        """The policy a source's `http:` block in the district's YAML asks for."""
        return cls(
            connect_timeout=h.connect_timeout_seconds,
            read_timeout=h.read_timeout_seconds,
            max_attempts=h.max_attempts,
            backoff_base=h.backoff_base_seconds,
            backoff_max=h.backoff_max_seconds,
            requests_per_second=h.requests_per_second,
            concurrency=h.concurrency,
        )


@dataclass
class JsonPage:
    body: Any
    headers: Mapping[str, str]
    url: str
    raw: bytes = b""  # the bytes as received: a cheap, stable digest of the page


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _json(resp: requests.Response) -> Any:
    ctype = resp.headers.get("Content-Type", "")
    if "json" not in ctype.lower():
        # An HTML error page with a 200 (a proxy, a maintenance page) is not data.
        raise TransientError(f"{resp.url} answered {ctype or 'no content type'}, not JSON")
    try:
        return resp.json()
    except (ValueError, json.JSONDecodeError) as exc:
        raise TransientError(f"{resp.url} answered a body that is not valid JSON") from exc


class HttpClient:
    """A requests session with the shared politeness and failure rules."""

    def __init__(self, auth: Auth | None = None, policy: HttpPolicy | None = None) -> None:
        self.auth: Auth = auth or NoAuth()
        self.policy = policy or HttpPolicy()
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(4, self.policy.concurrency * 2))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["Accept"] = "application/json"
        self._slots = threading.BoundedSemaphore(self.policy.concurrency)
        self._rate = RateLimiter(self.policy.requests_per_second)
        self.sleep: Callable[[float], None] = time.sleep
        self.stats = {"requests": 0, "retries": 0}

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """Exponential backoff with full jitter, but never sooner than the server asked."""
        ceiling = min(self.policy.backoff_max, self.policy.backoff_base * (2**state.attempt_number))
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        return max(random.uniform(0, ceiling), retry_after or 0.0)

    def _note_retry(self, state: tenacity.RetryCallState) -> None:
        self.stats["retries"] += 1
        exc = state.outcome.exception() if state.outcome else None
        log.info("http.retry", attempt=state.attempt_number, error=str(exc).split("?")[0])

    def get_json(self, url: str, params: Mapping[str, Any] | None = None) -> JsonPage:
        """GET and parse JSON, retrying what may pass; raise what will not."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            stop=tenacity.stop_after_attempt(self.policy.max_attempts),
            wait=self._wait,
            sleep=self.sleep,
            before_sleep=self._note_retry,
            reraise=True,
        )
        return retrying(self._authorised, url, params)

    def _authorised(self, url: str, params: Mapping[str, Any] | None) -> JsonPage:
        try:
            return self._once(url, params)
        except _Unauthorized as stale:
            # The token expired early or was revoked: one fresh token, then give up.
            self.auth.invalidate(stale.used)
            try:
                return self._once(url, params)
            except _Unauthorized:
                raise PermanentError(
                    f"{url.split('?')[0]}: still 401 after a fresh token"
                ) from None

    def _once(self, url: str, params: Mapping[str, Any] | None) -> JsonPage:
        self._rate.wait()
        with self._slots:
            auth = self.auth.apply(self.session)
            self.stats["requests"] += 1
            try:
                resp = self.session.get(
                    url,
                    params=params,
                    auth=auth,
                    timeout=(self.policy.connect_timeout, self.policy.read_timeout),
                )
            except requests.RequestException as exc:
                raise _request_failed(url, exc) from exc
        if resp.status_code == 401:
            raise _Unauthorized(auth)
        if resp.status_code in RETRY_STATUSES:
            raise TransientError(
                f"{url} answered {resp.status_code}",
                retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
            )
        if not 200 <= resp.status_code < 300:
            raise HttpStatusError(
                f"{resp.url.split('?')[0]} answered {resp.status_code}: {resp.text[:200]}",
                resp.status_code,
            )
        return JsonPage(_json(resp), resp.headers, resp.url, resp.content)


class _Unauthorized(Exception):
    def __init__(self, used: AuthBase | None) -> None:
        super().__init__("401")
        self.used = used
