"""Community resources: the district's own list (configuration) and the imported HSDS directory.

Directory data, public-ish: any token that may read cases or post referrals may search it (a
referral form shows what help exists). Nothing about students or families is here.
"""

from __future__ import annotations

from typing import Any

from flask_openapi3 import APIBlueprint, Tag
from flask_openapi3.request import validate_request
from pydantic import BaseModel, Field
from sqlalchemy import select

from service.api.auth import BEARER, requires_any
from service.api.common import PageInfo, PageQuery, Timestamp, json_response, page_info
from service.api.context import engine, settings
from service.api.problems import documented
from service.models import CommunityResource

bp = APIBlueprint("resources", __name__, abp_tags=[Tag(name="resources")], abp_security=BEARER)

DISTRICT = "district"  # `source` of the configuration's own resources


class ResourceQuery(PageQuery):
    category: str | None = Field(None, min_length=1, max_length=64)
    language: str | None = Field(
        None,
        min_length=1,
        max_length=8,
        description="ISO 639-1 code; matches resources that list it.",
    )
    text: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Words found in the name, organization or category.",
    )
    active: bool = Field(True, description="true: usable now; false: retired or inactive.")


class ResourceView(BaseModel):
    id: str
    source: str = Field(description="'district' (the configuration) or the directory's name.")
    category: str | None
    name: str
    organization: str | None
    phone: str | None
    url: str | None
    languages: list[str]
    status: str = Field(description="HSDS: active, inactive, defunct, temporarily closed.")
    active: bool
    description: str | None = Field(description="The English line families read, if any.")
    verified_on: str | None = Field(description="The directory's assured_date.")
    retired_at: Timestamp | None


class ResourceList(PageInfo):
    items: list[ResourceView]


def _matches(view: ResourceView, query: ResourceQuery) -> bool:
    if query.category and view.category != query.category:
        return False
    if view.active != query.active:
        return False
    if query.language and query.language.lower() not in view.languages:
        return False
    if query.text:
        haystack = " ".join(filter(None, (view.name, view.organization, view.category))).lower()
        if not all(word in haystack for word in query.text.lower().split()):
            return False
    return True


def _district_resources() -> list[ResourceView]:
    return [
        ResourceView(
            id=r.id, source=DISTRICT, category=r.category, name=r.name, organization=None,
            phone=r.phone or None, url=r.url or None, languages=sorted(r.description),
            status="active", active=True, description=r.description.get("en"),
            verified_on=None, retired_at=None,
        )
        for r in settings().resources
    ]  # fmt: skip


def _directory_resources(query: ResourceQuery) -> list[ResourceView]:
    q = select(CommunityResource.__table__)
    if query.category:
        q = q.where(CommunityResource.category == query.category)
    q = q.where(CommunityResource.active.is_(query.active))
    with engine().connect() as conn:
        rows = conn.execute(q).all()
    return [
        ResourceView(
            id=r.resource_id, source=r.directory, category=r.category, name=r.name,
            organization=r.organization, phone=r.phone, url=r.url,
            languages=list(r.languages or []), status=r.status, active=r.active,
            description=None,
            verified_on=r.assured_date.isoformat() if r.assured_date else None,
            retired_at=r.retired_at,
        )
        for r in rows
    ]  # fmt: skip


@bp.get(
    "/resources",
    summary="Search community resources",
    operation_id="searchResources",
    responses={200: ResourceList, **documented(401, 403, 422)},
)
@requires_any("cases:read", "referrals:create")
@validate_request()
def search_resources(query: ResourceQuery) -> Any:
    """By category, language, words and whether usable now; sorted by category, then name.
    The district's own resources list the languages they have a description in."""
    found = [v for v in _district_resources() + _directory_resources(query) if _matches(v, query)]
    found.sort(key=lambda v: (v.category or "", v.name.lower(), v.id))
    page = found[query.offset : query.offset + query.limit]
    return json_response(ResourceList(items=page, **page_info(len(found), query).model_dump()))
