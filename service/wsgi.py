"""WSGI entry point for gunicorn: `gunicorn service.wsgi:app` (config from CASEBRIDGE_CONFIG)."""

from __future__ import annotations

from service.api import create_app
from service.config import load_settings
from service.pipeline import open_engine

_settings = load_settings()
app = create_app(_settings, open_engine(_settings))
