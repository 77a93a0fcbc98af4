"""The indicator vocabulary rules may use, with the rule-engine type of each.

Kept apart from the SQL that computes them so configuration can be validated without a database.
"""

from __future__ import annotations

import rule_engine

_NUM = rule_engine.DataType.FLOAT
_BOOL = rule_engine.DataType.BOOLEAN

# name -> (rule-engine type, what it means); the order is the order reports show them in.
INDICATORS: dict[str, tuple[rule_engine.DataType, str]] = {
    "enrolled_days": (_NUM, "instructional days enrolled, up to the as-of date"),
    "absent_days": (_NUM, "days absent for any reason (one per day)"),
    "unexcused_absent_days": (_NUM, "days with an unexcused absence"),
    "excused_absent_days": (_NUM, "days with an excused absence only"),
    "suspension_absent_days": (_NUM, "days absent because suspended"),
    "absence_rate": (_NUM, "absent_days / enrolled_days (unknown without enrolled days)"),
    "attendance_rate": (_NUM, "1 - absence_rate (unknown, never 1, without enrolled days)"),
    "unexcused_absence_rate": (_NUM, "unexcused_absent_days / enrolled_days"),
    "chronically_absent": (
        _BOOL,
        "absence_rate >= indicators.chronic_absence_rate and enough enrolled days",
    ),
    "approaching_chronic_absence": (
        _BOOL,
        "absence_rate in the warning band below the chronic cut, with enough enrolled days",
    ),
    "course_failures": (_NUM, "courses failed in the current grading period"),
    "core_course_failures": (
        _NUM,
        "core-subject courses (indicators.core_subjects) failed in the current grading period",
    ),
    "discipline_incidents": (
        _NUM,
        "discipline incidents in the last indicators.discipline_window_days",
    ),
    "suspensions": (
        _NUM,
        "out-of-school suspensions and expulsions in the window",
    ),
    "state_reportable_incidents": (_NUM, "state-reportable incidents in the window"),
    "grade_level": (_NUM, "grade level as a number (KG = 0, PK = -1)"),
}


def rule_context() -> rule_engine.Context:
    """A rule-engine context that rejects unknown indicator names when a rule is parsed."""
    types = {name: dtype for name, (dtype, _) in INDICATORS.items()}
    return rule_engine.Context(type_resolver=rule_engine.type_resolver_from_dict(types))
