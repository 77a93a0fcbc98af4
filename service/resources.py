"""Community resources from an Open Referral HSDS 3.0 directory: import and matching.

Import (`casebridge resources import PATH|URL`) reads the JSON form (a service, a list of them,
an API page with `contents`, or an organization with `services`) or the CSV package (a folder or
.zip with `datapackage.json`, `services.csv`, `phones.csv`...). Both become the JSON "full"
shape, are checked by the rules below (the HSDS 3.0 schema's constraints on the fields casebridge
uses; the full schemas are checked in the tests), and are written in place: new services are
inserted, changed ones updated, vanished ones retired (never deleted). A record that breaks a
rule is quarantined with its reason and its previous version stays as it was.

Matching (`match_resources`) ranks, per category, the district's YAML resources and the active
imported services by the family's language, the student's age (from the grade), distance from the
school where both have coordinates, and how recently the service was verified (`assured_date`);
each pick carries a `why`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import phonenumbers
import requests
from sqlalchemy import Connection, Engine, insert, select, update

from service.clock import utcnow
from service.config import ResourceConfig, ResourceDirectoryConfig, Settings
from service.errors import ConfigError, ConfigProblem
from service.models import CommunityResource, ResourceQuarantine, School

STATUSES = ("active", "inactive", "defunct", "temporarily closed")
# ISO 639-2/3 codes seen in HSDS data -> the 639-1 codes contacts carry.
LANGUAGE_CODES = {
    "eng": "en", "spa": "es", "fra": "fr", "fre": "fr", "vie": "vi", "zho": "zh",
    "chi": "zh", "ara": "ar", "som": "so", "urd": "ur", "pol": "pl",
}  # fmt: skip


# -- reading ----------------------------------------------------------------------------------


def _services_in(data: Any) -> Iterator[dict[str, Any]]:
    if isinstance(data, list):
        for entry in data:
            yield from _services_in(entry)
    elif isinstance(data, dict):
        if "contents" in data and isinstance(data["contents"], list):  # an API page
            yield from _services_in(data["contents"])
        elif "services" in data and isinstance(data["services"], list):  # an organization
            org = {k: data.get(k) for k in ("id", "name")}
            for service in data["services"]:
                if isinstance(service, dict):
                    yield {"organization": org, **service}
        elif "service" in data and isinstance(data["service"], dict):  # service_at_location
            yield {"service_at_locations": [data], **data["service"]}
        else:
            yield data


def _read_csv(folder: Path, name: str) -> list[dict[str, str]]:
    path = folder / name
    if not path.exists():
        return []
    with path.open(encoding="utf-8-sig", newline="") as f:
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(f)]


def _services_from_csv(folder: Path) -> list[dict[str, Any]]:
    """The CSV package's tables joined into the JSON "full" shape of each service."""
    by: dict[tuple[str, str], dict[str, list[dict[str, str]]]] = {}

    def index(table: str, key: str) -> dict[str, list[dict[str, str]]]:
        if (table, key) not in by:
            grouped: dict[str, list[dict[str, str]]] = {}
            for row in _read_csv(folder, table):
                grouped.setdefault(row.get(key, ""), []).append(row)
            by[(table, key)] = grouped
        return by[(table, key)]

    orgs = {r["id"]: r for r in _read_csv(folder, "organizations.csv") if r.get("id")}
    locations = {r["id"]: r for r in _read_csv(folder, "locations.csv") if r.get("id")}
    terms = {r["id"]: r for r in _read_csv(folder, "taxonomy_terms.csv") if r.get("id")}
    out = []
    for row in _read_csv(folder, "services.csv"):
        sid = row.get("id", "")
        service: dict[str, Any] = {k: (v if v != "" else None) for k, v in row.items()}
        service["organization"] = {"name": orgs.get(row.get("organization_id", ""), {}).get("name")}
        service["phones"] = [
            {**p, "languages": index("languages.csv", "phone_id").get(p.get("id", ""), [])}
            for p in index("phones.csv", "service_id").get(sid, [])
        ]
        service["languages"] = index("languages.csv", "service_id").get(sid, [])
        service["attributes"] = [
            {**a, "taxonomy_term": terms.get(a.get("taxonomy_term_id", ""))}
            for a in index("attributes.csv", "link_id").get(sid, [])
        ]
        service["service_at_locations"] = [
            {**sal, "location": locations.get(sal.get("location_id", ""))}
            for sal in index("service_at_location.csv", "service_id").get(sid, [])
        ]
        out.append(service)
    return out


