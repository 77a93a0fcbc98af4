"""Early-warning indicators, computed set-based in the database for every active student.

A handful of statements over temporary tables, no per-student Python: the instructional-day
ordinals of each school let enrolled days be a subtraction instead of a day-by-day join.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import Connection, text

from service.config import IndicatorConfig

ABSENT = ("excused", "unexcused", "suspension")
GRADE_CODES = {"PK": -1, "TK": -1, "KG": 0, "K": 0, **{f"{n:02d}": n for n in range(1, 14)}}


def _f(expr: str) -> str:
    return f"CAST({expr} AS DOUBLE PRECISION)"


@dataclass(frozen=True)
class IndicatorWindow:
    as_of: date
    year_start: date
    grading_period_id: str | None


def current_window(conn: Connection, as_of: date) -> IndicatorWindow:
    """The school year and grading period that contain `as_of`."""
    year = conn.execute(
        text(
            "SELECT start_date FROM academic_sessions WHERE active AND session_type = 'schoolYear' "
            "AND start_date <= :d AND end_date >= :d ORDER BY start_date DESC LIMIT 1"
        ),
        {"d": as_of},
    ).scalar()
    if year is None:  # no roster sessions: the calendar's days in the last year stand in
        year = conn.execute(
            text("SELECT MIN(day) FROM calendar_days WHERE day > :lo AND day <= :d"),
            {"lo": as_of - timedelta(days=365), "d": as_of},
        ).scalar()
    period = conn.execute(
        text(
            "SELECT session_id FROM academic_sessions WHERE active "
            "AND session_type = 'gradingPeriod' AND start_date <= :d "
            "ORDER BY start_date DESC LIMIT 1"
        ),
        {"d": as_of},
    ).scalar()
    return IndicatorWindow(as_of, _as_date(year) if year else as_of, period)


def _as_date(value: object) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _analyze(conn: Connection, name: str) -> None:
    """PostgreSQL keeps no statistics for a new temp table; without them it plans blind."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"ANALYZE {name}"))


def _temp(conn: Connection, name: str, select_sql: str, params: dict[str, object]) -> None:
    conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
    conn.execute(text(f"CREATE TEMP TABLE {name} AS {select_sql}"), params)


