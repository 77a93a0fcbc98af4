"""`POST /tools/<destination>/status`: a staff tool reports what a person did to our task.

The request is signed the Standard Webhooks way with the destination's `status_secret`
(`webhook-id`, `webhook-timestamp` within five minutes, `webhook-signature: v1,...`), or the
tool's own way where its destination kind knows it (Zendesk: `read_status`); the body follows
`docs/tool-status.schema.json`:

    {"type": "task.status",
     "data": {"task_id": "case-12", "action": "completed" | "reopened" | "reassigned",
              "actor": "arivera@district.example.org", "assignee": "lnguyen@...", "at": "..."}}

Each `webhook-id` is applied once (`tool_status_receipts`); a redelivery gets the first answer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import structlog
from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from connectors.destinations.signing import SignatureError
from service.clock import utcnow
from service.config import Settings
from service.models import ToolStatusReceipt
from service.tool_status import ACTIONS, StatusReport, apply_report, case_id_of

log = structlog.get_logger(__name__)

bp = Blueprint("tool_webhooks", __name__)

HTTP_STATUS = {"unknown_case": 422, "unknown_assignee": 422, "conflict": 409}


def _parse(body: Any, via: str) -> StatusReport | str:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or body.get("type") != "task.status":
        return 'expected {"type": "task.status", "data": {...}}'
    subject, action = data.get("task_id"), data.get("action")
    if not isinstance(subject, str) or case_id_of(subject) is None:
        return "data.task_id must name a case, e.g. case-12"
    if action not in ACTIONS:
        return f"data.action must be one of {', '.join(ACTIONS)}"
    if action == "reassigned" and not data.get("assignee"):
        return "data.assignee is required when the task was reassigned"
    at = None
    if data.get("at"):
        try:
            at = datetime.fromisoformat(str(data["at"]))
        except ValueError:
            return "data.at must be an ISO-8601 time"
    actor = data.get("actor")
    assignee = data.get("assignee")
    return StatusReport(
        subject, action, via, str(actor) if actor else None,
        str(assignee) if assignee else None, at,
    )  # fmt: skip


@bp.post("/tools/<name>/status")
def tool_status(name: str) -> Any:
    settings: Settings = current_app.config["CASEBRIDGE_SETTINGS"]
    engine: Engine = current_app.config["CASEBRIDGE_ENGINE"]
    cfg = next((d for d in settings.destinations if d.name == name), None)
    read_status = getattr(cfg, "read_status", None)
    refused = jsonify(error=f"no destination {name!r} accepts status reports"), 404
    if read_status is None:
        return refused
    body = request.get_data()
    try:
        message_id, payload = read_status(dict(request.headers), body)
    except LookupError:
        return refused
    except SignatureError as exc:
        log.warning("tool_status.refused", destination=name, reason=str(exc))
        return jsonify(error=str(exc)), 401
    parsed = _parse(payload, name)
    if isinstance(parsed, str):
        return jsonify(error=parsed), 400
    key = (ToolStatusReceipt.source == name, ToolStatusReceipt.message_id == message_id)
    try:
        with engine.begin() as conn:
            seen = conn.execute(select(ToolStatusReceipt.outcome).where(*key)).scalar()
            if seen is None:
                outcome: str = apply_report(conn, settings, parsed)
                conn.execute(
                    insert(ToolStatusReceipt).values(
                        source=name, message_id=message_id, case_id=case_id_of(parsed.subject),
                        outcome=outcome, received_at=utcnow(),
                    )
                )  # fmt: skip
                duplicate = False
            else:
                outcome, duplicate = seen, True
    except IntegrityError:  # the same report delivered twice at once: the other one applied it
        with engine.connect() as conn:
            outcome = conn.execute(select(ToolStatusReceipt.outcome).where(*key)).scalar_one()
        duplicate = True
    return jsonify(outcome=outcome, duplicate=duplicate), HTTP_STATUS.get(outcome, 200)
