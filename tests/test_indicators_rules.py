"""Indicators computed in SQL and rules at their edges, on both databases."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
import rule_engine
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, text

from service.config import Settings
from service.indicator_names import INDICATORS, rule_context
from service.models import Base
from service.pipeline import run_evaluate, run_sync
from service.rules import to_sql
from tests.builders import TinyDistrict


def indicators(engine: Engine) -> dict[str, dict[str, object]]:
    with engine.connect() as conn:
        return {
            r["student_id"]: dict(r)
            for r in conn.execute(text("SELECT * FROM student_indicators")).mappings()
        }


def cases_by_student(engine: Engine) -> dict[str, list[str]]:
    with engine.connect() as conn:
        out: dict[str, list[str]] = {}
        for sid, rule in conn.execute(
            text("SELECT r.student_id, r.rule_id FROM referrals r ORDER BY r.rule_id")
        ):
            out.setdefault(sid, []).append(rule)
        return out


@pytest.fixture
def edge_district(tmp_path: Path) -> tuple[TinyDistrict, list[date]]:
    d = TinyDistrict(tmp_path / "data")
    d.school()
    weekdays = d.school_days("sch-1", 21)
    holiday = weekdays[10]  # a weekday with no school: 20 instructional days up to as_of
    d.calendar = [(s, day, day != holiday) for s, day, _ in d.calendar]
    days = [day for day in weekdays if day != holiday]
    # exactly 10% absent over 20 enrolled days
    d.student("s-ten", "1001")
    d.absent("1001", days[2], "A")
    d.absent("1001", days[3], "AE")
    # 9.99...%: below the cut (2 of 21 would need day 21; use 1 of 20 plus a tardy)
    d.student("s-five", "1002")
    d.absent("1002", days[4], "A")
    d.absent("1002", days[5], "T")  # tardy is not an absence
    # many absences but only 19 enrolled days: below the minimum, no case
    d.student("s-new", "1003", begin=days[1])
    for day in days[1:9]:
        d.absent("1003", day, "A")
    # section-level records of one day collapse into one absent day
    d.student("s-periods", "1004")
    for p in ("1", "2", "3"):
        d.absent("1004", days[6], "A", period=p)
    d.absent("1004", days[7], "OSS")
    # an absence recorded on the holiday does not count
    d.absent("1004", holiday, "A")
    return d, days


def test_chronic_absence_edges(
    edge_district: tuple[TinyDistrict, list[date]],
    engine: Engine,
    make_settings: Callable[..., Settings],
) -> None:
    d, days = edge_district
    d.write()
    settings = make_settings(d.root, as_of=days[-1].isoformat())
    run_sync(engine, settings)
    run_evaluate(engine, settings)
    ind = indicators(engine)
    ten = ind["s-ten"]
    assert (ten["enrolled_days"], ten["absent_days"]) == (20, 2)
    assert ten["absence_rate"] == 0.1 and ten["attendance_rate"] == 0.9
    assert (ten["unexcused_absent_days"], ten["excused_absent_days"]) == (1, 1)
    assert bool(ten["chronically_absent"]) is True  # 10% is chronic: ">= 10%", not "> 10%"
    five = ind["s-five"]
    assert (five["absent_days"], five["absence_rate"]) == (1, 0.05)
    assert bool(five["approaching_chronic_absence"]) and not bool(five["chronically_absent"])
    new = ind["s-new"]
    assert (new["enrolled_days"], new["absent_days"]) == (19, 8)
    assert not bool(new["chronically_absent"])  # 42% absent, but too few days to judge
    periods = ind["s-periods"]
    assert (periods["absent_days"], periods["suspension_absent_days"]) == (2, 1)
    assert periods["unexcused_absent_days"] == 1
    # OSS absence days count as absent days; the suspension rule reads discipline records.
    assert cases_by_student(engine) == {
        "s-ten": ["chronic-absence"],
        "s-periods": ["chronic-absence"],
    }


def test_the_issue_example_rule_at_exactly_ten_percent(
    edge_district: tuple[TinyDistrict, list[date]],
    engine: Engine,
    make_settings: Callable[..., Settings],
) -> None:
    d, days = edge_district
    d.write()
    rules = [
        {"id": "attendance-below-90", "when": "attendance_rate < 0.90 and enrolled_days >= 20",
         "reason": "attendance", "resources": ["attendance"]},
        {"id": "absent-10-or-more", "when": "absence_rate >= 0.10 and enrolled_days >= 20",
         "reason": "attendance", "resources": ["attendance"]},
    ]  # fmt: skip
    settings = make_settings(d.root, as_of=days[-1].isoformat(), rules=rules)
    run_sync(engine, settings)
    run_evaluate(engine, settings)
    flagged = cases_by_student(engine)
    # 90.0% attendance is not below 90%; 10.0% absence is at least 10%. s-new has 19 days.
    assert flagged["s-ten"] == ["absent-10-or-more"]
    assert "s-new" not in flagged and "s-five" not in flagged


def test_course_failures_count_core_subjects_in_the_current_period(
    engine: Engine, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    d = TinyDistrict(tmp_path / "data")
    d.school()
    days = d.school_days("sch-1", 60)
    d.student("s1", "1")
    d.grade("s1", "Mathematics", 59.9)
    d.grade("s1", "Art", 20)
    d.student("s2", "2")
    d.grade("s2", "English Language Arts", 60)  # exactly the cut: passing
    d.grade("s2", "Mathematics", 75, "F")  # a letter F fails whatever the number says
    d.write()
    settings = make_settings(d.root, as_of=days[-1].isoformat())
    run_sync(engine, settings)
    run_evaluate(engine, settings)
    ind = indicators(engine)
    assert (ind["s1"]["course_failures"], ind["s1"]["core_course_failures"]) == (2, 1)
    assert (ind["s2"]["course_failures"], ind["s2"]["core_course_failures"]) == (1, 1)
    assert cases_by_student(engine) == {
        "s1": ["core-course-failure"],
        "s2": ["core-course-failure"],
    }


NUMERIC = [n for n, (t, _) in INDICATORS.items() if t == rule_engine.DataType.FLOAT]
BOOLEAN = [n for n, (t, _) in INDICATORS.items() if t == rule_engine.DataType.BOOLEAN]


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.sampled_from(["cmp", "bool"] + (["and", "or", "not"] if depth < 2 else [])))
    if kind == "cmp":
        left = draw(st.sampled_from(NUMERIC))
        op = draw(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]))
        value = draw(st.sampled_from(["0", "0.1", "0.05", "1", "2", "20", "0.9"]))
        if draw(st.booleans()):
            return f"{left} {op} {value}"
        other = draw(st.sampled_from(NUMERIC))
        return f"{left} - {other} {op} {value}"
    if kind == "bool":
        return draw(st.sampled_from(BOOLEAN))
    if kind == "not":
        return f"not ({draw(expressions(depth + 1))})"
    return f"({draw(expressions(depth + 1))}) {kind} ({draw(expressions(depth + 1))})"


ROW = st.fixed_dictionaries(
    {
        **{n: st.sampled_from([0.0, 0.05, 0.1, 0.9, 1.0, 2.0, 19.0, 20.0, 21.0]) for n in NUMERIC},
        **{n: st.booleans() for n in BOOLEAN},
    }
)


@settings(max_examples=150, deadline=None)
@given(expression=expressions(), row=ROW)
def test_sql_translation_agrees_with_rule_engine(expression: str, row: dict[str, object]) -> None:
    """The set-based SQL form of a rule fires exactly where rule-engine itself would."""
    sql = to_sql(expression)
    assert sql is not None
    expected = rule_engine.Rule(expression, context=rule_context()).matches(row)
    engine = _memory_engine()
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM student_indicators"))
        cols = ["student_id", "as_of", *row]
        conn.execute(
            text(f"INSERT INTO student_indicators ({', '.join(cols)}) "
                 f"VALUES ({', '.join(':' + c for c in cols)})"),
            {"student_id": "x", "as_of": date(2026, 11, 20), **row},
        )  # fmt: skip
        got = conn.execute(text(f"SELECT COUNT(*) FROM student_indicators si WHERE {sql}"))
        assert bool(got.scalar_one()) == expected, (expression, sql, row)


_ENGINE: list[Engine] = []


def _memory_engine() -> Engine:
    if not _ENGINE:
        engine = create_engine("sqlite://")
        Base.metadata.create_all(engine, tables=[Base.metadata.tables["student_indicators"]])
        _ENGINE.append(engine)
    return _ENGINE[0]
