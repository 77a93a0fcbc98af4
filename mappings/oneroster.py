"""OneRoster 1.1 / 1.2 CSV records to canonical rows. Pure functions: no I/O."""

from __future__ import annotations

from functools import partial

from mappings.fields import (
    optional,
    parse_bool,
    parse_date,
    parse_float,
    parse_optional_date,
    phone_e164,
    phone_issue,
    required,
    split_ids,
    split_list,
)
from mappings.spec import EntityMapping, Lookups, Mapped, Need
from service.errors import BadRecord

BASE = frozenset({"sourcedId", "status", "dateLastModified"})
STATUSES = {"active": True, "tobedeleted": False, "": True}
DEFAULT_GUARDIAN_ROLES = ("parent", "guardian", "relatedContact")
GUARDIAN_FLAG_ROLES = frozenset({"parent", "guardian"})


def _base(row: dict[str, str]) -> tuple[str, bool]:
    key = required(row, "sourcedId")
    status = (row.get("status") or "").strip()
    if status not in STATUSES:
        raise BadRecord("bad_status", f"status {status!r} is not active or tobedeleted")
    if "__width__" in row:
        raise BadRecord("bad_field_count", row["__width__"])
    return key, STATUSES[status]


def map_org(row: dict[str, str], _: Lookups) -> Mapped:
    key, active = _base(row)
    return [
        (
            "schools",
            {
                "school_id": key,
                "name": required(row, "name"),
                "org_type": optional(row, "type") or "school",
                "identifier": optional(row, "identifier"),
                "parent_id": optional(row, "parentSourcedId"),
                "active": active,
            },
        )
    ]


def map_academic_session(row: dict[str, str], _: Lookups) -> Mapped:
    key, active = _base(row)
    start = parse_date(row.get("startDate"), "startDate")
    end = parse_date(row.get("endDate"), "endDate")
    if end < start:
        raise BadRecord("bad_date_range", f"endDate {end} is before startDate {start}")
    return [
        (
            "academic_sessions",
            {
                "session_id": key,
                "title": required(row, "title"),
                "session_type": required(row, "type"),
                "start_date": start,
                "end_date": end,
                "parent_id": optional(row, "parentSourcedId"),
                "school_year": optional(row, "schoolYear"),
                "active": active,
            },
        )
    ]


def map_course(row: dict[str, str], _: Lookups) -> Mapped:
    key, active = _base(row)
    return [
        (
            "courses",
            {
                "course_id": key,
                "title": required(row, "title"),
                "course_code": optional(row, "courseCode"),
                "subjects": ",".join(split_list(row.get("subjects"))) or None,
                "subject_codes": ",".join(split_list(row.get("subjectCodes"))) or None,
                "org_id": optional(row, "orgSourcedId"),
                "active": active,
            },
        )
    ]


def map_class(row: dict[str, str], _: Lookups) -> Mapped:
    key, active = _base(row)
    return [
        (
            "classes",
            {
                "class_id": key,
                "title": required(row, "title"),
                "course_id": optional(row, "courseSourcedId"),
                "school_id": required(row, "schoolSourcedId"),
                "class_type": optional(row, "classType"),
                "subjects": ",".join(split_list(row.get("subjects"))) or None,
                "subject_codes": ",".join(split_list(row.get("subjectCodes"))) or None,
                "active": active,
            },
        )
    ]


def map_role(row: dict[str, str], _: Lookups) -> Mapped:
    key, active = _base(row)
    return [
        (
            "user_roles",
            {
                "role_id": key,
                "user_id": required(row, "userSourcedId"),
                "role": required(row, "role"),
                "role_type": optional(row, "roleType"),
                "org_id": optional(row, "orgSourcedId"),
                "active": active,
            },
        )
    ]


