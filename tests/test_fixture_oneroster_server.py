"""The OneRoster test server itself: shapes, auth, paging, delta filters, faults.

Connector tests lean on this fixture, so it has to be right on the wire before it can be
trusted to judge a client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from requests_oauthlib import OAuth1

from tests.fixtures.http_server import Fault
from tests.fixtures.oneroster_server import (
    SCOPE_GRADEBOOK,
    SCOPE_ROSTER_CORE,
    OneRosterServer,
    load_from_csv,
)
from tools.synthetic import generate_district

TIMEOUT = 5
WATERMARK = "2026-11-19T02:00:00Z"  # dateLastModified of every synthetic row (as_of - 1 day)
LATER = "2026-12-01T08:30:00.250Z"


@pytest.fixture(scope="module")
def district(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("or")
    out = {}
    for version in ("1.1", "1.2"):
        generate_district(root / version, students=30, seed=11, oneroster_version=version)
        out[version] = root / version / "oneroster"
    return out


@pytest.fixture(scope="module")
def records12(district: dict[str, Path]) -> dict[str, list[dict]]:
    return load_from_csv(district["1.2"], "1.2")


@pytest.fixture(scope="module")
def records11(district: dict[str, Path]) -> dict[str, list[dict]]:
    return load_from_csv(district["1.1"], "1.1")


@pytest.fixture
def make_server() -> Iterator[Any]:
    started: list[OneRosterServer] = []

    def make(records: dict[str, list[dict]], **kwargs: Any) -> OneRosterServer:
        server = OneRosterServer(records, **kwargs)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def token(server: OneRosterServer, *scopes: str) -> str:
    resp = requests.post(
        f"{server.base_url}/token",
        data={"grant_type": "client_credentials", "scope": " ".join(scopes)},
        auth=("cid", "csecret"),
        timeout=TIMEOUT,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# -- CSV -> JSON -----------------------------------------------------------------------------


def test_v12_user_shapes(records12: dict[str, list[dict]]) -> None:
    users = {u["sourcedId"]: u for u in records12["users"]}
    student = records12["students"][0]
    assert student["roles"][0]["roleType"] == "primary"
    assert student["roles"][0]["role"] == "student"
    assert student["roles"][0]["org"]["type"] == "org"
    assert student["primaryOrg"]["sourcedId"] == student["roles"][0]["org"]["sourcedId"]
    assert student["userIds"] == [{"type": "SIS", "identifier": student["identifier"]}]
    assert student["metadata"] == {
        "language": student["metadata"]["language"],
        "doNotContact": "false",
    }
    assert student["enabledUser"] is True and student["grades"]
    assert "role" not in student and "orgs" not in student
    guardian = users[student["agents"][0]["sourcedId"]]
    assert guardian["roles"][0]["role"] in {"parent", "guardian"}
    assert {"sourcedId": student["sourcedId"], "type": "user"}.items() <= guardian["agents"][
        0
    ].items()
    for key in ("sourcedId", "status", "dateLastModified", "email", "sms", "phone", "givenName"):
        assert key in guardian
    assert {t["sourcedId"] for t in records12["teachers"]} <= set(users)
    result = records12["results"][0]
    assert isinstance(result["score"], float)
    assert result["lineItem"]["href"].startswith("/ims/oneroster/gradebook/v1p2/lineItems/")
    assert result["student"]["type"] == "user"
    enrollment = records12["enrollments"][0]
    assert {"user", "class", "school"} <= enrollment.keys()
    assert isinstance(enrollment["primary"], bool)
    klass = records12["classes"][0]
    assert klass["course"]["type"] == "course" and klass["terms"][0]["type"] == "academicSession"
    assert {o["type"] for o in records12["schools"]} == {"school"}
    assert {s["type"] for s in records12["gradingPeriods"]} == {"gradingPeriod"}


def test_v11_user_shapes(records11: dict[str, list[dict]]) -> None:
    student = records11["students"][0]
    assert student["role"] == "student"
    assert student["orgs"][0]["href"].startswith("/ims/oneroster/v1p1/orgs/")
    assert "roles" not in student and "primaryOrg" not in student
    assert student["enabledUser"] == "true"  # 1.1 vendors send strings
    assert student["agents"] and student["metadata"]["doNotContact"] == "false"


# -- OAuth 1.0a ------------------------------------------------------------------------------


def test_oauth1_signed_request_passes_and_tampering_fails(
    make_server: Any, records11: dict[str, list[dict]]
) -> None:
    server = make_server(records11, version="1.1", auth="oauth1")
    url = server.url("users")
    good = OAuth1("cid", "csecret", signature_method="HMAC-SHA256", signature_type="AUTH_HEADER")
    params = {"filter": "status='active' AND dateLastModified>='2026-01-01T00:00:00Z'", "limit": 5}
    resp = requests.get(url, params=params, auth=good, timeout=TIMEOUT)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["users"]) == 5

    wrong_secret = OAuth1("cid", "nope", signature_method="HMAC-SHA256")
    assert requests.get(url, auth=wrong_secret, timeout=TIMEOUT).status_code == 401
    wrong_key = OAuth1("other", "csecret", signature_method="HMAC-SHA256")
    assert requests.get(url, auth=wrong_key, timeout=TIMEOUT).status_code == 401
    assert requests.get(url, timeout=TIMEOUT).status_code == 401
    sha1 = OAuth1("cid", "csecret")  # HMAC-SHA1 is not what OneRoster 1.1 asks for
    assert requests.get(url, auth=sha1, timeout=TIMEOUT).status_code == 401

    # Sign one query, send another.
    prepared = requests.Request("GET", url, params={"limit": 5}, auth=good).prepare()
    assert prepared.url is not None
    prepared.url = prepared.url.replace("limit=5", "limit=50")
    with requests.Session() as session:
        resp = session.send(prepared, timeout=TIMEOUT)
    assert resp.status_code == 401
    assert resp.json()["imsx_description"] == "invalid signature"


def test_oauth1_rejects_stale_timestamp_and_replayed_nonce(
    make_server: Any, records11: dict[str, list[dict]]
) -> None:
    server = make_server(records11, version="1.1", auth="oauth1")
    url = server.url("orgs")
    stale = OAuth1(
        "cid", "csecret", signature_method="HMAC-SHA256", timestamp=str(int(time.time()) - 301)
    )
    resp = requests.get(url, auth=stale, timeout=TIMEOUT)
    assert resp.status_code == 401 and "timestamp" in resp.json()["imsx_description"]

    fixed = OAuth1("cid", "csecret", signature_method="HMAC-SHA256", nonce="n0nce-42")
    assert requests.get(url, auth=fixed, timeout=TIMEOUT).status_code == 200
    replay = requests.get(url, auth=fixed, timeout=TIMEOUT)
    assert replay.status_code == 401 and "nonce" in replay.json()["imsx_description"]


# -- OAuth2 ----------------------------------------------------------------------------------


def test_oauth2_scopes_split_rostering_from_gradebook(
    make_server: Any, records12: dict[str, list[dict]]
) -> None:
    server = make_server(records12)
    roster = token(server, SCOPE_ROSTER_CORE)
    assert requests.get(server.url("users"), headers=bearer(roster), timeout=TIMEOUT).ok
    assert server.url("results").endswith("/ims/oneroster/gradebook/v1p2/results")
    denied = requests.get(server.url("results"), headers=bearer(roster), timeout=TIMEOUT)
    assert denied.status_code == 403
    assert denied.json()["imsx_codeMajor"] == "failure"
    assert denied.json()["imsx_severity"] == "error"
    assert "gradebook.readonly" in denied.json()["imsx_description"]

    grades = token(server, SCOPE_GRADEBOOK)
    assert requests.get(server.url("results"), headers=bearer(grades), timeout=TIMEOUT).ok
    assert (
        requests.get(server.url("classes"), headers=bearer(grades), timeout=TIMEOUT).status_code
        == 403
    )
    # Rostering paths do not serve gradebook collections and vice versa.
    wrong = server.base_url + "/ims/oneroster/rostering/v1p2/results"
    assert requests.get(wrong, headers=bearer(grades), timeout=TIMEOUT).status_code == 404
    assert server.token_requests == 2


def test_oauth2_token_errors_expiry_and_form_credentials(
    make_server: Any, records12: dict[str, list[dict]]
) -> None:
    server = make_server(records12, grantable_scopes=[SCOPE_ROSTER_CORE])
    token_url = f"{server.base_url}/token"
    bad = requests.post(
        token_url, data={"grant_type": "client_credentials"}, auth=("cid", "x"), timeout=TIMEOUT
    )
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    form = requests.post(
        token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": "cid",
            "client_secret": "csecret",
            "scope": f"{SCOPE_ROSTER_CORE} {SCOPE_GRADEBOOK}",
        },
        timeout=TIMEOUT,
    )
    assert form.status_code == 200
    assert form.json()["scope"] == SCOPE_ROSTER_CORE  # gradebook is not grantable here
    assert form.json()["token_type"] == "bearer" and form.json()["expires_in"] == 3600
    access = form.json()["access_token"]
    url = server.url("students")
    assert requests.get(url, headers=bearer(access), timeout=TIMEOUT).ok
    assert requests.get(url, timeout=TIMEOUT).status_code == 401
    server.expire_tokens()
    expired = requests.get(url, headers=bearer(access), timeout=TIMEOUT)
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
    assert server.token_requests == 2

    short = make_server(records12, token_ttl=0.2)
    quick = token(short, SCOPE_ROSTER_CORE)
    time.sleep(0.3)
    assert (
        requests.get(short.url("users"), headers=bearer(quick), timeout=TIMEOUT).status_code == 401
    )


# -- paging, filter, sort, fields --------------------------------------------------------------


def test_paging_walks_every_user_once(make_server: Any, records12: dict[str, list[dict]]) -> None:
    server = make_server(records12, scopes_required=False)
    headers = bearer(token(server))
    seen: list[str] = []
    url: str | None = server.url("users") + "?limit=7"
    pages = 0
    while url:
        resp = requests.get(url, headers=headers, timeout=TIMEOUT)
        assert resp.status_code == 200
        assert int(resp.headers["X-Total-Count"]) == len(records12["users"])
        seen += [u["sourcedId"] for u in resp.json()["users"]]
        url = resp.links.get("next", {}).get("url")
        if url:
            assert 'rel="last"' in resp.headers["Link"]
        pages += 1
    assert seen == sorted(u["sourcedId"] for u in records12["users"])
    assert pages == -(-len(records12["users"]) // 7)

    default = requests.get(server.url("enrollments"), headers=headers, timeout=TIMEOUT)
    assert len(default.json()["enrollments"]) == 100  # default limit
    assert "offset=100" in default.links["next"]["url"]


def test_delta_filter_sees_updates_and_tobedeleted(
    make_server: Any, records12: dict[str, list[dict]]
) -> None:
    server = make_server(records12)
    headers = bearer(token(server, SCOPE_ROSTER_CORE))
    student, teacher = records12["students"][3]["sourcedId"], records12["teachers"][0]["sourcedId"]
    server.update("students", student, when=LATER, givenName="Renamed")
    server.mark_deleted("teachers", teacher, when="2026-12-02T00:00:00Z")
    delta = {"filter": f"dateLastModified>'{WATERMARK}'"}

    resp = requests.get(server.url("users"), params=delta, headers=headers, timeout=TIMEOUT)
    users = {u["sourcedId"]: u for u in resp.json()["users"]}
    assert set(users) == {student, teacher}
    assert resp.headers["X-Total-Count"] == "2"
    assert users[student]["givenName"] == "Renamed"
    assert users[student]["dateLastModified"] == LATER
    assert users[teacher]["status"] == "tobedeleted"
    # The views stay consistent with users.
    resp = requests.get(server.url("students", student), headers=headers, timeout=TIMEOUT)
    assert resp.json()["user"]["givenName"] == "Renamed"
    resp = requests.get(server.url("teachers"), params=delta, headers=headers, timeout=TIMEOUT)
    assert [u["sourcedId"] for u in resp.json()["users"]] == [teacher]

    both = {"filter": f"dateLastModified>'{WATERMARK}' AND status='active'"}
    resp = requests.get(server.url("users"), params=both, headers=headers, timeout=TIMEOUT)
    assert [u["sourcedId"] for u in resp.json()["users"]] == [student]
    # Fractional seconds compare as time, not as text.
    after = {"filter": "dateLastModified>'2026-12-01T08:30:00Z'"}
    resp = requests.get(server.url("students"), params=after, headers=headers, timeout=TIMEOUT)
    assert [u["sourcedId"] for u in resp.json()["users"]] == [student]

    added = server.add("students", {"sourcedId": "zz-new", "givenName": "New"}, when=LATER)
    assert added["roles"][0]["role"] == "student"
    resp = requests.get(server.url("students"), params=delta, headers=headers, timeout=TIMEOUT)
    assert {u["sourcedId"] for u in resp.json()["users"]} == {student, "zz-new"}


def test_sort_fields_and_bad_queries(make_server: Any, records12: dict[str, list[dict]]) -> None:
    server = make_server(records12)
    headers = bearer(token(server, SCOPE_ROSTER_CORE))
    url = server.url("users")
    params = {
        "sort": "familyName",
        "orderBy": "desc",
        "fields": "sourcedId,familyName",
        "limit": 500,
    }
    users = requests.get(url, params=params, headers=headers, timeout=TIMEOUT).json()["users"]
    assert [u["familyName"] for u in users] == sorted(
        (u["familyName"] for u in users), reverse=True
    )
    assert all(set(u) == {"sourcedId", "familyName"} for u in users)

    # 1.2 users have no `role`; a dotted path reaches into roles[] and matches any element.
    params = {"filter": "role='student'"}
    assert requests.get(url, params=params, headers=headers, timeout=TIMEOUT).status_code == 400
    params = {"filter": "roles.role='student' OR roles.role='teacher'", "limit": 500}
    got = requests.get(url, params=params, headers=headers, timeout=TIMEOUT).json()["users"]
    assert len(got) == len(records12["students"]) + len(records12["teachers"])

    for bad in ("dateLastModified>2026-01-01", "status='active' AND", "status=='x'", "nope='x'"):
        resp = requests.get(url, params={"filter": bad}, headers=headers, timeout=TIMEOUT)
        assert resp.status_code == 400, bad
        assert resp.json()["imsx_codeMajor"] == "failure"
    assert (
        requests.get(url, params={"limit": "x"}, headers=headers, timeout=TIMEOUT).status_code
        == 400
    )
    missing = requests.get(server.url("users", "no-such-id"), headers=headers, timeout=TIMEOUT)
    assert missing.status_code == 404 and missing.json()["imsx_severity"] == "error"
    one = requests.get(server.url("users", users[0]["sourcedId"]), headers=headers, timeout=TIMEOUT)
    assert one.json()["user"]["primaryOrg"]["href"].startswith(server.base_url + "/ims/oneroster/")


# -- faults ----------------------------------------------------------------------------------


def test_faults_from_the_base_server(make_server: Any, records12: dict[str, list[dict]]) -> None:
    server = make_server(records12, page_delay=0.01)
    headers = bearer(token(server, SCOPE_ROSTER_CORE))
    url = server.url("users")
    server.faults += [
        Fault("/users", status=429, retry_after=3),
        Fault("/users", status=503),
        Fault("/users", kind="html"),
        Fault("/users", kind="truncated"),
    ]
    limited = requests.get(url, headers=headers, timeout=TIMEOUT)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert requests.get(url, headers=headers, timeout=TIMEOUT).status_code == 503
    html = requests.get(url, headers=headers, timeout=TIMEOUT)
    assert html.status_code == 200 and html.headers["Content-Type"] == "text/html"
    truncated = requests.get(url, headers=headers, timeout=TIMEOUT)
    with pytest.raises(requests.JSONDecodeError):
        truncated.json()
    server.faults.append(Fault("/users", kind="drop"))
    with pytest.raises(requests.ConnectionError):
        requests.get(url, headers=headers, timeout=TIMEOUT)
    assert requests.get(url, headers=headers, timeout=TIMEOUT).ok
    assert [r.status for r in server.requests if r.path.endswith("/users")] == [
        429, 503, 200, 200, -1, 200,
    ]  # fmt: skip


def test_v12_data_on_a_v1p1_base_path(make_server: Any, records12: dict[str, list[dict]]) -> None:
    server = make_server(records12, base_path="/ims/oneroster/v1p1", scopes_required=False)
    resp = requests.get(
        server.base_url + "/ims/oneroster/v1p1/results",
        params={"limit": 1},
        headers=bearer(token(server)),
        timeout=TIMEOUT,
    )
    result = resp.json()["results"][0]
    assert result["lineItem"]["href"].startswith(server.base_url + "/ims/oneroster/v1p1/lineItems/")
