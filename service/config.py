"""The district's one configuration file: loaded, `${ENV}`-expanded and validated at start.

Every problem is reported with the file, the key path and the reason, all at once, so district IT
fixes a file in one pass instead of one error per restart.
"""

from __future__ import annotations

import os
import re
from datetime import date, time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import rule_engine
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.errors import ConfigError, ConfigProblem
from service.indicator_names import rule_context

if TYPE_CHECKING:
    from connectors.registry import Role

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


class ConnectorSettings(Strict):
    """What every source, destination and channel entry has; each kind's module adds the rest."""

    kind: str
    name: str


class SourceSettings(ConnectorSettings):
    """Base of every source kind's config model (see `connectors/registry.py`)."""


class DestinationSettings(ConnectorSettings):
    """Base of every staff-tool destination kind's config model."""


class ChannelSettings(ConnectorSettings):
    """Base of every family channel kind's config model."""


class IndicatorConfig(Strict):
    """Cut points; defaults follow the published early-warning research (domain notes §2)."""

    min_enrolled_days: int = Field(20, ge=0)
    chronic_absence_rate: float = Field(0.10, gt=0, le=1)
    approaching_absence_rate: float = Field(0.05, ge=0, le=1)
    failing_score: float = 60.0
    failing_letters: list[str] = ["F"]
    # Each core subject is a name, or a list of the names and codes it goes by in the data
    # (OneRoster subjects or subjectCodes), e.g. [Mathematics, Math, "02"].
    core_subjects: list[str | list[str]] = ["English Language Arts", "Mathematics"]
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
    # Add the district's `policy.general_support` categories to what families hear for this
    # rule, so the list does not point at the reason (only "homework help" says "failing").
    mix_general_support: bool = False

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
    # The first 1:1 meeting is due this many instructional days (school calendar) after opening.
    first_meeting_school_days: int = Field(5, ge=1)
    # A link back to the case in staff tasks, e.g. "https://cases.district.org/cases/{case_id}".
    link_template: str | None = None
    # The case plan: a check-in every this many school days (or days) while the case is open;
    # each one brings the task up to date (progress line, next check-in). None: no check-ins.
    check_in_every: int | None = Field(None, ge=1)
    check_in_unit: Literal["school_days", "days"] = "school_days"
    # Suggest closing in the task once the indicators have recovered for this many days.
    suggest_close_after_days: int | None = Field(None, ge=0)


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


class TemplateConfig(Strict):
    """Family message templates per language, in Jinja2 (sandboxed): `{{ school }}`,
    `{{ student_first_name }}`, `{{ district }}`, `{{ resources_text }}`, and `resources` (each
    with `name`, `description`, `phone`, `url`) for loops. "en" is the fallback language.
    Every template is rendered for every language at load, so a typo fails check-config."""

    family_notice: dict[str, str]
    family_notice_subject: dict[str, str] = {"en": "Resources from your school"}
    # The closed-loop follow-up (policy.follow_up_days), by text; replies 1, 2 or 3.
    follow_up: dict[str, str] = {
        "en": "{{ school }}: did the resources we sent help your family? Reply 1 for yes, "
        "2 for no, 3 if you need something else.",
        "es": "{{ school }}: ¿le ayudaron los recursos que le enviamos? Responda 1 si, "
        "2 no, 3 si necesita otra cosa.",
    }

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
    # Items one claim takes: planned with one read per table and marked together (50 -> 200
    # cut the dispatcher's CPU per item by a third; bench/README.md). A dead worker's claim waits
    # out its lease; with slow one-at-a-time targets, fewer lets more workers share a short queue.
    batch_size: int = Field(200, ge=1)
    # A claim's lease; a worker renews it every third of it while it delivers. A worker that
    # dies holds its items at most this long, on any host.
    lease_seconds: float = Field(120.0, ge=1)


class QuietHours(Strict):
    """Family messages go out between `start` and `end`, district time; others wait, not drop."""

    start: time = time(8, 0)
    end: time = time(21, 0)

    @model_validator(mode="after")
    def _ordered(self) -> QuietHours:
        if self.start >= self.end:
            raise ValueError("start must be before end (a window within one day)")
        return self


class FamilyCap(Strict):
    messages: int = Field(2, ge=1)
    days: int = Field(7, ge=1)