def read_directory(source: str) -> list[dict[str, Any]]:
    """Every service record in a file, folder, .zip or URL (JSON or a CSV package)."""
    if source.startswith(("http://", "https://")):
        answer = requests.get(source, timeout=60)
        answer.raise_for_status()
        if source.endswith(".zip") or answer.headers.get("Content-Type", "").endswith("zip"):
            return _from_zip(answer.content)
        return list(_services_in(answer.json()))
    path = Path(source)
    if path.is_dir():
        if (path / "services.csv").exists():
            return _services_from_csv(path)
        records: list[dict[str, Any]] = []
        for file in sorted(path.glob("*.json")):
            records += _services_in(json.loads(file.read_text(encoding="utf-8")))
        return records
    if path.suffix == ".zip":
        return _from_zip(path.read_bytes())
    return list(_services_in(json.loads(path.read_text(encoding="utf-8"))))


def _from_zip(content: bytes) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(io.BytesIO(content)) as z:
        for member in z.namelist():  # extract by base name only: no paths from the archive
            name = Path(member).name
            if name.endswith((".csv", ".json")):
                (Path(tmp) / name).write_bytes(z.read(member))
        return read_directory(tmp)


# -- checking ---------------------------------------------------------------------------------


@dataclass
class Checked:
    row: dict[str, Any] | None
    reasons: list[str] = field(default_factory=list)


def _number(value: Any, where: str, reasons: list[str]) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        reasons.append(f"{where}: not a number ({value!r})")
        return None
    if math.isnan(number):
        reasons.append(f"{where}: not a number")
        return None
    return number


