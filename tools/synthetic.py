"""Deterministic synthetic school district: a OneRoster CSV set plus a district SIS export.

Everything comes from one ``random.Random(seed)``, so the same arguments give byte-identical
files. Rows are streamed to disk as they are made; only the school/class plan (a few
thousand objects) and one family at a time are held in memory.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
import random
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import count
from pathlib import Path
from typing import IO

__all__ = ["GenerationSummary", "generate_district", "write_demographics"]

YEAR_START = date(2026, 8, 17)
YEAR_END = date(2027, 6, 4)
SCHOOL_YEAR = "2027"

_HOLIDAYS: frozenset[date] = frozenset(
    [date(2026, 9, 7), date(2027, 1, 18)]
    + [date(2026, 11, 23) + timedelta(days=n) for n in range(5)]
    + [date(2026, 12, 21) + timedelta(days=n) for n in range(12)]
    + [date(2027, 3, 15) + timedelta(days=n) for n in range(5)]
)

# sourcedId, title, type, start, end, parent
_SESSIONS: list[tuple[str, str, str, date, date, str]] = [
    ("ay-2027", "2026-2027", "schoolYear", YEAR_START, YEAR_END, ""),
    ("s1-2027", "Semester 1", "semester", YEAR_START, date(2027, 1, 15), "ay-2027"),
    ("s2-2027", "Semester 2", "semester", date(2027, 1, 19), YEAR_END, "ay-2027"),
    ("q1-2027", "Q1", "gradingPeriod", YEAR_START, date(2026, 10, 23), "s1-2027"),
    ("q2-2027", "Q2", "gradingPeriod", date(2026, 10, 26), date(2027, 1, 15), "s1-2027"),
    ("q3-2027", "Q3", "gradingPeriod", date(2027, 1, 19), date(2027, 3, 26), "s2-2027"),
    ("q4-2027", "Q4", "gradingPeriod", date(2027, 3, 29), YEAR_END, "s2-2027"),
]

# key, name, SCED subject-area code, course-code prefix
_SUBJECTS: list[tuple[str, str, str, str]] = [
    ("ela", "English Language Arts", "01", "ELA"),
    ("math", "Mathematics", "02", "MATH"),
    ("sci", "Science", "03", "SCI"),
    ("ss", "Social Studies", "04", "SS"),
    ("pe", "Physical Education", "08", "PE"),
    ("art", "Art", "05", "ART"),
]
_HOMEROOM = -1

_SCHOOL_KINDS: dict[str, tuple[str, ...]] = {
    "elementary": ("KG", "01", "02", "03", "04", "05"),
    "middle": ("06", "07", "08"),
    "high": ("09", "10", "11", "12"),
}
_KIND_SUFFIX = {"elementary": "Elementary School", "middle": "Middle School", "high": "High School"}
_SCHOOL_STEMS = (
    "Lincoln", "Washington", "Jefferson", "Roosevelt", "Franklin", "Cesar Chavez", "Maple",
    "Oak Grove", "Riverside", "Hillcrest", "Lakeview", "Sunset", "Pioneer", "Madison",
    "Highland", "Valley View", "Eastside", "Westwood", "Northgate", "Southridge", "Cedar",
    "Willow Creek", "Mountain View", "Harbor", "Meadowbrook", "Sequoia", "Juniper", "Aspen",
    "Bayside", "Canyon",
)  # fmt: skip


def _cols(text: str, sep: str = ",") -> list[str]:
    return text.split(sep)


ONEROSTER_HEADERS: dict[str, list[str]] = {
    "manifest.csv": ["propertyName", "value"],
    "orgs.csv": _cols("sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId"),
    "academicSessions.csv": _cols(
        "sourcedId,status,dateLastModified,title,type,startDate,endDate,parentSourcedId,schoolYear"
    ),
    "categories.csv": ["sourcedId", "status", "dateLastModified", "title"],
    "courses.csv": _cols(
        "sourcedId,status,dateLastModified,schoolYearSourcedId,title,courseCode,grades,"
        "orgSourcedId,subjects,subjectCodes"
    ),
    "classes.csv": _cols(
        "sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,classType,"
        "location,schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods"
    ),
    "users.csv": _cols(
        "sourcedId,status,dateLastModified,enabledUser,username,userIds,givenName,familyName,"
        "middleName,identifier,email,sms,phone,agentSourcedIds,grades,password,"
        "userMasterIdentifier,resourceSourcedIds,preferredGivenName,preferredMiddleName,"
        "preferredFamilyName,primaryOrgSourcedId,pronouns,metadata.language,metadata.doNotContact"
    ),
    "roles.csv": _cols(
        "sourcedId,status,dateLastModified,userSourcedId,roleType,role,beginDate,endDate,"
        "orgSourcedId,userProfileSourcedId"
    ),
    "enrollments.csv": _cols(
        "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,"
        "primary,beginDate,endDate"
    ),
    "lineItems.csv": _cols(
        "sourcedId,status,dateLastModified,title,description,classSourcedId,categorySourcedId,"
        "gradingPeriodSourcedId,assignDate,dueDate,resultValueMin,resultValueMax"
    ),
    "results.csv": _cols(
        "sourcedId,status,dateLastModified,lineItemSourcedId,studentSourcedId,scoreStatus,score,"
        "textScore,scoreDate,comment"
    ),
}
USERS_HEADER_V11: list[str] = _cols(
    "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,"
    "givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password,"
    "metadata.language,metadata.doNotContact"
)
SIS_HEADERS: dict[str, list[str]] = {
    "calendar.csv": ["SchoolCode", "CalendarDate", "InSession"],
    "attendance.csv": _cols(
        "AttendanceID,StudentNumber,SchoolCode,AbsenceDate,Period,AttendanceCode"
    ),
    "discipline.csv": _cols(
        "IncidentID,StudentNumber,SchoolCode,IncidentDate,BehaviorCode,ActionCode,ActionDays,"
        "StateReportable"
    ),
}

_MANIFEST_FILES: list[tuple[str, str]] = [
    ("academicSessions", "bulk"), ("categories", "bulk"), ("classes", "bulk"),
    ("classResources", "absent"), ("courses", "bulk"), ("courseResources", "absent"),
    ("demographics", "absent"), ("enrollments", "bulk"),
    ("lineItemLearningObjectiveIds", "absent"), ("lineItems", "bulk"),
    ("lineItemScoreScales", "absent"), ("orgs", "bulk"), ("resources", "absent"),
    ("resultLearningObjectiveIds", "absent"), ("results", "bulk"),
    ("resultScoreScales", "absent"), ("roles", "bulk"), ("scoreScales", "absent"),
    ("userProfiles", "absent"), ("userResources", "absent"), ("users", "bulk"),
]  # fmt: skip

# language -> (given names, family names); non-ASCII on purpose (UTF-8 handling, UCS-2 SMS)
_NAMES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "en": (
        (
            "James", "Olivia", "Liam", "Emma", "Noah", "Ava", "Ethan", "Sophia", "Mason",
            "Isabella", "Logan", "Mia", "Lucas", "Harper", "Aiden", "Ella", "Jackson", "Grace",
            "Caleb", "Chloe", "Wyatt", "Lily", "Owen", "Zoe", "Henry", "Nora", "Elijah",
            "Avery", "Michael", "Sarah", "David", "Emily", "Daniel", "Jessica", "Ryan",
            "Ashley", "Kevin", "Rachel", "Tyler", "Lauren", "Jordan", "Taylor", "Marcus",
            "Aaliyah", "Jamal", "Keisha", "Zoë", "Renée",
        ),
        (
            "Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson",
            "Anderson", "Taylor", "Thomas", "Moore", "Jackson", "Martin", "Thompson", "White",
            "Harris", "Clark", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
            "Scott", "Green", "Baker", "Adams", "Nelson", "Hill", "Campbell", "Mitchell",
            "Carter", "Roberts", "O'Brien", "Murphy", "Cook", "Bailey", "Cooper",
        ),
    ),
    "es": (
        (
            "José", "María", "Juan", "Sofía", "Luis", "Valentina", "Carlos", "Camila", "Diego",
            "Lucía", "Mateo", "Ximena", "Andrés", "Daniela", "Jesús", "Guadalupe", "Miguel",
            "Ana", "Santiago", "Isabel", "Alejandro", "Mariana", "Ángel", "Javier", "Paola",
            "Ramón", "Elena", "Óscar", "Inés", "Joaquín",
        ),
        (
            "García", "Rodríguez", "Martínez", "Hernández", "López", "González", "Pérez",
            "Sánchez", "Ramírez", "Torres", "Flores", "Rivera", "Gómez", "Díaz", "Cruz",
            "Morales", "Reyes", "Gutiérrez", "Ortiz", "Chávez", "Ruiz", "Jiménez", "Mendoza",
            "Álvarez", "Castillo", "Vásquez", "Romero", "Herrera", "Medina", "Aguilar",
        ),
    ),
    "vi": (
        ("Anh", "Bao", "Linh", "Minh", "Ngoc", "Phuong", "Quang", "Thao", "Tuan", "Duc", "Huong"),
        ("Nguyen", "Tran", "Le", "Pham", "Hoang", "Vu", "Dang", "Bui", "Do", "Ngo"),
    ),
    "zh": (
        ("Wei", "Jing", "Hao", "Xin", "Yu", "Mei", "Jun", "Lan", "Chen", "Ying"),
        ("Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou"),
    ),
    "so": (
        ("Abdi", "Amina", "Hodan", "Faisal", "Ayaan", "Hamza", "Fadumo", "Ilhan", "Sahra"),
        ("Hassan", "Ali", "Mohamed", "Ahmed", "Warsame", "Abdullahi", "Farah", "Osman", "Yusuf"),
    ),
}  # fmt: skip
_LANG_CUM = ((0.70, "en"), (0.95, "es"), (0.97, "vi"), (0.99, "zh"), (1.0, "so"))

# Real area codes with the reserved-fictional 555-0100..0199 lines: fictional, yet valid
# for `phonenumbers`, so the messaging side can normalise them like real numbers.
_AREA_CODES = _cols(
    "201 202 203 205 206 207 208 209 210 212 213 214 215 216 217 218 219 224 225 228 229 "
    "231 234 239 240 248 251 252 253 254 256 260 262 267 269 270 276 281 301 302 303 304 "
    "305 307 308 309 310 312 313 314 315 316 317 318 319 320 321 323 325 330 334 336 337 "
    "339 347 351 352 360 361 385 386 401 402 404 405 406 407 408 409 410 412 413 414 415 "
    "417 419 423 424 425 430 432 434 435 440 443 469 478 479 480 484 501 502 503 504 505 "
    "507 508 509 510 512 513 515 516 517 518 520 530 540 541 551 559 561 562 563 567 570 "
    "571 573 574 575 580 585 586 601 602 603 605 606 607 608 609 610 612 614 615 616 617 "
    "618 619 620 623 626 630 631 636 641 646 650 651 660 661 662 678 682 701 702 703 704 "
    "706 707 708 712 713 714 715 716 717 718 719 720 724 727 731 732 734 740 754 757 760 "
    "763 765 770 772 773 774 775 781 785 786 801 802 803 804 805 806 808 810 812 813 814 "
    "815 816 817 818 828 830 831 832 843 845 847 848 850 856 857 858 859 860 862 863 864 "
    "865 870 878 901 903 904 906 907 908 909 910 912 913 914 915 916 917 918 919 920 925 "
    "928 931 936 937 940 941 947 949 951 952 954 956 970 971 972 973 978 979 980 985 989",
    " ",
)

# behavior -> (weight, [(action, probability, min days, max days)])
_BEHAVIORS: list[tuple[str, float, list[tuple[str, float, int, int]]]] = [
    ("DISRUPT", 0.34, [("WARN", 0.45, 0, 0), ("DET", 0.40, 1, 1), ("ISS", 0.12, 1, 1),
                       ("OSS", 0.03, 1, 1)]),
    ("DEFIANCE", 0.24, [("WARN", 0.30, 0, 0), ("DET", 0.40, 1, 1), ("ISS", 0.20, 1, 2),
                        ("OSS", 0.10, 1, 2)]),
    ("TRUANCY", 0.14, [("WARN", 0.40, 0, 0), ("DET", 0.45, 1, 2), ("ISS", 0.15, 1, 1)]),
    ("FIGHT", 0.17, [("DET", 0.10, 1, 1), ("ISS", 0.25, 1, 2), ("OSS", 0.65, 1, 3)]),
    ("BULLY", 0.09, [("WARN", 0.20, 0, 0), ("DET", 0.30, 1, 1), ("ISS", 0.30, 1, 2),
                     ("OSS", 0.20, 1, 3)]),
    ("WEAPON", 0.02, [("OSS", 0.60, 5, 10), ("EXP", 0.40, 45, 45)]),
]  # fmt: skip
_STATE_REPORTABLE = frozenset({"FIGHT", "WEAPON"})

_BAD_KINDS: list[tuple[str, tuple[str, ...]]] = [
    ("users", ("empty_id",)),
    ("enrollments", ("unknown_user", "bad_date", "empty_id")),
    ("results", ("bad_score", "bad_date", "empty_id")),
    ("attendance", ("bad_code", "unknown_student", "bad_date")),
    ("discipline", ("bad_date", "unknown_student")),
]
_BAD_DATES = ("1/05/2023", "2026-13-45", "11/3/2026", "2026-02-30")

_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_NUMBER_BASE = 100_000
_NUMBER_SPACE = 900_000  # 6-digit student numbers 100000..999999


@dataclass
class GenerationSummary:
    """What ``generate_district`` wrote.

    Entity counts cover valid rows only; ``bad_rows`` counts the injected malformed rows,
    and ``files`` counts every data row written (malformed ones included).
    ``guardians`` counts every contact user (parent, guardian, relatedContact);
    ``calendar_days`` is the number of rows in ``sis/calendar.csv``.
    """

    students: int
    guardians: int
    teachers: int
    schools: int
    classes: int
    enrollments: int
    results: int
    attendance_events: int
    discipline_incidents: int
    calendar_days: int
    bad_rows: int
    bytes_written: int
    files: dict[str, int] = field(default_factory=dict)
    # quirk -> what was injected (file, line, the record's sourcedId), see QUIRKS
    quirks: dict[str, str] = field(default_factory=dict)


@dataclass
class _Period:
    sid: str
    title: str
    start: date
    end: date
    lo: int  # first index into the instructional-day list
    hi: int  # one past the last index


@dataclass
class _Class:
    sid: str
    school_sid: str
    subject: int  # index into _SUBJECTS, or _HOMEROOM
    line_items: list[tuple[str, int]] = field(default_factory=list)  # (sourcedId, period idx)


@dataclass
class _School:
    sid: str
    name: str
    identifier: str
    kind: str
    grades: tuple[str, ...]
    lo: int  # first student index
    hi: int
    sections: list[int] = field(default_factory=list)  # per grade
    # per grade, per subject slot: the class of each section
    classes: list[list[list[_Class]]] = field(default_factory=list)


class _Sink:
    """One CSV file being written; counts data rows."""

    def __init__(self, stack: ExitStack, path: Path, header: Sequence[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh: IO[str] = stack.enter_context(
            path.open("w", encoding="utf-8", newline="", buffering=1 << 20)
        )
        self.path = path
        self.writer = csv.writer(fh, lineterminator="\n")
        self.writer.writerow(header)
        self.rows = 0
        self.bad = 0

    def row(self, values: Sequence[str]) -> None:
        self.writer.writerow(values)
        self.rows += 1

    def rows_(self, rows: list[list[str]]) -> None:
        self.writer.writerows(rows)
        self.rows += len(rows)

    def bad_row(self, values: Sequence[str]) -> None:
        self.writer.writerow(values)
        self.rows += 1
        self.bad += 1


def _ascii(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "".join(ch for ch in folded.lower() if ch.isalnum())


def _phone_format(number: int, style: float) -> str:
    digits = f"{number:010d}"
    if style < 0.45:
        return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
    if style < 0.80:
        return f"{digits[:3]}-{digits[3:6]}-{digits[6:]}"
    return f"+1{digits}"


def _plan_school_kinds(count: int) -> list[str]:
    # Shares follow grade spans: K-5 is 6 of 13 grades, 6-8 is 3, 9-12 is 4.
    high = max(1, round(count * 4 / 13))
    middle = round(count * 3 / 13)
    elementary = count - high - middle
    return ["elementary"] * elementary + ["middle"] * middle + ["high"] * high


class _Generator:
    def __init__(
        self, out_dir: Path, students: int, seed: int, as_of: date, version: str, bad: int
    ) -> None:
        if version not in ("1.1", "1.2"):
            raise ValueError(f"oneroster_version must be '1.1' or '1.2', not {version!r}")
        if not 1 <= students <= _NUMBER_SPACE // 2:
            raise ValueError(f"students must be between 1 and {_NUMBER_SPACE // 2}")
        if bad < 0:
            raise ValueError("bad_rows must be >= 0")
        self.n = students
        self.seed = seed
        self.sis_school_ids = "number"
        self.as_of = as_of
        self.v12 = version == "1.2"
        self.version = version
        self.bad_total = bad
        self.rng = random.Random(seed)
        self.dlm = f"{(as_of - timedelta(days=1)).isoformat()}T02:00:00Z"

        self.weekdays: list[date] = []
        d = YEAR_START
        while d <= YEAR_END:
            if d.weekday() < 5:
                self.weekdays.append(d)
            d += timedelta(days=1)
        self.days = [d for d in self.weekdays if d not in _HOLIDAYS]
        self.day_str = [d.isoformat() for d in self.days]
        self.n_to_date = bisect.bisect_right(self.days, as_of)
        self.before_as_of = bisect.bisect_left(self.days, as_of)
        self.late_lo = bisect.bisect_left(self.days, date(2026, 9, 1))
        self.late_hi = min(bisect.bisect_right(self.days, date(2026, 11, 30)), self.n_to_date)

        self.periods: list[_Period] = []
        for sid, title, kind, start, end, _parent in _SESSIONS:
            if kind == "gradingPeriod" and start <= as_of:
                lo = bisect.bisect_left(self.days, start)
                hi = bisect.bisect_right(self.days, end)
                self.periods.append(_Period(sid, title, start, end, lo, hi))
        self.current_period = len(self.periods) - 1
        # per period: scoreStatus and the default scoreDate
        self.period_status = [
            "fully graded" if p.end < as_of else "partially graded" for p in self.periods
        ]
        self.period_score_date = [min(p.end, as_of) for p in self.periods]

        rng = self.rng
        mult = rng.randrange(100_001, _NUMBER_SPACE)
        while mult % 2 == 0 or mult % 3 == 0 or mult % 5 == 0:
            mult += 1
        self.num_mult = mult
        self.num_add = rng.randrange(_NUMBER_SPACE)

        self.schools: list[_School] = []
        self.classes: list[_Class] = []
        self.teachers: list[tuple[str, str, list[_Class]]] = []  # sid, school sid, classes
        self.guardian_idx = 0
        self.phone_idx = 0
        self.att_ids = count(1)
        self.inc_idx = 0
        self.counts = dict.fromkeys(
            ("guardians", "enrollments", "results", "attendance", "discipline"), 0
        )
        self.ascii_cache: dict[str, str] = {}
        self.seq_next: dict[str, Iterator[int]] = {p: count(1) for p in ("rol", "enr", "res")}

    # -- helpers -------------------------------------------------------------------------

    def sis_code(self, school: _School) -> str:
        """How the SIS export names a school: its number (orgs.identifier), as real ones do."""
        return school.identifier if self.sis_school_ids == "number" else school.sid

    def uid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"

    def seq(self, prefix: str) -> str:
        # Link rows (roles, enrollments, results) get short counter ids: full UUIDs on
        # them would push a 250-student district past 1 MB.
        return f"{prefix}-{next(self.seq_next[prefix]):08d}"

    def number(self, index: int) -> str:
        # An affine permutation of the 6-digit space: unique, random-looking, no lookup table.
        return str(_NUMBER_BASE + (self.num_mult * index + self.num_add) % _NUMBER_SPACE)

    def fold(self, name: str) -> str:
        out = self.ascii_cache.get(name)
        if out is None:
            out = self.ascii_cache[name] = _ascii(name)
        return out

    def new_phone(self) -> int:
        i = self.phone_idx
        self.phone_idx += 1
        area = _AREA_CODES[(i // 100) % len(_AREA_CODES)]
        return int(f"{area}555{100 + i % 100:04d}")

    def user_row(
        self,
        sid: str,
        role: str,
        org: str,
        username: str,
        user_ids: str,
        given: str,
        family: str,
        middle: str,
        identifier: str,
        email: str,
        sms: str,
        phone: str,
        agents: str,
        grades: str,
        lang: str,
        dnc: str,
    ) -> list[str]:
        if self.v12:
            return [sid, "active", self.dlm, "true", username, user_ids, given, family, middle,
                    identifier, email, sms, phone, agents, grades, "", "", "", "", "", "", org,
                    "", lang, dnc]  # fmt: skip
        return [sid, "active", self.dlm, "true", org, role, username, user_ids, given, family,
                middle, identifier, email, sms, phone, agents, grades, "", lang, dnc]  # fmt: skip

    def role_row(self, user: str, role: str, org: str, begin: str = "", end: str = "") -> list[str]:
        return [self.seq("rol"), "active", self.dlm, user, "primary", role, begin, end, org, ""]

    # -- plan ----------------------------------------------------------------------------

    def plan(self) -> None:
        rng = self.rng
        n_schools = max(2, round(self.n / 500))
        kinds = _plan_school_kinds(n_schools)
        stems = list(_SCHOOL_STEMS)
        rng.shuffle(stems)
        for s, kind in enumerate(kinds):
            stem = stems[s % len(stems)]
            name = f"{stem} {_KIND_SUFFIX[kind]}"
            if s >= len(stems):
                name = f"{name} {s // len(stems) + 1}"
            lo, hi = s * self.n // n_schools, (s + 1) * self.n // n_schools
            self.schools.append(
                _School(self.uid(), name, f"{101 + s}", kind, _SCHOOL_KINDS[kind], lo, hi)
            )

    def write_static(self, sinks: dict[str, _Sink]) -> None:
        rng = self.rng
        dlm = self.dlm
        manifest = sinks["manifest"]
        manifest.row(["manifest.version", "1.0"])
        manifest.row(["oneroster.version", self.version])
        for name, mode in _MANIFEST_FILES:
            if name == "roles" and not self.v12:
                continue
            manifest.row([f"file.{name}", mode])
        manifest.row(["source.systemName", "casebridge-synthetic"])
        manifest.row(["source.systemCode", f"seed-{self.seed}"])

        district = self.uid()
        orgs = sinks["orgs"]
        orgs.row([district, "active", dlm, "Synthetic Unified School District", "district",
                  f"D{self.seed:04d}", ""])  # fmt: skip
        for school in self.schools:
            orgs.row([school.sid, "active", dlm, school.name, "school", school.identifier,
                      district])  # fmt: skip

        sessions = sinks["academicSessions"]
        for sid, title, kind, start, end, parent in _SESSIONS:
            sessions.row([sid, "active", dlm, title, kind, start.isoformat(), end.isoformat(),
                          parent, SCHOOL_YEAR])  # fmt: skip
        sinks["categories"].row(["cat-term-grade", "active", dlm, "Term Grade"])

        courses, classes, line_items = sinks["courses"], sinks["classes"], sinks["lineItems"]
        for school in self.schools:
            n_grades = len(school.grades)
            size = school.hi - school.lo
            elementary = school.kind == "elementary"
            slots = [_HOMEROOM, 0, 1] if elementary else list(range(len(_SUBJECTS)))
            # teacher buckets: elementary = one per section; secondary = per subject, ~5 sections
            secondary_pool: dict[int, list[_Class]] = {slot: [] for slot in slots}
            for g, grade in enumerate(school.grades):
                in_grade = (size - g + n_grades - 1) // n_grades if size > g else 0
                k = max(1, round(in_grade / 25))
                school.sections.append(k)
                per_slot: list[list[_Class]] = []
                for slot in slots:
                    if slot == _HOMEROOM:
                        title, code, subj, scode = f"Homeroom {grade}", f"HR-{grade}", "", ""
                    else:
                        _key, subj, scode, prefix = _SUBJECTS[slot]
                        title, code = f"{subj} {grade}", f"{prefix}-{grade}"
                    course = self.uid()
                    courses.row([course, "active", dlm, "ay-2027", title, code, grade,
                                 school.sid, subj, scode])  # fmt: skip
                    sections: list[_Class] = []
                    for sec in range(k):
                        cls = _Class(self.uid(), school.sid, slot)
                        if slot == _HOMEROOM:
                            ctype, terms, period = "homeroom", "ay-2027", "HR"
                        else:
                            ctype, terms, period = "scheduled", "s1-2027,s2-2027", str(slot + 1)
                        classes.row([cls.sid, "active", dlm, f"{title} - Section {sec + 1}", grade,
                                     course, f"{code}-{school.identifier}-{sec + 1:02d}", ctype,
                                     f"Room {100 + rng.randrange(300)}", school.sid, terms, subj,
                                     scode, period])  # fmt: skip
                        if slot != _HOMEROOM:
                            for p_idx, p in enumerate(self.periods):
                                li = self.uid()
                                cls.line_items.append((li, p_idx))
                                line_items.row([li, "active", dlm, f"{p.title} Term Grade",
                                                f"{p.title} term grade for {title}", cls.sid,
                                                "cat-term-grade", p.sid, p.start.isoformat(),
                                                p.end.isoformat(), "0", "100"])  # fmt: skip
                        sections.append(cls)
                        self.classes.append(cls)
                        secondary_pool[slot].append(cls)
                    per_slot.append(sections)
                school.classes.append(per_slot)
                if elementary:
                    for sec in range(k):
                        group = [per_slot[j][sec] for j in range(len(slots))]
                        self.teachers.append((self.uid(), school.sid, group))
            if not elementary:
                for slot in slots:
                    pool = secondary_pool[slot]
                    for first in range(0, len(pool), 5):
                        self.teachers.append((self.uid(), school.sid, pool[first : first + 5]))

        users, enrollments = sinks["users"], sinks["enrollments"]
        roles = sinks.get("roles")
        for t_idx, (sid, school_sid, taught) in enumerate(self.teachers):
            given, family = self.pick_name("en" if rng.random() < 0.8 else "es")
            user = f"{self.fold(given)}.{self.fold(family)}{t_idx}"
            users.row(self.user_row(sid, "teacher", school_sid, user, "", given, family, "",
                                    f"T{10000 + t_idx}", f"{user}@staff.example.org", "", "",
                                    "", "", "en", "false"))  # fmt: skip
            if roles is not None:
                roles.row(self.role_row(sid, "teacher", school_sid))
            for cls in taught:
                enrollments.row([self.seq("enr"), "active", dlm, cls.sid, school_sid, sid,
                                 "teacher", "true", YEAR_START.isoformat(), ""])  # fmt: skip
                self.counts["enrollments"] += 1

        calendar = sinks["calendar"]
        weekday_rows = [(d.isoformat(), "N" if d in _HOLIDAYS else "Y") for d in self.weekdays]
        for school in self.schools:
            code = self.sis_code(school)
            calendar.rows_([[code, ds, flag] for ds, flag in weekday_rows])

    def pick_name(self, lang: str) -> tuple[str, str]:
        given, family = _NAMES[lang]
        rng = self.rng
        return given[int(rng.random() * len(given))], family[int(rng.random() * len(family))]

    # -- students ------------------------------------------------------------------------

    def bad_positions(self) -> dict[int, list[int]]:
        positions: dict[int, list[int]] = {}
        lo = self.n // 4
        hi = max(lo + 1, (3 * self.n) // 4)
        for k in range(self.bad_total):
            positions.setdefault(self.rng.randrange(lo, hi), []).append(k)
        return positions

    def write_students(self, sinks: dict[str, _Sink]) -> None:
        rng = self.rng
        bad_at = self.bad_positions()
        school_iter: Iterator[_School] = iter(self.schools)
        school = next(school_iter)
        i = 0
        while i < self.n:
            size = 1
            if rng.random() < 0.10:
                size = 2 if rng.random() < 0.7 else 3
            size = min(size, self.n - i)
            lang = "en"
            u = rng.random()
            for cum, code in _LANG_CUM:
                if u < cum:
                    lang = code
                    break
            name_lang = lang
            if lang == "en" and rng.random() < 0.15:
                name_lang = "es"  # many English-speaking families have Spanish names
            elif lang != "en" and rng.random() < 0.1:
                name_lang = "en"
            family_name = self.pick_name(name_lang)[1]
            n_guardians = 2 if rng.random() < 0.6 else 1
            guardian_ids = [self.uid() for _ in range(n_guardians)]
            related = self.uid() if rng.random() < 0.05 else ""
            agents = ",".join([*guardian_ids, related] if related else guardian_ids)

            children: list[str] = []
            first_school = ""
            for j in range(i, i + size):
                while j >= school.hi:
                    school = next(school_iter)
                child = self.write_student(sinks, j, school, agents, name_lang, family_name, lang)
                children.append(child)
                first_school = first_school or school.sid
                for k in bad_at.get(j, ()):
                    self.write_bad(sinks, k, j, school, child)
            self.write_guardians(
                sinks, guardian_ids, related, children, first_school, lang, name_lang, family_name
            )
            i += size

    def write_guardians(
        self,
        sinks: dict[str, _Sink],
        guardian_ids: list[str],
        related: str,
        children: list[str],
        org: str,
        lang: str,
        name_lang: str,
        family_name: str,
    ) -> None:
        rng = self.rng
        users = sinks["users"]
        roles = sinks.get("roles")
        kids = ",".join(children)
        people = [(gid, "parent" if rng.random() < 0.88 else "guardian") for gid in guardian_ids]
        if related:
            people.append((related, "relatedContact"))
        for n, (gid, role) in enumerate(people):
            self.guardian_idx += 1
            g_idx = self.guardian_idx
            given, other_family = self.pick_name(name_lang)
            family = family_name if n == 0 or rng.random() < 0.75 else other_family
            email = sms = phone = ""
            if role != "relatedContact" and rng.random() < 0.9:
                domain = ("example.com", "example.net", "example.org")[g_idx % 3]
                email = f"{self.fold(given)}.{self.fold(family)}{g_idx}@{domain}"
            u = rng.random()
            if role == "relatedContact":
                phone = _phone_format(self.new_phone(), rng.random())
            elif u < 0.60:
                mobile = self.new_phone()
                sms = _phone_format(mobile, rng.random())
                phone = _phone_format(mobile, rng.random())
            elif u < 0.80:
                sms = _phone_format(self.new_phone(), rng.random())
            elif u < 0.92:
                phone = _phone_format(self.new_phone(), rng.random())
            elif u < 0.97:
                sms = _phone_format(self.new_phone(), rng.random())
                phone = _phone_format(self.new_phone(), rng.random())
            dnc = "true" if rng.random() < 0.02 else "false"
            username = email or f"contact{g_idx}"
            users.row(self.user_row(gid, role, org, username, "", given, family, "", "", email,
                                    sms, phone, kids, "", lang, dnc))  # fmt: skip
            if roles is not None:
                roles.row(self.role_row(gid, role, org))
            self.counts["guardians"] += 1

    def student_classes(self, school: _School, index: int) -> tuple[str, list[_Class]]:
        local = index - school.lo
        n_grades = len(school.grades)
        g = local % n_grades
        rank = local // n_grades
        k = school.sections[g]
        per_slot = school.classes[g]
        if school.kind == "elementary":
            sec = rank % k
            return school.grades[g], [sections[sec] for sections in per_slot]
        # rotate sections per subject so classmates differ from period to period
        return school.grades[g], [
            sections[(rank + slot * (rank // k)) % k] for slot, sections in enumerate(per_slot)
        ]

    def write_student(
        self,
        sinks: dict[str, _Sink],
        index: int,
        school: _School,
        agents: str,
        name_lang: str,
        family: str,
        lang: str,
    ) -> str:
        rng = self.rng
        dlm = self.dlm
        day_str = self.day_str
        sid = self.uid()
        number = self.number(index)
        grade, classes = self.student_classes(school, index)
        given = self.pick_name(name_lang)[0]
        middle = self.pick_name(name_lang)[0] if rng.random() < 0.5 else ""

        # enrollment window [b, e) in instructional-day indices, e capped at as_of
        b = 0
        if rng.random() < 0.03 and self.late_hi > self.late_lo:
            b = rng.randrange(self.late_lo, self.late_hi)
        end_idx = -1
        if rng.random() < 0.01 and self.before_as_of > b + 10:
            end_idx = rng.randrange(b + 10, self.before_as_of)
        e = self.n_to_date if end_idx < 0 else end_idx + 1

        u = rng.random()
        if u < 0.15:
            tier = 2
            rate = rng.uniform(0.11, 0.22) if rng.random() < 0.8 else rng.uniform(0.22, 0.45)
        elif u < 0.21:
            tier, rate = 1, rng.uniform(0.05, 0.095)
        else:
            tier, rate = 0, (rng.uniform(0.0, 0.045) if rng.random() < 0.8 else 0.0)

        # discipline first: an expulsion ends enrollment, OSS days feed attendance
        incidents: list[tuple[int, str, str, int]] = []
        oss: set[int] = set()
        if e > b and rng.random() < (0.20 if tier == 2 else 0.08):
            u = rng.random()
            n_inc = 1 if u < 0.65 else 2 if u < 0.87 else rng.randint(3, 5)
            for x in sorted(rng.sample(range(b, e), min(n_inc, e - b))):
                behavior, action, days = self.pick_incident()
                incidents.append((x, behavior, action, days))
                if action == "OSS":
                    oss.update(range(x + 1, min(x + 1 + days, e)))
                elif action == "EXP":
                    end_idx = x
                    e = min(e, x + 1)
                    oss = {day for day in oss if day < e}
                    break
        begin_str = day_str[b] if b < len(day_str) else YEAR_START.isoformat()
        end_str = day_str[end_idx] if end_idx >= 0 else ""

        users = sinks["users"]
        user = f"{self.fold(given)[:1]}{self.fold(family)}{number}"
        users.row(self.user_row(sid, "student", school.sid, user, f"{{SIS:{number}}}", given,
                                family, middle, number, f"{user}@students.example.org", "", "",
                                agents, grade, lang, "false"))  # fmt: skip
        roles = sinks.get("roles")
        if roles is not None:
            roles.row(self.role_row(sid, "student", school.sid, begin_str, end_str))
        seq = self.seq
        sinks["enrollments"].rows_(
            [
                [seq("enr"), "active", dlm, cls.sid, school.sid, sid, "student", "false", begin_str,
                 end_str]
                for cls in classes
            ]
        )  # fmt: skip
        self.counts["enrollments"] += len(classes)

        self.write_results(sinks["results"], sid, classes, b, e, end_idx, tier, rate)
        self.write_attendance(
            sinks["attendance"], number, self.sis_code(school), b, e, tier, rate, oss
        )
        disc = sinks["discipline"]
        for x, behavior, action, days in incidents:
            self.inc_idx += 1
            disc.row([f"inc-{self.inc_idx:07d}", number, self.sis_code(school), day_str[x],
                      behavior, action,
                      str(days), "Y" if behavior in _STATE_REPORTABLE else "N"])  # fmt: skip
            self.counts["discipline"] += 1
        return sid

    def pick_incident(self) -> tuple[str, str, int]:
        rng = self.rng
        u = rng.random()
        behavior, actions = _BEHAVIORS[-1][0], _BEHAVIORS[-1][2]
        for name, weight, acts in _BEHAVIORS:
            if u < weight:
                behavior, actions = name, acts
                break
            u -= weight
        u = rng.random()
        action, lo, hi = actions[-1][0], actions[-1][2], actions[-1][3]
        for name, prob, a_lo, a_hi in actions:
            if u < prob:
                action, lo, hi = name, a_lo, a_hi
                break
            u -= prob
        return behavior, action, rng.randint(lo, hi)

    def write_results(
        self,
        sink: _Sink,
        sid: str,
        classes: list[_Class],
        b: int,
        e: int,
        end_idx: int,
        tier: int,
        rate: float,
    ) -> None:
        if not self.periods or e <= b:
            return
        rng = self.rng
        dlm = self.dlm
        scored = [cls for cls in classes if cls.subject != _HOMEROOM]
        p_fail = (0.03, 0.10, 0.38)[tier]  # by absence tier
        failing: set[int] = set()
        if scored and rng.random() < p_fail:
            # core subjects (ELA, math) fail most often
            weighted = [c for c in range(len(scored)) if scored[c].subject <= 1] * 2
            weighted += list(range(len(scored)))
            failing.add(weighted[int(rng.random() * len(weighted))])
            if rng.random() < 0.35:
                failing.add(weighted[int(rng.random() * len(weighted))])
        base = rng.gauss(85.0, 6.0) - 25.0 * rate
        end_date = self.days[end_idx] if end_idx >= 0 else YEAR_END
        dates = [min(d, end_date).isoformat() for d in self.period_score_date]
        live = [b < p.hi and e > p.lo for p in self.periods]
        status = self.period_status
        current = self.current_period
        gauss, res_ids = rng.gauss, self.seq_next["res"]
        rows: list[list[str]] = []
        for c, cls in enumerate(scored):
            for li, p_idx in cls.line_items:
                if not live[p_idx]:
                    continue
                fails = c in failing and (p_idx == current or rng.random() < 0.5)
                if fails:
                    tenths = rng.randint(300, 599)
                else:
                    tenths = round((base + gauss(0.0, 5.0)) * 10)
                    if tenths < 600:
                        tenths = 600 + rng.randrange(80)
                    elif tenths > 1000:
                        tenths = 1000
                letter = (
                    "A" if tenths >= 900 else "B" if tenths >= 800 else "C" if tenths >= 700
                    else "D" if tenths >= 600 else "F"
                )  # fmt: skip
                comment = "Missing assignments" if fails and rng.random() < 0.3 else ""
                rows.append([f"res-{next(res_ids):08d}", "active", dlm, li, sid, status[p_idx],
                             f"{tenths // 10}.{tenths % 10}", letter, dates[p_idx],
                             comment])  # fmt: skip
        sink.rows_(rows)
        self.counts["results"] += len(rows)

    def write_attendance(
        self,
        sink: _Sink,
        number: str,
        school_sid: str,
        b: int,
        e: int,
        tier: int,
        rate: float,
        oss: set[int],
    ) -> None:
        enrolled = e - b
        if enrolled <= 0:
            return
        rng = self.rng
        cut = math.ceil(0.10 * enrolled)  # fewest absent days that make a student chronic
        target = round(rate * enrolled)
        target = max(target, cut) if tier == 2 else min(target, cut - 1)
        target = max(0, min(target, enrolled))
        absent = set(oss)
        need = target - len(absent)
        if need > 0:
            pool = rng.sample(range(b, e), min(enrolled, need + len(absent)))
            for x in pool:
                if x not in absent:
                    absent.add(x)
                    need -= 1
                    if need == 0:
                        break
        u = rng.random()
        tardy_rate = 0.0 if u < 0.05 else rng.uniform(0.05, 0.10) if u < 0.20 else 0.02
        n_tardy = int(tardy_rate * enrolled + rng.random())
        events: list[tuple[int, str]] = [(x, "OSS" if x in oss else "") for x in absent]
        if n_tardy:
            for x in rng.sample(range(b, e), min(enrolled, n_tardy + len(absent))):
                if x not in absent and n_tardy > 0:
                    events.append((x, "T"))
                    n_tardy -= 1
        if not events:
            return
        events.sort()
        excused = 0.4 if tier == 2 else 0.6
        rows: list[list[str]] = []
        day_str = self.day_str
        ids = self.att_ids
        random_ = rng.random
        for x, code in events:
            ds = day_str[x]
            if code:
                rows.append([f"att-{next(ids):09d}", number, school_sid, ds, "", code])
                continue
            code = "AE" if random_() < excused else "A"
            if random_() < 0.10:
                # section-level taking: several rows for one absent day
                for period in ("1", "2", "3")[: 2 + (random_() < 0.5)]:
                    rows.append([f"att-{next(ids):09d}", number, school_sid, ds, period, code])
            else:
                rows.append([f"att-{next(ids):09d}", number, school_sid, ds, "", code])
        sink.rows_(rows)
        self.counts["attendance"] += len(rows)

    # -- malformed rows ------------------------------------------------------------------

    def unknown_number(self) -> str:
        # Indexes >= n map to unused numbers of the same permutation.
        return self.number(self.n + self.rng.randrange(_NUMBER_SPACE - self.n))

    def write_bad(
        self, sinks: dict[str, _Sink], k: int, index: int, school: _School, student: str
    ) -> None:
        rng = self.rng
        dlm = self.dlm
        target, kinds = _BAD_KINDS[k % len(_BAD_KINDS)]
        kind = kinds[(k // len(_BAD_KINDS)) % len(kinds)]
        bad_date = _BAD_DATES[k % len(_BAD_DATES)]
        number = self.number(index)
        _grade, classes = self.student_classes(school, index)
        day = self.day_str[rng.randrange(self.n_to_date)] if self.n_to_date else "2026-08-17"
        if target == "users":
            given, family = self.pick_name("en")
            sinks["users"].bad_row(self.user_row("", "parent", school.sid, f"contact-x{k}", "",
                                                 given, family, "", "", "", "", "", student, "",
                                                 "en", "false"))  # fmt: skip
        elif target == "enrollments":
            user = self.uid() if kind == "unknown_user" else student
            sinks["enrollments"].bad_row(
                ["" if kind == "empty_id" else self.seq("enr"), "active", dlm, classes[0].sid,
                 school.sid, user, "student", "false",
                 bad_date if kind == "bad_date" else YEAR_START.isoformat(), ""]
            )  # fmt: skip
        elif target == "results":
            items = [li for cls in classes for li, _p in cls.line_items[-1:]]
            line_item = items[0] if items else self.uid()
            status = self.period_status[-1] if self.periods else "partially graded"
            score_date = min(self.as_of, YEAR_END).isoformat()
            sinks["results"].bad_row(
                ["" if kind == "empty_id" else self.seq("res"), "active", dlm, line_item, student,
                 status, "abc" if kind == "bad_score" else "81.5", "B",
                 bad_date if kind == "bad_date" else score_date, ""]
            )  # fmt: skip
        elif target == "attendance":
            sinks["attendance"].bad_row(
                [f"att-{next(self.att_ids):09d}",
                 self.unknown_number() if kind == "unknown_student" else number,
                 self.sis_code(school),
                 bad_date if kind == "bad_date" else day, "",
                 "ZZ" if kind == "bad_code" else "A"]
            )  # fmt: skip
        else:
            self.inc_idx += 1
            sinks["discipline"].bad_row(
                [f"inc-{self.inc_idx:07d}",
                 self.unknown_number() if kind == "unknown_student" else number,
                 self.sis_code(school),
                 bad_date if kind == "bad_date" else day, "DISRUPT", "WARN", "0", "N"]
            )  # fmt: skip


def generate_district(
    out_dir: Path,
    students: int = 250,
    seed: int = 7,
    as_of: date = date(2026, 11, 20),
    oneroster_version: str = "1.2",
    bad_rows: int = 0,
    sis_school_ids: str = "number",
    quirks: Sequence[str] = (),
) -> GenerationSummary:
    """Write a synthetic district to ``out_dir/oneroster/`` and ``out_dir/sis/``.

    Same arguments give byte-identical files. ``bad_rows`` malformed rows are spread over
    users, enrollments, results, attendance and discipline, away from the file ends.
    ``sis_school_ids``: the SIS export names schools by ``number`` (orgs.identifier, like real
    exports) or by ``sourcedId``. ``quirks`` (see ``QUIRKS``) add real-world export damage.
    """
    out_dir = Path(out_dir)
    if sis_school_ids not in ("number", "sourcedId"):
        raise ValueError(f"sis_school_ids must be 'number' or 'sourcedId', not {sis_school_ids!r}")
    unknown = sorted(set(quirks) - set(QUIRKS))
    if unknown:
        raise ValueError(f"unknown quirks {unknown}; known: {', '.join(QUIRKS)}")
    gen = _Generator(out_dir, students, seed, as_of, oneroster_version, bad_rows)
    gen.sis_school_ids = sis_school_ids
    gen.plan()
    names = [
        "manifest", "orgs", "academicSessions", "categories", "courses", "classes", "users",
        "roles", "enrollments", "lineItems", "results",
    ]  # fmt: skip
    if not gen.v12:
        names.remove("roles")
    with ExitStack() as stack:
        sinks: dict[str, _Sink] = {}
        for name in names:
            header = ONEROSTER_HEADERS[f"{name}.csv"]
            if name == "users" and not gen.v12:
                header = USERS_HEADER_V11
            sinks[name] = _Sink(stack, out_dir / "oneroster" / f"{name}.csv", header)
        for name, header in SIS_HEADERS.items():
            sinks[name.removesuffix(".csv")] = _Sink(stack, out_dir / "sis" / name, header)
        gen.write_static(sinks)
        gen.write_students(sinks)
    files = {sink.path.relative_to(out_dir).as_posix(): sink.rows for sink in sinks.values()}
    injected = _apply_quirks(out_dir, quirks, random.Random(f"quirks-{seed}"), files)
    return GenerationSummary(
        students=students,
        guardians=gen.counts["guardians"],
        teachers=len(gen.teachers),
        schools=len(gen.schools),
        classes=len(gen.classes),
        enrollments=gen.counts["enrollments"],
        results=gen.counts["results"],
        attendance_events=gen.counts["attendance"],
        discipline_incidents=gen.counts["discipline"],
        calendar_days=sinks["calendar"].rows,
        bad_rows=sum(sink.bad for sink in sinks.values()),
        bytes_written=sum(sink.path.stat().st_size for sink in sinks.values()),
        files=files,
        quirks=injected,
    )


# What real exports do to files, each applied after the clean files are written:
QUIRKS: dict[str, str] = {
    "space_agents": "users.csv agentSourcedIds separated by spaces instead of commas",
    "latin1": "one users.csv student row with a non-ASCII name encoded as Latin-1",
    "nul": "a NUL byte in one guardian's given name in users.csv",
    "huge_field": "a 10 MB comment in one results.csv row",
    "unclosed_quote": "a quote in discipline.csv that stays open over the next 12 lines",
    "duplicate_ids": "one users.csv student row repeated later with another given name",
    "header_only_users": "users.csv holds its header and no records",
    "header_only_attendance": "attendance.csv holds its header and no records",
}


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _apply_quirks(
    out_dir: Path, quirks: Sequence[str], rng: random.Random, files: dict[str, int]
) -> dict[str, str]:
    done: dict[str, str] = {}
    users = out_dir / "oneroster" / "users.csv"

    def users_rows() -> tuple[list[str], list[list[str]]]:
        # surrogateescape: a Latin-1 byte an earlier quirk wrote survives the rewrite
        with users.open(encoding="utf-8", errors="surrogateescape", newline="") as fh:
            all_rows = list(csv.reader(fh))
        return all_rows[0], all_rows[1:]

    def pick(rows: list[list[str]], ok: Callable[[list[str]], bool]) -> int:
        # Away from the file ends, like the damage real exports show.
        candidates = [i for i in range(len(rows) // 4, len(rows)) if ok(rows[i])]
        return candidates[rng.randrange(len(candidates))] if candidates else -1

    header, rows = users_rows()
    col = {name: i for i, name in enumerate(header)}
    students = {r[0] for r in rows if r[col["grades"]]}
    for quirk in quirks:
        if quirk == "space_agents":
            header, rows = users_rows()
            for r in rows:
                r[col["agentSourcedIds"]] = r[col["agentSourcedIds"]].replace(",", " ")
            _write_rows(users, header, rows)
            done[quirk] = "users.csv agentSourcedIds"
        elif quirk in ("latin1", "nul", "duplicate_ids"):
            header, rows = users_rows()
            if quirk == "nul":
                i = pick(rows, lambda r: r[0] not in students and r[col["email"]] != "")
            elif quirk == "latin1":
                i = pick(rows, lambda r: r[0] in students and not r[col["givenName"]].isascii()
                         and r[col["givenName"]].encode("cp1252", "ignore").decode("cp1252")
                         == r[col["givenName"]])  # fmt: skip
            else:
                i = pick(rows, lambda r: r[0] in students)
            if i < 0:
                continue
            target = rows[i]
            if quirk == "nul":
                name = target[col["givenName"]]
                target[col["givenName"]] = name[:2] + "\x00" + name[2:]
            if quirk == "duplicate_ids":
                copy = list(target)
                copy[col["givenName"]] = "Duplicate"
                rows.insert(min(len(rows), i + 1 + len(rows) // 8), copy)
                files["oneroster/users.csv"] += 1
            _write_rows(users, header, rows, latin1_row=i if quirk == "latin1" else -1)
            done[quirk] = f"users.csv line {i + 2} sourcedId {target[0]}"
        elif quirk == "huge_field":
            path = out_dir / "oneroster" / "results.csv"
            lines = _lines(path)
            i = len(lines) // 2
            fields = lines[i].rstrip(b"\n").split(b",")
            fields[-1] = b"x" * 10_000_000
            lines[i] = b",".join(fields) + b"\n"
            path.write_bytes(b"".join(lines))
            done[quirk] = f"results.csv line {i + 1} sourcedId {fields[0].decode()}"
        elif quirk == "unclosed_quote":
            path = out_dir / "sis" / "discipline.csv"
            lines = _lines(path)
            if len(lines) < 3:
                continue
            i = max(1, len(lines) // 3)
            fields = lines[i].split(b",")
            fields[4] = b'"' + fields[4]  # BehaviorCode opens a quote that never closes here
            lines[i] = b",".join(fields)
            close = min(len(lines) - 1, i + 12)
            if close > i:
                fields = lines[close].split(b",")
                fields[4] = fields[4] + b'"'
                lines[close] = b",".join(fields)
            path.write_bytes(b"".join(lines))
            done[quirk] = f"discipline.csv line {i + 1}"
        elif quirk in ("header_only_users", "header_only_attendance"):
            name = "oneroster/users.csv" if quirk == "header_only_users" else "sis/attendance.csv"
            path = out_dir / name
            path.write_bytes(_lines(path)[0])
            files[name] = 0
            done[quirk] = name
    return done


def _write_rows(path: Path, header: list[str], rows: list[list[str]], latin1_row: int = -1) -> None:
    with path.open("wb") as fh:
        for i, row in enumerate([header, *rows]):
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow(row)
            line = buf.getvalue()
            fh.write(line.encode("cp1252") if i - 1 == latin1_row else
                     line.encode("utf-8", "surrogateescape"))  # fmt: skip


def write_demographics(out_dir: Path) -> int:
    """Add `demographics.csv` with a birth date for every student of a generated district (for
    matching person-based referrals by name, school and birth date) and list it in the manifest.

    Separate from ``generate_district`` so its files stay byte-identical; the dates come from a
    hash of each student's sourcedId and grade, so the same district gets the same dates.
    Returns the number of students written.
    """
    import hashlib

    folder = Path(out_dir) / "oneroster"
    with (folder / "users.csv").open(encoding="utf-8", newline="") as fh:
        users = list(csv.DictReader(fh))
    students: set[str] = set()
    if (folder / "roles.csv").exists():  # 1.2 keeps the role in roles.csv
        with (folder / "roles.csv").open(encoding="utf-8", newline="") as fh:
            students = {r["userSourcedId"] for r in csv.DictReader(fh) if r["role"] == "student"}
    else:
        students = {u["sourcedId"] for u in users if u.get("role") == "student"}
    rows: list[list[str]] = []
    for user in users:
        sid = user["sourcedId"]
        if sid not in students:
            continue
        grade = (user.get("grades") or "").split(",")[0].strip()
        age = 5 + (0 if grade in ("KG", "") else int(grade))  # on 1 September of the year
        spread = int.from_bytes(hashlib.sha256(sid.encode()).digest()[:4], "big") % 365
        born = date(YEAR_START.year - age - 1, 9, 2) + timedelta(days=spread)
        rows.append([sid, "active", user.get("dateLastModified") or "", born.isoformat()])
    _write_rows(folder / "demographics.csv", ["sourcedId", "status", "dateLastModified",
                                              "birthDate"], rows)  # fmt: skip
    manifest = (folder / "manifest.csv").read_text(encoding="utf-8")
    (folder / "manifest.csv").write_text(
        manifest.replace("file.demographics,absent", "file.demographics,bulk"), encoding="utf-8"
    )
    return len(rows)
