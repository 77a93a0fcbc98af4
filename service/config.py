"""The district's one configuration file: loaded, `${ENV}`-expanded and validated at start.

Every problem is reported with the file, the key path and the reason, all at once, so district IT
fixes a file in one pass instead of one error per restart.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import rule_engine
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.errors import ConfigError, ConfigProblem
from service.indicator_names import rule_context

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DistrictConfig(Strict):
    name: str
    timezone: str = "America/Chicago"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class DatabaseConfig(Strict):
    url: str = "sqlite:///casebridge.db"


class OneRosterCsvSource(Strict):
    kind: Literal["oneroster_csv"]
    name: str
    path: Path  # a folder or a .zip holding manifest.csv
    guardian_roles: list[str] = ["parent", "guardian", "relatedContact"]


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


class SisCsvSource(Strict):
    kind: Literal["sis_csv"]
    name: str
    path: Path
    # How export rows name a student: by our student id (OneRoster sourcedId) or local number.
    student_match: Literal["student_id", "local_id"] = "local_id"
    date_formats: list[str] = ["%Y-%m-%d"]
    calendar: SisCalendarFile | None = None
    attendance: SisAttendanceFile | None = None
    discipline: SisDisciplineFile | None = None


class HttpSettings(Strict):
    """Politeness and patience toward a district's API (shared by every API source)."""

    connect_timeout_seconds: float = Field(5.0, gt=0)
    read_timeout_seconds: float = Field(60.0, gt=0)
    max_attempts: int = Field(6, ge=1)
    backoff_base_seconds: float = Field(0.5, ge=0)
    backoff_max_seconds: float = Field(30.0, ge=0)
    requests_per_second: float | None = Field(None, gt=0)
    concurrency: int = Field(4, ge=1, le=32)


class EdFiSource(Strict):
    kind: Literal["edfi"]
    name: str
    base_url: str
    client_key: str  # write ${EDFI_KEY}: secrets come from the environment
    client_secret: str
    # shared | year_specific | instance_year_specific; "auto" reads it from discovery.
    url_mode: Literal["auto", "shared", "year_specific", "instance_year_specific"] = "auto"
    school_year: int | None = None
    instance: str | None = None
    page_size: int = Field(500, ge=1, le=500)
    # Change versions per window of a pull; each finished window is a resume point.
    change_version_window: int = Field(100_000, ge=1)
    # Re-read this many change versions before the watermark (back-dated corrections).
    lookback_change_versions: int = Field(0, ge=0)
    # Use pageToken paging where the server offers it (ODS/API 7.3+).
    cursor_paging: bool = False
    # A district file that adds to or overrides mappings/edfi_descriptors.yaml.
    descriptor_map: Path | None = None
    http: HttpSettings = HttpSettings()

    @model_validator(mode="after")
    def _mode_needs(self) -> EdFiSource:
        if self.url_mode in ("year_specific", "instance_year_specific") and not self.school_year:
            raise ValueError(f"url_mode {self.url_mode} needs school_year")
        if self.url_mode == "instance_year_specific" and not self.instance:
            raise ValueError("url_mode instance_year_specific needs instance")
        return self


class OneRosterRestSource(Strict):
    kind: Literal["oneroster_rest"]
    name: str
    base_url: str  # scheme and host, e.g. https://sis.example.org
    version: Literal["1.1", "1.2"] = "1.2"
    # Vendors mix these: 1.2 data on the v1p1 path, OAuth 1.0a on 1.2...
    rostering_path: str | None = (
        None  # default /ims/oneroster/v1p1 or /ims/oneroster/rostering/v1p2
    )
    gradebook_path: str | None = None  # default the same (1.1) or /ims/oneroster/gradebook/v1p2
    auth: Literal["oauth2", "oauth1"] = "oauth2"
    client_id: str
    client_secret: str
    token_url: str | None = None  # default {base_url}/token
    scopes: list[str] = [
        "https://purl.imsglobal.org/spec/or/v1p2/scope/roster-core.readonly",
        "https://purl.imsglobal.org/spec/or/v1p2/scope/gradebook.readonly",
    ]
    page_size: int = Field(100, ge=1, le=10_000)
    guardian_roles: list[str] = ["parent", "guardian", "relatedContact"]
    http: HttpSettings = HttpSettings()


