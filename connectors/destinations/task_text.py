"""The staff task as plain text, for tools whose task body is a text field (Planner notes,
Zendesk comments, a Sheets cell). The fields come from `service/task_view.build_task`."""

from __future__ import annotations

from typing import Any


def reason_line(reason: dict[str, Any]) -> str:
    label = str(reason.get("reason") or "").replace("_", " ")
    summary = "; ".join(e["text"] for e in reason.get("evidence_summary") or [] if e.get("text"))
    if reason.get("origin") == "person":
        note = reason.get("note") or ""
        about = f" ({summary})" if summary else " (referred by a person)"
        return f"{label}{about}{': ' + note if note else ''}"
    rule = f"rule {reason.get('rule_id')} v{reason.get('rule_version')}"
    return f"{label} ({rule}){': ' + summary if summary else ''}"


def resource_line(resource: dict[str, Any]) -> str:
    contact = ", ".join(x for x in (resource.get("phone"), resource.get("url")) if x)
    text = f"{resource.get('name')}{' (' + contact + ')' if contact else ''}"
    if resource.get("description"):
        text += f": {resource['description']}"
    if resource.get("why"):
        text += f" (for {resource['why']})"
    return text


def task_text(task: dict[str, Any]) -> str:
    student = task.get("student") or {}
    assignee = task.get("assignee") or {}
    lines = [
        f"Student: {student.get('name')} (local id {student.get('local_id') or '?'}), "
        f"grade {student.get('grade_level') or '?'}, {student.get('school') or '?'}",
        f"Case manager: {assignee.get('name') or 'unassigned'}",
        f"Status: {task.get('status')}; severity {task.get('severity')}",
        "Reasons:",
        *(f"- {reason_line(r)}" for r in task.get("reasons") or []),
    ]
    if task.get("resources"):
        lines += ["Suggested resources:", *(f"- {resource_line(r)}" for r in task["resources"])]
    if task.get("first_meeting_due"):
        lines.append(f"First 1:1 meeting due: {task['first_meeting_due']}")
    if task.get("progress"):
        lines.append(f"Progress (as of {task['progress']['as_of']}): {task['progress']['text']}")
    if task.get("next_check_in_due"):
        lines.append(f"Next check-in due: {task['next_check_in_due']} ({task['check_in_basis']})")
    if task.get("suggestion"):
        lines.append(f"Suggestion: {task['suggestion']}")
    ref = task.get("case_url") or task.get("task_id")
    lines.append(f"Case: {ref} (casebridge {task.get('task_id')}, revision {task.get('revision')})")
    return "\n".join(lines)
