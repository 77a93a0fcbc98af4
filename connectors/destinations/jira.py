"""Case tasks as Jira Cloud issues, with plain `requests` (REST API v3).

- Auth: an Atlassian account email + API token (HTTP Basic).
- Each issue carries the label `casebridge-case-12`; `find` searches for it with
  `GET /rest/api/3/search/jql` (the old `/rest/api/3/search` is gone).
- Create: `POST /rest/api/3/issue` (summary, description in Atlassian Document Format, labels).
  Jira has no idempotency key, so a create whose answer was lost is `OutcomeUnknown` and the core
  reconciles with `find` before sending again. Caveat: Jira's search is eventually consistent, so
  a search in the first seconds after a create can miss it; the outbox only reconciles after the
  claim's lease, which in practice is long enough.
- Update: `PUT /rest/api/3/issue/{key}`; a closed case moves the issue through the first
  transition whose name or target status is in `close_transitions` (a reopened case:
  `reopen_transitions`), found with `GET .../transitions`.

The `jira` package is not used: it wraps the removed `/search` endpoint and retries on its own.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from connectors.base import DeliveryResult, FindsItsLink, Idempotency, Link
from connectors.destinations.http_base import HttpDestinationSettings, ToolHttp
from connectors.destinations.task_text import task_text
from connectors.registry import register
from service.config import Settings
from service.errors import PermanentError


class JiraSettings(HttpDestinationSettings):
    """Case tasks as Jira Cloud issues (found by a label carrying our key)."""

    kind: Literal["jira"]
    base_url: str  # https://<site>.atlassian.net
    email: str
    api_token: str  # from ${ENV}
    project_key: str
    issue_type: str = "Task"
    label_prefix: str = "casebridge"
    close_transitions: list[str] = ["Done", "Close", "Closed", "Resolve"]
    reopen_transitions: list[str] = ["To Do", "Reopen", "Reopened", "Open"]


def adf(text: str) -> dict[str, Any]:
    """Plain lines as an Atlassian Document Format document."""
    paragraphs = [
        {"type": "paragraph", "content": [{"type": "text", "text": line}]}
        for line in text.splitlines()
        if line.strip()
    ]
    return {"type": "doc", "version": 1, "content": paragraphs}


class JiraDestination(FindsItsLink):
    idempotency: Idempotency = "stored_link"

    def __init__(self, name: str, cfg: JiraSettings) -> None:
        self.name = name
        self.cfg = cfg
        self.base = f"{cfg.base_url.rstrip('/')}/rest/api/3"
        pair = base64.b64encode(f"{cfg.email}:{cfg.api_token}".encode()).decode()
        self.http = ToolHttp(name, cfg, lambda: f"Basic {pair}")

    def label(self, subject: str) -> str:
        return f"{self.cfg.label_prefix}-{subject}"

    def upsert_task(
        self, key: str, subject: str, task: dict[str, Any], link: Link | None
    ) -> DeliveryResult:
        fields: dict[str, Any] = {
            "summary": f"{task['title']} [{subject}]"[:254],
            "description": adf(task_text(task)),
        }
        if link is None:
            fields.update(
                project={"key": self.cfg.project_key},
                issuetype={"name": self.cfg.issue_type},
                labels=[self.cfg.label_prefix, self.label(subject)],
            )
            resp = self.http.request("POST", f"{self.base}/issue", safe=False,
                                     json={"fields": fields})  # fmt: skip
            issue, op = resp.json()["key"], "create"
        else:
            issue, op = link.external_id, "update"
            self.http.request("PUT", f"{self.base}/issue/{issue}", safe=True,
                              json={"fields": fields})  # fmt: skip
        self._move(issue, closed=task.get("status") == "closed", created=op == "create")
        return DeliveryResult(issue, None, {"op": op})

    def _move(self, issue: str, closed: bool, created: bool) -> None:
        """Bring the issue's workflow status in line with the case (done or not)."""
        if created and not closed:
            return
        current = self.http.request(
            "GET", f"{self.base}/issue/{issue}", safe=True, params={"fields": "status"}
        ).json()
        category = current["fields"]["status"]["statusCategory"]["key"]
        if (category == "done") == closed:
            return
        names = {n.lower() for n in (self.cfg.close_transitions if closed
                                     else self.cfg.reopen_transitions)}  # fmt: skip
        url = f"{self.base}/issue/{issue}/transitions"
        options = self.http.request("GET", url, safe=True).json().get("transitions") or []
        chosen = next(
            (t for t in options
             if t["name"].lower() in names or t.get("to", {}).get("name", "").lower() in names),
            None,
        )  # fmt: skip
        if chosen is None:
            raise PermanentError(f"{self.name}: no transition named {sorted(names)} on {issue}")
        # Repeating a transition that already happened is refused (400), not doubled.
        self.http.request("POST", url, safe=True, json={"transition": {"id": chosen["id"]}})

    def find(self, subject: str) -> Link | None:
        jql = f'project = "{self.cfg.project_key}" AND labels = "{self.label(subject)}"'
        resp = self.http.request(
            "GET", f"{self.base}/search/jql", safe=True,
            params={"jql": jql, "fields": "summary", "maxResults": 1},
        )  # fmt: skip
        issues = resp.json().get("issues") or []
        return Link(str(issues[0]["key"])) if issues else None


def build(settings: Settings, cfg: JiraSettings) -> JiraDestination:
    return JiraDestination(cfg.name, cfg)


register("destination", "jira", JiraSettings, build, JiraDestination.idempotency)
