"""Streaming CSV reading in content-defined chunks.

A chunk ends after a record whose CRC lands on a boundary value (or at a size cap), so inserting
or deleting one row in a nightly file changes only the chunk around it. Each chunk's digest lets
the importer skip chunks it has already loaded: the reason a re-import of a mostly unchanged bulk
package costs a fraction of the first one. Memory holds one chunk, whatever the file size.

Bad bytes never stop a file: a record that does not decode, holds a NUL, has a field over the
configured length (or over the csv module's limit) becomes a *rejected* row (`REJECT` in its
data) that the importer quarantines with file, line and reason. What would make a whole bulk file
untrustworthy (broken quoting that swallows rows) is found by `prescan` before anything is read.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from pydantic import Field, field_validator

from connectors.base import Chunk, RawRow, Stream, StreamProblem
from connectors.sources.file_package import FilePackage
from service.config import Strict

AVERAGE_ROWS = 512  # boundary probability 1/AVERAGE_ROWS per record
MAX_ROWS = 4096
# Keys a rejected row carries instead of mapped columns (the importer quarantines it).
REJECT = "__reject__"
REJECT_DETAIL = "__reject_detail__"
DEFAULT_MAX_FIELD = 1000


class CsvFileOptions(Strict):
    """How a CSV source's files are decoded and guarded (shared by every CSV source kind)."""

    # "auto": a BOM or valid UTF-8 decides UTF-8; a file with no UTF-8 text at all but bytes
    # that are not UTF-8 is read with `encoding_fallback`. Or name one encoding for every file.
    encoding: str = "auto"
    encoding_fallback: str = "cp1252"
    # A longer field is a bad record (a merged line, a pasted document), never stored.
    max_field_length: int = Field(DEFAULT_MAX_FIELD, ge=16, le=10_000_000)
    # A bulk file that would deactivate more than this share of the active rows it feeds is
    # refused (nothing deactivated) unless the sync runs with --allow-deactivation.
    max_deactivation_share: float = Field(0.10, ge=0, le=1)

    @field_validator("encoding", "encoding_fallback")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        if value != "auto":
            try:
                codecs.lookup(value)
            except LookupError as exc:
                raise ValueError(f"unknown encoding {value!r}") from exc
        return value


def digest64(*parts: bytes) -> int:
    """A stable signed 64-bit digest (fits a BIGINT column)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part)
    return int.from_bytes(h.digest(), "big", signed=True)


def decode(raw: bytes) -> str:
    """UTF-8 (with or without BOM); Windows-1252 is what SIS exports fall back to."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def read_header(fh: BinaryIO) -> list[str]:
    """Column names; trailing empty ones (a trailing comma in the export) are dropped."""
    line = fh.readline()
    if not line:
        return []
    names = [h.strip() for h in next(csv.reader([decode(line)]), [])]
    while names and not names[-1]:
        names.pop()
    return names


@dataclass
class FileScan:
    """What one pass over a file's bytes says about it, before any row is imported."""

    encoding: str = "utf-8"
    records: int = 0
    duplicate_keys: frozenset[str] = frozenset()
    # (reason, detail) of a problem that makes the whole file untrustworthy.
    problems: list[tuple[str, str]] = field(default_factory=list)


def _key_of_line(line: bytes, index: int) -> bytes:
    if index == 0 and not line.startswith(b'"'):
        return line.split(b",", 1)[0].strip()  # the usual case: the key is the first column
    if b'"' not in line:
        parts = line.rstrip(b"\r\n").split(b",", index + 1)
        return parts[index].strip() if index < len(parts) else b""
    values = next(csv.reader([line.decode("utf-8", "replace")]), [])
    return values[index].strip().encode() if index < len(values) else b""


