"""Community resources from Open Referral HSDS 3.0: import of the official examples (with their
quirks), update in place, retirement, quarantine, and matching per family with a `why`.

The importer checks records with its own rules; here the official JSON Schemas
(`../shared/reference/hsds/schema`) confirm that what it accepts is valid HSDS and what it
quarantines is not.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from service.cli import main
from service.config import Settings
from service.models import CommunityResource, ResourceQuarantine
from service.pipeline import run_dispatch, run_evaluate, run_sync
from service.resources import check_service, import_directory, read_directory
from tests.builders import TinyDistrict
from tests.conftest import ROOT, raw_config_for
from tests.test_outbox import items, lines

HSDS = ROOT.parent / "shared" / "reference" / "hsds"
needs_hsds = pytest.mark.skipif(
    not (HSDS / "schema" / "service.json").exists(),
    reason=f"the HSDS 3.0 reference files are not at {HSDS} (../shared is absent)",
)
SERVICE_ID = "ac148810-d857-441c-9679-408f346de14b"


def schema_errors(record: dict[str, Any]) -> list[str]:
    """Errors the official HSDS 3.0 service schema finds in `record`."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    schemas = {p.name: json.loads(p.read_text()) for p in (HSDS / "schema").glob("*.json")}
    registry: Registry[Any] = Registry().with_resources(
        (name, Resource.from_contents(body, default_specification=_draft()))
        for name, body in schemas.items()
    )
    validator = Draft202012Validator(schemas["service.json"], registry=registry)
    return [e.message for e in validator.iter_errors(record)]


def _draft() -> Any:
    from referencing.jsonschema import DRAFT202012

    return DRAFT202012


def directory(**extra: Any) -> dict[str, Any]:
    return {"name": "hsds", "categories": {"counselling": "counseling", "food": "basic-needs"},
            **extra}  # fmt: skip


def service_full() -> dict[str, Any]:
    return json.loads((HSDS / "json" / "service_full.json").read_text())