def map_user(
    row: dict[str, str], lookups: Lookups, guardian_roles: tuple[str, ...] = DEFAULT_GUARDIAN_ROLES
) -> Mapped:
    key, active = _base(row)
    role = optional(row, "role")  # 1.1 carries the role on the user
    org = next(iter(split_ids(row.get("orgSourcedIds"))), None) or optional(
        row, "primaryOrgSourcedId"
    )
    if role is None:  # 1.2 keeps roles in roles.csv
        found = lookups.roles.get(key)
        if found is None:
            raise BadRecord("unknown_role", "user has no role in users.csv or roles.csv")
        role, role_org = found
        org = org or role_org
    agents = split_ids(row.get("agentSourcedIds"))
    if role == "student":
        out: Mapped = [
            (
                "students",
                {
                    "student_id": key,
                    "local_id": optional(row, "identifier"),
                    "first_name": required(row, "givenName"),
                    "last_name": required(row, "familyName"),
                    "grade_level": next(iter(split_list(row.get("grades"))), None),
                    "school_id": org,
                    "email": (optional(row, "email") or "").lower() or None,
                    "active": active,
                },
            )
        ]
        out += [
            (
                "student_contacts",
                {"student_id": key, "contact_id": a, "priority": 1, "active": active},
            )
            for a in agents
        ]
        return out
    if role in guardian_roles:
        sms = phone_e164(row.get("sms"))
        voice = phone_e164(row.get("phone"))
        # Kept on the contact so staff see why a guardian has no textable number.
        issues = [
            f"{column}:{issue}"
            for column in ("sms", "phone")
            if (issue := phone_issue(row.get(column)))
        ]
        language = (optional(row, "metadata.language") or "en").lower().split("-")[0]
        dnc = parse_bool(row.get("metadata.doNotContact"), "metadata.doNotContact")
        out = [
            (
                "contacts",
                {
                    "contact_id": key,
                    "first_name": required(row, "givenName"),
                    "last_name": required(row, "familyName"),
                    "relationship": role,
                    "is_guardian": role in GUARDIAN_FLAG_ROLES,
                    "email": (optional(row, "email") or "").lower() or None,
                    "sms_phone": sms,
                    "voice_phone": voice,
                    "language": language[:8],
                    "do_not_contact": dnc,
                    "consent_basis": "provided_to_school" if (sms or voice) else None,
                    "phone_issue": ",".join(issues) or None,
                    "active": active,
                },
            )
        ]
        out += [
            (
                "student_contacts",
                {"student_id": a, "contact_id": key, "priority": 1, "active": active},
            )
            for a in agents
        ]
        return out
    return []  # teachers and administrators are not case subjects


def map_enrollment(row: dict[str, str], lookups: Lookups, check_staff: bool = False) -> Mapped:
    key, active = _base(row)
    user = required(row, "userSourcedId")
    role = required(row, "role")
    if role == "student" and user not in lookups.students:
        raise BadRecord(
            "unknown_student", f"userSourcedId {user!r} is not a known student", ref=user
        )
    if check_staff and role != "student" and user not in lookups.roles:
        # 1.2 packages list every user's role in roles.csv: an unlisted teacher is a bad link.
        raise BadRecord("unknown_user", f"userSourcedId {user!r} ({role}) is not a known user")
    begin = parse_optional_date(row.get("beginDate"), "beginDate")
    end = parse_optional_date(row.get("endDate"), "endDate")
    if begin and end and end < begin:
        raise BadRecord("bad_date_range", f"endDate {end} is before beginDate {begin}")
    return [
        (
            "enrollments",
            {
                "enrollment_id": key,
                "user_id": user,
                "class_id": required(row, "classSourcedId"),
                "school_id": optional(row, "schoolSourcedId"),
                "role": role,
                "begin_date": begin,
                "end_date": end,
                "active": active,
            },
        )
    ]


def map_line_item(row: dict[str, str], _: Lookups) -> Mapped:
    key, active = _base(row)
    return [
        (
            "line_items",
            {
                "line_item_id": key,
                "class_id": required(row, "classSourcedId"),
                "grading_period_id": optional(row, "gradingPeriodSourcedId"),
                "title": required(row, "title"),
                "active": active,
            },
        )
    ]


def map_result(row: dict[str, str], lookups: Lookups) -> Mapped:
    key, active = _base(row)
    student = required(row, "studentSourcedId")
    if student not in lookups.students:
        raise BadRecord(
            "unknown_student", f"studentSourcedId {student!r} is not a known student", ref=student
        )
    item = required(row, "lineItemSourcedId")
    found = lookups.line_items.get(item)
    if found is None:
        raise BadRecord("unknown_line_item", f"lineItemSourcedId {item!r} is not known")
    score = parse_float(row.get("score"), "score")
    letter = optional(row, "textScore")
    if score is None and letter is None and active:
        raise BadRecord("missing_value", "result has neither score nor textScore")
    return [
        (
            "grades",
            {
                "grade_id": key,
                "student_id": student,
                "line_item_id": item,
                "class_id": found[0],
                "grading_period_id": found[1],
                "score": score,
                "letter": letter.upper()[:8] if letter else None,
                "score_status": optional(row, "scoreStatus"),
                "score_date": parse_optional_date(row.get("scoreDate"), "scoreDate"),
                "active": active,
            },
        )
    ]


def map_demographics(row: dict[str, str], lookups: Lookups) -> Mapped:
    """A student's birth date (what a person-based referral can be matched on). Rows about
    teachers and guardians are ignored: birth dates are kept for students only."""
    key, active = _base(row)
    if key not in lookups.students:
        return []
    birth = parse_optional_date(row.get("birthDate"), "birthDate")
    return [("student_demographics", {"student_id": key, "birth_date": birth, "active": active})]


def _cols(*names: str) -> frozenset[str]:
    return frozenset(names) | BASE


def _need(*names: str) -> frozenset[str]:
    """Required columns: only what the mapping cannot do without (status and dateLastModified
    are never read, so a file missing or misspelling them is still read)."""
    return frozenset(names) | {"sourcedId"}


