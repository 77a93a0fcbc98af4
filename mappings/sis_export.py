"""A district SIS's own CSV export (attendance, discipline, calendar) to canonical rows.

OneRoster carries none of these, so every district's export looks different: the column names
and the code values come from the district's YAML (see `config/district.yaml`), not from code.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import ClassVar, Literal

from pydantic import field_validator

from mappings.fields import optional, parse_date, parse_float, required
from mappings.spec import EntityMapping, Lookups, Mapped, Need
from service.config import Strict
from service.errors import BadRecord


class SisColumnMap(Strict):
    """Which column of the district's export holds each field we need."""

    file: str
    columns: dict[str, str]
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    @field_validator("columns")
    @classmethod
    def _names_required_fields(cls, value: dict[str, str]) -> dict[str, str]:
        missing = [f for f in cls.REQUIRED if f not in value]
        if missing:
            raise ValueError(f"must name the export column for {missing}")
        return value


class SisCalendarFile(SisColumnMap):
    REQUIRED = ("school_id", "date", "in_session")
    in_session_values: list[str] = ["Y", "1", "TRUE", "true"]


class SisAttendanceFile(SisColumnMap):
    REQUIRED = ("student", "date", "code")
    # district code -> excused | unexcused | suspension | tardy | present
    codes: dict[str, Literal["excused", "unexcused", "suspension", "tardy", "present"]]


class SisDisciplineFile(SisColumnMap):
    REQUIRED = ("incident_id", "student", "date", "action_code")
    # district action code -> out_of_school_suspension | in_school_suspension | expulsion | other
    actions: dict[
        str, Literal["out_of_school_suspension", "in_school_suspension", "expulsion", "other"]
    ]
    state_reportable_values: list[str] = ["Y", "1", "TRUE", "true"]


class SisExportMapping(Strict):
    """How a district's export is read: how rows name students, date formats, each file's map."""

    # How export rows name a student: by our student id (OneRoster sourcedId) or local number.
    student_match: Literal["student_id", "local_id"] = "local_id"
    # How export rows name a school: by the roster's sourcedId, by its school number (OneRoster
    # orgs.identifier, what SIS exports use), or either ("auto").
    school_match: Literal["auto", "school_id", "identifier"] = "auto"
    # Export school code -> roster school sourcedId or number, for codes that are neither.
    school_codes: dict[str, str] = {}
    date_formats: list[str] = ["%Y-%m-%d"]
    calendar: SisCalendarFile | None = None
    attendance: SisAttendanceFile | None = None
    discipline: SisDisciplineFile | None = None


def _get(row: dict[str, str], columns: dict[str, str], field: str) -> str | None:
    column = columns.get(field)
    return optional(row, column) if column else None


def _need(row: dict[str, str], columns: dict[str, str], field: str) -> str:
    return required(row, columns[field])


def _width(row: dict[str, str]) -> None:
    if "__width__" in row:
        raise BadRecord("bad_field_count", row["__width__"])


def _student(row: dict[str, str], columns: dict[str, str], lookups: Lookups, by_local: bool) -> str:
    ref = _need(row, columns, "student")
    student = lookups.student_by_local_id.get(ref) if by_local else ref
    if student is None or (not by_local and student not in lookups.students):
        raise BadRecord(
            "unknown_student", f"{columns['student']} {ref!r} is not a known student", ref=ref
        )
    return student


def school_code(row: dict[str, str], column: str, codes: dict[str, str]) -> str:
    """The export's school code after the configured code map (what the lookup searches)."""
    code = (row.get(column) or "").strip()
    return codes.get(code, code)


def resolve_school(code: str, lookups: Lookups, match: str) -> str | None:
    """The roster school sourcedId an export school code names, or None."""
    if match != "identifier" and code in lookups.school_ids:
        return code
    if match != "school_id":
        return lookups.school_by_number.get(code)
    return None


def map_calendar(
    row: dict[str, str], lookups: Lookups, *, columns: dict[str, str], formats: tuple[str, ...],
    in_session: frozenset[str], codes: dict[str, str], match: str,
) -> Mapped:  # fmt: skip
    _width(row)
    day = parse_date(_need(row, columns, "date"), columns["date"], formats)
    flag = (_get(row, columns, "in_session") or "").strip()
    raw_school = _need(row, columns, "school_id")
    school = resolve_school(school_code(row, columns["school_id"], codes), lookups, match)
    if school is None:
        raise BadRecord(
            "unknown_school",
            f"{columns['school_id']} {raw_school!r} matches no roster school (by {match}; "
            "see school_match and school_codes)",
        )
    return [
        (
            "calendar_days",
            {
                "school_id": school,
                "day": day,
                "instructional": flag in in_session,
            },
        )
    ]