@needs_hsds
def test_the_official_json_example_imports_with_its_quirks_handled(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    assert schema_errors(service_full()) == []
    settings = make_settings(tmp_path, resource_directory=directory())
    report = import_directory(engine, settings, str(HSDS / "json" / "service_full.json"))

    assert (report.read, report.inserted, report.quarantined) == (1, 1, [])
    with engine.connect() as conn:
        row = conn.execute(select(CommunityResource.__table__)).mappings().one()
    assert row["resource_id"] == SERVICE_ID and row["active"] is True
    assert row["phone"] == "+441234234567"  # '"+44 1234 234567"', quotes and all
    assert row["languages"] == ["ur"]
    assert (row["minimum_age"], row["maximum_age"]) == (12, 100)
    assert row["latitude"] is None  # latitude 100 is off the globe: dropped, with a note
    assert any("off the globe" in n for n in row["notes"])
    assert row["assured_date"] == date(2005, 1, 1)


@needs_hsds
def test_the_official_csv_package_gives_the_same_service(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, resource_directory=directory())
    package = tmp_path / "package"
    shutil.copytree(HSDS / "csv", package)
    from_csv = read_directory(str(package))
    from_json = read_directory(str(HSDS / "json" / "service_full.json"))
    cfg = settings.resource_directory
    assert cfg is not None
    csv_row, json_row = check_service(from_csv[0], cfg).row, check_service(from_json[0], cfg).row
    assert csv_row is not None and json_row is not None
    for key in ("resource_id", "name", "status", "phone", "languages", "minimum_age",
                "maximum_age", "assured_date", "organization"):  # fmt: skip
        assert csv_row[key] == json_row[key], key
    shutil.make_archive(str(tmp_path / "package"), "zip", package)
    report = import_directory(engine, settings, str(tmp_path / "package.zip"))
    assert (report.inserted, report.quarantined) == (1, [])


@needs_hsds
def test_bad_records_are_quarantined_with_reasons_the_schema_agrees_with(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, resource_directory=directory())
    good = service_full()
    bogus = {**copy.deepcopy(good), "id": "svc-bogus", "status": "bogus"}
    no_number = copy.deepcopy(good) | {"id": "svc-nonumber"}
    no_number["phones"][0]["number"] = None
    nameless = {k: v for k, v in copy.deepcopy(good).items() if k != "name"} | {"id": "svc-x"}
    upside_down = copy.deepcopy(good) | {"id": "svc-ages", "minimum_age": 40, "maximum_age": 12}
    page = {"total_items": 5, "contents": [good, bogus, no_number, nameless, upside_down]}
    (tmp_path / "page.json").write_text(json.dumps(page))

    report = import_directory(engine, settings, str(tmp_path / "page.json"))

    reasons = dict(report.quarantined)
    assert "status: 'bogus'" in reasons["svc-bogus"]
    assert "phones[0].number: required" in reasons["svc-nonumber"]
    assert "name: required" in reasons["svc-x"]
    assert "above maximum_age" in reasons["svc-ages"]
    for record in (bogus, no_number, nameless):  # the official schema rejects them too
        assert schema_errors(record), record["id"]
    with engine.connect() as conn:
        kept = conn.execute(select(ResourceQuarantine.record_id)).scalars().all()
        imported = conn.execute(select(CommunityResource.resource_id)).scalars().all()
    assert sorted(kept) == ["svc-ages", "svc-bogus", "svc-nonumber", "svc-x"]
    assert imported == [SERVICE_ID]


def _service(sid: str, name: str, **fields: Any) -> dict[str, Any]:
    term = fields.pop("term", "counselling")
    return {
        "id": sid, "name": name, "status": fields.pop("status", "active"),
        "phones": [{"id": f"ph-{sid}", "number": fields.pop("phone", "+1 212 555 0150"),
                    "type": "voice", "languages": fields.pop("phone_languages", [])}],
        "languages": [{"id": f"l-{sid}-{c}", "code": c} for c in fields.pop("languages", [])],
        "attributes": [{"id": f"a-{sid}", "taxonomy_term": {"id": "t1", "code": term,
                                                            "name": term}}],
        "service_at_locations": [{"id": f"sal-{sid}", "location": {
            "id": f"loc-{sid}", "latitude": fields.pop("lat", None),
            "longitude": fields.pop("lon", None)}}],
        **fields,
    }  # fmt: skip


def test_reimport_updates_in_place_retires_what_vanished_and_keeps_a_quarantined_version(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, resource_directory=directory())
    first = [_service("a", "Alpha Counseling"), _service("b", "Beta Counseling"),
             _service("c", "Gamma Counseling")]  # fmt: skip
    (tmp_path / "v1.json").write_text(json.dumps(first))
    import_directory(engine, settings, str(tmp_path / "v1.json"))

    second = [_service("a", "Alpha Family Counseling"), {**_service("b", "Beta"), "status": "?"}]
    (tmp_path / "v2.json").write_text(json.dumps(second))
    report = import_directory(engine, settings, str(tmp_path / "v2.json"))

    assert (report.updated, report.retired, len(report.quarantined)) == (1, 1, 1)
    with engine.connect() as conn:
        rows = {
            r["resource_id"]: r
            for r in conn.execute(select(CommunityResource.__table__)).mappings()
        }
    assert rows["a"]["name"] == "Alpha Family Counseling" and rows["a"]["active"]
    assert rows["b"]["name"] == "Beta Counseling" and rows["b"]["active"]  # previous version
    assert rows["c"]["active"] is False and rows["c"]["retired_at"] is not None  # never deleted

    third = [_service("a", "Alpha Family Counseling")]
    (tmp_path / "v3.json").write_text(json.dumps(third))
    again = import_directory(engine, settings, str(tmp_path / "v3.json"))
    assert (again.unchanged, again.inserted, again.updated) == (1, 0, 0)


def test_cli_imports_and_lists_quarantined_records(db_url: str, tmp_path: Path) -> None:
    records = [_service("a", "Alpha Counseling"), {**_service("b", "Beta"), "status": "closed"}]
    (tmp_path / "dir.json").write_text(json.dumps(records))
    import yaml

    raw = raw_config_for(db_url, tmp_path, tmp_path / "out", resource_directory=directory())
    config = tmp_path / "district.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(
        main, ["--config", str(config), "resources", "import", str(tmp_path / "dir.json")]
    )
    assert result.exit_code == 0, result.output
    assert "inserted" in result.output
    assert "quarantined b: status: 'closed' is not one of" in result.output