def _phone(raw: str, region: str) -> str | None:
    cleaned = raw.strip().strip("\"'").strip()
    try:
        parsed = phonenumbers.parse(cleaned, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _language(code: Any) -> str | None:
    if not isinstance(code, str) or not code.strip():
        return None
    code = code.strip().lower()
    return LANGUAGE_CODES.get(code, code.split("-")[0])


def check_service(
    record: dict[str, Any], directory: ResourceDirectoryConfig, region: str = "US"
) -> Checked:
    """The service as a `community_resources` row, or the reasons it cannot be used.

    Hard errors (the schema's required fields and enums, impossible ages, a phone without a
    number) quarantine the record. Soft ones (an unreadable phone number, coordinates off the
    globe) drop the field and leave a note on the row.
    """
    reasons: list[str] = []
    notes: list[str] = []
    sid, name, status = record.get("id"), record.get("name"), record.get("status")
    if not isinstance(sid, str) or not sid.strip():
        reasons.append("id: required")
    if not isinstance(name, str) or not name.strip():
        reasons.append("name: required")
    if status not in STATUSES:
        reasons.append(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    low = _number(record.get("minimum_age"), "minimum_age", reasons)
    high = _number(record.get("maximum_age"), "maximum_age", reasons)
    if low is not None and low < 0:
        reasons.append("minimum_age: below 0")
    if low is not None and high is not None and low > high:
        reasons.append(f"minimum_age {low:g} is above maximum_age {high:g}")
    assured: date | None = None
    if record.get("assured_date"):
        try:
            assured = date.fromisoformat(str(record["assured_date"])[:10])
        except ValueError:
            reasons.append(f"assured_date: not a date ({record['assured_date']!r})")
    phones = [p for p in record.get("phones") or [] if isinstance(p, dict)]
    phone: str | None = None
    languages: list[str] = []
    for index, p in enumerate(phones):
        if not isinstance(p.get("number"), str) or not p["number"].strip():
            reasons.append(f"phones[{index}].number: required")
            continue
        e164 = _phone(p["number"], region)
        if e164 is None:
            notes.append(f"phones[{index}].number unreadable: dropped")
        elif phone is None or (p.get("type") == "voice"):
            phone = phone or e164
        languages += [c for c in (_language(x.get("code")) for x in p.get("languages") or []) if c]
    for x in record.get("languages") or []:
        code = _language(x.get("code")) if isinstance(x, dict) else None
        if code:
            languages.append(code)
    latitude = longitude = None
    for sal in record.get("service_at_locations") or []:
        location = (sal or {}).get("location") or {}
        lat = _number(location.get("latitude"), "latitude", notes)
        lon = _number(location.get("longitude"), "longitude", notes)
        if lat is None or lon is None:
            continue
        if -90 <= lat <= 90 and -180 <= lon <= 180:
            latitude, longitude = lat, lon
            break
        notes.append(f"location {location.get('id')}: coordinates ({lat:g}, {lon:g}) off the globe")
    if reasons:
        return Checked(None, reasons)
    wanted = {k.lower(): v for k, v in directory.categories.items()}
    category = None
    for attribute in record.get("attributes") or []:
        term = (attribute or {}).get("taxonomy_term") or {}
        for key in (term.get("code"), term.get("name")):
            if isinstance(key, str) and key.lower() in wanted:
                category = category or wanted[key.lower()]
    org = record.get("organization") or {}
    row = {
        "resource_id": sid,
        "directory": directory.name,
        "category": category,
        "name": str(name).strip()[:255],
        "organization": (org.get("name") or None) if isinstance(org, dict) else None,
        "phone": phone,
        "url": (record.get("url") or None),
        "status": status,
        "active": status == "active",
        "languages": sorted(set(languages)),
        "minimum_age": low,
        "maximum_age": high,
        "latitude": latitude,
        "longitude": longitude,
        "assured_date": assured,
        "notes": notes,
    }
    digest = json.dumps(row, sort_keys=True, default=str).encode()
    row["content_hash"] = hashlib.blake2b(digest, digest_size=16).hexdigest()
    return Checked(row)


# -- importing --------------------------------------------------------------------------------


@dataclass
class ImportReport:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    retired: int = 0
    quarantined: list[tuple[str | None, str]] = field(default_factory=list)
    uncategorised: int = 0


def directory_settings(settings: Settings) -> ResourceDirectoryConfig:
    return settings.resource_directory or ResourceDirectoryConfig()


def import_directory(
    engine: Engine, settings: Settings, source: str | None = None, now: datetime | None = None
) -> ImportReport:
    """Import one directory snapshot: insert, update in place, retire what vanished."""
    directory = directory_settings(settings)
    source = source or directory.url
    if not source:
        raise ConfigError([ConfigProblem(settings.source_file, "resource_directory.url",
                                         "no PATH given and no url configured")])  # fmt: skip
    now = now or utcnow()
    records = read_directory(source)
    report = ImportReport(read=len(records))
    with engine.begin() as conn:
        known = dict(
            conn.execute(
                select(CommunityResource.resource_id, CommunityResource.content_hash).where(
                    CommunityResource.directory == directory.name
                )
            ).all()
        )
        seen: set[str] = set()
        for record in records:
            checked = check_service(record, directory)
            rid = record.get("id") if isinstance(record.get("id"), str) else None
            if checked.row is None:
                reason = "; ".join(checked.reasons)
                report.quarantined.append((rid, reason))
                if rid:
                    seen.add(rid)  # its previous version stays, not retired
                conn.execute(insert(ResourceQuarantine).values(
                    directory=directory.name, record_id=rid, reason=reason,
                    payload=json.loads(json.dumps(record, default=str)), at=now,
                ))  # fmt: skip
                continue
            row = checked.row
            seen.add(row["resource_id"])
            if row["category"] is None:
                report.uncategorised += 1
            if row["resource_id"] not in known:
                conn.execute(insert(CommunityResource).values(**row, seen_at=now, retired_at=None))
                report.inserted += 1
            elif known[row["resource_id"]] != row["content_hash"]:
                conn.execute(
                    update(CommunityResource)
                    .where(CommunityResource.resource_id == row["resource_id"])
                    .values(**row, seen_at=now, retired_at=None)
                )
                report.updated += 1
            else:
                conn.execute(
                    update(CommunityResource)
                    .where(CommunityResource.resource_id == row["resource_id"])
                    .values(seen_at=now, retired_at=None)
                )
                report.unchanged += 1
        gone = [rid for rid in known if rid not in seen]
        if gone:
            report.retired = conn.execute(
                update(CommunityResource)
                .where(CommunityResource.resource_id.in_(gone),
                       CommunityResource.retired_at.is_(None))
                .values(active=False, retired_at=now)
            ).rowcount  # fmt: skip
    return report


# -- matching ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    resource: ResourceConfig
    why: str
    score: float


def grade_age(grade: str | None) -> float | None:
    """A student's typical age from the grade (KG 5, grade 9 about 14)."""
    if not grade:
        return None
    g = grade.strip().upper()
    if g in ("KG", "K", "TK", "PK", "PREK"):
        return 5.0 if g in ("KG", "K") else 4.0
    try:
        return float(int(g)) + 5
    except ValueError:
        return None


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = (math.sin((lat2 - lat1) / 2) ** 2
         + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2)  # fmt: skip
    return 6371.0 * 2 * math.asin(math.sqrt(h))


def _school_point(
    conn: Connection, directory: ResourceDirectoryConfig, school_id: str | None
) -> tuple[float, float] | None:
    """The school's coordinates from the configuration, by its id or its number."""
    if not school_id or not directory.school_locations:
        return None
    number = conn.execute(select(School.identifier).where(School.school_id == school_id)).scalar()
    for key in (school_id, number):
        if key and key in directory.school_locations:
            return directory.school_locations[key]
    return None


def match_resources(
    conn: Connection,
    settings: Settings,
    categories: Iterable[str],
    language: str,
    grade: str | None,
    school_id: str | None,
    today: date,
) -> list[Match]:
    """The top resources per category for this family, each with why it was picked."""
    directory = directory_settings(settings)
    wanted = list(dict.fromkeys(categories))
    age = grade_age(grade)
    school = _school_point(conn, directory, school_id)
    rows = conn.execute(
        select(CommunityResource.__table__).where(
            CommunityResource.active.is_(True), CommunityResource.category.in_(wanted)
        )
    ).mappings().all()  # fmt: skip
    out: list[Match] = []
    for category in wanted:
        ranked: list[Match] = []
        for r in settings.resources:
            if r.category == category:
                ranked.append(Match(r, f"{category}: on the district's own list", 1.0))
        for row in rows:
            if row["category"] != category:
                continue
            found = _rank(row, category, language, age, school, directory, today)
            if found is not None:
                ranked.append(found)
        ranked.sort(key=lambda m: (-m.score, m.resource.name))
        out += ranked[: directory.per_category]
    return out


def _rank(
    row: Any, category: str, language: str, age: float | None,
    school: tuple[float, float] | None, directory: ResourceDirectoryConfig, today: date,
) -> Match | None:  # fmt: skip
    why = [category]
    score = 0.0
    spoken = row["languages"] or []
    if spoken and language in spoken:
        score += 2
        why.append(f"serves in {language}")
    elif spoken and language not in spoken:
        score -= 2
        why.append(f"no {language} listed")
    low, high = row["minimum_age"], row["maximum_age"]
    if age is not None and (low is not None or high is not None):
        if (low is not None and age < low) or (high is not None and age > high):
            return None  # not eligible
        score += 1
        why.append(f"ages {low if low is not None else 0:g}-{high if high is not None else 99:g}")
    if school is not None and row["latitude"] is not None and row["longitude"] is not None:
        km = distance_km(school, (row["latitude"], row["longitude"]))
        if directory.max_distance_km is not None and km > directory.max_distance_km:
            return None
        score += max(0.0, 2 - km / 10)
        why.append(f"{km:.1f} km from school")
    assured = row["assured_date"]
    if assured is not None:
        assured = assured if isinstance(assured, date) else date.fromisoformat(str(assured)[:10])
        fresh = (today - assured).days <= directory.stale_after_days
        score += 1 if fresh else -1
        why.append(f"{'verified' if fresh else 'last verified'} {assured.isoformat()}")
    resource = ResourceConfig(
        id=row["resource_id"], category=category, name=row["name"],
        phone=row["phone"] or "", url=row["url"] or "",
    )  # fmt: skip
    return Match(resource, "; ".join(why), score)
