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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
from edfi_api_client import EdFiClient
from pydantic import Field, model_validator

from connectors.base import BuiltSource, Chunk, RawRow, Stream, config_fingerprint
from connectors.http import HttpClient, HttpPolicy, HttpSettings, OAuth2ClientCredentials
from connectors.prefetch import Prefetch
from connectors.registry import register
from connectors.sources.csv_chunks import digest64
from mappings.edfi import DescriptorMap, edfi_mappings
from mappings.spec import EntityMapping
from service.config import Settings, SourceSettings
from service.errors import PermanentError

log = structlog.get_logger(__name__)

GROUP_PAGES = 8  # pages of a window held at once; the next group is fetched meanwhile
PREFETCH_PAGES = 16  # two groups: the next one fetches while this one is written
PREFETCH_STREAMS = 3  # resources fetching at once: the one being read and the next two
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
    http: HttpSettings = HttpSettings()

    @model_validator(mode="after")
    def _mode_needs(self) -> EdFiSettings:
        if self.url_mode in ("year_specific", "instance_year_specific") and not self.school_year:
            raise ValueError(f"url_mode {self.url_mode} needs school_year")
        if self.url_mode == "instance_year_specific" and not self.instance:
            raise ValueError("url_mode instance_year_specific needs instance")
        return self


@dataclass
class Plan:
    full: bool
    low: int  # first change version to read (inclusive)
    high: int  # last change version to read (inclusive)


