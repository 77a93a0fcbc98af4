"""Ed-Fi ODS/API resources (Data Standard 4 and 5) to canonical rows. Pure: no I/O.

Descriptors (`uri://ed-fi.org/AttendanceEventCategoryDescriptor#Unexcused Absence`) go through
`DescriptorMap`, loaded from `edfi_descriptors.yaml` plus the district's own overrides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from mappings.fields import phone_e164
from mappings.spec import EntityMapping, Lookups, Mapped, Need, Row
from service.errors import BadRecord

DEFAULT_DESCRIPTORS = Path(__file__).with_name("edfi_descriptors.yaml")
ACTION_WEIGHT = {"expulsion": 3, "out_of_school_suspension": 2, "in_school_suspension": 1}


def code(descriptor: str | None) -> str:
    """The code value of a descriptor URI (the part after '#')."""
    return (descriptor or "").rsplit("#", 1)[-1].strip()


@dataclass(frozen=True)
class DescriptorMap:
    maps: dict[str, dict[str, Any]]
    lists: dict[str, frozenset[str]]

    @classmethod
    def load(cls, override: Path | None = None) -> DescriptorMap:
        raw: dict[str, Any] = yaml.safe_load(DEFAULT_DESCRIPTORS.read_text(encoding="utf-8"))
        if override is not None:
            extra = yaml.safe_load(override.read_text(encoding="utf-8")) or {}
            for key, value in extra.items():
                if isinstance(value, dict) and isinstance(raw.get(key), dict):
                    raw[key] = {**raw[key], **value}
                else:
                    raw[key] = value
        maps = {
            k: {str(code_).lower(): v for code_, v in v.items()}
            for k, v in raw.items()
            if isinstance(v, dict)
        }
        lists = {
            k: frozenset(str(x).lower() for x in v) for k, v in raw.items() if isinstance(v, list)
        }
        return cls(maps, lists)

    def lookup(self, kind: str, descriptor: str | None) -> Any:
        table = self.maps.get(kind, {})
        full = (descriptor or "").strip().lower()
        if full in table:
            return table[full]
        return table.get(code(descriptor).lower())

    def member(self, kind: str, descriptor: str | None) -> bool:
        return code(descriptor).lower() in self.lists.get(kind, frozenset())


def _need(record: dict[str, Any], *path: str) -> Any:
    node: Any = record
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if node in (None, ""):
        raise BadRecord("missing_value", f"{'.'.join(path)} is missing")
    return node


def _day(value: Any, field: str) -> date:
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise BadRecord("bad_date", f"{field} {value!r} is not a date") from None


def _opt_day(value: Any, field: str) -> date | None:
    return _day(value, field) if value else None


# -- keys shared by records and their deletes (deletes carry flattened key values) ------------


def attendance_key(student: Any, school: Any, year: Any, session: Any, day: Any, cat: Any) -> str:
    return f"ssae|{student}|{school}|{year}|{session}|{str(day)[:10]}|{code(cat)}"


def section_attendance_key(
    student: Any, school: Any, section: Any, session: Any, day: Any, cat: Any
) -> str:
    return f"ssecae|{student}|{school}|{section}|{session}|{str(day)[:10]}|{code(cat)}"


def incident_report_key(incident: Any, school: Any) -> str:
    return f"{incident}|{school}"


def behavior_key(student: Any, incident: Any, school: Any) -> str:
    return f"sdiba|{student}|{incident}|{school}"


def action_key(action: Any, student: Any, day: Any) -> str:
    return f"da|{action}|{student}|{str(day)[:10]}"


def enrollment_key(student: Any, school: Any, entry: Any) -> str:
    return f"ssa|{student}|{school}|{str(entry)[:10]}"


# -- record mappings --------------------------------------------------------------------------


def map_school(r: dict[str, Any], _: Lookups) -> Mapped:
    school = str(_need(r, "schoolId"))
    return [("schools", {"school_id": school, "name": _need(r, "nameOfInstitution"),
                         "org_type": "school", "identifier": school})]  # fmt: skip


def map_session(r: dict[str, Any], _: Lookups) -> Mapped:
    school = _need(r, "schoolReference", "schoolId")
    year = _need(r, "schoolYearTypeReference", "schoolYear")
    name = _need(r, "sessionName")
    start, end = _day(r.get("beginDate"), "beginDate"), _day(r.get("endDate"), "endDate")
    return [("academic_sessions", {"session_id": f"session|{school}|{year}|{name}",
                                   "title": name, "session_type": "term", "start_date": start,
                                   "end_date": end, "school_year": str(year)})]  # fmt: skip


def map_grading_period(r: dict[str, Any], _: Lookups) -> Mapped:
    school = _need(r, "schoolReference", "schoolId")
    year = _need(r, "schoolYearTypeReference", "schoolYear")
    name = r.get("gradingPeriodName") or code(r.get("gradingPeriodDescriptor"))
    period = code(_need(r, "gradingPeriodDescriptor"))
    return [("academic_sessions", {"session_id": grading_period_id(period, name, school, year),
                                   "title": name, "session_type": "gradingPeriod",
                                   "start_date": _day(r.get("beginDate"), "beginDate"),
                                   "end_date": _day(r.get("endDate"), "endDate"),
                                   "school_year": str(year)})]  # fmt: skip


def grading_period_id(period: Any, name: Any, school: Any, year: Any) -> str:
    return f"gp|{period}|{name}|{school}|{year}"


def map_calendar_date(r: dict[str, Any], _: Lookups, *, d: DescriptorMap) -> Mapped:
    school = str(_need(r, "calendarReference", "schoolId"))
    events = [e.get("calendarEventDescriptor") for e in r.get("calendarEvents") or []]
    instructional = any(d.lookup("calendar_event", e) is True for e in events)
    return [("calendar_days", {"school_id": school, "day": _day(_need(r, "date"), "date"),
                               "instructional": instructional})]  # fmt: skip


def map_student(r: dict[str, Any], _: Lookups) -> Mapped:
    sid = str(_need(r, "studentUniqueId"))
    return [("students", {"student_id": sid, "local_id": sid,
                          "first_name": _need(r, "firstName"),
                          "last_name": _need(r, "lastSurname")})]  # fmt: skip


def _sorted_by_priority(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda t: t.get("orderOfPriority") or 99)


def map_contact(r: dict[str, Any], _: Lookups, *, d: DescriptorMap, key_field: str) -> Mapped:
    cid = str(_need(r, key_field))
    phones = [
        (p, e164)
        for p in _sorted_by_priority(list(r.get("telephones") or []))
        if (e164 := phone_e164(p.get("telephoneNumber")))
    ]
    sms = next((p for p in phones if p[0].get("textMessageCapabilityIndicator")), None)
    voice = phones[0] if phones else None
    mails = sorted(r.get("electronicMails") or [],
                   key=lambda m: not m.get("primaryEmailAddressIndicator"))  # fmt: skip
    language = "en"
    for lang in r.get("languages") or []:
        uses = [code(u.get("languageUseDescriptor")).lower() for u in lang.get("uses") or []]
        mapped = d.lookup("language", lang.get("languageDescriptor"))
        if mapped and (not uses or any("home" in u or "native" in u for u in uses)):
            language = mapped
            break
    chosen = (sms or voice or (None, None))[0]
    return [("contacts", {
        "contact_id": cid,
        "first_name": _need(r, "firstName"),
        "last_name": _need(r, "lastSurname"),
        "relationship": "contact",  # the association says how they relate to each student
        "is_guardian": False,
        "email": (mails[0]["electronicMailAddress"].lower() if mails else None),
        "sms_phone": sms[1] if sms else None,
        "voice_phone": voice[1] if voice else None,
        "language": language,
        "do_not_contact": False,
        "phone_unlisted": bool(chosen and chosen.get("doNotPublishIndicator")),
        "consent_basis": "provided_to_school" if chosen else None,
    })]  # fmt: skip


def map_student_contact(
    r: dict[str, Any], _: Lookups, *, d: DescriptorMap, ref: str, key_field: str
) -> Mapped:
    student = str(_need(r, "studentReference", "studentUniqueId"))
    contact = str(_need(r, ref, key_field))
    relation = r.get("relationDescriptor")
    guardian = r.get("legalGuardian")
    if guardian is None and relation:
        guardian = d.member("guardian_relation", relation) or None
    return [("student_contacts", {
        "student_id": student,
        "contact_id": contact,
        "priority": r.get("contactPriority") or 1,
        "relationship": code(relation) or None,
        "is_guardian": guardian,
        "primary_contact": r.get("primaryContactStatus"),
        "lives_with": r.get("livesWith"),
        # Any restriction text (a court order, "no pickup") blocks messages: safety first.
        "no_contact": bool((r.get("contactRestrictions") or "").strip()),
    })]  # fmt: skip


def map_school_association(r: dict[str, Any], _: Lookups, *, d: DescriptorMap) -> Mapped:
    student = str(_need(r, "studentReference", "studentUniqueId"))
    school = str(_need(r, "schoolReference", "schoolId"))
    entry = _day(_need(r, "entryDate"), "entryDate")
    exit_ = _opt_day(r.get("exitWithdrawDate"), "exitWithdrawDate")
    return [("enrollments", {
        "enrollment_id": enrollment_key(student, school, entry),
        "user_id": student, "class_id": None, "school_id": school, "role": "student",
        "begin_date": entry, "end_date": exit_,
        "grade_level": d.lookup("grade_level", r.get("entryGradeLevelDescriptor")),
    })]  # fmt: skip


def _category(d: DescriptorMap, descriptor: str | None) -> str:
    category = d.lookup("attendance_event_category", descriptor)
    if category is None:
        raise BadRecord("unknown_code", f"attendance category {code(descriptor)!r} is not mapped")
    return str(category)


def map_school_attendance(r: dict[str, Any], _: Lookups, *, d: DescriptorMap) -> Mapped:
    student = _need(r, "studentReference", "studentUniqueId")
    school = _need(r, "schoolReference", "schoolId")
    session = r.get("sessionReference") or {}
    desc = _need(r, "attendanceEventCategoryDescriptor")
    day = _day(_need(r, "eventDate"), "eventDate")
    return [("attendance_events", {
        "event_id": attendance_key(student, school, session.get("schoolYear"),
                                   session.get("sessionName"), day, desc),
        "student_id": str(student), "school_id": str(school), "day": day, "period": None,
        "category": _category(d, desc), "code": code(desc)[:32],
    })]  # fmt: skip


def map_section_attendance(r: dict[str, Any], _: Lookups, *, d: DescriptorMap) -> Mapped:
    student = _need(r, "studentReference", "studentUniqueId")
    section = r.get("sectionReference") or {}
    desc = _need(r, "attendanceEventCategoryDescriptor")
    day = _day(_need(r, "eventDate"), "eventDate")
    return [("attendance_events", {
        "event_id": section_attendance_key(student, section.get("schoolId"),
                                           section.get("sectionIdentifier"),
                                           section.get("sessionName"), day, desc),
        "student_id": str(student), "school_id": str(section.get("schoolId") or "") or None,
        "day": day, "period": str(section.get("sectionIdentifier") or "")[:16] or None,
        "category": _category(d, desc), "code": code(desc)[:32],
    })]  # fmt: skip


def map_incident(r: dict[str, Any], _: Lookups) -> Mapped:
    incident = _need(r, "incidentIdentifier")
    school = _need(r, "schoolReference", "schoolId")
    return [("discipline_reports", {
        "report_id": incident_report_key(incident, school), "school_id": str(school),
        "day": _day(_need(r, "incidentDate"), "incidentDate"),
        "state_reportable": bool(r.get("reportedToLawEnforcement")),
    })]  # fmt: skip


def behavior_report_key(r: dict[str, Any]) -> str:
    ref = r.get("disciplineIncidentReference") or {}
    return incident_report_key(ref.get("incidentIdentifier"), ref.get("schoolId"))


def map_behavior(r: dict[str, Any], lookups: Lookups) -> Mapped:
    student = _need(r, "studentReference", "studentUniqueId")
    incident = _need(r, "disciplineIncidentReference", "incidentIdentifier")
    school = _need(r, "disciplineIncidentReference", "schoolId")
    report = lookups.incident_reports.get(incident_report_key(incident, school))
    if report is None:
        raise BadRecord("unknown_incident", f"incident {incident!r} at {school} is not known")
    day, reportable = report
    return [("discipline_incidents", {
        "incident_id": behavior_key(student, incident, school), "student_id": str(student),
        "school_id": str(school), "day": day,
        "behavior_code": code(r.get("behaviorDescriptor"))[:64] or None,
        "action": "none", "action_code": None, "action_days": None,
        "state_reportable": reportable, "counts_as_incident": True,
    })]  # fmt: skip


def map_action(r: dict[str, Any], _: Lookups, *, d: DescriptorMap) -> Mapped:
    student = _need(r, "studentReference", "studentUniqueId")
    action_id = _need(r, "disciplineActionIdentifier")
    day = _day(_need(r, "disciplineDate"), "disciplineDate")
    actions = [d.lookup("discipline", x.get("disciplineDescriptor")) or "other"
               for x in r.get("disciplines") or []]  # fmt: skip
    worst = max(actions or ["other"], key=lambda a: ACTION_WEIGHT.get(a, 0))
    codes = [code(x.get("disciplineDescriptor")) for x in r.get("disciplines") or []]
    length = r.get("actualDisciplineActionLength") or r.get("disciplineActionLength")
    school = (r.get("responsibilitySchoolReference") or {}).get("schoolId")
    return [("discipline_incidents", {
        "incident_id": action_key(action_id, student, day), "student_id": str(student),
        "school_id": str(school) if school is not None else None, "day": day,
        "behavior_code": None, "action": worst, "action_code": (",".join(codes))[:32] or None,
        "action_days": float(length) if length is not None else None,
        "state_reportable": False, "counts_as_incident": False,
    })]  # fmt: skip


def map_grade(r: dict[str, Any], _: Lookups, *, d: DescriptorMap) -> Mapped:
    if not d.member("grade_type_for_indicators", r.get("gradeTypeDescriptor")):
        return []  # progress reports and finals are not grading-period grades
    ssa = _need(r, "studentSectionAssociationReference")
    gp = _need(r, "gradingPeriodReference")
    student = _need(ssa, "studentUniqueId")
    section = _need(ssa, "sectionIdentifier")
    period = grading_period_id(code(gp.get("gradingPeriodDescriptor")), gp.get("gradingPeriodName"),
                               gp.get("schoolId"), gp.get("schoolYear"))  # fmt: skip
    number = r.get("numericGradeEarned")
    return [("grades", {
        "grade_id": f"grade|{student}|{section}|{ssa.get('sessionName')}|{period}",
        "student_id": str(student), "line_item_id": "edfi", "class_id": str(section),
        "grading_period_id": period,
        "score": float(number) if number is not None else None,
        "letter": (r.get("letterGradeEarned") or None),
    })]  # fmt: skip


# -- deletes: the same keys from the flattened keyValues of /deletes and /keyChanges --------


def _kv(keys: dict[str, Any], *names: str) -> Any:
    for n in names:
        if n in keys:
            return keys[n]
    raise BadRecord("missing_value", f"delete without {names[0]}")


def delete_student(k: dict[str, Any]) -> list[tuple[str, Row]]:
    return [("students", {"student_id": str(_kv(k, "studentUniqueId"))})]


def delete_contact(k: dict[str, Any]) -> list[tuple[str, Row]]:
    return [("contacts", {"contact_id": str(_kv(k, "contactUniqueId", "parentUniqueId"))})]


def delete_student_contact(k: dict[str, Any]) -> list[tuple[str, Row]]:
    student = str(_kv(k, "studentUniqueId"))
    contact = str(_kv(k, "contactUniqueId", "parentUniqueId"))
    return [("student_contacts", {"student_id": student, "contact_id": contact})]


def delete_enrollment(k: dict[str, Any]) -> list[tuple[str, Row]]:
    key = enrollment_key(_kv(k, "studentUniqueId"), _kv(k, "schoolId"), _kv(k, "entryDate"))
    return [("enrollments", {"enrollment_id": key})]


def delete_school_attendance(k: dict[str, Any]) -> list[tuple[str, Row]]:
    key = attendance_key(_kv(k, "studentUniqueId"), _kv(k, "schoolId"), k.get("schoolYear"),
                         k.get("sessionName"), _kv(k, "eventDate"),
                         _kv(k, "attendanceEventCategoryDescriptor"))  # fmt: skip
    return [("attendance_events", {"event_id": key})]


def delete_section_attendance(k: dict[str, Any]) -> list[tuple[str, Row]]:
    key = section_attendance_key(
        _kv(k, "studentUniqueId"), k.get("schoolId"), k.get("sectionIdentifier"),
        k.get("sessionName"), _kv(k, "eventDate"), _kv(k, "attendanceEventCategoryDescriptor"),
    )  # fmt: skip
    return [("attendance_events", {"event_id": key})]


def delete_incident(k: dict[str, Any]) -> list[tuple[str, Row]]:
    key = incident_report_key(_kv(k, "incidentIdentifier"), _kv(k, "schoolId"))
    return [("discipline_reports", {"report_id": key})]


def delete_behavior(k: dict[str, Any]) -> list[tuple[str, Row]]:
    key = behavior_key(_kv(k, "studentUniqueId"), _kv(k, "incidentIdentifier"), _kv(k, "schoolId"))
    return [("discipline_incidents", {"incident_id": key})]


def delete_action(k: dict[str, Any]) -> list[tuple[str, Row]]:
    key = action_key(_kv(k, "disciplineActionIdentifier"), _kv(k, "studentUniqueId"),
                     _kv(k, "disciplineDate"))  # fmt: skip
    return [("discipline_incidents", {"incident_id": key})]


def delete_calendar_date(k: dict[str, Any]) -> list[tuple[str, Row]]:
    return [("calendar_days", {"school_id": str(_kv(k, "schoolId")),
                               "day": _day(_kv(k, "date"), "date")})]  # fmt: skip


def delete_school(k: dict[str, Any]) -> list[tuple[str, Row]]:
    return [("schools", {"school_id": str(_kv(k, "schoolId"))})]


# -- the resources we read, in load order -------------------------------------------------------


def edfi_mappings(data_standard: int, descriptors: DescriptorMap) -> list[EntityMapping]:
    """Resource name -> mapping, for DS4 (parents) or DS5 (contacts)."""
    d = descriptors
    # Data Standard 5 renamed parents to contacts.
    family = "contact" if data_standard >= 5 else "parent"
    contacts, links = f"{family}s", f"student{family.title()}Associations"
    key, ref = f"{family}UniqueId", f"{family}Reference"
    none: frozenset[str] = frozenset()

    def m(name: str, tables: tuple[str, ...], fn: Callable[..., Mapped],
          delete: Callable[[dict[str, Any]], list[tuple[str, Row]]] | None = None,
          needs: tuple[Need, ...] = ()) -> EntityMapping:  # fmt: skip
        return EntityMapping(name, name, tables, none, none, fn, needs=needs, map_delete=delete)

    return [
        m("schools", ("schools",), map_school, delete_school),
        m("sessions", ("academic_sessions",), map_session),
        m("gradingPeriods", ("academic_sessions",), map_grading_period),
        m("calendarDates", ("calendar_days",), partial(map_calendar_date, d=d),
          delete_calendar_date),
        m("students", ("students",), map_student, delete_student),
        m(contacts, ("contacts",), partial(map_contact, d=d, key_field=key), delete_contact),
        m(links, ("student_contacts",),
          partial(map_student_contact, d=d, ref=ref, key_field=key), delete_student_contact),
        m("studentSchoolAssociations", ("enrollments",), partial(map_school_association, d=d),
          delete_enrollment),
        m("studentSchoolAttendanceEvents", ("attendance_events",),
          partial(map_school_attendance, d=d), delete_school_attendance),
        m("studentSectionAttendanceEvents", ("attendance_events",),
          partial(map_section_attendance, d=d), delete_section_attendance),
        m("grades", ("grades",), partial(map_grade, d=d)),
        m("disciplineIncidents", ("discipline_reports",), map_incident, delete_incident),
        m("studentDisciplineIncidentBehaviorAssociations", ("discipline_incidents",),
          map_behavior, delete_behavior, needs=(("incident_reports", behavior_report_key),)),
        m("disciplineActions", ("discipline_incidents",), partial(map_action, d=d), delete_action),
    ]  # fmt: skip
