"""What a request handler reads from the app: the settings and the engine it was built with."""

from __future__ import annotations

from typing import cast

from flask import current_app
from sqlalchemy import Engine

from service.config import Settings


def settings() -> Settings:
    return cast(Settings, current_app.config["CASEBRIDGE_SETTINGS"])


def engine() -> Engine:
    return cast(Engine, current_app.config["CASEBRIDGE_ENGINE"])
