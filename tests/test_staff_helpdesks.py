"""Jira Cloud and Slack as staff tools, each against a local server speaking its wire format.

Neither has an idempotency key: a create whose answer was lost is reconciled by searching the
tool (Jira: a label with our key via /search/jql; Slack: message metadata in the channel history)
and never repeated blindly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select, update

from service.config import Settings, parse_settings
from service.models import Case, DeliveryLink, Disclosure, OutboxItem
from service.pipeline import open_engine, run_dispatch, run_evaluate, run_sync
from tests.conftest import example_config, raw_config_for
from tests.fixtures.http_server import Fault
from tests.fixtures.tool_servers import JiraServer, SlackServer, TeamsWorkflowServer
from tools.synthetic import generate_district

NO_WAIT = {"base_delay_seconds": 0, "max_delay_seconds": 0}
FAST = {"max_attempts": 4, "breaker_failures": 20}


@pytest.fixture
def servers() -> Iterator[tuple[JiraServer, SlackServer]]:
    jira, slack = JiraServer(), SlackServer()
    jira.start()
    slack.start()
    yield jira, slack
    jira.stop()
    slack.stop()


def configured(db_url: str, data: Path, out: Path, jira: JiraServer, slack: SlackServer,
               **overrides: Any) -> Settings:  # fmt: skip
    destinations = [
        {"name": "jira", "kind": "jira", "base_url": jira.base_url, "project_key": "SUP",
         "email": "cb@district.example.org", "api_token": "jira-tok", **FAST},
        {"name": "slack", "kind": "slack", "base_url": f"{slack.base_url}/api",
         "token": "xoxb-test", "channel": "C0CASES", **FAST},
    ]  # fmt: skip
    raw = raw_config_for(db_url, data, out, destinations=destinations, channels=[],
                         outbox=NO_WAIT, **overrides)  # fmt: skip
    return parse_settings(raw, "t.yaml", data)


def subjects(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return {f"case-{i}" for i in conn.execute(select(Case.id)).scalars()}


def issues_by_case(jira: JiraServer) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for issue in jira.issues.values():
        (label,) = [x for x in issue["fields"]["labels"] if x.startswith("casebridge-")]
        subject = label.removeprefix("casebridge-")
        assert subject not in out, f"two issues for {subject}"
        out[subject] = issue
    return out


def messages_by_case(slack: SlackServer) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for message in slack.messages.values():
        subject = message["metadata"]["event_payload"]["subject"]
        assert subject not in out, f"two messages for {subject}"
        out[subject] = message
    return out


def test_jira_issues_and_slack_messages_once_per_case_updated_and_closed(
    db_url: str, tmp_path: Path, servers: tuple[JiraServer, SlackServer]
) -> None:
    jira, slack = servers
    data = tmp_path / "data"
    generate_district(data, students=60, seed=21)
    settings = configured(db_url, data, tmp_path / "out", jira, slack)
    engine = open_engine(settings)
    assert not [r.error for r in run_sync(engine, settings) if r.error]
    run_evaluate(engine, settings)
    cases = subjects(engine)
    jira.faults.append(Fault("/rest/api/3/issue", status=429, retry_after=1))
    slack.faults.append(Fault("/api/chat.postMessage", status=503, times=2))
    jira.lose_response("POST", "/rest/api/3/issue")  # created; the answer is lost
    slack.lose_response("POST", "/api/chat.postMessage")

    report = run_dispatch(engine, settings)

    assert report.dead == 0 and report.needs_review == 0
    assert report.reconciled == 2  # each lost create was found by searching the tool
    assert set(issues_by_case(jira)) == cases and len(jira.issues) == len(cases)
    assert set(messages_by_case(slack)) == cases and len(slack.messages) == len(cases)
    issue = next(iter(jira.issues.values()))
    assert issue["fields"]["description"]["type"] == "doc"  # Atlassian Document Format
    assert jira.count("GET", "/rest/api/3/search/jql") >= len(cases)
    assert jira.count("GET", "/rest/api/3/search") == jira.count("GET", "/search/jql")

    # A new reason joins the chronic-absence cases: same issues and messages, updated.
    watch = {"id": "attendance-watch", "when": "chronically_absent and absent_days >= 1",
             "reason": "attendance_watch", "severity": "medium"}  # fmt: skip
    rules = [*example_config()["rules"], watch]
    settings = configured(db_url, data, tmp_path / "out", jira, slack, rules=rules)
    run_evaluate(engine, settings)
    report = run_dispatch(engine, settings)
    assert report.delivered > 0 and report.dead == 0
    watched = [s for s, m in messages_by_case(slack).items() if "attendance watch" in m["text"]]
    assert watched and all(messages_by_case(slack)[s].get("edited") for s in watched)
    assert len(jira.issues) == len(cases) and len(slack.messages) == len(cases)

    # Every case recovers and closes: issues move to Done, messages say closed.
    settings = configured(db_url, data, tmp_path / "out", jira, slack, rules=[],
                          cases={"recovery_days": 0})  # fmt: skip
    run_evaluate(engine, settings)
    run_evaluate(engine, settings)
    run_dispatch(engine, settings)
    assert {i["fields"]["status"]["name"] for i in jira.issues.values()} == {"Done"}
    assert all(m["text"].startswith("*[closed] ") for m in slack.messages.values())
    assert len(jira.transitions_done) == len(cases)  # one transition each, none repeated

    # Replaying the whole outbox with the stored links lost creates nothing.
    with engine.begin() as conn:
        conn.execute(delete(DeliveryLink))
        conn.execute(update(OutboxItem).values(status="pending", attempts=0,
                                               next_attempt_at=OutboxItem.created_at))  # fmt: skip
    report = run_dispatch(engine, settings)
    assert report.dead == 0
    assert len(jira.issues) == len(cases) and len(slack.messages) == len(cases)
    assert len(jira.transitions_done) == len(cases)


def test_teams_gets_one_card_per_new_urgent_case_and_a_lost_post_waits_for_a_person(
    db_url: str, tmp_path: Path
) -> None:
    teams = TeamsWorkflowServer()
    teams.start()
    try:
        data = tmp_path / "data"
        generate_district(data, students=60, seed=21)
        url = f"{teams.base_url}/workflows/abc/triggers/manual/paths/invoke?sig=s1"
        raw = raw_config_for(db_url, data, tmp_path / "out", channels=[], outbox=NO_WAIT,
                             destinations=[{"name": "teams", "kind": "teams_workflow",
                                            "url": url}])  # fmt: skip
        settings = parse_settings(raw, "t.yaml", data)
        engine = open_engine(settings)
        assert not [r.error for r in run_sync(engine, settings) if r.error]
        run_evaluate(engine, settings)
        with engine.connect() as conn:
            urgent = conn.execute(select(Case.id).where(Case.severity == "high")).scalars().all()
        assert 1 < len(urgent) < len(subjects(engine))
        teams.lose_response("POST", "/workflows/")  # posted; the answer never arrives

        report = run_dispatch(engine, settings)

        assert len(teams.cards) == len(urgent)  # one card per urgent case, none for the rest
        assert report.needs_review == 1  # the lost post: a person checks Teams, no second card
        assert all(c["body"][0]["text"].startswith("Urgent: ") for c in teams.cards)
        with engine.connect() as conn:  # a disclosure only where a card actually went out
            disclosed = conn.execute(select(Disclosure.student_id)).scalars().all()
        assert len(disclosed) == len(urgent) - 1  # the lost post waits for a person to say

        rules = [
            *example_config()["rules"],
            {
                "id": "attendance-watch",
                "reason": "watch",
                "when": "chronically_absent and absent_days >= 1",
                "severity": "high",
            },
        ]
        settings = parse_settings({**raw, "rules": rules}, "t.yaml", data)
        run_evaluate(engine, settings)
        report = run_dispatch(engine, settings)
        assert report.delivered > 0
        assert len(teams.cards) == len(urgent)  # updates of announced cases post nothing
    finally:
        teams.stop()
