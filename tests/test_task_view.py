"""The staff task reads like a counselor's note: evidence in human units, only what the rule used,
the first meeting counted in school days, and a disclosure record that names what was sent."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

from sqlalchemy import Engine, insert

from service.config import parse_settings
from service.models import CalendarDay
from service.task_view import (
    _reason_view,
    disclosed_categories,
    evidence_lines,
    school_days_after,
    used_indicators,
)
from tests.conftest import raw_config_for

ALL_INDICATORS = {
    "enrolled_days": 69.0, "absent_days": 13.0, "unexcused_absent_days": 9.0,
    "excused_absent_days": 4.0, "suspension_absent_days": 0.0, "absence_rate": 0.188,
    "attendance_rate": 0.812, "unexcused_absence_rate": 0.13, "chronically_absent": 1.0,
    "approaching_chronic_absence": 0.0, "course_failures": 0.0, "core_course_failures": 0.0,
    "discipline_incidents": 0.0, "suspensions": 0.0, "state_reportable_incidents": 0.0,
    "grade_level": 9.0,
}  # fmt: skip


def settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    return parse_settings(raw_config_for("sqlite://", tmp_path, tmp_path), "t.yaml", tmp_path)


def test_a_chronic_absence_reason_shows_days_missed_and_nothing_else(tmp_path: Path) -> None:
    reason = _reason_view(settings(tmp_path), {
        "rule_id": "chronic-absence", "rule_version": 1, "reason": "chronic_absence",
        "severity": "high", "origin": "rule", "rule_expression": "chronically_absent",
        "evidence": {"as_of": "2026-11-20", "indicators": ALL_INDICATORS},
    })  # fmt: skip

    assert reason["evidence_summary"] == [{"text": "missed 13 of 69 school days (19%)"}]
    # Only what the rule read (and the two counts its sentence needs), as a person reads them.
    assert reason["evidence"]["indicators"] == {
        "chronically_absent": True, "absent_days": 13, "enrolled_days": 69}  # fmt: skip


def test_each_kind_of_evidence_reads_in_its_own_units(tmp_path: Path) -> None:
    s = settings(tmp_path)
    values = {**ALL_INDICATORS, "core_course_failures": 2.0, "suspensions": 1.0,
              "discipline_incidents": 7.0}  # fmt: skip
    used = used_indicators("core_course_failures >= 1 or suspensions >= 1 or "
                           "discipline_incidents >= 6 or unexcused_absence_rate > 0.1")  # fmt: skip
    assert evidence_lines(s, used, values) == [
        "9 unexcused absences in 69 school days (13%)",
        "failing 2 core courses (English Language Arts, Mathematics) this grading period",
        "7 discipline incidents in the last 90 days",
        "1 out-of-school suspension or expulsion in the last 90 days",
    ]


def test_the_disclosure_names_only_the_kinds_of_record_the_task_carried() -> None:
    attendance_only = {"reasons": [{"evidence": {"indicators": {"absent_days": 13}}}]}
    assert disclosed_categories(attendance_only) == ["identity", "enrollment", "case", "attendance"]
    with_help = {"reasons": [{"evidence": {"indicators": {"core_course_failures": 1}},
                              "note": "asked for help"}],
                 "resources": [{"id": "homework-help"}]}  # fmt: skip
    assert disclosed_categories(with_help) == [
        "identity", "enrollment", "case", "grades", "referral_note", "support_offered"]  # fmt: skip


def test_the_first_meeting_is_due_in_school_days_skipping_a_holiday_week(engine: Engine) -> None:
    opened = date(2026, 11, 20)  # a Friday; Thanksgiving week has no school
    rows = []
    for i in range(1, 20):
        day = opened + timedelta(days=i)
        school_day = day.weekday() < 5 and not (date(2026, 11, 23) <= day <= date(2026, 11, 27))
        rows.append({"school_id": "sch-1", "day": day, "instructional": school_day,
                     "row_hash": 0, "active": True})  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(CalendarDay), rows)
        assert school_days_after(conn, "sch-1", opened, 5) == date(2026, 12, 4)
        assert school_days_after(conn, "sch-9", opened, 5) is None  # no calendar: caller decides