# -- matching ---------------------------------------------------------------------------------


def test_a_notice_offers_the_best_eligible_nearby_services_in_the_family_language_with_why(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d = TinyDistrict(tmp_path / "data")
    d.school()
    days = d.school_days("sch-1", 80)
    d.student("s1", "1001", guardians=("g1",), given="Ana")  # grade 09: about 14
    d.guardian("g1", ("s1",), language="es", sms="(212) 555-0101")
    d.incident("inc-1", "1001", days[30])  # suspension -> counseling
    d.write()
    school = (40.7128, -74.0060)
    services = [
        _service("near-es", "Consejería Familiar", languages=["es", "en"], lat=40.72, lon=-74.0,
                 assured_date="2026-06-01"),
        _service("near-en", "Family Counseling East", languages=["en"], lat=40.715, lon=-74.01),
        _service("adults", "Adult Counseling", languages=["es"], minimum_age=18,
                 lat=40.713, lon=-74.006),
        _service("far", "Upstate Counseling", languages=["es"], lat=42.65, lon=-73.75),
        _service("closed", "Closed Counseling", languages=["es"], status="inactive"),
        _service("food", "Food Bank", term="food", languages=["es"]),
    ]  # fmt: skip
    (tmp_path / "dir.json").write_text(json.dumps(services))
    settings = make_settings(
        d.root, resources=[],
        resource_directory=directory(per_category=2, max_distance_km=25,
                                     school_locations={"101": list(school)}),
        rules=[{"id": "suspension", "version": 1, "when": "suspensions >= 1",
                "reason": "suspension", "severity": "high", "resources": ["counseling"]}],
    )  # fmt: skip
    report = import_directory(engine, settings, str(tmp_path / "dir.json"))
    assert report.inserted == 6
    run_sync(engine, settings)
    run_evaluate(engine, settings, days[40])
    run_dispatch(engine, settings)

    [notice] = items(engine, "family_notice")
    assert notice.status == "delivered", notice.reason
    picked = notice.result["resource_ids"]
    assert picked[0] == "near-es"  # Spanish, close, recently verified
    assert set(picked) <= {"near-es", "near-en"}  # never the adults-only, far or closed ones
    why = notice.result["why"]["near-es"]
    assert "serves in es" in why and "km from school" in why and "verified 2026-06-01" in why
    [sms] = lines(settings.resolve(settings.output_dir) / "family-sms.jsonl")
    assert "Consejería Familiar" in sms["message"]["body"]
    assert "Adult Counseling" not in sms["message"]["body"]


def test_the_nightly_job_refreshes_the_directory_from_its_url_and_survives_a_failure(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from jobs.tasks import resources_job
    from tests.fixtures.http_server import Fault, Response, VendorHandler, VendorServer

    class Directory(VendorHandler):
        def route(self, method: str, path: str, query: Any, body: bytes) -> Response:
            return Response(200, [_service("a", "Alpha Counseling")])

    server = VendorServer(Directory)
    url = server.start() + "/hsds/services.json"
    try:
        settings = make_settings(tmp_path, resource_directory=directory(url=url))
        resources_job(engine, settings)
        server.faults.append(Fault("/hsds", status=503))
        resources_job(engine, settings)  # logged; the snapshot stays
    finally:
        server.stop()
    with engine.connect() as conn:
        rows = conn.execute(select(CommunityResource.name, CommunityResource.active)).all()
    assert [tuple(r) for r in rows] == [("Alpha Counseling", True)]
