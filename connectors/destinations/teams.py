"""A Teams card for each new urgent case, through a Teams Workflows webhook (notification only).

A Workflows ("When a Teams webhook request is received") URL takes
`{"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
"content": <Adaptive Card>}]}` and answers 202. It cannot edit or find a message, so:

- only a case's first revision posts a card, when it opens at least `min_severity`; later
  revisions post nothing, so a post whose outcome is unknown is never followed by a second card
  (a case that becomes urgent later, or reopens, shows in the task tools, not as a new card);
- there is no idempotency key: the core commits `sending` before the post ("none"), and after a
  crash mid-post `reconcile` answers "unknown", so a person decides (`casebridge outbox resolve`)
  instead of a second card going out or none at all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from connectors.base import DeliveryResult, Idempotency, Link, Reconciled
from connectors.destinations.http_base import HttpDestinationSettings, ToolHttp
from connectors.destinations.task_text import reason_line
from connectors.registry import register
from service.config import Settings

RANK = {"low": 0, "medium": 1, "high": 2}


class TeamsWorkflowSettings(HttpDestinationSettings):
    """A Teams card for new urgent cases (Workflows webhook; no edits)."""

    kind: Literal["teams_workflow"]
    url: str  # the workflow's HTTP trigger URL (it embeds its signature): ${ENV}
    min_severity: Literal["low", "medium", "high"] = "high"


def card(subject: str, task: dict[str, Any]) -> dict[str, Any]:
    student = task.get("student") or {}
    facts = [
        {"title": "School", "value": str(student.get("school") or "")},
        {"title": "Grade", "value": str(student.get("grade_level") or "")},
        {"title": "Case manager", "value": str((task.get("assignee") or {}).get("name")
                                               or "unassigned")},
        {"title": "First meeting due", "value": str(task.get("first_meeting_due") or "")},
        {"title": "Case", "value": str(task.get("case_url") or subject)},
    ]  # fmt: skip
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "wrap": True,
         "text": f"Urgent: {task['title']}"},
        {"type": "FactSet", "facts": facts},
        *({"type": "TextBlock", "wrap": True, "text": f"- {reason_line(r)}"}
          for r in task.get("reasons") or []),
    ]  # fmt: skip
    content = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
               "type": "AdaptiveCard", "version": "1.4", "body": body}  # fmt: skip
    return {"type": "message", "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
         "content": content}]}  # fmt: skip


class TeamsWorkflowDestination:
    idempotency: Idempotency = "none"

    def __init__(self, name: str, cfg: TeamsWorkflowSettings) -> None:
        self.name = name
        self.cfg = cfg
        self.http = ToolHttp(name, cfg)

    def upsert_task(
        self, key: str, subject: str, task: dict[str, Any], link: Link | None
    ) -> DeliveryResult:
        urgent = RANK.get(str(task.get("severity")), 0) >= RANK[self.cfg.min_severity]
        first = int(task.get("revision") or 0) <= 1
        if link is not None or not first or task.get("status") != "open" or not urgent:
            # Not a new urgent case, or already announced: nothing to post.
            detail = {"op": "none", "sent": False}  # nothing left: no disclosure is recorded
            return DeliveryResult(link.external_id if link else None, None, detail)
        self.http.request("POST", self.cfg.url, safe=False, json=card(subject, task))
        return DeliveryResult(f"card:{subject}", None, {"op": "posted"})

    def find(self, subject: str) -> Link | None:
        return None

    def reconcile(self, key: str, subject: str, since: datetime) -> Reconciled:
        return Reconciled("unknown", detail="Teams Workflows cannot say whether a card was posted")


def build(settings: Settings, cfg: TeamsWorkflowSettings) -> TeamsWorkflowDestination:
    return TeamsWorkflowDestination(cfg.name, cfg)


register("destination", "teams_workflow", TeamsWorkflowSettings, build,
         TeamsWorkflowDestination.idempotency)  # fmt: skip