class PolicyConfig(Strict):
    """What is checked when a family message is about to go out (not when it was queued)."""

    # null: any hour (a district that sends only staff-approved, time-insensitive messages).
    sending_window: QuietHours | None = QuietHours()
    # At most this many messages to one contact in a rolling window; more wait their turn.
    family_cap: FamilyCap = FamilyCap()
    # A resource already sent to this contact within this many days is not sent again.
    resource_repeat_days: int = Field(90, ge=0)
    # Categories mixed into a notice for rules with `mix_general_support` (e.g. basic-needs).
    general_support: list[str] = []
    resources_per_message: int = Field(3, ge=1, le=10)
    # A text stays within this many SMS segments: fewer resources are named when it would not.
    sms_max_segments: int = Field(2, ge=1, le=10)
    # Ask "did the resources help?" this many days after a text (null: never).
    follow_up_days: int | None = Field(None, ge=1, le=90)


class ResourceDirectoryConfig(Strict):
    """Community resources imported from an Open Referral HSDS 3.0 directory
    (`casebridge resources import`), matched per notice next to the YAML `resources`."""

    name: str = "hsds"
    url: str | None = None  # imported when `casebridge resources import` gets no path
    # An HSDS taxonomy term's code or name (case-insensitive) -> our category (rules' resources).
    categories: dict[str, str] = {}
    per_category: int = Field(2, ge=1, le=10)  # the top N per category
    max_distance_km: float | None = Field(None, gt=0)
    stale_after_days: int = Field(365, ge=1)  # `assured_date` older than this ranks lower
    # School id or number -> (latitude, longitude): distances are measured from the school.
    school_locations: dict[str, tuple[float, float]] = {}


class ResourcePageConfig(Strict):
    """A text that cannot name every resource links to a page with all of them."""

    public_url: str  # where families reach casebridge: links are {public_url}/r/{token}
    expires_days: int = Field(30, ge=1, le=365)


def cron_trigger(expression: str, timezone: str) -> Any:
    """A crontab line (5 fields) or one with seconds first (6 fields), in the district's zone."""
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(expression, timezone=timezone)
    if len(fields) == 6:
        second, minute, hour, day, month, dow = fields
        return CronTrigger(
            second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=dow,
            timezone=timezone,
        )  # fmt: skip
    raise ValueError(f"{expression!r}: a cron line has 5 fields (or 6 with seconds first)")


class RetentionConfig(Strict):
    """How long personal detail is kept, in days; null keeps a category forever.

    `casebridge retention run [--dry-run]` purges, and the scheduler runs it at
    `schedules.retention_cron`. The record of disclosures (34 CFR 99.32: kept as long as the
    education record) and consent evidence (TCPA: at least four years) are never purged."""

    # A record held back from import keeps its row, reason and counts; the record as it
    # arrived (names, birth dates) is blanked this long after it was last seen.
    quarantine_payload_days: int | None = Field(90, ge=1)
    # Texts and follow-up answers families sent, rendered text a channel kept with an outbox
    # item, and the addresses a provider's error quotes.
    message_body_days: int | None = Field(90, ge=1)
    # A closed case goes this long after it closed, with its referrals (indicator snapshots),
    # events, family answers, outbox items and tool links. Not below `cases.cooldown_days`.
    closed_case_days: int | None = Field(365, ge=1)


class ScheduleConfig(Strict):
    # Nightly sync then evaluate (cron, district time zone). Evaluation always follows the
    # sync, so cases never come from half-synced data.
    sync_cron: str = "0 2 * * *"
    # Evaluations of their own besides the nightly one (e.g. "0 12 * * 1-5" after a midday
    # attendance export); null: only after the sync.
    evaluate_cron: str | None = None
    # The case plan between evaluations: check-ins that came due and close suggestions
    # (every evaluation does them too), e.g. "0 7 * * 1-5" when the sync runs weekly; null:
    # with the evaluations only. Family follow-ups need no schedule: the dispatcher sends each
    # when it is due (`policy.follow_up_days` after the text).
    follow_up_cron: str | None = None
    # Re-import the HSDS directory at `resource_directory.url`; null: with the nightly sync,
    # before evaluation.
    resources_cron: str | None = None
    # Purge what is past its retention period (`retention:`); null: only by hand.
    retention_cron: str | None = "30 3 * * *"
    # The daily digest to each case manager (cron, district time zone), for `email`
    # destinations with `digest: true`.
    digest_cron: str = "0 7 * * *"
    # How often a scheduler (or `casebridge worker`) delivers the outbox.
    dispatch_interval_seconds: int = Field(60, ge=1)
    # How often staff tools without webhooks (Google Sheets, Planner) are asked for status.
    tool_poll_interval_seconds: int = Field(300, ge=10)
    # A standby scheduler tries to take the lead this often; the leader beats this often.
    standby_poll_seconds: float = Field(5.0, gt=0)
    heartbeat_seconds: float = Field(5.0, gt=0)

    @field_validator(
        "sync_cron", "digest_cron", "evaluate_cron", "follow_up_cron", "resources_cron",
        "retention_cron",
    )  # fmt: skip
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            cron_trigger(value, "UTC")
        except ValueError as exc:
            raise ValueError(f"not a cron schedule: {exc}") from exc
        return value