def prescan(
    fh: BinaryIO, header: list[str], label: str, options: CsvFileOptions, key_column: str | None
) -> FileScan:
    """One streaming pass (positioned after the header): encoding, records, duplicate keys and
    broken quoting. Cheap next to parsing: bytes are counted, not decoded row by row."""
    scan = FileScan()
    width = max(len(header), 1)
    lower = [h.lower() for h in header]
    key_index = (
        lower.index(key_column.lower()) if key_column and key_column.lower() in lower else -1
    )
    seen: set[bytes] = set()
    dups: set[bytes] = set()
    utf8_text = False  # some non-ASCII bytes decode as UTF-8
    not_utf8 = False
    open_quote = False
    record_start = 0
    line_no = 1
    for line in fh:
        line_no += 1
        if not line.isascii():
            try:
                line.decode("utf-8")
                utf8_text = True
            except UnicodeDecodeError:
                not_utf8 = True
        if not open_quote:
            if not line.strip():
                continue
            record_start = line_no
            scan.records += 1
            if key_index >= 0:
                key = _key_of_line(line, key_index)
                if key in seen:
                    dups.add(key)
                else:
                    seen.add(key)
        elif line.count(b",") >= width - 1 >= 2:
            # A line inside a quoted field that holds a whole record's worth of delimiters: a
            # quote was never closed and the field is swallowing rows.
            scan.problems.append(
                ("broken_quoting", f"{label}: the quoted field opened on line {record_start} "
                 f"runs over line {line_no}, which looks like a record of its own; the file's "
                 "quoting is broken")
            )  # fmt: skip
            return scan
        if line.count(b'"') % 2:
            open_quote = not open_quote
    if open_quote:
        scan.problems.append(
            ("broken_quoting", f"{label}: the quote opened on line {record_start} is never "
             "closed; the rest of the file would be one field")
        )  # fmt: skip
    if options.encoding != "auto":
        scan.encoding = options.encoding
    elif not_utf8 and not utf8_text:
        scan.encoding = options.encoding_fallback
    scan.duplicate_keys = frozenset(k.decode("utf-8", "replace") for k in dups if k)
    return scan


def iter_chunks(
    fh: BinaryIO,
    header: list[str],
    file_label: str,
    known: set[int],
    fingerprint: bytes = b"",
    encoding: str = "utf-8",
    max_field: int = DEFAULT_MAX_FIELD,
) -> Iterator[Chunk]:
    """Yield the chunks of `fh` (positioned after the header). Known digests come unparsed."""
    lines: list[bytes] = []
    open_quote = False
    first_line = 2  # line 1 is the header
    line_no = 1
    for line in fh:
        line_no += 1
        if not lines and not open_quote and not line.strip():
            first_line = line_no + 1
            continue  # blank lines between records carry nothing
        lines.append(line)
        if line.count(b'"') % 2:
            open_quote = not open_quote  # a quoted field spans lines; no boundary inside it
        if open_quote:
            continue
        if len(lines) >= MAX_ROWS or zlib.crc32(line) % AVERAGE_ROWS == 0:
            yield _chunk(lines, header, file_label, first_line, known, fingerprint, encoding,
                         max_field)  # fmt: skip
            lines = []
            first_line = line_no + 1
    if lines:
        yield _chunk(lines, header, file_label, first_line, known, fingerprint, encoding,
                     max_field)  # fmt: skip


def _records(lines: list[bytes], first_line: int) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of each record, a quoted field's line breaks kept inside."""
    buf: list[bytes] = []
    start = first_line
    open_quote = False
    for offset, line in enumerate(lines):
        if not buf:
            start = first_line + offset
        buf.append(line)
        if line.count(b'"') % 2:
            open_quote = not open_quote
        if not open_quote:
            yield start, b"".join(buf)
            buf = []
    if buf:
        yield start, b"".join(buf)


def _rejected(
    header: list[str], location: str, reason: str, detail: str, raw: bytes,
    values: list[str] | None = None,
) -> RawRow:  # fmt: skip
    """A row the importer quarantines: the values as well as they can be read (so its key is
    known and a knock-on error can name it), never used as data."""
    text = raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    data: dict[str, str] = {}
    if values is not None:
        data = {h: v[:300] for h, v in zip(header, values, strict=False)}
    elif len(raw) < 1_000_000:
        try:
            values = next(csv.reader(io.StringIO(text, newline="")), [])
            data = {h: v[:300] for h, v in zip(header, values, strict=False)}
        except csv.Error:
            data = {}
    if not data:
        data = {"raw": text if len(text) <= 300 else f"{text[:300]}... ({len(raw):,} bytes)"}
        if header and not raw.startswith(b'"'):
            data[header[0]] = raw.split(b",", 1)[0][:300].decode("utf-8", "replace")
    return RawRow(location, {**data, REJECT: reason, REJECT_DETAIL: detail})