def compute_indicators(conn: Connection, cfg: IndicatorConfig, as_of: date) -> IndicatorWindow:
    """Replace `student_indicators` with values as of `as_of`, in the caller's transaction."""
    window = current_window(conn, as_of)
    p: dict[str, object] = {
        "ys": window.year_start,
        "as_of": as_of,
        "lo": date(1, 1, 1),
        "hi": date(9999, 12, 31),
    }
    _temp(
        conn,
        "tmp_ordinals",
        "SELECT school_id, day, ROW_NUMBER() OVER (PARTITION BY school_id ORDER BY day) AS n "
        "FROM calendar_days WHERE instructional AND active AND day >= :ys AND day <= :as_of",
        p,
    )
    conn.execute(text("CREATE INDEX ix_tmp_ordinals ON tmp_ordinals (school_id, day)"))
    _analyze(conn, "tmp_ordinals")
    # One span per student and school: first class entry to last exit, clipped to the window.
    _temp(
        conn,
        "tmp_spans",
        "SELECT student_id, school_id, "
        "CASE WHEN start_day < :ys THEN :ys ELSE start_day END AS start_day, "
        "CASE WHEN end_day > :as_of THEN :as_of ELSE end_day END AS end_day FROM ("
        "  SELECT student_id, school_id, MIN(begin_day) AS start_day, MAX(end_day) AS end_day"
        "  FROM (SELECT e.user_id AS student_id,"
        # The class is looked up only for enrollments that do not name their school.
        "         COALESCE(e.school_id,"
        "          (SELECT c.school_id FROM classes c WHERE c.class_id = e.class_id)) AS school_id,"
        "         COALESCE(e.begin_date, :lo) AS begin_day, COALESCE(e.end_date, :hi) AS end_day"
        "        FROM enrollments e WHERE e.role = 'student' AND e.active) se"
        "  GROUP BY student_id, school_id"
        "  UNION ALL"
        "  SELECT s.student_id, s.school_id, :lo, :hi FROM students s"
        "  WHERE s.active AND NOT EXISTS (SELECT 1 FROM enrollments e"
        "    WHERE e.user_id = s.student_id AND e.role = 'student' AND e.active)"
        ") spans",
        p,
    )
    conn.execute(text("CREATE INDEX ix_tmp_spans ON tmp_spans (student_id)"))
    _analyze(conn, "tmp_spans")
    _temp(conn, "tmp_cal", "SELECT DISTINCT school_id FROM tmp_ordinals", p)
    _temp(
        conn,
        "tmp_enrolled",
        # The ordinal of the last instructional day on or before each bound: one backward
        # index step each (MAX(n) would scan every earlier day on PostgreSQL). Only spans at a
        # school with a calendar count: without one, enrolled days are unknown, not zero.
        "SELECT sp.student_id, SUM(CASE WHEN sp.end_day >= sp.start_day THEN"
        " COALESCE((SELECT o.n FROM tmp_ordinals o WHERE o.school_id = sp.school_id"
        "           AND o.day <= sp.end_day ORDER BY o.day DESC LIMIT 1), 0)"
        " - COALESCE((SELECT o.n FROM tmp_ordinals o WHERE o.school_id = sp.school_id"
        "           AND o.day < sp.start_day ORDER BY o.day DESC LIMIT 1), 0)"
        " ELSE 0 END) AS enrolled_days FROM tmp_spans sp"
        " WHERE sp.school_id IN (SELECT school_id FROM tmp_cal) GROUP BY sp.student_id",
        p,
    )
    absent_in = ", ".join(f"'{c}'" for c in ABSENT)
    # Section and daily events collapse to one absent day per student per instructional day.
    _temp(
        conn,
        "tmp_absent",
        "SELECT student_id, COUNT(*) AS absent_days, SUM(unexcused) AS unexcused_days, "
        "SUM(suspension) AS suspension_days, SUM(CASE WHEN unexcused = 0 AND suspension = 0 "
        "THEN 1 ELSE 0 END) AS excused_days FROM ("
        "  SELECT a.student_id, a.day,"
        "   MAX(CASE WHEN a.category = 'unexcused' THEN 1 ELSE 0 END) AS unexcused,"
        "   MAX(CASE WHEN a.category = 'suspension' THEN 1 ELSE 0 END) AS suspension"
        "  FROM attendance_events a"
        "  JOIN tmp_spans sp ON sp.student_id = a.student_id"
        "  JOIN tmp_ordinals o ON o.school_id = sp.school_id AND o.day = a.day"
        # COALESCE hides the span bounds from SQLite's planner, which would otherwise carry them
        # over to o.day and range-scan the calendar instead of one equality lookup (4x slower).
        "  WHERE COALESCE(a.day, a.day) >= sp.start_day AND COALESCE(a.day, a.day) <= sp.end_day"
        f"  AND a.active AND a.category IN ({absent_in})"
        "  GROUP BY a.student_id, a.day"
        ") d GROUP BY student_id",
        p,
    )
    fail_letters = ", ".join(f"'{_sql_str(x.upper())}'" for x in cfg.failing_letters) or "''"
    core = core_subject_sql(cfg, "COALESCE(c.subjects, co.subjects, '')",
                            "COALESCE(c.subject_codes, co.subject_codes, '')")  # fmt: skip
    p["period"] = window.grading_period_id or ""
    p["fail_score"] = cfg.failing_score
    _temp(
        conn,
        "tmp_failures",
        "SELECT student_id, COUNT(*) AS failures, SUM(core) AS core_failures FROM ("
        "  SELECT g.student_id, g.class_id,"
        f"  MAX(CASE WHEN {core} THEN 1 ELSE 0 END) AS core"
        "  FROM grades g LEFT JOIN classes c ON c.class_id = g.class_id"
        "  LEFT JOIN courses co ON co.course_id = c.course_id"
        "  WHERE g.active AND g.grading_period_id = :period"
        f"  AND (g.score < :fail_score OR UPPER(g.letter) IN ({fail_letters}))"
        "  GROUP BY g.student_id, g.class_id"
        ") f GROUP BY student_id",
        p,
    )
    p["since"] = as_of - timedelta(days=cfg.discipline_window_days - 1)
    _temp(
        conn,
        "tmp_discipline",
        "SELECT student_id, SUM(CASE WHEN counts_as_incident THEN 1 ELSE 0 END) AS incidents, "
        "SUM(CASE WHEN action IN ('out_of_school_suspension', 'expulsion') THEN 1 ELSE 0 END)"
        " AS suspensions, "
        "SUM(CASE WHEN state_reportable THEN 1 ELSE 0 END) AS reportable "
        "FROM discipline_incidents WHERE active AND day >= :since AND day <= :as_of "
        "GROUP BY student_id",
        p,
    )
    grade_case = " ".join(f"WHEN '{code}' THEN {n}" for code, n in GRADE_CODES.items())
    # en.enrolled_days is NULL when the student has no span at a school with a calendar: every
    # attendance value is then unknown (NULL), and a rule over it neither fires nor passes.
    enrolled = "en.enrolled_days"
    known = "en.student_id IS NOT NULL"
    absent = "COALESCE(ab.absent_days, 0)"
    unexcused = "COALESCE(ab.unexcused_days, 0)"
    has_days = f"{enrolled} > 0"
    enough = f"{enrolled} >= :min_days"
    rate = f"{_f(absent)} / {_f(enrolled)}"

    def if_known(expr: str) -> str:
        return f"CASE WHEN {known} THEN {expr} END"

    p.update(
        min_days=cfg.min_enrolled_days,
        chronic=cfg.chronic_absence_rate,
        approaching=cfg.approaching_absence_rate,
    )
    conn.execute(text("DELETE FROM student_indicators"))
    conn.execute(
        text(
            "INSERT INTO student_indicators (student_id, school_id, grade_level, as_of,"
            " enrolled_days, absent_days, unexcused_absent_days, excused_absent_days,"
            " suspension_absent_days, absence_rate, attendance_rate, unexcused_absence_rate,"
            " chronically_absent, approaching_chronic_absence, course_failures,"
            " core_course_failures, discipline_incidents, suspensions, state_reportable_incidents,"
            " attendance_unknown) "
            f"SELECT s.student_id, s.school_id, CASE UPPER(s.grade_level) {grade_case} END, :as_of,"
            f" {enrolled}, {if_known(absent)}, {if_known(unexcused)},"
            f" {if_known('COALESCE(ab.excused_days, 0)')},"
            f" {if_known('COALESCE(ab.suspension_days, 0)')},"
            f" CASE WHEN {has_days} THEN {rate} END,"
            f" CASE WHEN {has_days} THEN {_f(f'{enrolled} - {absent}')} / {_f(enrolled)} END,"
            f" CASE WHEN {has_days} THEN {_f(unexcused)} / {_f(enrolled)} END,"
            f" CASE WHEN NOT ({has_days}) OR {enrolled} IS NULL THEN NULL"
            f" WHEN {enough} AND {rate} >= :chronic THEN TRUE ELSE FALSE END,"
            f" CASE WHEN NOT ({has_days}) OR {enrolled} IS NULL THEN NULL"
            f" WHEN {enough} AND {rate} >= :approaching AND {rate} < :chronic"
            " THEN TRUE ELSE FALSE END,"
            " COALESCE(fa.failures, 0), COALESCE(fa.core_failures, 0),"
            " COALESCE(di.incidents, 0), COALESCE(di.suspensions, 0), COALESCE(di.reportable, 0),"
            f" CASE WHEN {known} THEN NULL WHEN EXISTS (SELECT 1 FROM tmp_spans sp"
            "  WHERE sp.student_id = s.student_id AND sp.school_id IS NOT NULL)"
            " THEN 'no_calendar' ELSE 'no_enrollment' END"
            " FROM students s"
            " LEFT JOIN tmp_enrolled en ON en.student_id = s.student_id"
            " LEFT JOIN tmp_absent ab ON ab.student_id = s.student_id"
            " LEFT JOIN tmp_failures fa ON fa.student_id = s.student_id"
            " LEFT JOIN tmp_discipline di ON di.student_id = s.student_id"
            " WHERE s.active"
        ),
        p,
    )
    for name in ("tmp_ordinals", "tmp_spans", "tmp_cal", "tmp_enrolled", "tmp_absent",
                 "tmp_failures", "tmp_discipline"):  # fmt: skip
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
    return window