SourceConfig = Annotated[
    OneRosterCsvSource | SisCsvSource | EdFiSource | OneRosterRestSource,
    Field(discriminator="kind"),
]


class IndicatorConfig(Strict):
    """Cut points; defaults follow the published early-warning research (domain notes §2)."""

    min_enrolled_days: int = Field(20, ge=0)
    chronic_absence_rate: float = Field(0.10, gt=0, le=1)
    approaching_absence_rate: float = Field(0.05, ge=0, le=1)
    failing_score: float = 60.0
    failing_letters: list[str] = ["F"]
    core_subjects: list[str] = ["English Language Arts", "Mathematics"]
    discipline_window_days: int = Field(90, ge=1)

    @model_validator(mode="after")
    def _bands_ordered(self) -> IndicatorConfig:
        if self.approaching_absence_rate > self.chronic_absence_rate:
            raise ValueError("approaching_absence_rate must not exceed chronic_absence_rate")
        return self


class RuleConfig(Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    version: int = Field(1, ge=1)
    description: str = ""
    when: str
    reason: str = Field(pattern=r"^[a-z0-9_]+$")
    severity: Literal["low", "medium", "high"] = "medium"
    resources: list[str] = []

    @field_validator("when")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            rule_engine.Rule(value, context=rule_context())
        except rule_engine.SymbolResolutionError as exc:
            raise ValueError(f"unknown indicator {exc.symbol_name!r} in {value!r}") from exc
        except rule_engine.EngineError as exc:
            raise ValueError(f"rule expression does not parse: {value!r} ({exc.message})") from exc
        return value


class CaseConfig(Strict):
    # A student whose case closed less than this many days ago reopens it instead of a new one.
    cooldown_days: int = Field(30, ge=0)
    # An open case whose reasons stopped firing closes after this many days without a relapse.
    recovery_days: int = Field(14, ge=0)


class CaseloadConfig(Strict):
    staff_id: str
    name: str
    email: str
    schools: list[str]
    grades: list[str] = []  # empty: every grade in those schools


class ResourceConfig(Strict):
    id: str
    category: str
    name: str
    phone: str = ""
    url: str = ""
    # language code -> one short line for families; "en" is the fallback.
    description: dict[str, str] = {}


class FileDestination(Strict):
    kind: Literal["file"]
    name: str
    path: str = "tasks.jsonl"


DestinationConfig = Annotated[FileDestination, Field(discriminator="kind")]


class FileChannel(Strict):
    kind: Literal["file"]
    name: str
    medium: Literal["sms", "email"]
    path: str


ChannelConfig = Annotated[FileChannel, Field(discriminator="kind")]


class TemplateConfig(Strict):
    # language code -> template text with {student_first_name}, {school}, {resources}, {contact}
    family_notice: dict[str, str]
    family_notice_subject: dict[str, str] = {"en": "Resources from your school"}

    @field_validator("family_notice")
    @classmethod
    def _has_english(cls, value: dict[str, str]) -> dict[str, str]:
        if "en" not in value:
            raise ValueError("needs an 'en' template: it is the fallback language")
        return value


class OutboxConfig(Strict):
    max_attempts: int = Field(8, ge=1)
    base_delay_seconds: float = Field(30.0, ge=0)
    max_delay_seconds: float = Field(3600.0, ge=0)
    batch_size: int = Field(100, ge=1)


class ScheduleConfig(Strict):
    sync_cron: str = "0 2 * * *"
    dispatch_interval_seconds: int = Field(60, ge=1)


class Settings(Strict):
    district: DistrictConfig
    database: DatabaseConfig = DatabaseConfig()
    output_dir: Path = Path("out")
    # Evaluate as of this date instead of today (pins the bundled sample data to its own date).
    as_of: date | None = None
    sources: list[SourceConfig] = []
    indicators: IndicatorConfig = IndicatorConfig()
    rules: list[RuleConfig] = []
    cases: CaseConfig = CaseConfig()
    caseloads: list[CaseloadConfig] = []
    resources: list[ResourceConfig] = []
    destinations: list[DestinationConfig] = []
    channels: list[ChannelConfig] = []
    templates: TemplateConfig
    outbox: OutboxConfig = OutboxConfig()
    schedules: ScheduleConfig = ScheduleConfig()

    # Where the file was read from; relative paths in it are taken from there.
    base_dir: Path = Path(".")
    source_file: str = "<memory>"

    def resolve(self, path: Path | str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p)


def _cross_problems(raw: dict[str, Any], file: str) -> list[ConfigProblem]:
    """Checks across sections, on the raw mapping so they run even when a field is invalid."""
    problems: list[ConfigProblem] = []

    def items(key: str) -> list[dict[str, Any]]:
        value = raw.get(key)
        return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []

    named = [
        ("sources", "name", items("sources")),
        ("rules", "id", items("rules")),
        ("caseloads", "staff_id", items("caseloads")),
        ("resources", "id", items("resources")),
        ("destinations", "name", items("destinations")),
        ("channels", "name", items("channels")),
    ]
    for section, field, entries in named:
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            name = entry.get(field)
            if isinstance(name, str) and name in seen:
                problems.append(
                    ConfigProblem(file, f"{section}[{index}].{field}", f"duplicate {name!r}")
                )
            if isinstance(name, str):
                seen.add(name)
    categories = {r.get("category") for r in items("resources")}
    for index, rule in enumerate(items("rules")):
        wanted = rule.get("resources")
        if not isinstance(wanted, list):
            continue
        missing = [c for c in wanted if c not in categories]
        if missing:
            problems.append(
                ConfigProblem(
                    file, f"rules[{index}].resources", f"no resource has category {missing}"
                )
            )
    return problems


def _expand_env(node: Any, path: str, problems: list[ConfigProblem], file: str) -> Any:
    if isinstance(node, dict):
        return {
            k: _expand_env(v, f"{path}.{k}" if path else str(k), problems, file)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]", problems, file) for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            value = os.environ.get(name, default)
            if value is None:
                problems.append(
                    ConfigProblem(file, path, f"environment variable {name} is not set")
                )
                return ""
            return value

        return _ENV_REF.sub(sub, node)
    return node


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("oneroster_csv", "sis_csv", "edfi", "oneroster_rest", "file"):
            continue  # discriminator tags add noise
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_settings(raw: Any, file: str = "<memory>", base_dir: Path | None = None) -> Settings:
    """Validate an already-loaded mapping; raise ConfigError with every problem found."""
    problems: list[ConfigProblem] = []
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem(file, "(top level)", "must be a mapping of settings")])
    expanded = _expand_env(raw, "", problems, file)
    expanded["base_dir"] = base_dir or Path(".")
    expanded["source_file"] = file
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(ConfigProblem(file, _loc(err["loc"]), msg))
    problems += _cross_problems(expanded, file)
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


def load_settings(path: str | Path | None = None) -> Settings:
    """Read the YAML file named by `path` or $CASEBRIDGE_CONFIG."""
    chosen = path or os.environ.get("CASEBRIDGE_CONFIG")
    if not chosen:
        raise ConfigError(
            [ConfigProblem("<none>", "--config", "no file given and CASEBRIDGE_CONFIG is unset")]
        )
    file = Path(chosen)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(str(file), "(file)", exc.strerror or str(exc))]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        key = f"line {where.line + 1}" if where else "(file)"
        raise ConfigError([ConfigProblem(str(file), key, f"not valid YAML: {exc}")]) from None
    return parse_settings(raw, str(file), file.resolve().parent)
