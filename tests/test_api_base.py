"""A new REST source on the shared base is a declaration plus its mapping, on both databases.

The source below is everything a REST connector needs: streams (name, path, where the records
are, cursor field, required or not), a paginator and three hooks. It runs against the project's
OneRoster-shaped server with neither `X-Total-Count` nor `Link` headers, one collection behind a
path the server does not have.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from connectors.http import HttpClient, OAuth2ClientCredentials
from connectors.sources.api_base import CursorFieldSource, OffsetPaginator, RestStream, keyed_body
from connectors.sources.oneroster_rest import _server_time, flatten
from mappings.oneroster import entity_mappings
from service.ingest import Importer, save_cursor
from tests.fixtures.oneroster_server import SCOPE_ROSTER_CORE, OneRosterServer, load_from_csv
from tools.synthetic import generate_district

ROSTER = "/ims/oneroster/rostering/v1p2"


class TinyRoster(CursorFieldSource):
    """Orgs and users with `dateLastModified` deltas; classes are optional."""

    kind = "tiny_roster"
    rest_streams = (
        RestStream("orgs", f"{ROSTER}/orgs", keyed_body("orgs"), "dateLastModified"),
        RestStream("users", f"{ROSTER}/users", keyed_body("users"), "dateLastModified"),
        RestStream("classes", "/not/here/classes", keyed_body("classes"), required=False),
    )

    def paginator(self, stream: RestStream) -> OffsetPaginator:
        return OffsetPaginator(7, stream.records)

    def delta_params(self, stream: RestStream, since: str) -> dict[str, Any]:
        return {"filter": f"dateLastModified>'{since}'"}

    def watermark(self, headers: Mapping[str, str]) -> str:
        return _server_time(headers.get("Date"))

    def transform(self, stream: str, record: dict[str, Any]) -> dict[str, Any]:
        return flatten(stream, record)


def active(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT COUNT(*) FROM {table} WHERE active")).scalar_one())


@pytest.mark.parametrize("count", [True, False], ids=["count-header", "no-headers"])
def test_a_declared_rest_source_pulls_pages_resumes_and_reports_a_missing_stream(
    engine: Engine, tmp_path: Path, count: bool
) -> None:
    generate_district(tmp_path / "d", students=12, seed=2)
    server = OneRosterServer(load_from_csv(tmp_path / "d" / "oneroster", "1.2"),
                             count_header=count, link_header=False)  # fmt: skip
    server.start()
    try:
        auth = OAuth2ClientCredentials(f"{server.base_url}/token", "cid", "csecret",
                                       SCOPE_ROSTER_CORE)  # fmt: skip
        maps = {m.entity: m for m in entity_mappings()}
        mappings = {s.name: maps[s.name] for s in TinyRoster.rest_streams}

        def sync() -> Any:
            source = TinyRoster("tiny", HttpClient(auth), server.base_url)
            return Importer(engine, source, mappings).run()

        first = sync()
        students = [u for u in server.records("students") if u["status"] == "active"]
        assert active(engine, "students") == len(students)
        assert active(engine, "schools") == len(server.records("orgs"))  # district too
        assert first.entities["classes"].failed == "resource_refused"
        assert first.entities["classes"].problems == ["classes: the server answered 404"]
        again = sync()  # complete pulls: the next sync reads changes only
        assert again.entities["users"].read == 0 and again.entities["orgs"].read == 0
        # A full pull that stopped after 14 users (its pages so far recorded under its
        # generation) goes on from there, and completes.
        resume = {"since": None, "offset": 14, "started": "2026-01-01T00:00:00Z"}
        with engine.begin() as conn:
            generation = conn.execute(
                text("SELECT MAX(generation) FROM ingest_chunks WHERE file = 'users'")
            ).scalar_one()
            save_cursor(conn, "tiny", "users", json.dumps(resume))
            save_cursor(conn, "tiny", "users#generation", str(generation))
        resumed = sync()
        assert resumed.entities["users"].problems == []
        assert resumed.entities["users"].read == len(server.records("users")) - 14
        assert active(engine, "students") == len(students)
    finally:
        server.stop()
