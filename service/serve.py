"""`casebridge serve`: the HTTP API under gunicorn, started from Python.

The app is built once in the gunicorn master before any worker forks, so a bad configuration or a
database behind the code stops the command with the CLI's own message instead of N workers
crashing in a loop. The master then closes its database connections; each worker opens its own
(a connection shared across a fork is corrupted by the first process that uses it).
`service/wsgi.py` stays the entry point for other WSGI servers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger
from sqlalchemy import Engine

from service.http_logs import access_line


class JsonAccessLogger(Logger):  # gunicorn ships no type hints: Logger is Any
    """gunicorn's logger with the access log as JSON lines (service/http_logs.py)."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        self.access_log.info(
            access_line(
                method=environ.get("REQUEST_METHOD", "-"),
                path=environ.get("PATH_INFO", ""),
                status=resp.status,
                size=getattr(resp, "sent", None),
                duration_ms=request_time.total_seconds() * 1000,
                remote=environ.get("REMOTE_ADDR"),
                user_agent=environ.get("HTTP_USER_AGENT"),
            )
        )


@dataclass(frozen=True)
class ServeOptions:
    bind: tuple[str, ...]
    workers: int
    threads: int
    timeout: int
    graceful_timeout: int
    keep_alive: int
    access_log: str  # "json" or "off"


def gunicorn_settings(options: ServeOptions, engine: Engine) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "bind": list(options.bind),
        "workers": options.workers,
        "threads": options.threads,  # more than 1 makes gunicorn use its gthread worker
        "timeout": options.timeout,
        "graceful_timeout": options.graceful_timeout,
        "keepalive": options.keep_alive,
        "preload_app": True,
        "proc_name": "casebridge-api",
        "errorlog": "-",
        # The runtime control socket (gunicornc) is not needed and wants a writable $HOME.
        "control_socket_disable": True,
        "post_fork": lambda _server, _worker: engine.dispose(close=False),
    }
    if options.access_log == "json":
        settings.update(accesslog="-", logger_class=JsonAccessLogger)
    else:
        settings["accesslog"] = None
    if os.path.isdir("/dev/shm"):
        # Worker heartbeats on tmpfs: a container's overlay /tmp can stall them (gunicorn docs).
        settings["worker_tmp_dir"] = "/dev/shm"
    return settings


class GunicornServer(BaseApplication):
    def __init__(self, app: Flask, settings: dict[str, Any]) -> None:
        self.application = app
        self.settings = settings
        super().__init__(prog="casebridge serve")

    def load_config(self) -> None:
        for key, value in self.settings.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.application


def serve(app: Flask, engine: Engine, options: ServeOptions) -> None:
    """Run gunicorn until it is stopped (SIGTERM or SIGINT: workers finish their requests)."""
    settings = gunicorn_settings(options, engine)
    engine.dispose()  # the master never queries again; workers connect after the fork
    GunicornServer(app, settings).run()
