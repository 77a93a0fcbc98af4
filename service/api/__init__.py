"""The Flask app factory: an OpenAPI 3.1 description generated from the routes' pydantic models
(flask-openapi3), problem+json errors, bearer tokens with scopes, rate limits, no CORS unless
origins are listed.

Why flask-openapi3: the configuration is already pydantic, so request and response schemas are
the same kind of model, validated on the way in, and it writes OpenAPI 3.1 (APIFlask and
flask-smorest would add marshmallow beside pydantic; spectree needs more glue per route).
"""

from __future__ import annotations

from typing import Any

from flask import jsonify
from flask_openapi3 import Info, OpenAPI
from pydantic import BaseModel
from sqlalchemy import Engine, text

from service import logging as cb_logging
from service import tool_webhooks
from service.api import problems
from service.api.limits import limiter
from service.config import Settings, load_settings
from service.pipeline import open_engine

API_VERSION = "1"


class Health(BaseModel):
    status: str
    database: str
    schema_revision: str | None = None
    error: str | None = None


class Readiness(BaseModel):
    status: str
    checks: dict[str, Any]


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> OpenAPI:
    settings = settings or load_settings()
    engine = engine or open_engine(settings)  # exactly as the CLI builds it
    app = OpenAPI(
        "casebridge",
        info=Info(
            title="casebridge",
            version=API_VERSION,
            description="Person-based referrals, cases, resources, the outbox and job runs of "
            "one district. Send `Authorization: Bearer <token>` (see `casebridge token create`).",
        ),
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        validation_error_status=422,
        validation_error_model=problems.Problem,
        validation_error_callback=problems.validation_problem,
        doc_prefix="/docs",  # the browsable page: /docs/swagger
        doc_url="/openapi.json",
    )
    app.config["CASEBRIDGE_SETTINGS"] = settings
    app.config["CASEBRIDGE_ENGINE"] = engine
    app.config["RATELIMIT_STORAGE_URI"] = settings.api.rate_limit_storage
    app.json.sort_keys = False  # type: ignore[attr-defined]
    cb_logging.bind_requests(app)  # a run_id per request on every log line
    problems.install(app)
    from service.api.auth import token_before_input

    token_before_input(app)  # before the limiter's hook and before input validation
    limiter.init_app(app)
    if settings.api.cors_origins:
        from flask_cors import CORS

        CORS(app, origins=settings.api.cors_origins)

    from service.webhooks import blueprint as families  # Twilio webhooks, email unsubscribe

    # Webhook routes check their own signatures; they are not part of the token-guarded API.
    app.register_blueprint(families)
    app.register_blueprint(tool_webhooks.bp)  # staff tools report task status back

    from service.api.referrals import api as referrals_api

    app.register_api(referrals_api)

    # The token-guarded API beyond referrals (issue 10): one blueprint per area.
    from service.api import cases, jobs, outbox, resources, sync

    for area in (cases, resources, outbox, sync, jobs):
        app.register_api(area.bp)
    if settings.api.metrics_path:
        from service.api import metrics

        metrics.install(app, engine, settings.api.metrics_path)

    @app.get("/openapi.json", doc_ui=False)
    def openapi_json() -> Any:
        from service.api.referrals import district_concerns

        doc = app.api_doc
        district_concerns(doc, settings.referrals.concerns)
        return jsonify(doc)

    @app.get("/healthz", responses={200: Health, 503: Health}, summary="The process is alive")
    def healthz() -> Any:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except Exception as exc:  # any database failure means unhealthy, whatever its type
            return jsonify(
                status="unhealthy", database="unreachable", error=type(exc).__name__
            ), 503
        return jsonify(status="ok", database="ok", schema_revision=version)

    @app.get("/readyz", responses={200: Readiness, 503: Readiness}, summary="Ready to serve")
    def readyz() -> Any:
        """Ready to serve: the database answers at the code's schema, and, when a scheduler has
        ever led, its heartbeat is fresh (a stale one means nobody fires the schedules)."""
        from service.readiness import readiness

        ready, checks = readiness(engine, settings)
        return jsonify(status="ready" if ready else "not ready", checks=checks), (
            200 if ready else 503
        )

    return app
