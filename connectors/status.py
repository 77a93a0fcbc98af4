"""What a person did to our task in a staff tool, as a tool reports it (webhook or poll)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

Action = Literal["completed", "reopened", "reassigned"]
ACTIONS: tuple[str, ...] = ("completed", "reopened", "reassigned")


@dataclass(frozen=True)
class StatusReport:
    subject: str  # "case-12"
    action: Action
    via: str  # the destination's name
    actor: str | None = None  # the tool's user (an email or a display name)
    assignee: str | None = None  # reassigned: the case manager's email or staff id
    at: datetime | None = None
