"""Case tasks in Microsoft Planner through Microsoft Graph, with plain `requests`.

- Token: client credentials from the Microsoft identity platform
  (`{login_base_url}/{tenant}/oauth2/v2.0/token`, scope `https://graph.microsoft.com/.default`).
- Create: `POST /planner/tasks` in the plan and bucket routed by the student's school, assigned to
  the case manager's Graph user (looked up once by email with `GET /users/{email}`); the case
  text goes into the task's details (`PATCH /planner/tasks/{id}/details`).
- Update: `PATCH /planner/tasks/{id}` with `If-Match: <ETag>` and
  `Prefer: return=representation` (the answer carries the new ETag, kept in `delivery_links`).
  A 412 means a person changed the task in Planner: re-read it, then patch again with its ETag.
- Planner issues the ids, so idempotency is "stored_link"; `find` lists the routed plans' tasks
  (following `@odata.nextLink`) and matches our subject, written as `[case-12]` in the title.

msgraph-sdk is not used: it is async-only and its retry handler would retry a create on its own,
which the core must control (a create is never repeated blindly, see `http_base`).
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import requests
from pydantic import Field

from connectors.base import DeliveryResult, FindsItsLink, Idempotency, Link
from connectors.destinations.http_base import (
    HttpDestinationSettings,
    TokenAuth,
    ToolHttp,
    token_from_response,
)
from connectors.destinations.task_text import task_text
from connectors.registry import register
from connectors.status import StatusReport
from service.config import Settings, Strict
from service.errors import TransientError

PRIORITY = {"high": 1, "medium": 5, "low": 9}  # Planner: 1 urgent, 3 important, 5, 9 low
MAX_CONFLICTS = 3


class PlannerRoute(Strict):
    """Tasks for students of these schools (sourcedId, number or name) go to this plan/bucket."""

    schools: list[str]
    plan_id: str
    bucket_id: str


class PlannerSettings(HttpDestinationSettings):
    """Case tasks in Microsoft Planner (Graph), plan and bucket routed by school."""

    kind: Literal["planner"]
    tenant_id: str
    client_id: str
    client_secret: str  # from ${ENV}
    plan_id: str  # where schools without a route go
    bucket_id: str
    routes: list[PlannerRoute] = []
    login_base_url: str = "https://login.microsoftonline.com"
    graph_base_url: str = "https://graph.microsoft.com/v1.0"
    scope: str = "https://graph.microsoft.com/.default"
    assign_by_email: bool = True
    token_margin_seconds: float = Field(60.0, ge=0)


def marker(subject: str) -> str:
    return f"[{subject}]"


class PlannerDestination(FindsItsLink):
    idempotency: Idempotency = "stored_link"
    # A create whose answer was lost may lack its details: after `find`, update it (delivery.py).
    update_after_find = True

    def __init__(self, name: str, cfg: PlannerSettings) -> None:
        self.name = name
        self.cfg = cfg
        self.base = cfg.graph_base_url.rstrip("/")
        self.token = TokenAuth(self._fetch_token, cfg.token_margin_seconds)
        self.http = ToolHttp(name, cfg, self.token)
        self._users: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def _fetch_token(self) -> tuple[str, float]:
        url = f"{self.cfg.login_base_url.rstrip('/')}/{self.cfg.tenant_id}/oauth2/v2.0/token"
        form = {"client_id": self.cfg.client_id, "client_secret": self.cfg.client_secret,
                "scope": self.cfg.scope, "grant_type": "client_credentials"}  # fmt: skip
        try:
            resp = self.http.session.post(url, data=form, timeout=self.cfg.timeout_seconds)
        except requests.RequestException as exc:
            raise TransientError(f"{self.name}: token request {type(exc).__name__}") from exc
        return token_from_response(resp, self.name)

    # -- routing and people -----------------------------------------------------------------

    def _route(self, task: dict[str, Any]) -> tuple[str, str]:
        student = task.get("student") or {}
        keys = {str(student[k]) for k in ("school_id", "school_number", "school") if student.get(k)}
        for route in self.cfg.routes:
            if keys & set(route.schools):
                return route.plan_id, route.bucket_id
        return self.cfg.plan_id, self.cfg.bucket_id

    def _user_id(self, email: str | None) -> str | None:
        if not email or not self.cfg.assign_by_email:
            return None
        with self._lock:
            if email in self._users:
                return self._users[email]
        resp = self.http.request("GET", f"{self.base}/users/{email}", safe=True, accept=(404,),
                                 params={"$select": "id"})  # fmt: skip
        user = resp.json().get("id") if resp.status_code == 200 else None
        with self._lock:
            self._users[email] = user  # an unknown address stays unassigned, not an error
        return user

    def _fields(self, subject: str, task: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "title": f"{task['title']} {marker(subject)}"[:255],
            "percentComplete": 100 if task.get("status") == "closed" else 0,
            "priority": PRIORITY.get(str(task.get("severity")), 5),
        }
        if task.get("first_meeting_due"):
            fields["dueDateTime"] = f"{task['first_meeting_due']}T17:00:00Z"
        user = self._user_id((task.get("assignee") or {}).get("email"))
        if user:
            fields["assignments"] = {
                user: {"@odata.type": "#microsoft.graph.plannerAssignment", "orderHint": " !"}
            }
        return fields

    # -- the Destination protocol -----------------------------------------------------------

    def upsert_task(
        self, key: str, subject: str, task: dict[str, Any], link: Link | None
    ) -> DeliveryResult:
        fields = self._fields(subject, task)
        if link is None:
            plan, bucket = self._route(task)
            resp = self.http.request(  # not safe to repeat: a lost answer is reconciled by find
                "POST", f"{self.base}/planner/tasks", safe=False,
                json={"planId": plan, "bucketId": bucket, **fields},
            )  # fmt: skip
            created = resp.json()
            task_id, etag, op = created["id"], created.get("@odata.etag"), "create"
        else:
            task_id, etag, op = link.external_id, link.version, "update"
            url = f"{self.base}/planner/tasks/{task_id}"
            etag, saved = self._patch(url, fields, etag)
            # Reassigned: Planner merges assignments, so the previous case manager is removed
            # explicitly (null), once the answer shows who else is still assigned.
            others = [u for u, a in (saved.get("assignments") or {}).items()
                      if a is not None and u not in fields.get("assignments", {})]  # fmt: skip
            if fields.get("assignments") and others:
                etag, _ = self._patch(url, {"assignments": dict.fromkeys(others)}, etag)
        details = f"{self.base}/planner/tasks/{task_id}/details"
        self._patch(details, {"description": task_text(task)})
        return DeliveryResult(task_id, etag, {"op": op})

    def _patch(
        self, url: str, fields: dict[str, Any], etag: str | None = None
    ) -> tuple[str | None, dict[str, Any]]:
        """PATCH with If-Match; on 412 (changed in Planner meanwhile) re-read and try again.

        Returns the new ETag and the item as Planner now has it (empty on a 204)."""
        for _ in range(MAX_CONFLICTS):
            if etag is None:
                etag = self.http.request("GET", url, safe=True).json().get("@odata.etag")
            resp = self.http.request(
                "PATCH", url, safe=True, accept=(412,), json=fields,
                headers={"If-Match": etag or "*", "Prefer": "return=representation"},
            )  # fmt: skip
            if resp.status_code == 412:
                etag = None
                continue
            if resp.status_code == 200 and resp.content:
                body: dict[str, Any] = resp.json()
                return body.get("@odata.etag"), body
            return None, {}
        raise TransientError(f"{self.name}: the task kept changing in Planner (412 x3)")

    def find(self, subject: str) -> Link | None:
        wanted = marker(subject)
        plans = dict.fromkeys([self.cfg.plan_id, *(r.plan_id for r in self.cfg.routes)])
        for plan in plans:
            url: str | None = f"{self.base}/planner/plans/{plan}/tasks"
            while url:
                page = self.http.request("GET", url, safe=True).json()
                for item in page.get("value") or []:
                    if str(item.get("title") or "").endswith(wanted):
                        return Link(item["id"], item.get("@odata.etag"))
                url = page.get("@odata.nextLink")
        return None

    def poll_status(self) -> list[StatusReport]:
        """Tasks a person completed (100%) or reopened in Planner, read from the routed plans.

        `tools.poll_tools` skips a task whose case has an update on its way to Planner.
        """
        reports = []
        plans = dict.fromkeys([self.cfg.plan_id, *(r.plan_id for r in self.cfg.routes)])
        for plan in plans:
            url: str | None = f"{self.base}/planner/plans/{plan}/tasks"
            while url:
                page = self.http.request("GET", url, safe=True).json()
                for item in page.get("value") or []:
                    title = str(item.get("title") or "")
                    if not title.endswith("]") or "[case-" not in title:
                        continue
                    subject = title.rsplit("[", 1)[1][:-1]
                    done = item.get("percentComplete") == 100
                    who = ((item.get("completedBy") or {}).get("user") or {}).get("id")
                    reports.append(StatusReport(subject, "completed" if done else "reopened",
                                                self.name, actor=who))  # fmt: skip
                url = page.get("@odata.nextLink")
        return reports


def build(settings: Settings, cfg: PlannerSettings) -> PlannerDestination:
    return PlannerDestination(cfg.name, cfg)


register("destination", "planner", PlannerSettings, build, PlannerDestination.idempotency)
