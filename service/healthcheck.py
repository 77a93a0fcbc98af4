"""The container's HEALTHCHECK: `python -m service.healthcheck [URL]`.

Exits 0 when `/healthz` answers 200, 1 otherwise. Without a URL it asks the address `serve`
listens on ($CASEBRIDGE_BIND, the first one; a wildcard host is asked on loopback), so the
check follows the bind instead of repeating a port. Standard library only: it runs every
30 s and must start fast.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_BIND = "127.0.0.1:8000"
WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def healthz_url(bind: str) -> str:
    first = bind.split()[0] if bind.split() else DEFAULT_BIND
    host, _, port = first.rpartition(":")
    if first.startswith("unix:") or not port.isdigit():
        raise ValueError(f"cannot check {first!r} over HTTP; give the URL instead")
    host = "127.0.0.1" if host in WILDCARDS else host
    return f"http://{host}:{port}/healthz"


def check(url: str, timeout: float = 4.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, f"{url}: {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"{url}: {exc.code}"
    except OSError as exc:
        return False, f"{url}: {type(exc).__name__}: {exc}"


def main(argv: list[str]) -> int:
    try:
        url = argv[0] if argv else healthz_url(os.environ.get("CASEBRIDGE_BIND", DEFAULT_BIND))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    healthy, detail = check(url)
    print(detail, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
