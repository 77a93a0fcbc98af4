"""One JSON line per HTTP request, the same from gunicorn (`serve`) and the embedded server.

Some paths carry a secret meant for one family (the unsubscribe link, the resource page), so a
long token-like path segment is logged as `:token` and query strings are left out. The keys
match the service's structlog JSON lines (`timestamp`, `level`, `event`), so one log shipper
parses both.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

ACCESS_LOG_CHOICES = ("json", "off")
# Tokens are long runs of URL-safe characters; route names and ids are short.
_TOKEN_SEGMENT = re.compile(r"^[A-Za-z0-9_\-.~=]{20,}$")


def loggable_path(path: str) -> str:
    return "/".join(":token" if _TOKEN_SEGMENT.match(part) else part for part in path.split("/"))


def access_line(
    *,
    method: str,
    path: str,
    status: int | str,
    size: int | None,
    duration_ms: float,
    remote: str | None,
    user_agent: str | None,
) -> str:
    try:
        code: int | str = int(str(status).split(None, 1)[0])
    except ValueError:
        code = str(status)
    return json.dumps(
        {
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "level": "info",
            "event": "http.request",
            "method": method,
            "path": loggable_path(path),
            "status": code,
            "bytes": size,
            "duration_ms": round(duration_ms, 2),
            "remote": remote,
            "user_agent": user_agent,
        }
    )
