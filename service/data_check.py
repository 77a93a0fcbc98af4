"""`casebridge check-config --data`: open every configured source and check the data against
the configuration before a sync does (paths, headers, code maps, school numbers, subjects)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from connectors.base import BuiltSource, Stream
from connectors.sources.csv_chunks import REJECT
from service.config import Settings, SourceSettings
from service.errors import CasebridgeError
from service.indicators import core_subject_names
from service.ingest_checks import canonical_header
from service.models import Course, School, SchoolClass
from service.sync import build_source

SHOWN = 8  # values listed per finding


@dataclass
class DataCheck:
    problems: list[str] = field(default_factory=list)  # a sync would skip or quarantine
    warnings: list[str] = field(default_factory=list)  # worth a look, nothing is lost
    notes: list[str] = field(default_factory=list)


def _rows(built: BuiltSource, stream: Stream) -> Iterator[dict[str, Any]]:
    for chunk in built.source.read(stream, set(), None):
        for raw in chunk.rows or ():
            if REJECT not in raw.data:
                yield raw.data


def _listed(values: Counter[str]) -> str:
    shown = [f"{v!r} ({n:,} rows)" for v, n in values.most_common(SHOWN)]
    more = len(values) - SHOWN
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def check_data(settings: Settings, engine: Engine | None = None) -> DataCheck:
    out = DataCheck()
    school_ids: set[str] = set()
    school_numbers: set[str] = set()
    subjects: set[str] = set()
    export_schools: list[tuple[str, Counter[str], SourceSettings]] = []
    if engine is not None:
        try:
            with engine.connect() as conn:
                for sid, number in conn.execute(
                    select(School.school_id, School.identifier).where(School.active.is_(True))
                ):
                    school_ids.add(sid)
                    if number:
                        school_numbers.add(number)
                for model in (Course, SchoolClass):
                    for subj, subj_codes in conn.execute(
                        select(model.subjects, model.subject_codes).where(model.active.is_(True))
                    ):
                        subjects.update(
                            v.lower() for v in f"{subj or ''},{subj_codes or ''}".split(",") if v
                        )
        except Exception:  # no database yet is fine: the files still get checked
            out.notes.append("database not readable; roster schools come from the files only")
    for cfg in settings.sources:
        try:
            built = build_source(settings, cfg)
        except CasebridgeError as exc:
            out.problems.append(f"source {cfg.name}: {exc}")
            continue
        if not hasattr(built.source, "package"):
            out.notes.append(f"source {cfg.name} ({cfg.kind}): an API source, not opened here")
            continue
        try:
            streams = built.source.streams({})
        except CasebridgeError as exc:
            out.problems.append(f"source {cfg.name}: {exc}")
            continue
        for stream in streams:
            mapping = built.mappings.get(stream.name)
            if mapping is None:
                continue
            where = f"source {cfg.name}: {stream.location}"
            if stream.problems:
                out.problems += [f"source {cfg.name}: {p.detail}" for p in stream.problems]
                continue
            stream.header = canonical_header(stream.header, mapping.known)
            missing = sorted(mapping.required - set(stream.header))
            if missing:
                out.problems.append(f"{where}: required columns missing: {', '.join(missing)}")
                continue
            unknown = [
                h for h in stream.header if h not in mapping.known and not h.startswith("metadata.")
            ]
            if unknown:
                out.warnings.append(f"{where}: columns never read: {', '.join(unknown)}")
            if stream.duplicate_keys:
                out.problems.append(
                    f"{where}: {len(stream.duplicate_keys):,} {stream.key_column} values appear "
                    "more than once (every copy would be quarantined)"
                )
            if stream.mode == "bulk" and stream.records == 0:
                out.warnings.append(f"{where}: header only, no records")
            _check_stream(out, built, stream, cfg, export_schools, school_ids, school_numbers,
                          subjects)  # fmt: skip
    for where, codes, sis_cfg in export_schools:
        mapped = {c: getattr(sis_cfg, "school_codes", {}).get(c, c) for c in codes}
        match = getattr(sis_cfg, "school_match", "auto")
        unmatched: Counter[str] = Counter()
        for code, n in codes.items():
            target = mapped[code]
            by_id = match != "identifier" and target in school_ids
            by_number = match != "school_id" and target in school_numbers
            if not (by_id or by_number):
                unmatched[code] += n
        if unmatched and (school_ids or school_numbers):
            out.problems.append(
                f"{where}: school codes that match no roster school (by {match}; add them to "
                f"school_codes): {_listed(unmatched)}"
            )
    if subjects:
        for group in core_subject_names(settings.indicators):
            if not any(name.lower() in subjects for name in group):
                out.warnings.append(
                    f"indicators.core_subjects: {' / '.join(group)!r} matches no course or class "
                    f"subject or code (the data has: {', '.join(sorted(subjects)[:12])})"
                )
    return out


def _check_stream(
    out: DataCheck,
    built: BuiltSource,
    stream: Stream,
    cfg: SourceSettings,
    export_schools: list[tuple[str, Counter[str], SourceSettings]],
    school_ids: set[str],
    school_numbers: set[str],
    subjects: set[str],
) -> None:
    """Read the rows a check needs: roster schools and subjects, export codes and schools."""
    where = f"source {cfg.name}: {stream.location}"
    if stream.name == "orgs":
        for row in _rows(built, stream):
            school_ids.add(str(row.get("sourcedId") or "").strip())
            if (row.get("identifier") or "").strip():
                school_numbers.add(str(row["identifier"]).strip())
    elif stream.name in ("courses", "classes"):
        for row in _rows(built, stream):
            for col in ("subjects", "subjectCodes"):
                subjects.update(
                    v.strip().lower() for v in str(row.get(col) or "").split(",") if v.strip()
                )
    spec = getattr(cfg, stream.name, None) if stream.name in (
        "calendar", "attendance", "discipline") else None  # fmt: skip
    if spec is None:
        return
    columns: dict[str, str] = spec.columns
    code_col, known_codes = None, None
    if stream.name == "attendance":
        code_col, known_codes = columns["code"], set(spec.codes)
    elif stream.name == "discipline":
        code_col, known_codes = columns["action_code"], set(spec.actions)
    school_col = columns.get("school_id")
    uncovered: Counter[str] = Counter()
    schools: Counter[str] = Counter()
    for row in _rows(built, stream):
        if code_col and known_codes is not None:
            code = str(row.get(code_col) or "").strip()
            if code not in known_codes:
                uncovered[code] += 1
        if school_col:
            schools[str(row.get(school_col) or "").strip()] += 1
    if uncovered:
        out.problems.append(
            f"{where}: codes the code map does not cover (those rows would be quarantined): "
            f"{_listed(uncovered)}"
        )
    if schools:
        export_schools.append((where, schools, cfg))
