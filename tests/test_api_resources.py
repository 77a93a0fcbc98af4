"""Resource search: the district's own list and the imported directory, for any token that may
read cases or post referrals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from service.clock import utcnow
from service.models import CommunityResource
from tests.api_world import World, build_world


def directory_service(resource_id: str, name: str, **values: Any) -> dict[str, Any]:
    row = {
        "resource_id": resource_id, "directory": "211-metro", "category": "basic-needs",
        "name": name, "organization": None, "phone": None, "url": None, "status": "active",
        "active": True, "languages": ["en"], "minimum_age": None, "maximum_age": None,
        "latitude": None, "longitude": None, "assured_date": None, "notes": [],
        "content_hash": resource_id, "seen_at": utcnow(), "retired_at": None,
    }  # fmt: skip
    return {**row, **values}


@pytest.fixture
def world(engine: Engine, db_url: str, tmp_path: Path) -> World:
    w = build_world(engine, db_url, tmp_path)
    with engine.begin() as conn:
        conn.execute(insert(CommunityResource), [
            directory_service("svc-1", "Eastside Community Fridge",
                              organization="Neighbors United", languages=["en", "vi"]),
            directory_service("svc-2", "Clothing Closet", languages=["es"]),
            directory_service("svc-3", "Old Food Bank", active=False, status="defunct",
                              retired_at=utcnow()),
            directory_service("svc-4", "Math Circle", category="tutoring"),
        ])  # fmt: skip
    return w


def names(answer: Any) -> list[str]:
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return [r["name"] for r in answer.get_json()["items"]]


def test_any_token_that_reads_cases_or_posts_referrals_may_search(world: World) -> None:
    for scopes in (("referrals:create",), ("cases:read",), ("admin",)):
        who = world.headers("/".join(scopes), *scopes)
        assert world.get("/resources", who).status_code == 200, scopes
    assert world.get("/resources", {}).status_code == 401
    denied = world.get("/resources", world.headers("closer", "cases:write"))
    assert denied.status_code == 403
    assert "cases:read" in denied.get_json()["detail"]


def test_search_by_category_language_words_and_whether_usable(world: World) -> None:
    who = world.headers("form", "referrals:create")

    assert names(world.get("/resources?category=basic-needs", who)) == [
        "Clothing Closet", "Eastside Community Fridge", "Northside Food Pantry",
    ]  # fmt: skip
    assert names(world.get("/resources?category=basic-needs&language=vi", who)) == [
        "Eastside Community Fridge"
    ]
    # The district's own resources list the languages they have a description in.
    assert "Northside Food Pantry" in names(world.get("/resources?language=es", who))
    assert names(world.get("/resources?text=neighbors%20fridge", who)) == [
        "Eastside Community Fridge"
    ]
    assert names(world.get("/resources?active=false", who)) == ["Old Food Bank"]
    page = world.get("/resources?limit=2&offset=1", who).get_json()
    assert (page["total"], len(page["items"]), page["next_offset"]) == (7, 2, 3)
    district = world.get("/resources?text=pantry", who).get_json()["items"][0]
    assert (district["source"], district["description"]) == (
        "district", "free groceries Tue and Sat",
    )  # fmt: skip
    assert world.get("/resources?language=", who).status_code == 422