def core_subject_names(cfg: IndicatorConfig) -> list[list[str]]:
    """Each configured core subject as its list of accepted names and codes."""
    return [[entry] if isinstance(entry, str) else list(entry) for entry in cfg.core_subjects]


def _matches(names: list[str], subjects: str, codes: str) -> str:
    """SQL: a comma-separated subjects or codes column holds one of `names`, any case."""
    return " OR ".join(
        f"(',' || LOWER({col}) || ',') LIKE '%,{_sql_str(n.lower())},%'"
        for n in names
        for col in (subjects, codes)
    )


def core_subject_sql(cfg: IndicatorConfig, subjects: str, codes: str) -> str:
    names = [n for group in core_subject_names(cfg) for n in group]
    return _matches(names, subjects, codes) if names else "1 = 0"


def core_subject_warnings(conn: Connection, cfg: IndicatorConfig) -> list[str]:
    """A configured core subject that matches no active course or class shrinks course-failure
    flags without a word: say which, and which subjects the data does use."""
    warnings: list[str] = []
    for group in core_subject_names(cfg):
        match = _matches(group, "COALESCE(subjects, '')", "COALESCE(subject_codes, '')")
        found = conn.execute(
            text(
                f"SELECT (SELECT COUNT(*) FROM courses WHERE active AND ({match}))"
                f" + (SELECT COUNT(*) FROM classes WHERE active AND ({match}))"
            )
        ).scalar_one()
        if found:
            continue
        seen: set[str] = set()
        for (value,) in conn.execute(
            text("SELECT DISTINCT subjects FROM courses WHERE active AND subjects IS NOT NULL")
        ):
            seen.update(v for v in str(value).split(",") if v)
        listed = ", ".join(sorted(seen)[:12]) or "none"
        warnings.append(
            f"core subject {' / '.join(group)!r} matches no course or class (subjects in the "
            f"data: {listed}); list the names or codes it goes by in indicators.core_subjects"
        )
    return warnings


def unknown_attendance(conn: Connection) -> dict[tuple[str, str], int]:
    """(school, why) -> students whose attendance indicators are unknown after the last run."""
    rows = conn.execute(
        text(
            "SELECT COALESCE(school_id, ''), attendance_unknown, COUNT(*) FROM student_indicators"
            " WHERE attendance_unknown IS NOT NULL GROUP BY school_id, attendance_unknown"
        )
    )
    return {(school, why): int(n) for school, why, n in rows}


def _sql_str(value: str) -> str:
    """Config strings go into SQL literals (LIKE patterns need them inline): escape quotes."""
    return value.replace("'", "''")