class ApiConfig(Strict):
    """The HTTP API. Rate limits use flask-limiter's syntax ("30 per minute"); with more than one
    API process, point `rate_limit_storage` at a shared store (e.g. `redis://host:6379`)."""

    referral_rate_limit: str = "30 per minute"
    rate_limit_storage: str = "memory://"
    # CORS is off: no browser page on another origin may call the API unless it is listed here.
    cors_origins: list[str] = []
    # Prometheus metrics, without a token (counts only); null: not served. Keep the path off
    # the public proxy, or move it.
    metrics_path: str | None = Field("/metrics", pattern=r"^/[A-Za-z0-9._~/-]*$")

    @field_validator("referral_rate_limit")
    @classmethod
    def _limit_parses(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit (try '30 per minute'): {exc}") from exc
        return value


# Concern -> the resource categories a family may hear about for it (filtered to categories the
# district has resources in). Safety and "other" name none: staff decide what the family hears.
DEFAULT_CONCERNS: dict[str, list[str]] = {
    "attendance": ["attendance"],
    "academics": ["tutoring"],
    "behavior": ["counseling"],
    "basic_needs": ["basic-needs", "food"],
    "housing": ["housing", "basic-needs"],
    "health": ["health"],
    "mental_health": ["mental-health", "counseling"],
    "safety": [],
    "family": ["counseling"],
    "other": [],
}


class ReferralConfig(Strict):
    """Person-based referrals (`POST /referrals`)."""

    # The closed list of concern categories a referral may name, each with the resource
    # categories families may hear about for it.
    concerns: dict[str, list[str]] = DEFAULT_CONCERNS
    # A referral naming one of these never triggers a family notice, consent or not (a safety
    # concern may be about someone at home).
    no_family_notice: list[str] = ["safety"]
    # Mix `policy.general_support` into what families hear, like a rule's `mix_general_support`.
    mix_general_support: bool = False
    # The referrer is told "assigned" no sooner than this after the referral arrived, so the
    # status cannot tell a student found at once from one staff had to look for.
    assigned_status_delay_hours: float = Field(24.0, ge=0)
    # The channel that emails referrers (acknowledgement and status); default: the first
    # channel with an email medium. None configured: referrers check the status URL instead.
    email_channel: str | None = None
    # Where referrers reach casebridge: status URLs are absolute when set.
    public_url: str | None = None

    @field_validator("concerns")
    @classmethod
    def _concern_names(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        bad = [k for k in value if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", k)]
        if bad or not value:
            raise ValueError(f"concerns must be lower-case names (a-z, 0-9, _ or -); got {bad}")
        return value

    @model_validator(mode="after")
    def _known_concerns(self) -> ReferralConfig:
        unknown = [c for c in self.no_family_notice if c not in self.concerns]
        if unknown:
            raise ValueError(f"no_family_notice names concerns not in concerns: {unknown}")
        return self


class Settings(Strict):
    district: DistrictConfig
    database: DatabaseConfig = DatabaseConfig()
    output_dir: Path = Path("out")
    # Evaluate as of this date instead of today (pins the bundled sample data to its own date).
    as_of: date | None = None
    sources: list[SourceSettings] = []
    indicators: IndicatorConfig = IndicatorConfig()
    rules: list[RuleConfig] = []
    cases: CaseConfig = CaseConfig()
    caseloads: list[CaseloadConfig] = []
    resources: list[ResourceConfig] = []
    resource_directory: ResourceDirectoryConfig | None = None
    resource_page: ResourcePageConfig | None = None
    destinations: list[DestinationSettings] = []
    channels: list[ChannelSettings] = []
    # Optional until channels are set up: a sync-only configuration is valid.
    templates: TemplateConfig | None = None
    outbox: OutboxConfig = OutboxConfig()
    policy: PolicyConfig = PolicyConfig()
    schedules: ScheduleConfig = ScheduleConfig()
    api: ApiConfig = ApiConfig()
    referrals: ReferralConfig = ReferralConfig()
    retention: RetentionConfig = RetentionConfig()

    # Where the file was read from; relative paths in it are taken from there.
    base_dir: Path = Path(".")
    source_file: str = "<memory>"

    def resolve(self, path: Path | str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p)


def family_categories(settings: Settings, rule: RuleConfig) -> list[str]:
    """The resource categories a family hears about when `rule` fires."""
    extra = settings.policy.general_support if rule.mix_general_support else []
    return list(dict.fromkeys([*rule.resources, *extra]))


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
    if items("channels") and not isinstance(raw.get("templates"), dict):
        problems.append(
            ConfigProblem(
                file, "templates", "channels are configured: family_notice templates needed"
            )
        )
    categories = {r.get("category") for r in items("resources")}
    directory = raw.get("resource_directory")
    if isinstance(directory, dict) and isinstance(directory.get("categories"), dict):
        categories |= set(directory["categories"].values())  # imported resources' categories
    policy = raw.get("policy")
    general = policy.get("general_support") if isinstance(policy, dict) else None
    if isinstance(general, list):
        missing = [c for c in general if c not in categories]
        if missing:
            problems.append(
                ConfigProblem(file, "policy.general_support", f"no resource has category {missing}")
            )
    referrals = raw.get("referrals")
    wanted_channel = referrals.get("email_channel") if isinstance(referrals, dict) else None
    if wanted_channel and wanted_channel not in {c.get("name") for c in items("channels")}:
        problems.append(
            ConfigProblem(file, "referrals.email_channel", f"no channel named {wanted_channel!r}")
        )
    problems += _retention_problems(raw, file)
    for index, rule in enumerate(items("rules")):
        if rule.get("mix_general_support") and not general:
            problems.append(
                ConfigProblem(
                    file,
                    f"rules[{index}].mix_general_support",
                    "policy.general_support names no categories to mix in",
                )
            )
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


def _retention_problems(raw: dict[str, Any], file: str) -> list[ConfigProblem]:
    """A case purged inside its cooldown could not be reopened: a relapse would open a new
    case without its history."""
    retention, cases = raw.get("retention"), raw.get("cases")
    days = retention.get("closed_case_days", 365) if isinstance(retention, dict) else 365
    cooldown = cases.get("cooldown_days", 30) if isinstance(cases, dict) else 30
    if isinstance(days, int) and isinstance(cooldown, int) and days < cooldown:
        return [
            ConfigProblem(
                file,
                "retention.closed_case_days",
                f"{days} is shorter than cases.cooldown_days ({cooldown}): a case must outlive "
                "its cooldown",
            )
        ]
    return []


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
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


CONNECTOR_SECTIONS: dict[str, Role] = {
    "sources": "source",
    "destinations": "destination",
    "channels": "channel",
}


def _validate_connectors(
    section: str, entries: Any, file: str, problems: list[ConfigProblem]
) -> list[BaseModel]:
    """Each entry through the config model its `kind` registered (connectors/registry.py)."""
    from connectors.registry import kinds

    if entries is None:
        return []
    if not isinstance(entries, list):
        problems.append(ConfigProblem(file, section, "must be a list"))
        return []
    known = kinds(CONNECTOR_SECTIONS[section])
    out: list[BaseModel] = []
    for index, entry in enumerate(entries):
        where = f"{section}[{index}]"
        if not isinstance(entry, dict):
            problems.append(ConfigProblem(file, where, "must be a mapping with a kind and a name"))
            continue
        kind = entry.get("kind")
        if kind not in known:
            problems.append(
                ConfigProblem(
                    file,
                    f"{where}.kind",
                    f"unknown kind {kind!r}; known: {', '.join(sorted(known))}"
                    if kind is not None
                    else f"missing; one of: {', '.join(sorted(known))}",
                )
            )
            continue
        try:
            out.append(known[kind].config.model_validate(entry))
        except ValidationError as exc:
            for err in exc.errors():
                msg = err["msg"].removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    msg = "unknown key"
                problems.append(ConfigProblem(file, f"{where}.{_loc(err['loc'])}", msg))
    return out


def parse_settings(raw: Any, file: str = "<memory>", base_dir: Path | None = None) -> Settings:
    """Validate an already-loaded mapping; raise ConfigError with every problem found."""
    problems: list[ConfigProblem] = []
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem(file, "(top level)", "must be a mapping of settings")])
    expanded = _expand_env(raw, "", problems, file)
    raw_for_checks = dict(expanded)
    expanded["base_dir"] = base_dir or Path(".")
    expanded["source_file"] = file
    for section in CONNECTOR_SECTIONS:
        if section in expanded:
            expanded[section] = _validate_connectors(section, expanded[section], file, problems)
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(expanded)
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(ConfigProblem(file, _loc(err["loc"]), msg))
    problems += _cross_problems(raw_for_checks, file)
    if settings is not None:
        from service.render import check_templates  # renders with the validated settings

        problems += check_templates(settings)
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
