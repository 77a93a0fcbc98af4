"""What a caller of the API sees: tokens and scopes, problem+json errors, the OpenAPI page,
no CORS unless configured, and tokens managed from the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import raw_config_for, settings_for
from flask import Flask
from sqlalchemy import Engine, text

from service.api import create_app
from service.api.auth import create_token, requires, revoke_token
from service.api.problems import PROBLEM_JSON
from service.cli import main
from tests.test_outbox import write


@pytest.fixture
def app(engine: Engine, db_url: str, tmp_path: Path) -> Flask:
    app = create_app(settings_for(db_url, tmp_path / "data", tmp_path / "out"), engine)

    # A route for each scope, so the guard is tested apart from what the real routes do.
    for scope in ("cases:read", "cases:write", "referrals:create", "admin"):

        @requires(scope)
        def probe(scope: str = scope) -> Any:
            return {"ok": scope}

        app.add_url_rule(f"/_probe/{scope}", f"probe_{scope}", probe)
    return app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_token_is_401_problem_json_with_a_challenge(app: Flask) -> None:
    response = app.test_client().get("/_probe/cases:read")

    assert response.status_code == 401
    assert response.mimetype == PROBLEM_JSON
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.get_json()
    assert body["status"] == 401 and body["title"] == "Unauthorized"
    assert "Bearer" in body["detail"]


def test_each_scope_opens_its_own_routes_and_admin_opens_all(app: Flask, engine: Engine) -> None:
    client = app.test_client()
    _, reader = create_token(engine, "reader", ["cases:read"])
    _, admin = create_token(engine, "it", ["admin"])

    assert client.get("/_probe/cases:read", headers=bearer(reader)).status_code == 200
    for scope in ("cases:write", "referrals:create", "admin"):
        denied = client.get(f"/_probe/{scope}", headers=bearer(reader))
        assert denied.status_code == 403, scope
        assert denied.mimetype == PROBLEM_JSON
        assert scope in denied.get_json()["detail"]
        assert client.get(f"/_probe/{scope}", headers=bearer(admin)).status_code == 200


def test_revoked_wrong_and_expired_tokens_all_get_the_same_401(app: Flask, engine: Engine) -> None:
    client = app.test_client()
    token_id, token = create_token(engine, "form", ["referrals:create"])
    _, expired = create_token(engine, "old", ["referrals:create"])
    with engine.begin() as conn:
        conn.execute(text("UPDATE api_tokens SET expires_at = '2000-01-01' WHERE name = 'old'"))
    assert client.get("/_probe/referrals:create", headers=bearer(token)).status_code == 200

    assert revoke_token(engine, token_id)
    answers = [
        client.get("/_probe/referrals:create", headers=bearer(t))
        for t in (token, expired, token[:-2] + "xx", "not-a-token")
    ]
    assert [r.status_code for r in answers] == [401] * 4
    assert len({r.get_data() for r in answers}) == 1  # nothing tells one case from another


def test_the_token_itself_is_not_stored(engine: Engine) -> None:
    _, token = create_token(engine, "form", ["referrals:create"])
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM api_tokens")).mappings().all()
    assert token not in repr(rows)
    assert token[len("cbt_") :] not in repr(rows)


def test_openapi_31_is_served_with_security_and_problem_responses(app: Flask) -> None:
    client = app.test_client()
    spec = client.get("/openapi.json").get_json()

    assert spec["openapi"].startswith("3.1")
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "Problem" in spec["components"]["schemas"]
    assert "/healthz" in spec["paths"]
    page = client.get("/docs/swagger")
    assert page.status_code == 200 and b"swagger" in page.data.lower()


def test_unknown_route_and_wrong_method_are_problem_json(app: Flask) -> None:
    client = app.test_client()
    missing = client.get("/no-such-thing")
    assert missing.status_code == 404 and missing.mimetype == PROBLEM_JSON
    wrong = client.delete("/healthz")
    assert wrong.status_code == 405 and wrong.mimetype == PROBLEM_JSON


def test_a_crash_is_a_500_problem_without_a_stack_trace(app: Flask) -> None:
    def boom() -> Any:
        raise RuntimeError("SELECT * FROM students WHERE name = 'Lucía Gómez'")

    app.add_url_rule("/_boom", "boom", boom)
    response = app.test_client().get("/_boom")

    assert response.status_code == 500 and response.mimetype == PROBLEM_JSON
    text_ = response.get_data(as_text=True)
    assert "Traceback" not in text_ and "Lucía" not in text_ and "SELECT" not in text_


def test_cors_is_off_by_default_and_on_for_listed_origins_only(
    engine: Engine, db_url: str, tmp_path: Path
) -> None:
    preflight = {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization",
    }
    off = create_app(settings_for(db_url, tmp_path / "d", tmp_path / "o"), engine).test_client()
    assert "Access-Control-Allow-Origin" not in off.options("/healthz", headers=preflight).headers
    assert "Access-Control-Allow-Origin" not in off.get("/healthz", headers=preflight).headers

    listed = settings_for(
        db_url, tmp_path / "d", tmp_path / "o", api={"cors_origins": ["https://forms.district.org"]}
    )
    on = create_app(listed, engine).test_client()
    allowed = on.get("/healthz", headers={"Origin": "https://forms.district.org"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://forms.district.org"
    assert "Access-Control-Allow-Origin" not in on.get("/healthz", headers=preflight).headers


def test_token_cli_creates_lists_and_revokes(db_url: str, tmp_path: Path) -> None:
    config = write(tmp_path / "district.yaml", raw_config_for(db_url, tmp_path / "data", tmp_path))
    runner = CliRunner()

    created = runner.invoke(
        main, ["--config", str(config), "token", "create", "--name", "referral form",
               "--scope", "referrals:create", "--school", "sch-1"],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[-1]
    assert token.startswith("cbt_")

    listed = runner.invoke(main, ["--config", str(config), "token", "list"])
    assert "referral form" in listed.output and "sch-1" in listed.output
    assert token not in listed.output

    assert runner.invoke(main, ["--config", str(config), "token", "revoke", "1"]).exit_code == 0
    again = runner.invoke(main, ["--config", str(config), "token", "revoke", "1"])
    assert again.exit_code == 2 and "No active token 1" in again.output
    bad = runner.invoke(
        main, ["--config", str(config), "token", "create", "--name", "x", "--scope", "root"]
    )
    assert bad.exit_code == 2 and "root" in bad.output
