"""Ed-Fi ODS/API (v5 to v7; Data Standard 4 and 5), pulled incrementally by change version.

Built on `edfi-api-client` for what it does well: the URL layout of each API mode (shared,
year-specific, instance-year-specific), resource, `/deletes` and `/keyChanges` paths. Token
handling and paging are ours (see docs/architecture.md): its session is neither thread-safe nor
`Retry-After`-aware, and its pager is one page at a time.

A pull walks change-version windows. Inside a window, offset pages are fetched concurrently and in
reverse order: a record that changes mid-pull leaves the window, which can only make later pages
repeat a row, never skip one. Each finished window is a resume point saved with the rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin

import structlog
from edfi_api_client import EdFiClient
from pydantic import Field, model_validator

from connectors.base import BuiltSource, RawRow, Stream, config_fingerprint
from connectors.http import HttpClient, HttpPolicy, HttpSettings, OAuth2ClientCredentials
from connectors.registry import register
from connectors.sources.api_base import (
    ApiSource,
    OffsetPaginator,
    Out,
    PageTokenPaginator,
    list_body,
    windows,
)
from mappings.edfi import DescriptorMap, edfi_mappings
from mappings.spec import EntityMapping
from service.config import Settings, SourceSettings
from service.errors import PermanentError

log = structlog.get_logger(__name__)

GROUP_PAGES = 8  # pages of a window held at once; the next group is fetched meanwhile
PREFETCH_PAGES = 16  # two groups: the next one fetches while this one is written
PREFETCH_STREAMS = 3  # resources fetching at once: the one being read and the next two
# Data Standard 5 names, in load order; DS4 reads parents for contacts.
DEFAULT_RESOURCES = (
    "schools", "sessions", "gradingPeriods", "calendarDates", "students", "contacts",
    "studentContactAssociations", "studentSchoolAssociations", "studentSchoolAttendanceEvents",
    "studentSectionAttendanceEvents", "grades", "disciplineIncidents",
    "studentDisciplineIncidentBehaviorAssociations", "disciplineActions",
)  # fmt: skip
DS4_NAMES = {"contacts": "parents", "studentContactAssociations": "studentParentAssociations"}
MODES = {
    "shared instance": "shared_instance",
    "sandbox": "sandbox",
    "district specific": "district_specific",
    "year specific": "year_specific",
    "instance year specific": "instance_year_specific",
}


class EdFiSettings(SourceSettings):
    """Ed-Fi ODS/API v5 to v7 (Data Standard 4 and 5), pulled by change version."""

    kind: Literal["edfi"]
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
    # The resources to read (Data Standard 5 names; DS4 servers get parents for contacts). A
    # server or claim set that refuses one (403/404) is a problem of that stream, reported by
    # name while the others sync, unless it is listed in required_resources.
    resources: list[str] = Field(default_factory=lambda: list(DEFAULT_RESOURCES), min_length=1)
    required_resources: list[str] = ["students"]
    # The token endpoint when discovery does not name it (or names it wrongly); may be relative.
    token_url: str | None = None
    http: HttpSettings = HttpSettings()

    @model_validator(mode="after")
    def _mode_needs(self) -> EdFiSettings:
        if self.url_mode in ("year_specific", "instance_year_specific") and not self.school_year:
            raise ValueError(f"url_mode {self.url_mode} needs school_year")
        if self.url_mode == "instance_year_specific" and not self.instance:
            raise ValueError("url_mode instance_year_specific needs instance")
        unknown = sorted(set(self.resources) - set(DEFAULT_RESOURCES) - set(DS4_NAMES.values()))
        if unknown:
            raise ValueError(f"unknown resources {unknown}; known: {list(DEFAULT_RESOURCES)}")
        stray = sorted(set(self.required_resources) - set(self.resources))
        if stray:
            raise ValueError(f"required_resources {stray} are not in resources")
        return self


class EdFiApiSource(ApiSource):
    kind = "edfi"
    places_students = True  # Ed-Fi keeps school and grade on the enrollment
    prefetch_streams = PREFETCH_STREAMS
    prefetch_pages = PREFETCH_PAGES

    def __init__(self, cfg: EdFiSettings, mappings_for: Any) -> None:
        # Auth is set once discovery names the token URL.
        super().__init__(cfg.name, HttpClient(None, HttpPolicy.from_settings(cfg.http)))
        self.cfg = cfg
        self._mappings_for = mappings_for  # data standard -> list[EntityMapping]
        self.mappings: dict[str, EntityMapping] = {}
        self.plans: dict[str, Plan] = {}
        self.data_standard = 0
        self.year = cfg.school_year
        self.cursor_paging = False
        self._required: set[str] = set()

    # -- discovery -------------------------------------------------------------------------

    def discover(self) -> None:
        """Read the base URL: the Data Standard, the API mode, the token and data URLs."""
        base = self.cfg.base_url.rstrip("/") + "/"
        info = self.http.get_json(base).body
        if not isinstance(info, dict):
            raise PermanentError(f"{self.cfg.base_url} did not answer Ed-Fi discovery JSON")
        models = {m.get("name"): str(m.get("version", "")) for m in info.get("dataModels") or []}
        version = models.get("Ed-Fi", "")
        if not version[:1].isdigit():
            raise PermanentError(f"{self.cfg.base_url}: no Ed-Fi data model in discovery")
        self.data_standard = int(version.split(".")[0])
        mode: str = self.cfg.url_mode
        if mode == "auto":
            text = str(info.get("apiMode") or "shared instance").strip().lower()
            mode = MODES.get(text, "shared_instance")
        elif mode == "shared":
            mode = "shared_instance"
        if mode in ("year_specific", "instance_year_specific") and not self.year:
            raise PermanentError(f"{self.cfg.base_url} is {mode}: set school_year in the config")
        self.client = EdFiClient(
            self.cfg.base_url,
            self.cfg.client_key,
            self.cfg.client_secret,
            api_mode=mode,
            api_year=self.year,
            instance_code=self.cfg.instance,
        )
        urls = info.get("urls") or {}
        # Discovery may name the token URL relative to the base ("oauth/token").
        token_url = urljoin(base, self.cfg.token_url or urls.get("oauth") or self.client.oauth_url)
        self.http.auth = OAuth2ClientCredentials(
            token_url, self.cfg.client_key, self.cfg.client_secret
        )
        server_version = tuple(
            int(x) for x in str(info.get("version", "0")).split(".")[:2] if x.isdigit()
        )
        self.cursor_paging = self.cfg.cursor_paging and server_version >= (7, 3)
        # Filled in place: the importer holds this same dict and reads it after streams().
        # Either standard's names work in the config: each server is asked for its own.
        rename = DS4_NAMES if self.data_standard < 5 else {v: k for k, v in DS4_NAMES.items()}
        wanted = [rename.get(r, r) for r in self.cfg.resources]
        self._required = {rename.get(r, r) for r in self.cfg.required_resources}
        known = {m.entity: m for m in self._mappings_for(self.data_standard)}
        self.mappings.clear()
        self.mappings.update({m: known[m] for m in known if m in wanted})

    def change_versions(self) -> tuple[int, int]:
        url = "/".join(
            p.strip("/")
            for p in (self.cfg.base_url, "changeQueries/v1", self.client.instance_locator or "",
                      "availableChangeVersions")
            if p
        )  # fmt: skip
        body = self.http.get_json(url).body
        return int(body.get("oldestChangeVersion", 0)), int(body["newestChangeVersion"])

    # -- the Source protocol --------------------------------------------------------------------

    def streams(self, saved: Mapping[str, str]) -> list[Stream]:
        self.discover()
        oldest, newest = self.change_versions()
        out: list[Stream] = []
        for name in self.mappings:
            state = json.loads(saved[name]) if name in saved else None
            stream = Stream(name, "bulk", name, resumable=True)
            if state and state.get("in_progress") == "full" and state.get("year") == self.year:
                # An interrupted full pull goes on from its last finished window.
                self.plans[name] = Plan(True, int(state["watermark"]) + 1, int(state["target"]))
                stream.resuming = True
            elif (
                state is None
                or state.get("year") != self.year  # a new school year: reconcile everything
                or int(state["watermark"]) < oldest  # history was purged or restored
            ):
                self.plans[name] = Plan(True, 0, newest)
            else:
                low = max(0, int(state["watermark"]) + 1 - self.cfg.lookback_change_versions)
                self.plans[name] = Plan(False, low, newest)
                stream.mode = "delta"
            out.append(stream)
        self._order = [s.name for s in out]
        return out

    def required(self, name: str) -> bool:
        return name in self._required

    def row(self, stream: str, record: dict[str, Any], location: str) -> RawRow:
        if location.endswith("/deletes"):
            return RawRow(location, dict(record.get("keyValues") or {}), record.get("id"))
        if location.endswith("/keyChanges"):
            return RawRow(location, record, record.get("id"))
        return RawRow(f"{stream}#{record.get('id', '')}", record, record.get("id"))

    def outs(self, name: str) -> Iterator[Out]:
        """Every page the plan needs, window by window; the last page of each is a resume point.

        Reverse order inside a window: a record that leaves it mid-pull shifts only pages already
        read, so a row may repeat but none is skipped.
        """
        plan = self.plans[name]
        url = self.client.resource(name).url
        phases = [("data", url)]
        if not plan.full:
            phases += [("deletes", url + "/deletes"), ("keyChanges", url + "/keyChanges")]
        size = self.cfg.page_size
        pager: OffsetPaginator | PageTokenPaginator = (
            PageTokenPaginator(size, list_body) if self.cursor_paging else OffsetPaginator(
                size, list_body, "Total-Count", {"offset": 0, "limit": 0, "totalCount": "true"},
                GROUP_PAGES, whole_reverse=True, strict_total=False)
        )  # fmt: skip
        for low, high in windows(plan.low, plan.high, self.cfg.change_version_window):
            params = {"minChangeVersion": low, "maxChangeVersion": high}
            for index, (phase, phase_url) in enumerate(phases):
                closes = index == len(phases) - 1
                for page in pager.pages(self.http, phase_url, params, name=name):
                    cursor: dict[str, Any] | None = None
                    if closes and page.last:
                        cursor = {"watermark": high, "year": self.year}
                        if plan.full and high < plan.high:
                            cursor.update(in_progress="full", target=plan.high)
                    if page.records or cursor is not None:
                        yield Out(name, page, phase, cursor)


@dataclass
class Plan:
    full: bool
    low: int  # first change version to read (inclusive)
    high: int  # last change version to read (inclusive)


def mappings_factory(descriptors: Any) -> Any:
    return lambda data_standard: edfi_mappings(data_standard, descriptors)


def build(settings: Settings, cfg: EdFiSettings) -> BuiltSource:
    # Rows now carry the record's id: a full pull re-reads pages stored before they did.
    fingerprint = config_fingerprint(cfg) + b"record-ids"
    override = settings.resolve(cfg.descriptor_map) if cfg.descriptor_map else None
    if override is not None:
        if not override.is_file():
            raise PermanentError(f"{cfg.name}: descriptor_map {override} does not exist")
        fingerprint += override.read_bytes()  # an edited map re-reads unchanged pages
    source = EdFiApiSource(cfg, mappings_factory(DescriptorMap.load(override)))
    return BuiltSource(source, source.mappings, fingerprint)


register("source", "edfi", EdFiSettings, build)