def _chunk(
    lines: list[bytes],
    header: list[str],
    file_label: str,
    first_line: int,
    known: set[int],
    fingerprint: bytes,
    encoding: str = "utf-8",
    max_field: int = DEFAULT_MAX_FIELD,
) -> Chunk:
    raw = b"".join(lines)
    digest = digest64(fingerprint, raw)
    if digest in known:
        return Chunk(digest, len(lines), None)
    try:
        text = raw.decode(encoding)
        parsed: list[tuple[int, list[str]]] = []
        reader = csv.reader(io.StringIO(text, newline=""))
        for values in reader:
            parsed.append((first_line + reader.line_num - 1, values))
        nul = "\x00" in text  # one scan per chunk instead of one per field
        rows = [_row(header, file_label, n, v, max_field, nul) for n, v in parsed]
    except (UnicodeDecodeError, csv.Error):
        # One bad record must not change how its neighbours are read: go record by record.
        rows = []
        for line_no, record in _records(lines, first_line):
            location = f"{file_label}:{line_no}"
            try:
                values = next(csv.reader(io.StringIO(record.decode(encoding), newline="")), [])
            except UnicodeDecodeError as exc:
                bad = record[exc.start : exc.start + 1].hex()
                rows.append(_rejected(header, location, "bad_encoding",
                                      f"byte 0x{bad} at offset {exc.start} is not {encoding}",
                                      record))  # fmt: skip
                continue
            except csv.Error as exc:
                reason = "field_too_long" if "field limit" in str(exc) else "bad_csv"
                rows.append(_rejected(header, location, reason, str(exc), record))
                continue
            rows.append(_row(header, file_label, line_no, values, max_field))
    kept = [r for r in rows if r is not None]
    return Chunk(digest, len(kept), kept)


def _row(
    header: list[str],
    file_label: str,
    line_no: int,
    values: list[str],
    max_field: int,
    nul: bool = True,
) -> RawRow | None:
    if not values or (len(values) == 1 and not values[0].strip()):
        return None
    location = f"{file_label}:{line_no}"
    width = len(header)
    if len(values) > width and not any(v.strip() for v in values[width:]):
        values = values[:width]  # trailing empty columns (a trailing comma per line)
    longest = max(map(len, values))
    if longest > max_field:
        column = header[max(range(len(values)), key=lambda i: len(values[i]))] if header else "?"
        return _rejected(header, location, "field_too_long",
                         f"{column} is {longest:,} characters (max_field_length {max_field:,})",
                         b"", values)  # fmt: skip
    if nul and any("\x00" in v for v in values):
        column = next(
            (header[i] if i < width else f"#{i + 1}") for i, v in enumerate(values) if "\x00" in v
        )
        return _rejected(header, location, "nul_byte", f"{column} holds a NUL byte", b"",
                         [v.replace("\x00", "\\x00") for v in values])  # fmt: skip
    if len(values) != width:
        # Keep the raw values so quarantine shows exactly what arrived.
        data = {h: (values[i] if i < len(values) else "") for i, h in enumerate(header)}
        data["__width__"] = f"{len(values)} fields, header has {width}"
    else:
        data = dict(zip(header, values, strict=True))
    return RawRow(location, data)


def open_stream(
    package: FilePackage, stream: Stream, options: CsvFileOptions, key_column: str | None
) -> None:
    """Read the stream's header and prescan its file, recording what was found on the stream."""
    with package.open(stream.location) as fh:
        stream.header = read_header(fh)
        scan = prescan(fh, stream.header, stream.location, options, key_column)
    stream.encoding = scan.encoding
    stream.records = scan.records
    stream.duplicate_keys = scan.duplicate_keys
    stream.key_column = key_column
    stream.problems += [StreamProblem(reason, detail) for reason, detail in scan.problems]


def read_stream(
    package: FilePackage, stream: Stream, known: set[int], options: CsvFileOptions
) -> Iterator[Chunk]:
    with package.open(stream.location) as fh:
        read_header(fh)
        yield from iter_chunks(
            fh, stream.header, stream.location, known, stream.context_fingerprint,
            stream.encoding, options.max_field_length,
        )  # fmt: skip
