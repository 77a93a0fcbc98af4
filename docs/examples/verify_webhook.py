"""Receiving casebridge case tasks: verify the signature, drop repeats, keep the newest revision.

Run: CASEBRIDGE_WEBHOOK_SECRET=whsec_... flask --app verify_webhook run --port 9000
"""

from __future__ import annotations

import os

from flask import Flask, request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

app = Flask(__name__)
verifier = Webhook(os.environ["CASEBRIDGE_WEBHOOK_SECRET"])
seen: set[str] = set()  # use your database: webhook-id is the idempotency key
tasks: dict[str, dict] = {}


@app.post("/casebridge")
def receive() -> tuple[str, int]:
    try:
        # Checks webhook-signature over "id.timestamp.body" and the 5-minute timestamp window.
        event = verifier.verify(request.get_data(), dict(request.headers))
    except WebhookVerificationError:
        return "bad signature", 401
    msg_id = request.headers["webhook-id"]
    if msg_id in seen:
        return "", 204  # a retry of something we already have
    seen.add(msg_id)
    task = event["data"]
    known = tasks.get(task["task_id"])
    if known is None or task["revision"] > known["revision"]:
        tasks[task["task_id"]] = task  # create or update "case-12"; status "closed" closes it
    return "", 204
