"""What every REST source shares, written once: paginators, plans, resume cursors, digest skipping.

A source declares its streams (name, path, where the records are in the body, cursor field) and
a paginator, and overrides a few hooks, as a singer-sdk stream does; `CursorFieldSource` is the
whole machinery for the common case (OneRoster REST is one), `ApiSource` the part Ed-Fi's
change-version windows reuse.

Paginators:
- `OffsetPaginator`: `limit`/`offset`. A stated total (`X-Total-Count`, Ed-Fi's `Total-Count`)
  lets pages be fetched concurrently; without one it follows `Link: rel="next"`, else reads until
  an empty page or one shorter than those before it. The total is an optimisation, never needed;
  a full pull that ends short of a stated total is an error (`StreamFailed`), never a success.
- `PageTokenPaginator`: a token header in, a token parameter out (Ed-Fi 7.3 `Next-Page-Token`).
- `windows`: change-version windows, each closed by a resume point.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import requests
import structlog

from connectors.base import Chunk, RawRow, Stream, StreamFailed
from connectors.http import HttpClient, HttpStatusError, JsonPage
from connectors.prefetch import Prefetch
from connectors.sources.csv_chunks import digest64
from service.errors import PermanentError
from service.logging import carry_context

log = structlog.get_logger(__name__)

Record = dict[str, Any]
RecordsOf = Callable[[Any, str], list[Record]]  # (body, url) -> the records of one page
REFUSED = frozenset({403, 404})  # a server (or a key's claim set) without this resource


def list_body(body: Any, url: str) -> list[Record]:
    """The body is the list of records (Ed-Fi)."""
    if not isinstance(body, list) or not all(isinstance(r, dict) for r in body):
        raise PermanentError(f"{url.split('?')[0]} answered JSON that is not a list of records")
    return body


def keyed_body(key: str) -> RecordsOf:
    """The records are the list under `key` (OneRoster: {"users": [...]})."""

    def records(body: Any, url: str) -> list[Record]:
        found = body.get(key) if isinstance(body, dict) else None
        if not isinstance(found, list):
            raise PermanentError(f"{url.split('?')[0]}: the answer has no {key!r} list")
        return found

    return records


@dataclass
class Page:
    records: list[Record]
    raw: bytes
    headers: Mapping[str, str]
    offset: int  # of the first record, within the pull
    last: bool = False  # no page follows in this pull (or window)

    @property
    def next_offset(self) -> int:
        return self.offset + len(self.records)


def _total(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    return int(value) if value is not None and str(value).strip().isdigit() else None


def link_next(page: JsonPage) -> str | None:
    """`Link: <...>; rel="next"` resolved against the page's URL; None when there is none."""
    header = page.headers.get("Link")
    if not header:
        return None
    for link in requests.utils.parse_header_links(header):
        if "next" in str(link.get("rel", "")).split():
            return urljoin(page.url, link["url"])
    return None


