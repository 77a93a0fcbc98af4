"""WSGI entry point for gunicorn: `gunicorn service.wsgi:app` (config from CASEBRIDGE_CONFIG)."""

from __future__ import annotations

import os

from service import logging as cb_logging
from service.api import create_app
from service.config import load_settings
from service.pipeline import open_engine

# The API is a service role: JSON lines unless CASEBRIDGE_LOG_JSON=false.
cb_logging.configure(
    os.environ.get("CASEBRIDGE_LOG_LEVEL", "INFO"),
    os.environ.get("CASEBRIDGE_LOG_JSON", "true").lower() not in ("0", "false", "no", "off"),
)
_settings = load_settings()
app = create_app(_settings, open_engine(_settings))