def _event_school(
    row: dict[str, str], columns: dict[str, str], lookups: Lookups, codes: dict[str, str],
    match: str,
) -> str | None:  # fmt: skip
    column = columns.get("school_id")
    if not column:
        return None
    return resolve_school(school_code(row, column, codes), lookups, match)


def map_attendance(
    row: dict[str, str], lookups: Lookups, *, columns: dict[str, str], formats: tuple[str, ...],
    codes: dict[str, str], by_local: bool, school_codes: dict[str, str], match: str,
) -> Mapped:  # fmt: skip
    _width(row)
    code = _need(row, columns, "code")
    category = codes.get(code)
    if category is None:
        raise BadRecord(
            "unknown_code", f"attendance code {code!r} is not in this source's code map"
        )
    student = _student(row, columns, lookups, by_local)
    day = parse_date(_need(row, columns, "date"), columns["date"], formats)
    period = _get(row, columns, "period")
    # Exports without an id still need a stable key, or a re-import would duplicate events.
    event_id = _get(row, columns, "event_id") or f"{student}|{day.isoformat()}|{period or ''}"
    return [
        (
            "attendance_events",
            {
                "event_id": event_id,
                "student_id": student,
                "school_id": _event_school(row, columns, lookups, school_codes, match),
                "day": day,
                "period": period,
                "category": category,
                "code": code,
            },
        )
    ]


def map_discipline(
    row: dict[str, str], lookups: Lookups, *, columns: dict[str, str], formats: tuple[str, ...],
    actions: dict[str, str], reportable: frozenset[str], by_local: bool,
    school_codes: dict[str, str], match: str,
) -> Mapped:  # fmt: skip
    _width(row)
    action_code = _need(row, columns, "action_code")
    action = actions.get(action_code)
    if action is None:
        raise BadRecord(
            "unknown_code", f"discipline action {action_code!r} is not in this source's code map"
        )
    student = _student(row, columns, lookups, by_local)
    return [
        (
            "discipline_incidents",
            {
                "incident_id": _need(row, columns, "incident_id"),
                "student_id": student,
                "school_id": _event_school(row, columns, lookups, school_codes, match),
                "day": parse_date(_need(row, columns, "date"), columns["date"], formats),
                "behavior_code": _get(row, columns, "behavior_code"),
                "action": action,
                "action_code": action_code,
                "action_days": parse_float(_get(row, columns, "action_days"), "action_days"),
                "state_reportable": (_get(row, columns, "state_reportable") or "") in reportable,
            },
        )
    ]


def sis_entity_mappings(cfg: SisExportMapping) -> list[EntityMapping]:
    """Calendar, attendance and discipline mappings as the district configured them."""
    formats = tuple(cfg.date_formats)
    by_local = cfg.student_match == "local_id"
    lookup = "student_by_local_id" if by_local else "students"
    school_codes = dict(cfg.school_codes)
    match = cfg.school_match
    out: list[EntityMapping] = []

    def add(
        entity: str, spec: SisColumnMap, table: str,
        fn: Callable[[dict[str, str], Lookups], Mapped], resolve_student: bool,
    ) -> None:  # fmt: skip
        # The configuration already refused a file that does not name its REQUIRED fields.
        columns = spec.columns
        required = frozenset(columns[f] for f in spec.REQUIRED)
        needs: tuple[Need, ...] = ((lookup, columns["student"]),) if resolve_student else ()
        if "school_id" in columns:
            needs += (("schools", partial(school_code, column=columns["school_id"],
                                          codes=school_codes)),)  # fmt: skip
        out.append(
            EntityMapping(entity, spec.file, (table,), required, frozenset(columns.values()), fn,
                          needs=needs)
        )  # fmt: skip

    if cfg.calendar:
        c = cfg.calendar
        fn = partial(
            map_calendar, columns=c.columns, formats=formats,
            in_session=frozenset(c.in_session_values), codes=school_codes, match=match,
        )  # fmt: skip
        add("calendar", c, "calendar_days", fn, False)
    if cfg.attendance:
        a = cfg.attendance
        fn = partial(
            map_attendance, columns=a.columns, formats=formats, codes=dict(a.codes),
            by_local=by_local, school_codes=school_codes, match=match,
        )  # fmt: skip
        add("attendance", a, "attendance_events", fn, True)
    if cfg.discipline:
        d = cfg.discipline
        fn = partial(
            map_discipline, columns=d.columns, formats=formats, actions=dict(d.actions),
            reportable=frozenset(d.state_reportable_values), by_local=by_local,
            school_codes=school_codes, match=match,
        )  # fmt: skip
        add("discipline", d, "discipline_incidents", fn, True)
    return out