@dataclass
class OffsetPaginator:
    page_size: int
    records: RecordsOf
    total_header: str = "X-Total-Count"
    # Ed-Fi asks for the total first (limit=0&totalCount=true); OneRoster sends it with page 1.
    count_params: dict[str, Any] | None = None
    group: int = 16  # pages fetched concurrently, a group at a time
    # Whole pull last page first (Ed-Fi windows: a record leaving the window mid-pull can then
    # only repeat a row, never skip one); else reverse within each group, yielded in order.
    whole_reverse: bool = False
    # A pull ending short of the stated total fails; False only warns (an Ed-Fi window loses
    # records that changed mid-pull, and they come back in the next window).
    strict_total: bool = True

    def pages(self, http: HttpClient, url: str, params: Mapping[str, Any], start: int = 0,
              name: str = "") -> Iterator[Page]:  # fmt: skip
        first: JsonPage | None = None
        if self.count_params is not None:
            head = http.get_json(url, {**params, **self.count_params})
            total = _total(head.headers, self.total_header)
        else:
            first = http.get_json(url, {**params, "offset": start, "limit": self.page_size})
            total = _total(first.headers, self.total_header)
        if total is None:
            yield from self._sequential(http, url, params, start, first)
        else:
            yield from self._concurrent(http, url, params, start, total, first, name)

    def _sequential(self, http: HttpClient, url: str, params: Mapping[str, Any], start: int,
                    first: JsonPage | None) -> Iterator[Page]:  # fmt: skip
        """No total: follow `Link: rel="next"`, else page on until an empty or short page."""
        page = first or http.get_json(url, {**params, "offset": start, "limit": self.page_size})
        offset, longest = start, 0
        while True:
            records = self.records(page.body, url)
            nxt = link_next(page)
            if "Link" in page.headers:  # the server says where the next page is, or that none is
                last = nxt is None or not records
            else:  # a page shorter than earlier ones is the end (a capped limit is not)
                last = not records or len(records) < longest
                nxt = None
            longest = max(longest, len(records))
            yield Page(records, page.raw, page.headers, offset, last)
            if last:
                return
            offset += len(records)
            page = http.get_json(nxt) if nxt else http.get_json(
                url, {**params, "offset": offset, "limit": self.page_size}
            )  # fmt: skip

    def _concurrent(self, http: HttpClient, url: str, params: Mapping[str, Any], start: int,
                    total: int, first: JsonPage | None, name: str) -> Iterator[Page]:  # fmt: skip
        step = self.page_size
        fetched: dict[int, JsonPage] = {}
        if first is not None:
            got = len(self.records(first.body, url))
            if 0 < got < step and start + got < total:
                step = got  # the server caps its pages below what we asked for
            fetched[start] = first
        if total <= start and first is None:
            yield Page([], b"[]", {}, start, last=True)  # nothing in this window: no request
            return
        offsets = list(range(start, max(total, start + 1), step))
        if self.whole_reverse:
            offsets.reverse()
        groups = [offsets[i : i + self.group] for i in range(0, len(offsets), self.group)]
        received = 0
        with ThreadPoolExecutor(max_workers=http.policy.concurrency) as pool:

            def submit(group: list[int]) -> dict[int, Future[JsonPage]]:
                # Reverse order inside a group: a record vanishing mid-pull repeats a row
                # rather than skip one (a whole-reverse group is in reverse order already).
                order = group if self.whole_reverse else reversed(group)
                # carry_context: the page fetches log with the import's run_id.
                return {o: pool.submit(carry_context(http.get_json), url,
                                       {**params, "offset": o, "limit": step})
                        for o in order if o not in fetched}  # fmt: skip

            ahead = submit(groups[0]) if groups else {}
            for n, group in enumerate(groups):
                current = ahead
                ahead = submit(groups[n + 1]) if n + 1 < len(groups) else {}
                for off in group:
                    got_page = fetched.pop(off) if off in fetched else current[off].result()
                    records = self.records(got_page.body, url)
                    received += len(records)
                    last = n == len(groups) - 1 and off == group[-1]
                    if last and start + received < total:  # a resumed pull began at start
                        self._short(name, url, start + received, total)
                    yield Page(records, got_page.raw, got_page.headers, off, last)

    def _short(self, name: str, url: str, received: int, total: int) -> None:
        if self.strict_total:
            raise StreamFailed(
                "incomplete_pull",
                f"{name or url.split('?')[0]}: the pull ended at {received} of the {total} "
                "records the server stated; nothing was marked complete",
            )
        log.warning("api.count_changed", resource=name, expected=total, received=received)


@dataclass
class PageTokenPaginator:
    page_size: int
    records: RecordsOf
    size_param: str = "pageSize"
    token_param: str = "pageToken"
    token_header: str = "Next-Page-Token"

    def pages(self, http: HttpClient, url: str, params: Mapping[str, Any], start: int = 0,
              name: str = "") -> Iterator[Page]:  # fmt: skip
        query: dict[str, Any] = {**params, self.size_param: self.page_size}
        offset = 0
        while True:
            page = http.get_json(url, query)
            records = self.records(page.body, url)
            token = page.headers.get(self.token_header)
            last = not token or not records
            yield Page(records, page.raw, page.headers, offset, last)
            if last:
                return
            offset += len(records)
            query[self.token_param] = token


def windows(low: int, high: int, width: int) -> Iterator[tuple[int, int]]:
    """Change-version windows [low, high] of at most `width` versions; each is a resume point."""
    while low <= high:
        yield low, min(high, low + width - 1)
        low += width


# -- the source side ------------------------------------------------------------------------


@dataclass
class Out:
    """One page on its way to becoming a chunk, with the resume point it closes, if any."""

    stream: str
    page: Page
    phase: str = "data"  # data | deletes | keyChanges
    cursor: dict[str, Any] | None = None


