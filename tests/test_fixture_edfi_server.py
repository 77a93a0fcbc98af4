"""Tests of the Ed-Fi fixture itself: the local ODS/API server and the Grand Bend conversion.

Run with -s to see the Grand Bend conversion time and per-resource counts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.edfi_server import EdFiServer, duplicate_keys
from tests.fixtures.grand_bend import (
    Resources,
    load_grand_bend,
    source_counts,
    synthetic_edfi,
    to_data_standard_4,
)
from tests.fixtures.http_server import Fault

# The shared reference data sits beside the repository (../shared); a user's clone lacks it.
GRAND_BEND = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "edfi" / "grand-bend-ds5.2"
)
needs_grand_bend = pytest.mark.skipif(
    not GRAND_BEND.is_dir(), reason=f"Grand Bend sample data not found at {GRAND_BEND}"
)

Factory = Callable[..., EdFiServer]


@pytest.fixture(scope="module")
def grand_bend() -> tuple[Resources, float]:
    """The converted sample and its conversion time (converted once per module)."""
    if not GRAND_BEND.is_dir():
        pytest.skip(f"Grand Bend sample data not found at {GRAND_BEND}")
    started = time.perf_counter()
    resources = load_grand_bend(GRAND_BEND)
    return resources, time.perf_counter() - started


@pytest.fixture(scope="module")
def small() -> Resources:
    return synthetic_edfi(60, seed=3)


@pytest.fixture
def make_server(small: Resources) -> Iterator[Factory]:
    servers: list[EdFiServer] = []

    def make(resources: Resources | None = None, **kwargs: Any) -> EdFiServer:
        server = EdFiServer(small if resources is None else resources, **kwargs)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def token(server: EdFiServer) -> str:
    response = requests.post(
        server.token_url,
        auth=(server.client_key, server.client_secret),
        data={"grant_type": "client_credentials"},
        timeout=5,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def session(server: EdFiServer) -> requests.Session:
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token(server)}"
    return s


def walk_offset(s: requests.Session, url: str, limit: int, **params: Any) -> list[dict]:
    rows: list[dict] = []
    while True:
        page = s.get(url, params={**params, "offset": len(rows), "limit": limit}, timeout=5)
        page.raise_for_status()
        rows.extend(page.json())
        if len(page.json()) < limit:
            return rows


# ---------------------------------------------------------------------------- discovery


@pytest.mark.parametrize(
    ("url_mode", "ds", "cursor", "data_path", "cq_path"),
    [
        ("shared", 5, False, "/data/v3/", "/changeQueries/v1/"),
        ("year_specific", 5, True, "/data/v3/2026/", "/changeQueries/v1/2026/"),
        (
            "instance_year_specific",
            4,
            False,
            "/data/v3/255901/2026/",
            "/changeQueries/v1/255901/2026/",
        ),
    ],
)
def test_discovery_reflects_mode_and_data_standard(
    make_server: Factory, url_mode: str, ds: int, cursor: bool, data_path: str, cq_path: str
) -> None:
    server = make_server(data_standard=ds, url_mode=url_mode, cursor_paging=cursor)
    root = requests.get(server.base_url + "/", timeout=5).json()
    assert root["version"] == ("7.3" if cursor else "7.2")
    assert root["dataModels"] == [
        {
            "name": "Ed-Fi",
            "version": f"{ds}.0.0",
            "informationalVersion": f"The Ed-Fi Data Model {ds}.0",
        }
    ]
    assert root["apiMode"]
    urls = root["urls"]
    assert urls["dataManagementApi"] == server.base_url + data_path
    assert urls["changeQueries"] == server.base_url + cq_path
    assert urls["dependencies"].endswith(f"/metadata{data_path}dependencies")
    assert urls["openApiMetadata"].endswith("/metadata/" + data_path.removeprefix("/data/v3/"))

    # A client that only follows discovery gets everywhere.
    tok = requests.post(
        urls["oauth"], auth=("key", "secret"), data={"grant_type": "client_credentials"}, timeout=5
    ).json()["access_token"]
    auth = {"Authorization": f"Bearer {tok}"}
    family = "contacts" if ds == 5 else "parents"
    assert requests.get(urls["dataManagementApi"] + f"ed-fi/{family}", headers=auth, timeout=5).ok
    versions = requests.get(
        urls["changeQueries"] + "availableChangeVersions", headers=auth, timeout=5
    )
    assert versions.json() == {
        "oldestChangeVersion": 0,
        "newestChangeVersion": server.newest_change_version,
    }
    assert requests.get(urls["dependencies"], timeout=5).json()[0]["resource"] == "/ed-fi/schools"
    specs = requests.get(urls["openApiMetadata"], timeout=5).json()
    swagger = requests.get(specs[0]["endpointUri"], timeout=5).json()
    assert "/ed-fi/students/deletes" in swagger["paths"]


def test_wrong_routes_are_json_404s(make_server: Factory) -> None:
    year = make_server(url_mode="year_specific", school_year=2026)
    s = session(year)
    for path in (
        "/data/v3/2025/ed-fi/students",
        "/data/v3/ed-fi/students",
        "/data/v3/2026/ed-fi/nope",
    ):
        response = s.get(year.base_url + path, timeout=5)
        assert response.status_code == 404, path
        assert response.json()["title"] == "Not Found"
    assert (
        s.get(
            year.base_url + "/changeQueries/v1/2025/availableChangeVersions", timeout=5
        ).status_code
        == 404
    )
    instance = make_server(url_mode="instance_year_specific", instance="255901")
    s = session(instance)
    assert (
        s.get(instance.base_url + "/data/v3/999999/2026/ed-fi/students", timeout=5).status_code
        == 404
    )
    assert s.get(instance.resource_url("students"), timeout=5).status_code == 200


def test_data_standard_4_serves_parents_not_contacts(
    make_server: Factory, small: Resources
) -> None:
    ds4 = make_server(data_standard=4)
    s = session(ds4)
    assert s.get(ds4.resource_url("contacts"), timeout=5).status_code == 404
    assert s.get(ds4.resource_url("studentContactAssociations"), timeout=5).status_code == 404
    parents = s.get(ds4.resource_url("parents"), params={"limit": 500}, timeout=5).json()
    assert len(parents) == len(small["contacts"])
    assert "parentUniqueId" in parents[0] and "contactUniqueId" not in parents[0]
    links = s.get(ds4.resource_url("studentParentAssociations"), timeout=5).json()
    assert set(links[0]["parentReference"]) == {"parentUniqueId"}
    ds5 = make_server()
    assert session(ds5).get(ds5.resource_url("parents"), timeout=5).status_code == 404
    with pytest.raises(ValueError):
        EdFiServer(to_data_standard_4(small), data_standard=5)


# ---------------------------------------------------------------------------- tokens


def test_token_flow_and_expiry(make_server: Factory) -> None:
    server = make_server(token_ttl=0.4)
    url = server.resource_url("students")
    basic = requests.post(
        server.token_url,
        auth=("key", "secret"),
        data={"grant_type": "client_credentials"},
        timeout=5,
    )
    assert basic.status_code == 200
    assert basic.json()["token_type"] == "bearer" and basic.json()["expires_in"] == 1
    form = requests.post(
        server.token_url,
        data={"grant_type": "client_credentials", "client_id": "key", "client_secret": "secret"},
        timeout=5,
    )
    assert form.status_code == 200
    wrong = requests.post(
        server.token_url, auth=("key", "nope"), data={"grant_type": "client_credentials"}, timeout=5
    )
    assert wrong.status_code == 401
    no_grant = requests.post(server.token_url, auth=("key", "secret"), timeout=5)
    assert no_grant.status_code == 400
    assert server.token_requests == 4

    assert requests.get(url, timeout=5).status_code == 401
    unknown = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert unknown.status_code == 401 and unknown.json()["status"] == 401
    good = {"Authorization": f"Bearer {basic.json()['access_token']}"}
    assert requests.get(url, headers=good, timeout=5).status_code == 200
    time.sleep(0.45)  # past token_ttl: the server forgets the token
    assert requests.get(url, headers=good, timeout=5).status_code == 401

    server.token_ttl = 1800
    s = session(server)
    assert s.get(url, timeout=5).status_code == 200
    server.expire_tokens()  # mid-pull expiry
    assert s.get(url, timeout=5).status_code == 401
    assert session(server).get(url, timeout=5).status_code == 200


# ---------------------------------------------------------------------------- paging


def test_offset_paging_total_count_and_limits(make_server: Factory, small: Resources) -> None:
    server = make_server()
    s = session(server)
    url = server.resource_url("studentSchoolAttendanceEvents")
    rows = walk_offset(s, url, limit=7)
    assert [r["id"] for r in rows] == [
        r["id"] for r in server.records("studentSchoolAttendanceEvents")
    ]
    assert len({r["id"] for r in rows}) == len(small["studentSchoolAttendanceEvents"])
    assert {"id", "_etag", "_lastModifiedDate", "studentReference"} <= set(rows[0])

    counted = s.get(url, params={"totalCount": "true", "limit": 0}, timeout=5)
    assert counted.json() == [] and counted.headers["Total-Count"] == str(len(rows))
    assert "Total-Count" not in s.get(url, timeout=5).headers
    assert len(s.get(url, timeout=5).json()) == 25  # the ODS default limit
    assert s.get(url, params={"offset": 10_000}, timeout=5).json() == []
    for bad in ({"limit": 501}, {"limit": -1}, {"limit": "x"}, {"offset": -5}):
        response = s.get(url, params=bad, timeout=5)
        assert response.status_code == 400, bad
        assert response.json()["errors"]
    assert s.get(url, params={"pageToken": "abc"}, timeout=5).status_code == 400  # not 7.3

    one = rows[3]
    assert s.get(f"{url}/{one['id']}", timeout=5).json() == one
    sid = one["studentReference"]["studentUniqueId"]
    mine = s.get(url, params={"studentUniqueId": sid, "limit": 500}, timeout=5).json()
    assert mine and all(r["studentReference"]["studentUniqueId"] == sid for r in mine)


def test_change_version_windows(make_server: Factory) -> None:
    server = make_server()
    s = session(server)
    resource = "studentSchoolAttendanceEvents"
    url = server.resource_url(resource)
    cvs = {r["id"]: server.change_version(resource, r["id"]) for r in server.records(resource)}
    low, high = sorted(cvs.values())[5], sorted(cvs.values())[20]
    window = walk_offset(s, url, 4, minChangeVersion=low, maxChangeVersion=high)
    assert {r["id"] for r in window} == {i for i, cv in cvs.items() if low <= cv <= high}
    assert len(window) == 16  # inclusive on both ends

    before = server.newest_change_version
    target = window[0]["id"]
    new_cv = server.update(resource, target, attendanceEventReason="Doctor")
    assert new_cv == before + 1 == server.newest_change_version
    changed = s.get(url, params={"minChangeVersion": before + 1, "totalCount": "true"}, timeout=5)
    assert changed.headers["Total-Count"] == "1"
    assert changed.json()[0]["attendanceEventReason"] == "Doctor"
    assert changed.json()[0]["_etag"] != window[0]["_etag"]
    versions = s.get(server.change_queries_url + "availableChangeVersions", timeout=5).json()
    assert versions["newestChangeVersion"] == new_cv


def test_deletes_and_key_changes(make_server: Factory) -> None:
    server = make_server()
    s = session(server)
    students = server.records("students")
    start = server.newest_change_version
    gone = students[0]
    cv = server.delete("students", gone["id"])
    deletes = s.get(
        server.resource_url("students") + "/deletes",
        params={"minChangeVersion": start + 1, "totalCount": "true"},
        timeout=5,
    )
    assert deletes.headers["Total-Count"] == "1"
    assert deletes.json() == [
        {
            "id": gone["id"],
            "changeVersion": cv,
            "keyValues": {"studentUniqueId": gone["studentUniqueId"]},
        }
    ]
    assert s.get(server.resource_url("students") + f"/{gone['id']}", timeout=5).status_code == 404
    assert len(walk_offset(s, server.resource_url("students"), 25)) == len(students) - 1
    before_window = s.get(
        server.resource_url("students") + "/deletes", params={"maxChangeVersion": start}, timeout=5
    )
    assert before_window.json() == []

    ssa = server.records("studentSchoolAssociations")[1]
    kc_cv = server.change_key("studentSchoolAssociations", ssa["id"], {"entryDate": "2025-09-02"})
    changes = s.get(
        server.resource_url("studentSchoolAssociations") + "/keyChanges",
        params={"minChangeVersion": kc_cv},
        timeout=5,
    ).json()
    old = {
        "entryDate": ssa["entryDate"],
        "schoolId": ssa["schoolReference"]["schoolId"],
        "studentUniqueId": ssa["studentReference"]["studentUniqueId"],
    }
    assert changes == [
        {
            "id": ssa["id"],
            "changeVersion": kc_cv,
            "oldKeyValues": old,
            "newKeyValues": {**old, "entryDate": "2025-09-02"},
        }
    ]
    now = s.get(
        server.resource_url("studentSchoolAssociations") + f"/{ssa['id']}", timeout=5
    ).json()
    assert (
        now["entryDate"] == "2025-09-02"
        and server.change_version("studentSchoolAssociations", ssa["id"]) == kc_cv
    )

    # A reference-held key (schoolId twice in an attendance event) changes everywhere.
    event = server.records("studentSchoolAttendanceEvents")[0]
    server.change_key("studentSchoolAttendanceEvents", event["id"], {"schoolId": 1})
    moved = server.get("studentSchoolAttendanceEvents", event["id"])
    assert moved["schoolReference"]["schoolId"] == moved["sessionReference"]["schoolId"] == 1
    assert event["schoolReference"]["schoolId"] != 1  # the caller's shared dicts are untouched
    # update() of a key field is a key change too; add() of an existing key is an upsert.
    server.update("students", students[1]["id"], studentUniqueId="X1")
    kc = s.get(server.resource_url("students") + "/keyChanges", timeout=5).json()
    assert kc[-1]["newKeyValues"] == {"studentUniqueId": "X1"}
    new_id = server.add(
        "students",
        {"studentUniqueId": "NEW", "firstName": "A", "lastSurname": "B", "birthDate": "2015-01-01"},
    )
    same = server.add(
        "students",
        {"studentUniqueId": "NEW", "firstName": "C", "lastSurname": "B", "birthDate": "2015-01-01"},
    )
    assert same == new_id and server.get("students", new_id)["firstName"] == "C"
    assert server.find_id("students", studentUniqueId="NEW") == new_id


def test_cursor_paging_walks_every_record_once(make_server: Factory) -> None:
    server = make_server(cursor_paging=True)
    s = session(server)
    resource = "studentSchoolAttendanceEvents"
    url = server.resource_url(resource)
    initial = [r["id"] for r in server.records(resource)]
    seen: list[str] = []
    page_token: str | None = None
    mutated = False
    while True:
        params: dict[str, Any] = {"pageSize": 9}
        if page_token:
            params["pageToken"] = page_token
        page = s.get(url, params=params, timeout=5)
        assert page.status_code == 200
        seen += [r["id"] for r in page.json()]
        page_token = page.headers.get("Next-Page-Token")
        if not mutated and len(seen) > 20:
            # Changes mid-walk: offset paging would skip or repeat; a cursor must not.
            server.update(resource, seen[0], attendanceEventReason="changed")
            server.update(resource, initial[-3], attendanceEventReason="changed")
            server.delete(resource, initial[-2])
            copy = {k: v for k, v in server.get(resource, initial[-1]).items() if k != "id"}
            added = server.add(resource, {**copy, "eventDate": "2026-06-15"})  # a new key
            mutated = True
        if not page_token:
            break
    assert len(seen) == len(set(seen))
    assert set(seen) == (set(initial) - {initial[-2]}) | {added}

    # edfi_api_client's way: a plain first request answers with a token for the rest.
    first = s.get(url, timeout=5)
    assert len(first.json()) == 25 and first.headers["Next-Page-Token"]
    rest = s.get(
        url, params={"pageToken": first.headers["Next-Page-Token"], "pageSize": 500}, timeout=5
    )
    assert "Next-Page-Token" not in rest.headers
    assert len(first.json()) + len(rest.json()) == len(server.records(resource))

    parts = s.get(url + "/partitions", params={"number": 3}, timeout=5).json()["pageTokens"]
    union: list[str] = []
    for part in parts:
        tok: str | None = part
        while tok:
            page = s.get(url, params={"pageToken": tok, "pageSize": 10}, timeout=5)
            union += [r["id"] for r in page.json()]
            tok = page.headers.get("Next-Page-Token")
    assert sorted(union) == sorted(r["id"] for r in server.records(resource))
    assert s.get(url, params={"pageSize": 501}, timeout=5).status_code == 400
    assert s.get(url, params={"pageToken": "!!"}, timeout=5).status_code == 400


def test_touch_fraction_and_oldest_change_version(make_server: Factory) -> None:
    server = make_server()
    s = session(server)
    resource = "studentSchoolAttendanceEvents"
    total = len(server.records(resource))
    before = server.newest_change_version
    touched = server.touch_fraction(resource, 0.1, seed=1)
    assert len(touched) == round(total * 0.1)
    assert touched == make_server().touch_fraction(resource, 0.1, seed=1)  # deterministic
    window = walk_offset(s, server.resource_url(resource), 50, minChangeVersion=before + 1)
    assert sorted(r["id"] for r in window) == sorted(touched)
    assert all(r["attendanceEventReason"].startswith("touched") for r in window)

    server.delete(resource, touched[0])
    server.set_oldest_change_version(server.newest_change_version + 100)
    versions = s.get(server.change_queries_url + "availableChangeVersions", timeout=5).json()
    assert (
        versions["oldestChangeVersion"]
        == versions["newestChangeVersion"]
        == server.oldest_change_version
    )
    assert s.get(server.resource_url(resource) + "/deletes", timeout=5).json() == []  # purged
    assert server.update(resource, touched[1], eventDuration=0.5) > versions["newestChangeVersion"]


def test_faults_and_page_delay(make_server: Factory) -> None:
    server = make_server()
    s = session(server)
    url = server.resource_url("studentSchoolAttendanceEvents")
    server.faults.append(Fault("studentSchoolAttendanceEvents", status=429, retry_after=1))
    limited = s.get(url, timeout=5)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    server.faults.append(Fault("studentSchoolAttendanceEvents", kind="html"))
    assert s.get(url, timeout=5).headers["Content-Type"] == "text/html"
    server.faults.append(Fault("studentSchoolAttendanceEvents", kind="truncated"))
    with pytest.raises(requests.JSONDecodeError):
        s.get(url, timeout=5).json()

    # Pages sleep outside the lock: two concurrent clients overlap.
    server.page_delay = 0.3
    results: list[int] = []
    started = time.perf_counter()
    threads = [
        threading.Thread(
            target=lambda: results.append(session(server).get(url, timeout=5).status_code)
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200, 200]
    assert time.perf_counter() - started < 0.55


# ---------------------------------------------------------------------------- data sets


@needs_grand_bend
def test_grand_bend_counts_match_the_xml(
    make_server: Factory, grand_bend: tuple[Resources, float]
) -> None:
    resources, elapsed = grand_bend
    expected = source_counts(GRAND_BEND)
    print(f"\nGrand Bend converted in {elapsed:.2f}s")
    for name, records in resources.items():
        print(f"  {name:48} {len(records):6}  (XML: {expected.get(name, '-')})")
    for name, count in expected.items():
        assert len(resources[name]) == count, name
    assert expected["students"] == 960 and expected["studentSchoolAttendanceEvents"] == 1917
    assert resources["studentSchoolAssociations"] == []  # not in these files: nothing derived
    assert duplicate_keys(resources) == {}

    server = make_server(resources)
    s = session(server)
    for name, count in expected.items():
        got = s.get(server.resource_url(name), params={"totalCount": "true", "limit": 0}, timeout=5)
        assert got.headers["Total-Count"] == str(count), name


@needs_grand_bend
def test_grand_bend_references_resolve(grand_bend: tuple[Resources, float]) -> None:
    r = grand_bend[0]
    students = {x["studentUniqueId"] for x in r["students"]}
    contacts = {x["contactUniqueId"] for x in r["contacts"]}
    sessions = {
        (
            x["schoolReference"]["schoolId"],
            x["schoolYearTypeReference"]["schoolYear"],
            x["sessionName"],
        )
        for x in r["sessions"]
    }
    incidents = {
        (x["incidentIdentifier"], x["schoolReference"]["schoolId"])
        for x in r["disciplineIncidents"]
    }
    behaviors = {
        (
            b["studentReference"]["studentUniqueId"],
            b["disciplineIncidentReference"]["incidentIdentifier"],
            b["disciplineIncidentReference"]["schoolId"],
            b["behaviorDescriptor"],
        )
        for b in r["studentDisciplineIncidentBehaviorAssociations"]
    }
    for a in r["studentContactAssociations"]:
        assert a["contactReference"]["contactUniqueId"] in contacts
        assert a["studentReference"]["studentUniqueId"] in students
    for e in r["studentSchoolAttendanceEvents"]:
        ref = e["sessionReference"]
        assert (ref["schoolId"], ref["schoolYear"], ref["sessionName"]) in sessions
        assert e["attendanceEventCategoryDescriptor"].startswith(
            "uri://ed-fi.org/AttendanceEventCategoryDescriptor#"
        )
    for b in r["studentDisciplineIncidentBehaviorAssociations"]:
        ref = b["disciplineIncidentReference"]
        assert (ref["incidentIdentifier"], ref["schoolId"]) in incidents
    for action in r["disciplineActions"]:
        for link in action["studentDisciplineIncidentBehaviorAssociations"]:
            x = link["studentDisciplineIncidentBehaviorAssociationReference"]
            assert (
                x["studentUniqueId"],
                x["incidentIdentifier"],
                x["schoolId"],
                x["behaviorDescriptor"],
            ) in behaviors
    assert {
        t["orderOfPriority"]
        for c in r["contacts"]
        for t in c["telephones"]
        if "orderOfPriority" in t
    } == {1}
    assert sum(len(c["electronicMails"]) for c in r["contacts"]) == 111
    assert sum(1 for a in r["studentContactAssociations"] if a.get("legalGuardian")) == 2

    ds4 = to_data_standard_4(r)
    assert "contacts" not in ds4 and len(ds4["parents"]) == len(r["contacts"])
    assert len(ds4["studentParentAssociations"]) == len(r["studentContactAssociations"])
    assert (
        "preferredFirstName" not in ds4["students"][0] and "preferredFirstName" in r["students"][0]
    )
    assert duplicate_keys(ds4, data_standard=4) == {}


def test_synthetic_is_deterministic_and_consistent() -> None:
    started = time.perf_counter()
    data = synthetic_edfi(2000)
    elapsed = time.perf_counter() - started
    assert data == synthetic_edfi(2000) and data != synthetic_edfi(2000, seed=8)
    print(
        f"\nsynthetic_edfi(2000) in {elapsed:.2f}s: "
        + ", ".join(f"{k}={len(v)}" for k, v in data.items())
    )
    assert duplicate_keys(data) == {}
    n = len(data["students"])
    assert n == len(data["studentSchoolAssociations"]) == 2000
    assert 2.5 <= len(data["studentSchoolAttendanceEvents"]) / n <= 3.5
    assert 1.0 <= len(data["studentContactAssociations"]) / n <= 2.0
    assert data["disciplineActions"] and data["calendarDates"]
    students = {s["studentUniqueId"] for s in data["students"]}
    contacts = {c["contactUniqueId"] for c in data["contacts"]}
    assert all(
        a["contactReference"]["contactUniqueId"] in contacts
        for a in data["studentContactAssociations"]
    )
    assert all(
        e["studentReference"]["studentUniqueId"] in students
        for e in data["studentSchoolAttendanceEvents"]
    )
    schools = {s["schoolId"] for s in data["schools"]}
    assert {d["calendarReference"]["schoolId"] for d in data["calendarDates"]} == schools
    phones = [t for c in data["contacts"] for t in c["telephones"]]
    assert any(t["textMessageCapabilityIndicator"] for t in phones)
    assert any(t["doNotPublishIndicator"] for t in phones)
    assert any(a.get("contactRestrictions") for a in data["studentContactAssociations"])
    assert {c["languages"][0]["languageDescriptor"].rsplit("#")[-1] for c in data["contacts"]} >= {
        "eng",
        "spa",
    }
