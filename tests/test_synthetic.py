"""Tests for the deterministic synthetic district generator."""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from datetime import date, timedelta
from pathlib import Path

import phonenumbers
import pytest

from tools.synthetic import (
    ONEROSTER_HEADERS,
    SIS_HEADERS,
    USERS_HEADER_V11,
    GenerationSummary,
    generate_district,
)

AS_OF = date(2026, 11, 20)
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
GUARDIAN_ROLES = {"parent", "guardian", "relatedContact"}
ATTENDANCE_CODES = {"A", "AE", "T", "OSS"}
ABSENT_CODES = {"A", "AE", "OSS"}


def read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def header(path: Path) -> list[str]:
    with path.open(encoding="utf-8", newline="") as fh:
        return next(csv.reader(fh))


def iso(value: str) -> date | None:
    if not ISO_DATE.match(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


class District:
    """Parsed output plus per-row validity, the way a strict consumer would judge it."""

    def __init__(self, root: Path, as_of: date = AS_OF) -> None:
        self.root = root
        self.as_of = as_of
        ors, sis = root / "oneroster", root / "sis"
        self.orgs = read(ors / "orgs.csv")
        self.classes = {r["sourcedId"]: r for r in read(ors / "classes.csv")}
        self.line_items = {r["sourcedId"]: r for r in read(ors / "lineItems.csv")}
        self.users_rows = read(ors / "users.csv")
        self.users = {r["sourcedId"]: r for r in self.users_rows if r["sourcedId"]}
        roles_path = ors / "roles.csv"
        if roles_path.exists():
            self.role = {r["userSourcedId"]: r["role"] for r in read(roles_path)}
        else:
            self.role = {r["sourcedId"]: r["role"] for r in self.users_rows}
        self.enrollments = read(ors / "enrollments.csv")
        self.results = read(ors / "results.csv")
        self.calendar = read(sis / "calendar.csv")
        self.attendance = read(sis / "attendance.csv")
        self.discipline = read(sis / "discipline.csv")
        self.students = {sid: u for sid, u in self.users.items() if self.role.get(sid) == "student"}
        self.by_number = {u["identifier"]: sid for sid, u in self.students.items()}
        self.instructional = sorted(
            {date.fromisoformat(r["CalendarDate"]) for r in self.calendar if r["InSession"] == "Y"}
        )
        self.in_session = set(self.instructional)
        self.windows: dict[str, tuple[date, date | None]] = {}
        for e in self.enrollments:
            if e["role"] == "student" and self.valid_enrollment(e):
                self.windows[e["userSourcedId"]] = (
                    date.fromisoformat(e["beginDate"]),
                    iso(e["endDate"]),
                )

    # -- validity ------------------------------------------------------------------------

    def valid_user(self, r: dict[str, str]) -> bool:
        return bool(r["sourcedId"]) and r["sourcedId"] in self.role

    def valid_enrollment(self, r: dict[str, str]) -> bool:
        return (
            bool(r["sourcedId"])
            and r["userSourcedId"] in self.users
            and r["classSourcedId"] in self.classes
            and iso(r["beginDate"]) is not None
            and (r["endDate"] == "" or iso(r["endDate"]) is not None)
        )

    def valid_result(self, r: dict[str, str]) -> bool:
        try:
            score = float(r["score"])
        except ValueError:
            return False
        return (
            bool(r["sourcedId"])
            and 0 <= score <= 100
            and r["lineItemSourcedId"] in self.line_items
            and r["studentSourcedId"] in self.students
            and iso(r["scoreDate"]) is not None
        )

    def valid_attendance(self, r: dict[str, str]) -> bool:
        day = iso(r["AbsenceDate"])
        return (
            r["AttendanceCode"] in ATTENDANCE_CODES
            and r["StudentNumber"] in self.by_number
            and day is not None
            and day in self.in_session
            and day <= self.as_of
        )

    def valid_incident(self, r: dict[str, str]) -> bool:
        day = iso(r["IncidentDate"])
        return (
            r["StudentNumber"] in self.by_number
            and day is not None
            and day in self.in_session
            and day <= self.as_of
        )

    def invalid_rows(self) -> dict[str, list[int]]:
        checks = {
            "users": (self.users_rows, self.valid_user),
            "enrollments": (self.enrollments, self.valid_enrollment),
            "results": (self.results, self.valid_result),
            "attendance": (self.attendance, self.valid_attendance),
            "discipline": (self.discipline, self.valid_incident),
        }
        return {
            name: [i for i, row in enumerate(rows) if not ok(row)]
            for name, (rows, ok) in checks.items()
        }

    # -- measures ------------------------------------------------------------------------

    def enrolled_days(self, sid: str) -> int:
        begin, end = self.windows[sid]
        last = min(end or self.as_of, self.as_of)
        return sum(1 for d in self.instructional if begin <= d <= last)

    def absent_days(self) -> dict[str, set[date]]:
        out: dict[str, set[date]] = defaultdict(set)
        for r in self.attendance:
            if r["AttendanceCode"] in ABSENT_CODES:
                out[self.by_number[r["StudentNumber"]]].add(date.fromisoformat(r["AbsenceDate"]))
        return out


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[GenerationSummary, District]:
    root = tmp_path_factory.mktemp("big")
    summary = generate_district(root, students=2000, seed=21)
    return summary, District(root)


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.csv"))}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = generate_district(tmp_path / "a", students=300, seed=5)
    b = generate_district(tmp_path / "b", students=300, seed=5)
    generate_district(tmp_path / "c", students=300, seed=6)
    files_a, files_b, files_c = (all_files(tmp_path / x) for x in "abc")
    assert files_a == files_b
    assert a == b
    assert set(files_a) == set(files_c)
    for name in ("oneroster/users.csv", "oneroster/results.csv", "sis/attendance.csv"):
        assert files_a[name] != files_c[name]


def test_headers_and_manifest_v12(tmp_path: Path) -> None:
    summary = generate_district(tmp_path, students=40, seed=3)
    for name, cols in ONEROSTER_HEADERS.items():
        assert header(tmp_path / "oneroster" / name) == cols, name
    for name, cols in SIS_HEADERS.items():
        assert header(tmp_path / "sis" / name) == cols, name
    manifest = {r["propertyName"]: r["value"] for r in read(tmp_path / "oneroster/manifest.csv")}
    assert manifest["manifest.version"] == "1.0"
    assert manifest["oneroster.version"] == "1.2"
    assert manifest["file.roles"] == "bulk"
    assert manifest["file.demographics"] == "absent"
    assert manifest["source.systemCode"] == "seed-3"
    for prop, value in manifest.items():
        if prop.startswith("file.") and value == "bulk":
            assert (tmp_path / "oneroster" / f"{prop[5:]}.csv").exists(), prop
    raw = (tmp_path / "oneroster/users.csv").read_bytes()
    assert b"\r\n" not in raw
    raw.decode("utf-8")
    # summary.files counts data rows of every file
    for rel, rows in summary.files.items():
        lines = (tmp_path / rel).read_text(encoding="utf-8").count("\n")
        assert rows == lines - 1, rel
    assert summary.bytes_written == sum(p.stat().st_size for p in tmp_path.rglob("*.csv"))


def test_headers_and_manifest_v11(tmp_path: Path) -> None:
    generate_district(tmp_path, students=40, seed=3, oneroster_version="1.1")
    assert header(tmp_path / "oneroster/users.csv") == USERS_HEADER_V11
    assert not (tmp_path / "oneroster/roles.csv").exists()
    manifest = {r["propertyName"]: r["value"] for r in read(tmp_path / "oneroster/manifest.csv")}
    assert manifest["oneroster.version"] == "1.1"
    assert "file.roles" not in manifest
    for name, cols in ONEROSTER_HEADERS.items():
        if name not in ("users.csv", "roles.csv"):
            assert header(tmp_path / "oneroster" / name) == cols, name
    users = read(tmp_path / "oneroster/users.csv")
    assert {u["role"] for u in users} >= {"student", "teacher", "parent"}
    orgs = {o["sourcedId"] for o in read(tmp_path / "oneroster/orgs.csv")}
    assert all(u["orgSourcedIds"] in orgs for u in users)


def test_version_and_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_district(tmp_path, students=20, oneroster_version="2.0")
    with pytest.raises(ValueError):
        generate_district(tmp_path, students=0)


def test_referential_integrity(big: tuple[GenerationSummary, District]) -> None:
    summary, d = big
    assert d.invalid_rows() == {k: [] for k in d.invalid_rows()}
    schools = {o["sourcedId"] for o in d.orgs if o["type"] == "school"}
    district = [o for o in d.orgs if o["type"] == "district"]
    assert len(district) == 1
    assert all(
        o["parentSourcedId"] == district[0]["sourcedId"] for o in d.orgs if o["type"] == "school"
    )
    assert len(schools) == summary.schools == 4
    assert len(d.students) == summary.students == 2000
    assert len(d.by_number) == 2000
    assert all(re.fullmatch(r"\d{6}", n) for n in d.by_number)
    for e in d.enrollments:
        assert e["userSourcedId"] in d.users
        assert e["classSourcedId"] in d.classes
        assert e["schoolSourcedId"] == d.classes[e["classSourcedId"]]["schoolSourcedId"]
        if e["role"] == "teacher":
            assert d.role[e["userSourcedId"]] == "teacher" and e["primary"] == "true"
    for r in d.results:
        assert r["lineItemSourcedId"] in d.line_items
        assert r["studentSourcedId"] in d.students
    for li in d.line_items.values():
        assert li["classSourcedId"] in d.classes
    # The SIS export names schools by number (orgs.identifier), as real exports do.
    numbers = {o["identifier"] for o in d.orgs if o["type"] == "school"}
    for a in d.attendance:
        assert a["StudentNumber"] in d.by_number
        assert a["SchoolCode"] in numbers and a["SchoolCode"] not in schools
    assert {c["SchoolCode"] for c in d.calendar} == numbers
    for x in d.discipline:
        assert x["StudentNumber"] in d.by_number
    # agents point both ways
    for sid, u in d.students.items():
        agents = u["agentSourcedIds"].split(",")
        assert 1 <= len(agents) <= 3
        for g in agents:
            assert d.role[g] in GUARDIAN_ROLES
            assert sid in d.users[g]["agentSourcedIds"].split(",")
    ids = [e["sourcedId"] for e in d.enrollments] + [r["sourcedId"] for r in d.results]
    assert len(ids) == len(set(ids))
    att_ids = [a["AttendanceID"] for a in d.attendance]
    assert len(att_ids) == len(set(att_ids))
    assert summary.enrollments == len(d.enrollments)
    assert summary.results == len(d.results)
    assert summary.attendance_events == len(d.attendance)
    assert summary.discipline_incidents == len(d.discipline)


def test_grades_schools_and_classes(big: tuple[GenerationSummary, District]) -> None:
    _, d = big
    kinds = {"KG": "e", "01": "e", "02": "e", "03": "e", "04": "e", "05": "e", "06": "m"}
    kinds |= {"07": "m", "08": "m", "09": "h", "10": "h", "11": "h", "12": "h"}
    school_kind: dict[str, set[str]] = defaultdict(set)
    for u in d.students.values():
        school_kind[u["primaryOrgSourcedId"]].add(kinds[u["grades"]])
    assert all(len(k) == 1 for k in school_kind.values())
    per_student: dict[str, list[dict[str, str]]] = defaultdict(list)
    for e in d.enrollments:
        if e["role"] == "student":
            per_student[e["userSourcedId"]].append(d.classes[e["classSourcedId"]])
    class_size = Counter(
        e["classSourcedId"] for e in d.enrollments if e["role"] == "student"
    ).values()
    assert 18 <= sum(class_size) / len(class_size) <= 32
    for sid, classes in per_student.items():
        grade = d.students[sid]["grades"]
        assert all(c["grades"] == grade for c in classes)
        types = sorted(c["classType"] for c in classes)
        subjects = {c["subjects"] for c in classes}
        if kinds[grade] == "e":
            assert types == ["homeroom", "scheduled", "scheduled"]
            assert subjects == {"", "English Language Arts", "Mathematics"}
        else:
            assert types == ["scheduled"] * 6
            assert {"English Language Arts", "Mathematics", "Science", "Social Studies"} <= subjects


def test_calendar_and_attendance_dates(big: tuple[GenerationSummary, District]) -> None:
    summary, d = big
    weekdays = [
        date(2026, 8, 17) + timedelta(days=n)
        for n in range((date(2027, 6, 4) - date(2026, 8, 17)).days + 1)
    ]
    weekdays = [w for w in weekdays if w.weekday() < 5]
    assert summary.calendar_days == len(d.calendar) == len(weekdays) * summary.schools
    closed = {date.fromisoformat(r["CalendarDate"]) for r in d.calendar if r["InSession"] == "N"}
    for day in (date(2026, 9, 7), date(2026, 11, 25), date(2027, 1, 1), date(2027, 3, 17)):
        assert day in closed
    assert date(2026, 11, 20) not in closed
    for a in d.attendance:
        day = date.fromisoformat(a["AbsenceDate"])
        begin, end = d.windows[d.by_number[a["StudentNumber"]]]
        assert begin <= day <= min(end or AS_OF, AS_OF)
        assert a["Period"] == "" or a["AttendanceCode"] in ("A", "AE")
    # per-period rows exist and come in groups for one student/day
    period_days = Counter(
        (a["StudentNumber"], a["AbsenceDate"]) for a in d.attendance if a["Period"]
    )
    assert period_days and all(n in (2, 3) for n in period_days.values())


def test_oss_incidents_show_up_in_attendance(big: tuple[GenerationSummary, District]) -> None:
    _, d = big
    oss_att = {
        (a["StudentNumber"], a["AbsenceDate"]) for a in d.attendance if a["AttendanceCode"] == "OSS"
    }
    later = [x for x in d.discipline if x["ActionCode"] == "OSS"]
    assert later
    checked = 0
    for x in later:
        day = date.fromisoformat(x["IncidentDate"])
        nxt = next((i for i in d.instructional if i > day), None)
        _begin, end = d.windows[d.by_number[x["StudentNumber"]]]
        if nxt is None or nxt > min(end or AS_OF, AS_OF):
            continue
        assert (x["StudentNumber"], nxt.isoformat()) in oss_att
        checked += 1
    assert checked
    for x in d.discipline:
        assert x["StateReportable"] == ("Y" if x["BehaviorCode"] in ("FIGHT", "WEAPON") else "N")


def test_distributions(big: tuple[GenerationSummary, District]) -> None:
    summary, d = big
    absent = d.absent_days()
    rates = {}
    for sid in d.students:
        days = d.enrolled_days(sid)
        if days:
            rates[sid] = len(absent.get(sid, ())) / days
    chronic = {sid for sid, r in rates.items() if r >= 0.10}
    assert 0.10 <= len(chronic) / len(rates) <= 0.20
    approaching = [r for r in rates.values() if 0.05 <= r < 0.10]
    assert 0.02 <= len(approaching) / len(rates) <= 0.15

    guardian_links = [
        sum(1 for g in u["agentSourcedIds"].split(",") if d.role[g] in ("parent", "guardian"))
        for u in d.students.values()
    ]
    assert 1.0 < sum(guardian_links) / len(guardian_links) < 2.0
    guardians = [u for sid, u in d.users.items() if d.role[sid] in GUARDIAN_ROLES]
    assert summary.guardians == len(guardians)
    langs = Counter(u["metadata.language"] for u in guardians)
    assert 0.18 <= langs["es"] / len(guardians) <= 0.32
    assert 0.60 <= langs["en"] / len(guardians) <= 0.80
    assert set(langs) <= {"en", "es", "vi", "zh", "so"}
    dnc = sum(u["metadata.doNotContact"] == "true" for u in guardians) / len(guardians)
    assert 0.005 <= dnc <= 0.05
    assert any(d.role[sid] == "relatedContact" for sid in d.users)
    assert any("í" in u["familyName"] or "é" in u["givenName"] for u in d.users.values())

    q2 = {li for li, row in d.line_items.items() if row["gradingPeriodSourcedId"] == "q2-2027"}
    failing = {
        r["studentSourcedId"]
        for r in d.results
        if r["lineItemSourcedId"] in q2 and float(r["score"]) < 60
    }
    share = len(failing) / len(d.students)
    assert 0.06 <= share <= 0.12
    others = set(rates) - chronic
    assert len(failing & chronic) / len(chronic) > 2 * len(failing & others) / len(others)

    with_incident = {x["StudentNumber"] for x in d.discipline}
    with_oss = {x["StudentNumber"] for x in d.discipline if x["ActionCode"] == "OSS"}
    assert 0.07 <= len(with_incident) / len(d.students) <= 0.14
    assert 0.01 <= len(with_oss) / len(d.students) <= 0.04

    begins = Counter(w[0] > date(2026, 8, 17) for w in d.windows.values())
    assert 0.01 <= begins[True] / len(d.windows) <= 0.06
    ended = sum(1 for w in d.windows.values() if w[1] is not None)
    assert 1 <= ended <= 0.03 * len(d.windows)
    # withdrawals end before as_of; an expulsion may end the enrollment on as_of itself
    assert all(w[1] <= AS_OF for w in d.windows.values() if w[1] is not None)


def test_results_and_contacts_are_well_formed(big: tuple[GenerationSummary, District]) -> None:
    _, d = big
    for r in d.results:
        score = float(r["score"])
        assert re.fullmatch(r"\d{1,3}\.\d", r["score"])
        letter = (
            "A"
            if score >= 90
            else "B"
            if score >= 80
            else "C"
            if score >= 70
            else "D"
            if score >= 60
            else "F"
        )
        assert r["textScore"] == letter
        period = d.line_items[r["lineItemSourcedId"]]["gradingPeriodSourcedId"]
        assert (
            r["scoreStatus"] == {"q1-2027": "fully graded", "q2-2027": "partially graded"}[period]
        )
    assert {li["title"] for li in d.line_items.values()} == {"Q1 Term Grade", "Q2 Term Grade"}
    formats = Counter()
    for sid, u in d.users.items():
        if d.role[sid] == "student":
            assert u["phone"] == "" and u["sms"] == ""
        for value in (u["sms"], u["phone"]):
            if not value:
                continue
            formats[re.sub(r"\d", "9", value.removeprefix("+1"))] += 1
            assert phonenumbers.is_valid_number(phonenumbers.parse(value, "US")), value
    assert set(formats) == {"(999) 999-9999", "999-999-9999", "9999999999"}


def test_bad_rows_are_counted_and_malformed(tmp_path: Path) -> None:
    summary = generate_district(tmp_path, students=400, seed=9, bad_rows=15)
    assert summary.bad_rows == 15
    d = District(tmp_path)
    invalid = d.invalid_rows()
    assert sum(len(v) for v in invalid.values()) == 15
    sizes = {
        "users": len(d.users_rows),
        "enrollments": len(d.enrollments),
        "results": len(d.results),
        "attendance": len(d.attendance),
        "discipline": len(d.discipline),
    }
    for name, rows in invalid.items():
        assert rows, f"no malformed row in {name}"
        assert all(0 < i < sizes[name] - 1 for i in rows), name
    raw = (tmp_path / "sis/attendance.csv").read_text(encoding="utf-8")
    assert ",ZZ\n" in raw
    assert ",abc," in (tmp_path / "oneroster/results.csv").read_text(encoding="utf-8")
    assert summary.files["sis/attendance.csv"] == summary.attendance_events + len(
        invalid["attendance"]
    )


def test_tiny_district_and_other_as_of(tmp_path: Path) -> None:
    summary = generate_district(tmp_path, students=20, seed=1, as_of=date(2026, 9, 30))
    assert summary.students == 20 and summary.schools == 2
    d = District(tmp_path, as_of=date(2026, 9, 30))
    assert d.invalid_rows() == {k: [] for k in d.invalid_rows()}
    assert {li["gradingPeriodSourcedId"] for li in d.line_items.values()} == {"q1-2027"}
    assert all(r["scoreStatus"] == "partially graded" for r in d.results)
    assert all(a["AbsenceDate"] <= "2026-09-30" for a in d.attendance)


def test_default_district_is_small(tmp_path: Path) -> None:
    summary = generate_district(tmp_path)
    assert summary.students == 250
    assert summary.bytes_written < 1_000_000


@pytest.mark.parametrize("as_of", [date(2026, 8, 1), date(2027, 7, 1)])
def test_as_of_outside_the_school_year(tmp_path: Path, as_of: date) -> None:
    summary = generate_district(tmp_path, students=30, seed=2, as_of=as_of, bad_rows=5)
    assert summary.bad_rows == 5
    d = District(tmp_path, as_of=as_of)
    if as_of < date(2026, 8, 17):
        assert summary.results == summary.attendance_events == 0
        assert not d.line_items
    else:
        assert len({li["gradingPeriodSourcedId"] for li in d.line_items.values()}) == 4
        assert all(r["scoreStatus"] == "fully graded" for r in d.results if r["sourcedId"])
