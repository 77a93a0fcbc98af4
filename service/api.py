"""The Flask app factory. Later issues add referral intake, webhooks and reports here."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from sqlalchemy import Engine, text

from service import logging as cb_logging
from service import tool_webhooks
from service.config import Settings, load_settings
from service.pipeline import open_engine


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> Flask:
    settings = settings or load_settings()
    engine = engine or open_engine(settings)  # exactly as the CLI builds it
    app = Flask("casebridge")
    app.config["CASEBRIDGE_SETTINGS"] = settings
    app.config["CASEBRIDGE_ENGINE"] = engine
    cb_logging.bind_requests(app)  # a run_id per request on every log line
    from service.webhooks import blueprint as families  # Twilio webhooks, email unsubscribe

    app.register_blueprint(families)
    app.register_blueprint(tool_webhooks.bp)  # staff tools report task status back

    @app.get("/healthz")
    def healthz() -> Any:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except Exception as exc:  # any database failure means unhealthy, whatever its type
            return jsonify(
                status="unhealthy", database="unreachable", error=type(exc).__name__
            ), 503
        return jsonify(status="ok", database="ok", schema=version)

    @app.get("/readyz")
    def readyz() -> Any:
        """Ready to serve: the database answers at the code's schema, and, when a scheduler has
        ever led, its heartbeat is fresh (a stale one means nobody fires the schedules)."""
        from service.readiness import readiness

        ready, checks = readiness(engine, settings)
        return jsonify(status="ready" if ready else "not ready", checks=checks), (
            200 if ready else 503
        )

    return app
