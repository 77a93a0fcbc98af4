"""The daily digest per case manager: cases opened, changed or closed since the last digest.

A scheduled job (`schedules.digest_cron`, the district's morning) queues one `digest` intent per
case manager and `email` destination with `digest: true`; what it lists is read when it is sent,
from `case_events` between the previous digest's end and this one's. Nothing is sent on a quiet
day. Staff are school officials: the digest names students as tasks do.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Engine, select

from service.config import Settings
from service.intents import DIGEST, case_subject, digest
from service.models import Case, CaseEvent, ClaimedItem, OutboxItem, School
from service.outbox import enqueue
from service.task_view import aware, student_facts

# How each event reads in a digest line.
CHANGE_TEXT = {
    "reason_added": "new reason",
    "relapsed": "indicators worsened again",
    "reopened": "reopened",
    "indicators_recovered": "indicators recovered",
    "check_in": "check-in due",
    "close_suggested": "suggested to close",
}


def digest_destinations(settings: Settings) -> list[str]:
    return [d.name for d in settings.destinations if getattr(d, "digest", False)]


def queue_digests(engine: Engine, settings: Settings, until: datetime) -> int:
    """One digest per case manager and digest destination for the district day of `until`."""
    day = until.astimezone(ZoneInfo(settings.district.timezone)).date().isoformat()
    end = until.astimezone(UTC).isoformat()
    items = [
        digest(name, c.staff_id, day, end)
        for name in digest_destinations(settings)
        for c in settings.caseloads
    ]
    with engine.begin() as conn:
        return enqueue(conn, items)


def build_digest(conn: Connection, settings: Settings, item: ClaimedItem) -> dict[str, Any] | None:
    """What the digest says, read now; None when the case manager is no longer configured."""
    staff_id = str(item.payload["staff_id"])
    manager = next((c for c in settings.caseloads if c.staff_id == staff_id), None)
    if manager is None:
        return None
    until = datetime.fromisoformat(str(item.payload["until"]))
    previous = conn.execute(
        select(OutboxItem.payload)
        .where(OutboxItem.kind == DIGEST, OutboxItem.target == item.target,
               OutboxItem.idempotency_key.like(f"digest:{item.target}:{staff_id}:%"),
               OutboxItem.id < item.id)
        .order_by(OutboxItem.id.desc())
        .limit(1)
    ).scalar()  # fmt: skip
    since = datetime.fromisoformat(previous["until"]) if previous else until - timedelta(days=1)
    rows = conn.execute(
        select(Case.id, Case.student_id, Case.school_id, Case.status, Case.revision,
               CaseEvent.kind)
        .join(CaseEvent, CaseEvent.case_id == Case.id)
        .where(Case.assignee_id == staff_id, CaseEvent.at > since, CaseEvent.at <= until)
        .order_by(Case.id, CaseEvent.id)
    ).all()  # fmt: skip
    by_case: dict[int, dict[str, Any]] = {}
    for case_id, student_id, school_id, status, revision, kind in rows:
        entry = by_case.setdefault(case_id, {
            "case_id": case_id, "task_id": case_subject(case_id), "student_id": student_id,
            "school_id": school_id, "status": status, "revision": revision, "kinds": [],
        })  # fmt: skip
        if kind not in entry["kinds"]:
            entry["kinds"].append(kind)
    facts = student_facts(conn, sorted({e["student_id"] for e in by_case.values()}))
    schools = dict(conn.execute(select(School.school_id, School.name)).all()) if by_case else {}
    counts = {"opened": 0, "changed": 0, "closed": 0}
    cases = []
    for entry in by_case.values():
        kinds = entry.pop("kinds")
        if "opened" in kinds:
            what = "opened"
        elif "closed" in kinds and entry["status"] == "closed":
            what = "closed"
        else:
            what = "changed"
        counts[what] += 1
        student = facts.get(entry["student_id"], {})
        school_id = student.get("school_id") or entry["school_id"]
        cases.append({
            **entry, "what": what,
            # What changed, for a case that was neither opened nor closed in the window.
            "changes": [CHANGE_TEXT.get(k, k.replace("_", " ")) for k in kinds
                        if what == "changed"],
            "name": f"{student.get('first_name', '')} {student.get('last_name', '')}".strip(),
            "local_id": student.get("local_id"), "grade_level": student.get("grade_level"),
            "school": schools.get(school_id) or school_id,
        })  # fmt: skip
    if settings.cases.link_template:
        for case in cases:
            case["case_url"] = settings.cases.link_template.format(case_id=case["case_id"])
    zone = ZoneInfo(settings.district.timezone)
    return {
        "staff_id": staff_id,
        "name": manager.name,
        "email": manager.email,
        "day": item.payload["day"],
        "since": aware(since).astimezone(zone).isoformat(),
        "until": aware(until).astimezone(zone).isoformat(),
        "counts": counts,
        "cases": cases,
    }


def digest_text(view: dict[str, Any]) -> str:
    counts = view["counts"]
    lines = [
        f"Cases for {view['name']}, {view['day']}: {counts['opened']} new, "
        f"{counts['changed']} changed, {counts['closed']} closed "
        f"(since {view['since'][:16].replace('T', ' ')}).",
        "",
    ]
    for what in ("opened", "changed", "closed"):
        group = [c for c in view["cases"] if c["what"] == what]
        if not group:
            continue
        lines.append({"opened": "New", "changed": "Changed", "closed": "Closed"}[what] + ":")
        for c in group:
            changes = f": {', '.join(c['changes'])}" if c["changes"] else ""
            ref = c.get("case_url") or c["task_id"]
            lines.append(
                f"- {c['name']} (local id {c['local_id'] or '?'}), grade "
                f"{c['grade_level'] or '?'}, {c['school'] or '?'} [{ref}]{changes}"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