def _staff_key(row: dict[str, str]) -> str:
    return "" if (row.get("role") or "").strip() == "student" else row.get("userSourcedId") or ""


USERS_11 = _cols(
    "enabledUser", "orgSourcedIds", "role", "username", "userIds", "givenName", "familyName",
    "middleName", "identifier", "email", "sms", "phone", "agentSourcedIds", "grades", "password",
)  # fmt: skip
USERS_12_EXTRA = frozenset(
    {
        "userMasterIdentifier", "resourceSourcedIds", "preferredGivenName", "preferredMiddleName",
        "preferredFamilyName", "primaryOrgSourcedId", "pronouns", "preferredFirstName",
        "preferredLastName",
    }
)  # fmt: skip


def entity_mappings(
    guardian_roles: tuple[str, ...] = DEFAULT_GUARDIAN_ROLES, version: str = "1.1"
) -> list[EntityMapping]:
    """The OneRoster CSV files we read, in the order they must load."""
    v12 = version.startswith("1.2")
    enrollment_needs: tuple[Need, ...] = (("students", "userSourcedId"),)
    if v12:
        enrollment_needs += (("roles", _staff_key),)
    return [
        EntityMapping(
            "orgs", "orgs.csv", ("schools",), _need("name"),
            _cols("name", "type", "identifier", "parentSourcedId"), map_org,
        ),
        EntityMapping(
            "academicSessions", "academicSessions.csv", ("academic_sessions",),
            _need("title", "type", "startDate", "endDate"),
            _cols("title", "type", "startDate", "endDate", "parentSourcedId", "schoolYear"),
            map_academic_session,
        ),
        EntityMapping(
            "courses", "courses.csv", ("courses",), _need("title"),
            _cols("schoolYearSourcedId", "title", "courseCode", "grades", "orgSourcedId",
                  "subjects", "subjectCodes"),
            map_course,
        ),
        EntityMapping(
            "classes", "classes.csv", ("classes",), _need("title", "schoolSourcedId"),
            _cols("title", "grades", "courseSourcedId", "classCode", "classType", "location",
                  "schoolSourcedId", "termSourcedIds", "subjects", "subjectCodes", "periods"),
            map_class,
        ),
        EntityMapping(
            "roles", "roles.csv", ("user_roles",), _need("userSourcedId", "role"),
            _cols("userSourcedId", "roleType", "role", "beginDate", "endDate", "orgSourcedId",
                  "userProfileSourcedId"),
            map_role,
        ),
        EntityMapping(
            "users", "users.csv", ("students", "contacts", "student_contacts"),
            _need("givenName", "familyName"), USERS_11 | USERS_12_EXTRA,
            partial(map_user, guardian_roles=guardian_roles), needs=(("roles", "sourcedId"),),
            depends_on=("roles",),
        ),
        EntityMapping(
            "demographics", "demographics.csv", ("student_demographics",), frozenset({"sourcedId"}),
            _cols("birthDate", "sex", "americanIndianOrAlaskaNative", "asian",
                  "blackOrAfricanAmerican", "nativeHawaiianOrOtherPacificIslander", "white",
                  "demographicRaceTwoOrMoreRaces", "hispanicOrLatinoEthnicity",
                  "countryOfBirthCode", "stateOfBirthAbbreviation", "cityOfBirth",
                  "publicSchoolResidenceStatus"),
            map_demographics, needs=(("students", "sourcedId"),), depends_on=("users",),
        ),
        EntityMapping(
            "enrollments", "enrollments.csv", ("enrollments",),
            _need("classSourcedId", "userSourcedId", "role"),
            _cols("classSourcedId", "schoolSourcedId", "userSourcedId", "role", "primary",
                  "beginDate", "endDate"),
            partial(map_enrollment, check_staff=v12), needs=enrollment_needs,
        ),
        EntityMapping(
            "lineItems", "lineItems.csv", ("line_items",),
            _need("title", "classSourcedId"),
            _cols("title", "description", "assignDate", "dueDate", "classSourcedId",
                  "categorySourcedId", "gradingPeriodSourcedId", "resultValueMin",
                  "resultValueMax", "academicSessionSourcedId", "schoolSourcedId",
                  "scoreScaleSourcedId"),
            map_line_item,
        ),
        EntityMapping(
            "results", "results.csv", ("grades",),
            _need("lineItemSourcedId", "studentSourcedId"),
            # 1.2 adds classSourcedId and scorePercentile: standard, never warned about.
            _cols("lineItemSourcedId", "studentSourcedId", "scoreStatus", "score", "textScore",
                  "scoreDate", "comment", "scoreScaleSourcedId", "learningObjectiveSetSourcedId",
                  "inProgress", "incomplete", "late", "missing", "classSourcedId",
                  "scorePercentile"),
            map_result,
            needs=(("students", "studentSourcedId"), ("line_items", "lineItemSourcedId")),
            depends_on=("lineItems",),
        ),
    ]  # fmt: skip
