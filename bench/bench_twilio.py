"""SMS dispatch benchmark: N dispatcher processes send a synthetic district's family texts
through the real `twilio` library to the local Twilio-shaped server, under one per-sender rate.

    python bench/bench_twilio.py [--students 600] [--rate 20] [--workers 2]
                                 [--databases postgres,sqlite]

The server answers 429 (code 20429) when more than `rate` creates (plus one for timing jitter)
arrive within any one second, as an account's limit would. Prints the achieved sending rate
(messages between the first and last arrival at the server), the 429s, and texts sent twice,
with PASS when the rate is within 5% of the cap, there were no 429s and nothing was sent twice.
SQLite runs one worker (one writer); PostgreSQL runs `--workers` processes sharing the slot row.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dispatch_rig import evaluated, scratch_database, timed_dispatch  # noqa: E402
from tests.conftest import raw_config_for  # noqa: E402
from tests.fixtures.twilio_server import ACCOUNT_SID, AUTH_TOKEN, TwilioServer  # noqa: E402
from tools.synthetic import generate_district  # noqa: E402


def run(kind: str, rate: float, workers: int, workdir: Path, data: Path) -> dict[str, object]:
    run_dir = workdir / kind
    workers = workers if kind == "postgres" else 1
    server = TwilioServer()
    server.start()
    server.state.max_per_second = int(rate) + 1
    try:
        with scratch_database(kind, run_dir) as url:
            channel = {
                "name": "sms", "kind": "twilio_sms", "account_sid": ACCOUNT_SID,
                "auth_token": AUTH_TOKEN, "from_number": "+15005550006",
                "public_url": "https://casebridge.example.org", "api_base_url": server.base_url,
                "rate_per_second": rate,
            }  # fmt: skip
            email = {"name": "email", "kind": "file", "medium": "email", "path": "email.jsonl"}
            raw = raw_config_for(url, data, run_dir / "out", channels=[channel, email])
            raw["policy"]["family_cap"] = {"messages": 10, "days": 7}
            seconds = timed_dispatch(evaluated(raw, run_dir), workers)
            messages = server.messages
            arrivals = sorted(m.created.timestamp() for m in messages)
            span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
            achieved = (len(arrivals) - 1) / span if span else 0.0
            twice = sum(n - 1 for n in Counter((m.to, m.body) for m in messages).values() if n > 1)
            ok = abs(achieved - rate) <= 0.05 * rate and server.state.too_many == 0 and twice == 0
            return {
                "database": kind, "workers": workers, "rate_cap": rate, "texts": len(messages),
                "achieved_per_second": round(achieved, 2), "http_429": server.state.too_many,
                "sent_twice": twice, "dispatch_seconds": round(seconds, 1),
                "result": "PASS" if ok else "FAIL",
            }  # fmt: skip
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--students", type=int, default=600)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--databases", default="postgres,sqlite")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".data-twilio")
    args = ap.parse_args()
    data = args.workdir / f"district-{args.students}"
    if not (data / "oneroster" / "manifest.csv").exists():
        generate_district(data, students=args.students, seed=7)
    for kind in args.databases.split(","):
        print(json.dumps(run(kind, args.rate, args.workers, args.workdir, data)), flush=True)


if __name__ == "__main__":
    main()
