"""A Google Sheets case tracker: one row per case, found by its key column, updated in place.

- Token: a service account's signed JWT (RS256, PyJWT) exchanged at `token_url` for an access
  token (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`).
- `values.append` is not idempotent, so it is never used: the key column (A) is read, the case's
  row is found, and `values.update` (`PUT .../values/{range}`) writes that row; a new case writes
  the first empty row. The same PUT repeated writes the same cells, so retries are safe.
- Column B (Status) is for staff; column C (Synced status) is what casebridge last wrote. A row
  whose Status differs from its Synced status is a person's change: `poll_status` reports it
  (closed/done -> the case closes; open -> it reopens), and an update meanwhile leaves their
  Status cell alone so the poll still sees it.

gspread and google-auth are not used: both hard-code Google's hosts in places (gspread's client
URLs, google-auth's token audience handling) that the tests must point at a local server, and
gspread's helpers retry on their own; three plain calls are clearer.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal
from urllib.parse import quote

import jwt
import requests
from pydantic import Field

from connectors.base import DeliveryResult, FindsItsLink, Idempotency, Link
from connectors.destinations.http_base import (
    HttpDestinationSettings,
    TokenAuth,
    ToolHttp,
    token_from_response,
)
from connectors.destinations.task_text import reason_line, resource_line
from connectors.registry import register
from connectors.status import Action, StatusReport
from service.config import Settings
from service.errors import PermanentError, TransientError

HEADER = ["Case", "Status", "Synced status (do not edit)", "Student", "Local ID", "School",
          "Grade", "Severity", "Case manager", "Reasons", "Resources", "First meeting due",
          "Updated"]  # fmt: skip
LAST_COLUMN = chr(ord("A") + len(HEADER) - 1)


class SheetsSettings(HttpDestinationSettings):
    """A Google Sheets case tracker (one row per case; staff edit the Status column)."""

    kind: Literal["google_sheets"]
    # Sheets allows 60 reads and 60 writes a minute per user: stay under it instead of 429s.
    requests_per_second: float | None = Field(1.0, gt=0)
    spreadsheet_id: str
    sheet: str = "Cases"
    client_email: str  # the service account
    private_key: str  # its PEM key, from ${ENV}
    token_url: str = "https://oauth2.googleapis.com/token"
    base_url: str = "https://sheets.googleapis.com"
    scope: str = "https://www.googleapis.com/auth/spreadsheets"
    closed_values: list[str] = ["closed", "done", "complete", "completed", "resolved"]
    open_values: list[str] = ["open", "reopen", "reopened"]


class SheetsDestination(FindsItsLink):
    idempotency: Idempotency = "stored_link"

    def __init__(self, name: str, cfg: SheetsSettings) -> None:
        self.name = name
        self.cfg = cfg
        self.values_url = f"{cfg.base_url.rstrip('/')}/v4/spreadsheets/{cfg.spreadsheet_id}/values"
        self.token = TokenAuth(self._fetch_token)
        self.http = ToolHttp(name, cfg, self.token)

    def _fetch_token(self) -> tuple[str, float]:
        now = int(time.time())
        claims = {"iss": self.cfg.client_email, "scope": self.cfg.scope,
                  "aud": self.cfg.token_url, "iat": now, "exp": now + 3600}  # fmt: skip
        try:
            assertion = jwt.encode(claims, self.cfg.private_key, algorithm="RS256")
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise PermanentError(f"{self.name}: the service account key cannot sign") from exc
        form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
        try:
            resp = self.http.session.post(self.cfg.token_url, data=form,
                                          timeout=self.cfg.timeout_seconds)  # fmt: skip
        except requests.RequestException as exc:
            raise TransientError(f"{self.name}: token request {type(exc).__name__}") from exc
        return token_from_response(resp, self.name)

    def _url(self, a1: str) -> str:
        return f"{self.values_url}/{quote(f'{self.cfg.sheet}!{a1}', safe='!:')}"

    def _get(self, a1: str) -> list[list[str]]:
        body = self.http.request("GET", self._url(a1), safe=True).json()
        return body.get("values") or []

    def _put(self, a1: str, rows: list[list[Any]]) -> None:
        self.http.request(
            "PUT", self._url(a1), safe=True, params={"valueInputOption": "RAW"},
            json={"range": f"{self.cfg.sheet}!{a1}", "majorDimension": "ROWS", "values": rows},
        )  # fmt: skip

    def _keys(self) -> list[str]:
        return [r[0] if r else "" for r in self._get("A:A")]

    @staticmethod
    def _row_of(keys: list[str], subject: str) -> int | None:
        return next((i + 1 for i, k in enumerate(keys) if k == subject), None)

    def _cells(self, task: dict[str, Any]) -> list[str]:
        student = task.get("student") or {}
        return [
            str(student.get("name") or ""),
            str(student.get("local_id") or ""),
            str(student.get("school") or ""),
            str(student.get("grade_level") or ""),
            str(task.get("severity") or ""),
            str((task.get("assignee") or {}).get("name") or "unassigned"),
            "\n".join(reason_line(r) for r in task.get("reasons") or []),
            "\n".join(resource_line(r) for r in task.get("resources") or []),
            str(task.get("first_meeting_due") or ""),
            datetime.now().astimezone().isoformat(timespec="minutes"),
        ]

    def upsert_task(
        self, key: str, subject: str, task: dict[str, Any], link: Link | None
    ) -> DeliveryResult:
        status = str(task.get("status") or "open")
        keys = self._keys()
        row = self._row_of(keys, subject)
        if row is None:  # the first empty row; the header first on an empty sheet
            if not keys:
                self._put(f"A1:{LAST_COLUMN}1", [HEADER])
                keys = ["Case"]
            row = len(keys) + 1
            self._put(f"A{row}:{LAST_COLUMN}{row}", [[subject, status, status, *self._cells(task)]])
            return DeliveryResult(f"row-{row}", None, {"op": "create"})
        current = (self._get(f"B{row}:C{row}") or [[]])[0] + ["", ""]
        theirs, synced = current[0].strip().lower(), current[1].strip().lower()
        if theirs != synced and self._meaning(theirs) != status:
            # A person changed Status and the poll has not taken it in yet: keep their cell.
            self._put(f"D{row}:{LAST_COLUMN}{row}", [self._cells(task)])
        else:
            self._put(f"B{row}:{LAST_COLUMN}{row}", [[status, status, *self._cells(task)]])
        return DeliveryResult(f"row-{row}", None, {"op": "update"})

    def _meaning(self, value: str) -> str | None:
        """What a Status cell says in casebridge's terms: "closed", "open" or nothing known."""
        if value in {v.lower() for v in self.cfg.closed_values}:
            return "closed"
        if value in {v.lower() for v in self.cfg.open_values}:
            return "open"
        return None

    def find(self, subject: str) -> Link | None:
        row = self._row_of(self._keys(), subject)
        return Link(f"row-{row}") if row else None

    def poll_status(self) -> list[StatusReport]:
        """Rows whose Status a person changed since casebridge last wrote them."""
        reports = []
        for row in self._get("A2:C"):
            subject, status, synced = ([*row, "", "", ""])[:3]
            wanted = self._meaning(status.strip().lower())
            if not subject.startswith("case-") or wanted is None:
                continue
            if wanted == self._meaning(synced.strip().lower()):
                continue
            action: Action = "completed" if wanted == "closed" else "reopened"
            reports.append(StatusReport(subject, action, self.name))
        return reports


def build(settings: Settings, cfg: SheetsSettings) -> SheetsDestination:
    return SheetsDestination(cfg.name, cfg)


register("destination", "google_sheets", SheetsSettings, build, SheetsDestination.idempotency)
