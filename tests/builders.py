"""A tiny hand-made district written as real OneRoster 1.2 CSV and SIS export files.

Tests that need exact numbers (10% absent, 19 enrolled days) build their data here; tests that
need volume use the synthetic generator.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

YEAR_START = date(2026, 8, 17)
YEAR_END = date(2027, 6, 4)
Q2 = ("q2", date(2026, 10, 26), date(2027, 1, 15))
STAMP = "2026-11-19T02:00:00Z"


def weekdays(first: date, count: int) -> list[date]:
    days, d = [], first
    while len(days) < count:
        if d.weekday() < 5:
            days.append(d)
        d += timedelta(days=1)
    return days


@dataclass
class Person:
    sourced_id: str
    given: str
    family: str
    role: str
    school: str
    local_id: str = ""
    grade: str = ""
    agents: list[str] = field(default_factory=list)
    email: str = ""
    sms: str = ""
    phone: str = ""
    language: str = "en"
    dnc: bool = False
    begin: date | None = None
    end: date | None = None
    birth: date | None = None  # written to demographics.csv (students only)


@dataclass
class TinyDistrict:
    root: Path
    schools: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (number, name)
    people: list[Person] = field(default_factory=list)
    calendar: list[tuple[str, date, bool]] = field(default_factory=list)
    absences: list[tuple[str, str, date, str, str]] = field(default_factory=list)
    grades: list[tuple[str, str, float, str]] = field(default_factory=list)  # sid, subject, score
    incidents: list[tuple[str, str, str, date, str]] = field(default_factory=list)

    def school(
        self, school_id: str = "sch-1", number: str = "101", name: str = "Lincoln High"
    ) -> None:
        self.schools[school_id] = (number, name)

    def school_days(self, school_id: str, count: int, first: date = YEAR_START) -> list[date]:
        days = weekdays(first, count)
        self.calendar += [(school_id, d, True) for d in days]
        return days

    def student(
        self,
        sid: str,
        local_id: str,
        school: str = "sch-1",
        grade: str = "09",
        guardians: tuple[str, ...] = (),
        begin: date | None = None,
        end: date | None = None,
        given: str = "Maria",
        family: str = "Lopez",
        birth: date | None = None,
    ) -> Person:
        p = Person(
            sid,
            given,
            family,
            "student",
            school,
            local_id,
            grade,
            list(guardians),
            begin=begin,
            end=end,
            birth=birth,
        )
        self.people.append(p)
        return p

    def guardian(
        self,
        gid: str,
        children: tuple[str, ...],
        school: str = "sch-1",
        language: str = "en",
        sms: str = "",
        email: str = "",
        dnc: bool = False,
        role: str = "parent",
        given: str = "Rosa",
        family: str = "Lopez",
    ) -> Person:
        p = Person(
            gid,
            given,
            family,
            role,
            school,
            agents=list(children),
            email=email,
            sms=sms,
            language=language,
            dnc=dnc,
        )
        self.people.append(p)
        return p

    def absent(
        self, local_id: str, day: date, code: str = "A", period: str = "", school: str = "sch-1"
    ) -> None:
        n = len(self.absences) + 1
        self.absences.append(
            (
                f"att-{n:05d}",
                local_id,
                day,
                code,
                period or "",
            )
        )  # type: ignore[arg-type]
        self._abs_school = school

    def grade(self, sid: str, subject: str, score: float, letter: str = "") -> None:
        self.grades.append((sid, subject, score, letter))

    def incident(
        self,
        incident_id: str,
        local_id: str,
        day: date,
        action: str = "OSS",
        behavior: str = "FIGHT",
    ) -> None:
        self.incidents.append((incident_id, local_id, action, day, behavior))

    # -- writing -------------------------------------------------------------------------------

    def write(self, version: str = "1.2") -> Path:
        ors = self.root / "oneroster"
        sis = self.root / "sis"
        ors.mkdir(parents=True, exist_ok=True)
        sis.mkdir(parents=True, exist_ok=True)
        files = [
            "orgs",
            "academicSessions",
            "courses",
            "classes",
            "users",
            "enrollments",
            "lineItems",
            "results",
        ] + (["roles"] if version == "1.2" else [])
        births = [p for p in self.people if p.role == "student" and p.birth]
        _csv(
            ors / "manifest.csv",
            ["propertyName", "value"],
            [["manifest.version", "1.0"], ["oneroster.version", version]]
            + [[f"file.{f}", "bulk"] for f in files]
            + [["file.demographics", "bulk" if births else "absent"]],
        )
        if births:
            _csv(
                ors / "demographics.csv",
                ["sourcedId", "status", "dateLastModified", "birthDate"],
                [[p.sourced_id, "active", STAMP, p.birth.isoformat()] for p in births if p.birth],
            )
        _csv(
            ors / "orgs.csv",
            [
                "sourcedId",
                "status",
                "dateLastModified",
                "name",
                "type",
                "identifier",
                "parentSourcedId",
            ],
            [["dist", "active", STAMP, "Test District", "district", "D1", ""]]
            + [
                [sid, "active", STAMP, name, "school", num, "dist"]
                for sid, (num, name) in self.schools.items()
            ],
        )
        _csv(
            ors / "academicSessions.csv",
            [
                "sourcedId",
                "status",
                "dateLastModified",
                "title",
                "type",
                "startDate",
                "endDate",
                "parentSourcedId",
                "schoolYear",
            ],
            [
                [
                    "ay",
                    "active",
                    STAMP,
                    "2026-27",
                    "schoolYear",
                    YEAR_START.isoformat(),
                    YEAR_END.isoformat(),
                    "",
                    "2027",
                ],
                [
                    Q2[0],
                    "active",
                    STAMP,
                    "Q2",
                    "gradingPeriod",
                    Q2[1].isoformat(),
                    Q2[2].isoformat(),
                    "ay",
                    "2027",
                ],
            ],
        )
        subjects = sorted({g[1] for g in self.grades})
        courses = [[f"crs-{i}", "active", STAMP, s, f"C{i}", s] for i, s in enumerate(subjects)]
        _csv(
            ors / "courses.csv",
            ["sourcedId", "status", "dateLastModified", "title", "courseCode", "subjects"],
            courses,
        )
        classes = [
            [f"hr-{sch}", "active", STAMP, "Homeroom", "", sch, "homeroom", ""]
            for sch in self.schools
        ]
        for i, s in enumerate(subjects):
            for sch in self.schools:
                classes.append(
                    [f"cls-{i}-{sch}", "active", STAMP, s, f"crs-{i}", sch, "scheduled", s]
                )
        _csv(
            ors / "classes.csv",
            [
                "sourcedId",
                "status",
                "dateLastModified",
                "title",
                "courseSourcedId",
                "schoolSourcedId",
                "classType",
                "subjects",
            ],
            classes,
        )
        users_header = [
            "sourcedId",
            "status",
            "dateLastModified",
            "enabledUser",
            "givenName",
            "familyName",
            "identifier",
            "email",
            "sms",
            "phone",
            "agentSourcedIds",
            "grades",
            "metadata.language",
            "metadata.doNotContact",
        ]
        if version == "1.2":
            users_header.append("primaryOrgSourcedId")
        else:
            users_header[4:4] = ["role", "orgSourcedIds"]
        users, roles, enrollments = [], [], []
        for p in self.people:
            row = [
                p.sourced_id,
                "active",
                STAMP,
                "true",
                p.given,
                p.family,
                p.local_id,
                p.email,
                p.sms,
                p.phone,
                ",".join(p.agents),
                p.grade,
                p.language,
                "true" if p.dnc else "false",
            ]
            if version == "1.2":
                row.append(p.school)
                roles.append(
                    [
                        f"role-{p.sourced_id}",
                        "active",
                        STAMP,
                        p.sourced_id,
                        "primary",
                        p.role,
                        p.school,
                    ]
                )
            else:
                row[4:4] = [p.role, p.school]
            users.append(row)
            if p.role == "student":
                enrollments.append(
                    [
                        f"enr-hr-{p.sourced_id}",
                        "active",
                        STAMP,
                        f"hr-{p.school}",
                        p.school,
                        p.sourced_id,
                        "student",
                        p.begin.isoformat() if p.begin else "",
                        p.end.isoformat() if p.end else "",
                    ]
                )
        _csv(ors / "users.csv", users_header, users)
        if version == "1.2":
            _csv(
                ors / "roles.csv",
                [
                    "sourcedId",
                    "status",
                    "dateLastModified",
                    "userSourcedId",
                    "roleType",
                    "role",
                    "orgSourcedId",
                ],
                roles,
            )
        line_items, results = [], []
        school_of = {p.sourced_id: p.school for p in self.people}
        for n, (sid, subject, score, letter) in enumerate(self.grades):
            cls = f"cls-{subjects.index(subject)}-{school_of[sid]}"
            li = f"li-{cls}"
            if [li] not in [x[:1] for x in line_items]:
                line_items.append([li, "active", STAMP, f"Q2 {subject}", cls, Q2[0]])
            enrollments.append(
                [f"enr-{n}", "active", STAMP, cls, school_of[sid], sid, "student", "", ""]
            )
            results.append(
                [f"res-{n}", "active", STAMP, li, sid, "partially graded", str(score), letter]
            )
        _csv(
            ors / "enrollments.csv",
            [
                "sourcedId",
                "status",
                "dateLastModified",
                "classSourcedId",
                "schoolSourcedId",
                "userSourcedId",
                "role",
                "beginDate",
                "endDate",
            ],
            enrollments,
        )
        _csv(
            ors / "lineItems.csv",
            [
                "sourcedId",
                "status",
                "dateLastModified",
                "title",
                "classSourcedId",
                "gradingPeriodSourcedId",
            ],
            line_items,
        )
        _csv(
            ors / "results.csv",
            [
                "sourcedId",
                "status",
                "dateLastModified",
                "lineItemSourcedId",
                "studentSourcedId",
                "scoreStatus",
                "score",
                "textScore",
            ],
            results,
        )
        _csv(
            sis / "calendar.csv",
            ["SchoolCode", "CalendarDate", "InSession"],
            [[s, d.isoformat(), "Y" if on else "N"] for s, d, on in self.calendar],
        )
        local_school = {p.local_id: p.school for p in self.people if p.local_id}
        _csv(
            sis / "attendance.csv",
            [
                "AttendanceID",
                "StudentNumber",
                "SchoolCode",
                "AbsenceDate",
                "Period",
                "AttendanceCode",
            ],
            [
                [eid, lid, local_school.get(lid, ""), d.isoformat(), period, code]
                for eid, lid, d, code, period in self.absences
            ],
        )
        _csv(
            sis / "discipline.csv",
            [
                "IncidentID",
                "StudentNumber",
                "SchoolCode",
                "IncidentDate",
                "BehaviorCode",
                "ActionCode",
                "ActionDays",
                "StateReportable",
            ],
            [
                [iid, lid, local_school.get(lid, ""), d.isoformat(), beh, act, "1", "N"]
                for iid, lid, act, d, beh in self.incidents
            ],
        )
        return self.root


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