class EdFiApiSource:
    kind = "edfi"
    places_students = True  # Ed-Fi keeps school and grade on the enrollment

    def __init__(self, cfg: EdFiSettings, mappings_for: Any) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self._mappings_for = mappings_for  # data standard -> list[EntityMapping]
        self.mappings: dict[str, EntityMapping] = {}
        self.http = HttpClient(
            None, HttpPolicy.from_settings(cfg.http)
        )  # auth is set once discovery names the URL
        self.plans: dict[str, Plan] = {}
        self.data_standard = 0
        self.year = cfg.school_year
        self.cursor_paging = False
        self._fetchers: dict[str, Prefetch[Page]] = {}
        self._started: set[str] = set()
        self._order: list[str] = []

    # -- discovery -------------------------------------------------------------------------

    def discover(self) -> None:
        """Read the base URL: the Data Standard, the API mode, the token and data URLs."""
        info = self.http.get_json(self.cfg.base_url.rstrip("/") + "/").body
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
        token_url = urls.get("oauth") or self.client.oauth_url
        self.http.auth = OAuth2ClientCredentials(
            token_url, self.cfg.client_key, self.cfg.client_secret
        )
        server_version = tuple(
            int(x) for x in str(info.get("version", "0")).split(".")[:2] if x.isdigit()
        )
        self.cursor_paging = self.cfg.cursor_paging and server_version >= (7, 3)
        # Filled in place: the importer holds this same dict and reads it after streams().
        self.mappings.clear()
        self.mappings.update({m.entity: m for m in self._mappings_for(self.data_standard)})

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

    def read(self, stream: Stream, known_chunks: set[int], cursor: str | None) -> Iterator[Chunk]:
        plan = self.plans[stream.name]
        # This resource and the next few fetch ahead while the importer works: small deltas of
        # many resources overlap instead of waiting for each other, and memory stays bounded.
        at = self._order.index(stream.name)
        for name in self._order[at : at + PREFETCH_STREAMS]:
            if name not in self._fetchers and name not in self._started:
                self._fetchers[name] = self._start(name)
                self._started.add(name)
        fetcher = self._fetchers.pop(stream.name, None) or self._start(stream.name)
        for page in fetcher:
            done: int | None = page.window_high if page.ends_window else None
            yield self._chunk(stream, page, known_chunks, plan, done)

    def _start(self, name: str) -> Prefetch[Page]:
        return Prefetch(lambda: self._pages(name), depth=PREFETCH_PAGES)

    def _pages(self, name: str) -> Iterator[Page]:
        """Every page the plan needs, in order, the last page of each window marked."""
        plan = self.plans[name]
        if plan.low > plan.high:
            return
        url = self.client.resource(name).url
        phases = [("data", url)]
        if not plan.full:
            phases += [("deletes", url + "/deletes"), ("keyChanges", url + "/keyChanges")]
        low = plan.low
        while low <= plan.high:
            high = min(plan.high, low + self.cfg.change_version_window - 1)
            for index, (phase, phase_url) in enumerate(phases):
                last_phase = index == len(phases) - 1
                # One page of lookahead marks the window's last page without holding the window.
                held: tuple[bytes, list[dict[str, Any]]] = (b"[]", [])
                for n, page in enumerate(self._window(phase_url, low, high, name)):
                    if n:
                        yield Page(phase, held[1], held[0], high, False)
                    held = page
                yield Page(phase, held[1], held[0], high, last_phase)
            low = high + 1

    def _chunk(
        self, stream: Stream, page: Page, known: set[int], plan: Plan, window_done: int | None
    ) -> Chunk:
        cursor = None
        if window_done is not None:
            state: dict[str, Any] = {"watermark": window_done, "year": self.year}
            if plan.full and window_done < plan.high:
                state.update(in_progress="full", target=plan.high)
            cursor = json.dumps(state)
        digest = digest64(stream.context_fingerprint, page.phase.encode(), page.raw)
        records = page.records
        if page.phase == "data":
            if digest in known:
                return Chunk(digest, len(records), None, cursor)
            rows = [RawRow(f"{stream.name}#{r.get('id', '')}", r) for r in records]
            return Chunk(digest, len(records), rows, cursor)
        # A key change retires the old key; the record under its new key arrives as data.
        field = "keyValues" if page.phase == "deletes" else "oldKeyValues"
        rows = [RawRow(f"{stream.name}/{page.phase}", dict(r.get(field) or {})) for r in records]
        return Chunk(digest, len(records), rows, cursor, deletions=True)

    # -- paging -----------------------------------------------------------------------------------

    def _window(
        self, url: str, low: int, high: int, name: str
    ) -> Iterator[tuple[bytes, list[dict[str, Any]]]]:
        """The pages of one change-version window, last offset first, a group at a time.

        Reverse order: a record that leaves the window mid-pull shifts only pages already read,
        so a row may repeat but none is skipped. Groups keep memory to GROUP_PAGES pages while
        the next group is already being fetched.
        """
        if self.cursor_paging:
            yield from self._token_pages(url, low, high)
            return
        size = self.cfg.page_size
        params = {"minChangeVersion": low, "maxChangeVersion": high}
        head = self.http.get_json(url, {**params, "offset": 0, "limit": 0, "totalCount": "true"})
        total = int(head.headers.get("Total-Count") or 0)
        offsets = list(range(0, total, size))[::-1]
        groups = [offsets[i : i + GROUP_PAGES] for i in range(0, len(offsets), GROUP_PAGES)]
        received = 0
        with ThreadPoolExecutor(max_workers=self.http.policy.concurrency) as pool:

            def submit(group: list[int]) -> list[Any]:
                return [
                    pool.submit(self.http.get_json, url, {**params, "offset": o, "limit": size})
                    for o in group
                ]

            ahead = submit(groups[0]) if groups else []
            for n in range(len(groups)):
                current, ahead = ahead, (submit(groups[n + 1]) if n + 1 < len(groups) else [])
                for future in current:
                    page = future.result()
                    records = _records(page.body, url)
                    received += len(records)
                    if records:
                        yield page.raw, records
        if received != total:
            log.warning("edfi.count_changed", resource=name, expected=total, received=received)

    def _token_pages(
        self, url: str, low: int, high: int
    ) -> Iterator[tuple[bytes, list[dict[str, Any]]]]:
        """ODS/API 7.3+ cursor paging: `pageToken` in, `Next-Page-Token` out."""
        params: dict[str, Any] = {
            "minChangeVersion": low,
            "maxChangeVersion": high,
            "pageSize": self.cfg.page_size,
        }
        while True:
            page = self.http.get_json(url, params)
            records = _records(page.body, url)
            if records:
                yield page.raw, records
            token = page.headers.get("Next-Page-Token")
            if not token or not records:
                return
            params["pageToken"] = token


@dataclass
class Page:
    phase: str  # data | deletes | keyChanges
    records: list[dict[str, Any]]
    raw: bytes
    window_high: int
    ends_window: bool


def _records(body: Any, url: str) -> list[dict[str, Any]]:
    if not isinstance(body, list) or not all(isinstance(r, dict) for r in body):
        raise PermanentError(f"{url.split('?')[0]} answered JSON that is not a list of records")
    return body


def mappings_factory(descriptors: Any) -> Any:
    return lambda data_standard: edfi_mappings(data_standard, descriptors)


def build(settings: Settings, cfg: EdFiSettings) -> BuiltSource:
    fingerprint = config_fingerprint(cfg)
    override = settings.resolve(cfg.descriptor_map) if cfg.descriptor_map else None
    if override is not None:
        if not override.is_file():
            raise PermanentError(f"{cfg.name}: descriptor_map {override} does not exist")
        fingerprint += override.read_bytes()  # an edited map re-reads unchanged pages
    source = EdFiApiSource(cfg, mappings_factory(DescriptorMap.load(override)))
    return BuiltSource(source, source.mappings, fingerprint)


register("source", "edfi", EdFiSettings, build)