class ApiSource:
    """Fetches a few streams ahead, turns pages into chunks (known digests come unparsed),
    carries resume points, and reports a refused optional stream by name (`StreamFailed`)."""

    kind = ""
    places_students = False
    prefetch_streams = 3  # streams fetching at once: the one being read and the next two
    prefetch_pages = 16

    def __init__(self, name: str, http: HttpClient) -> None:
        self.name = name
        self.http = http
        self._fetchers: dict[str, Prefetch[Out]] = {}
        self._started: set[str] = set()
        self._order: list[str] = []

    # -- hooks ---------------------------------------------------------------------------------
    def outs(self, name: str) -> Iterator[Out]:
        """Every page the stream's plan needs, in order, resume points marked."""
        raise NotImplementedError

    def row(self, stream: str, record: Record, location: str) -> RawRow:
        return RawRow(location, record)

    def required(self, name: str) -> bool:
        """A refused required stream fails the source; any other is a stream problem."""
        return True

    # -- the Source protocol ---------------------------------------------------------------
    def read(self, stream: Stream, known_chunks: set[int], cursor: str | None) -> Iterator[Chunk]:
        at = self._order.index(stream.name) if stream.name in self._order else 0
        for name in self._order[at : at + self.prefetch_streams]:
            if name not in self._fetchers and name not in self._started:
                self._fetchers[name] = self._start(name)
        fetcher = self._fetchers.pop(stream.name, None) or self._start(stream.name)
        try:
            for out in fetcher:
                yield self.chunk(stream, out, known_chunks)
        except HttpStatusError as exc:
            if exc.status not in REFUSED or self.required(stream.name):
                raise
            raise StreamFailed(
                "resource_refused", f"{stream.name}: the server answered {exc.status}"
            ) from exc

    def _start(self, name: str) -> Prefetch[Out]:
        self._started.add(name)
        return Prefetch(lambda: self.outs(name), depth=self.prefetch_pages)

    def chunk(self, stream: Stream, out: Out, known: set[int]) -> Chunk:
        page = out.page
        cursor = json.dumps(out.cursor) if out.cursor is not None else None
        digest = digest64(stream.context_fingerprint, out.phase.encode(), page.raw)
        if out.phase != "data":
            rows = [self.row(stream.name, r, f"{stream.name}/{out.phase}") for r in page.records]
            return Chunk(digest, len(rows), rows, cursor, deletions=out.phase == "deletes",
                         key_changes=out.phase == "keyChanges")  # fmt: skip
        if digest in known:
            return Chunk(digest, len(page.records), None, cursor)
        rows = [self.row(stream.name, r, f"{stream.name}@{page.offset + i}")
                for i, r in enumerate(page.records)]  # fmt: skip
        return Chunk(digest, len(rows), rows, cursor)


@dataclass(frozen=True)
class RestStream:
    """One collection of a REST source, declared."""

    name: str
    path: str  # joined to the source's base URL
    records: RecordsOf
    cursor_field: str | None = None  # deltas ask for records changed since the last full pull
    required: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)  # every request (sort, order...)


@dataclass
class Plan:
    since: str | None  # the cursor field's watermark; None: a full pull
    offset: int  # resume point inside the pull
    started: str | None  # the watermark this pull will leave when complete


class CursorFieldSource(ApiSource):
    """A REST source whose deltas filter on a cursor field (a last-modified timestamp).

    Subclasses declare `rest_streams` and a paginator and may override `delta_params`,
    `watermark` and `transform`. The watermark of a pull is taken when it starts (the server's
    clock), so a record changed while it ran is read again next time instead of being missed.
    """

    rest_streams: tuple[RestStream, ...] = ()
    group_pages = 16  # pages between resume points
    # One stream at a time: the next starts only once this one's last page has committed, so
    # a sync killed mid-stream resumes there, not in a stream that had already finished.
    prefetch_streams = 1

    def __init__(self, name: str, http: HttpClient, base_url: str) -> None:
        super().__init__(name, http)
        self.base_url = base_url.rstrip("/")
        self.plans: dict[str, Plan] = {}
        self._by_name = {s.name: s for s in self.rest_streams}

    # -- hooks ---------------------------------------------------------------------------------
    def paginator(self, stream: RestStream) -> OffsetPaginator | PageTokenPaginator:
        raise NotImplementedError

    def url(self, stream: RestStream) -> str:
        return f"{self.base_url}/{stream.path.strip('/')}"

    def delta_params(self, stream: RestStream, since: str) -> dict[str, Any]:
        raise NotImplementedError

    def watermark(self, headers: Mapping[str, str]) -> str:
        raise NotImplementedError

    def transform(self, stream: str, record: Record) -> Record:
        return record

    def row(self, stream: str, record: Record, location: str) -> RawRow:
        return RawRow(location, self.transform(stream, record))

    def required(self, name: str) -> bool:
        return self._by_name[name].required

    # -- machinery -----------------------------------------------------------------------------
    def streams(self, saved: Mapping[str, str]) -> list[Stream]:
        out = []
        for s in self.rest_streams:
            state = json.loads(saved[s.name]) if s.name in saved else {}
            plan = Plan(state.get("since"), int(state.get("offset", 0)), state.get("started"))
            self.plans[s.name] = plan
            stream = Stream(s.name, "delta" if plan.since else "bulk", s.name, resumable=True)
            stream.resuming = plan.offset > 0
            out.append(stream)
        self._order = [s.name for s in out]
        return out

    def outs(self, name: str) -> Iterator[Out]:
        s, plan = self._by_name[name], self.plans[name]
        params = dict(s.params)
        if plan.since and s.cursor_field:
            params.update(self.delta_params(s, plan.since))
        started = plan.started
        for n, page in enumerate(self.paginator(s).pages(self.http, self.url(s), params,
                                                         plan.offset, name), 1):  # fmt: skip
            started = started or self.watermark(page.headers)
            cursor: dict[str, Any] | None = None
            if page.last:
                cursor = {"since": started}  # complete: the next pull is a delta
            elif n % self.group_pages == 0:
                cursor = {"since": plan.since, "offset": page.next_offset, "started": started}
            yield Out(name, page, cursor=cursor)
