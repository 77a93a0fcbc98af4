"""OneRoster REST 1.1 and 1.2 (rostering and gradebook), on `requests` with oauthlib signing.

No maintained Python OneRoster client exists, so this is ours. Records are flattened into the
shape of the OneRoster CSV columns and go through the same mappings as the CSV source.

Streams, paging, cursors and resume come from `api_base.CursorFieldSource`: `limit`/`offset`,
concurrent once `X-Total-Count` is known, else `Link: rel="next"`, else until a short page.
Deltas ask for `dateLastModified>` the watermark, which is the server's own clock (`Date`
header) at the start of the last complete pull, so a record changed while a pull ran is read
again next time instead of being missed.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urljoin

from pydantic import Field

from connectors.base import BuiltSource, config_fingerprint
from connectors.http import (
    HttpClient,
    HttpPolicy,
    HttpSettings,
    OAuth1Signed,
    OAuth2ClientCredentials,
)
from connectors.registry import register
from connectors.sources.api_base import CursorFieldSource, OffsetPaginator, RestStream, keyed_body
from mappings.oneroster import entity_mappings
from mappings.spec import EntityMapping
from service.config import Settings, SourceSettings

PAGES_PER_GROUP = 16  # pages fetched at once
CLOCK_SKEW = timedelta(seconds=2)
# collection -> (service, key of the list in the response body)
COLLECTIONS = {
    "orgs": ("rostering", "orgs"),
    "academicSessions": ("rostering", "academicSessions"),
    "courses": ("rostering", "courses"),
    "classes": ("rostering", "classes"),
    "users": ("rostering", "users"),
    "enrollments": ("rostering", "enrollments"),
    "lineItems": ("gradebook", "lineItems"),
    "results": ("gradebook", "results"),
}


# CSV column -> the REST reference object it names, per collection.
REFERENCE_COLUMNS = {
    "orgs": {"parentSourcedId": "parent"},
    "academicSessions": {"parentSourcedId": "parent"},
    "courses": {"orgSourcedId": "org"},
    "classes": {"courseSourcedId": "course", "schoolSourcedId": "school"},
    "enrollments": {
        "classSourcedId": "class",
        "schoolSourcedId": "school",
        "userSourcedId": "user",
    },
    "lineItems": {"classSourcedId": "class", "gradingPeriodSourcedId": "gradingPeriod"},
    "results": {"lineItemSourcedId": "lineItem", "studentSourcedId": "student"},
}


def _ref(value: Any) -> str:
    return str(value.get("sourcedId") or "") if isinstance(value, dict) else ""


def _refs(values: Any) -> str:
    return ",".join(_ref(v) for v in values or [] if _ref(v))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def flatten(collection: str, r: dict[str, Any]) -> dict[str, str]:
    """A REST record in the column names of the OneRoster CSV binding."""
    row = {k: _text(v) for k, v in r.items() if not isinstance(v, dict | list)}
    row["grades"] = _text(r.get("grades"))
    row["subjects"] = _text(r.get("subjects"))
    for key, value in (r.get("metadata") or {}).items():
        row[f"metadata.{key}"] = _text(value)
    if collection == "users":
        roles = r.get("roles") or []
        primary = next(
            (x for x in roles if x.get("roleType") == "primary"), roles[0] if roles else None
        )
        if primary and not row.get("role"):
            row["role"] = str(primary.get("role") or "")
        orgs = _refs(r.get("orgs")) or (_ref(primary.get("org")) if primary else "")
        row["orgSourcedIds"] = orgs or _ref(r.get("primaryOrg"))
        row["agentSourcedIds"] = _refs(r.get("agents"))
    for column, field in REFERENCE_COLUMNS.get(collection, {}).items():
        row[column] = _ref(r.get(field))
    return row


class OneRosterRestSettings(SourceSettings):
    """OneRoster REST 1.1 (OAuth 1.0a or 2) and 1.2 (OAuth2 with scopes)."""

    kind: Literal["oneroster_rest"]
    base_url: str  # scheme and host, e.g. https://sis.example.org
    version: Literal["1.1", "1.2"] = "1.2"
    # Vendors mix these: 1.2 data on the v1p1 path, OAuth 1.0a on 1.2...
    rostering_path: str | None = (
        None  # default /ims/oneroster/v1p1 or /ims/oneroster/rostering/v1p2
    )
    gradebook_path: str | None = None  # default the same (1.1) or /ims/oneroster/gradebook/v1p2
    auth: Literal["oauth2", "oauth1"] = "oauth2"
    client_id: str
    client_secret: str
    token_url: str | None = None  # default {base_url}/token
    scopes: list[str] = [
        "https://purl.imsglobal.org/spec/or/v1p2/scope/roster-core.readonly",
        "https://purl.imsglobal.org/spec/or/v1p2/scope/gradebook.readonly",
    ]
    page_size: int = Field(100, ge=1, le=10_000)
    guardian_roles: list[str] = ["parent", "guardian", "relatedContact"]
    http: HttpSettings = HttpSettings()


def _stream(collection: str, service: str) -> RestStream:
    # Gradebook is optional: a key without its scope (403) or a vendor without it (404) is a
    # problem of those streams, reported by name, while rostering syncs.
    return RestStream(collection, service, keyed_body(collection), "dateLastModified",
                      required=service == "rostering",
                      params={"sort": "sourcedId", "orderBy": "asc"})  # fmt: skip


class OneRosterRestApiSource(CursorFieldSource):
    """Declared streams on the shared REST machinery; only URLs, auth and flattening are ours."""

    kind = "oneroster_rest"
    places_students = False
    rest_streams = tuple(_stream(c, service) for c, (service, _) in COLLECTIONS.items())

    def __init__(self, cfg: OneRosterRestSettings) -> None:
        if cfg.auth == "oauth1":
            auth: Any = OAuth1Signed(cfg.client_id, cfg.client_secret)
        else:
            token_url = urljoin(cfg.base_url.rstrip("/") + "/", cfg.token_url or "token")
            scope = " ".join(cfg.scopes) if cfg.version == "1.2" and cfg.scopes else None
            auth = OAuth2ClientCredentials(token_url, cfg.client_id, cfg.client_secret, scope)
        super().__init__(cfg.name, HttpClient(auth, HttpPolicy.from_settings(cfg.http)),
                         cfg.base_url)  # fmt: skip
        self.cfg = cfg
        maps = {m.entity: m for m in entity_mappings(tuple(cfg.guardian_roles))}
        self.mappings: dict[str, EntityMapping] = {c: maps[c] for c in COLLECTIONS}

    def url(self, stream: RestStream) -> str:
        collection, service = stream.name, stream.path
        if self.cfg.version == "1.1":
            default = "/ims/oneroster/v1p1"
            path = (self.cfg.gradebook_path if service == "gradebook" else None) or (
                self.cfg.rostering_path or default
            )
        elif service == "gradebook":
            path = self.cfg.gradebook_path or "/ims/oneroster/gradebook/v1p2"
        else:
            path = self.cfg.rostering_path or "/ims/oneroster/rostering/v1p2"
        return f"{self.base_url}/{path.strip('/')}/{collection}"

    def paginator(self, stream: RestStream) -> OffsetPaginator:
        return OffsetPaginator(self.cfg.page_size, stream.records, group=PAGES_PER_GROUP)

    def delta_params(self, stream: RestStream, since: str) -> dict[str, Any]:
        return {"filter": f"dateLastModified>'{since}'"}

    def watermark(self, headers: Mapping[str, str]) -> str:
        return _server_time(headers.get("Date"))

    def transform(self, stream: str, record: dict[str, Any]) -> dict[str, Any]:
        return flatten(stream, record)


def _server_time(date_header: str | None) -> str:
    """The server's clock as a OneRoster timestamp, a little early to cover clock skew."""
    try:
        when = email.utils.parsedate_to_datetime(date_header) if date_header else None
    except (TypeError, ValueError):
        when = None
    when = (when or datetime.now(UTC)) - CLOCK_SKEW
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build(settings: Settings, cfg: OneRosterRestSettings) -> BuiltSource:
    rest = OneRosterRestApiSource(cfg)
    return BuiltSource(rest, rest.mappings, config_fingerprint(cfg))


register("source", "oneroster_rest", OneRosterRestSettings, build)
