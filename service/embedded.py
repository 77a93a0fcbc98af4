"""`casebridge all-in-one`: the API, an outbox worker and the scheduler in one process.

The embedded default for a small district or an evaluation, on SQLite (PostgreSQL works too).
gunicorn cannot share a process: its master forks the workers and owns the signals. So the API
runs on Werkzeug's threaded WSGI server, which Flask already depends on, in a thread beside the
worker loop and the scheduler. Werkzeug's server stops cleanly from another thread (the stdlib
`socketserver` shutdown), which waitress, the other pure-Python candidate, offers no supported
way to do. What it lacks (buffering slow clients, a connection cap) is why it belongs behind a
reverse proxy, and why a busy district runs `serve` on PostgreSQL instead (docs/deploying.md).

SIGTERM or SIGINT stops all three: the server stops accepting and lets requests in flight
finish, the worker finishes its item and gives back the rest of its batch, the scheduler stops
firing. Any of the three failing stops the other two, and the process exits 1 for its
supervisor to restart it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import structlog
from flask import Flask
from sqlalchemy import Engine
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler

from jobs.scheduler import Scheduler
from service.config import Settings
from service.http_logs import access_line
from service.roles import WorkerLoop, exit_unless_stopped_by, stop_on_signals, stop_scheduler

log = structlog.get_logger(__name__)

# Requests served at once; more wait in the listen queue instead of starting more threads.
MAX_REQUEST_THREADS = 16


class _RequestHandler(WSGIRequestHandler):
    # An idle keep-alive connection is closed after this long, so a stop is never held up by it.
    timeout = 10
    access_log_json = True

    def handle_one_request(self) -> None:
        self._started = time.perf_counter()
        self._status: int | None = None
        self._size: int | None = None
        super().handle_one_request()
        if self._status is not None and self.access_log_json:
            sys.stdout.write(
                access_line(
                    method=self.command or "-",
                    path=urlsplit(self.path or "").path,
                    status=self._status,
                    size=self._size,
                    duration_ms=(time.perf_counter() - self._started) * 1000,
                    remote=self.client_address[0] if self.client_address else None,
                    user_agent=self.headers.get("User-Agent") if self.headers else None,
                )
                + "\n"
            )
            sys.stdout.flush()

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "content-length" and str(value).isdigit():
            self._size = int(value)
        super().send_header(keyword, value)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Written by handle_one_request once the response is complete, with its duration."""

    def log_error(self, format: str, *args: Any) -> None:
        if format.startswith("Request timed out"):  # an idle keep-alive connection let go
            return
        super().log_error(format, *args)


class EmbeddedHTTPServer(ThreadedWSGIServer):
    """Werkzeug's threaded server with a cap on request threads, which are not daemons: a
    request in flight at a stop finishes before the process exits."""

    daemon_threads = False
    block_on_close = False  # the stop waits for them with a deadline instead (AllInOne)

    def __init__(self, host: str, port: int, app: Flask, access_log: str) -> None:
        handler = type("Handler", (_RequestHandler,), {"access_log_json": access_log == "json"})
        super().__init__(host, port, app, handler)
        self._slots = threading.BoundedSemaphore(MAX_REQUEST_THREADS)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


@dataclass
class _Role:
    name: str
    target: Callable[[], None]
    thread: threading.Thread = field(init=False)


@dataclass
class AllInOne:
    engine: Engine
    settings: Settings
    app: Flask
    host: str
    port: int
    access_log: str = "json"
    shutdown_timeout: float = 25.0
    stop: threading.Event = field(default_factory=threading.Event)
    failed: list[str] = field(default_factory=list)

    def run(self, announce: Callable[[str], None]) -> int:
        """Serve until stopped; 0 after a clean stop, 1 when a role failed or would not stop."""
        server = EmbeddedHTTPServer(self.host, self.port, self.app, self.access_log)
        scheduler = Scheduler(self.engine, self.settings, dispatch=False)  # the worker delivers
        worker = WorkerLoop(
            self.engine, self.settings, self.settings.schedules.dispatch_interval_seconds,
            self.stop,
        )  # fmt: skip
        roles = [
            _Role("api", server.serve_forever),
            _Role("worker", worker.run),
            _Role("scheduler", scheduler.run),
        ]
        stop_on_signals(self.stop)
        for role in roles:
            role.thread = threading.Thread(
                target=self._guard, args=(role,), name=f"casebridge-{role.name}"
            )
            role.thread.start()
        announce(f"http://{self.host}:{server.port}")
        while not self.stop.wait(0.5):
            pass

        deadline = time.monotonic() + self.shutdown_timeout
        by_name = {role.name: role for role in roles}
        if by_name["api"].thread.is_alive():
            server.shutdown()  # stops accepting; requests in flight go on in their threads
        stop_scheduler(scheduler, by_name["scheduler"].thread, deadline)
        # The roles, requests in flight and a scheduled job still running (APScheduler's pool).
        exit_unless_stopped_by(deadline, "casebridge all-in-one")
        self.engine.dispose()
        if self.failed:
            print(f"casebridge all-in-one: {', '.join(self.failed)} failed", file=sys.stderr)
            return 1
        return 0

    def _guard(self, role: _Role) -> None:
        """Run a role; whatever way it ends, the others stop too."""
        try:
            role.target()
            if not self.stop.is_set():
                self.failed.append(role.name)
                log.error("all_in_one.role_ended", role=role.name)
        except BaseException as exc:
            self.failed.append(role.name)
            log.exception("all_in_one.role_failed", role=role.name, error=type(exc).__name__)
        finally:
            self.stop.set()
