"""Streaming CSV reading in content-defined chunks.

A chunk ends after a record whose CRC lands on a boundary value (or at a size cap), so inserting
or deleting one row in a nightly file changes only the chunk around it. Each chunk's digest lets
the importer skip chunks it has already loaded: the reason a re-import of a mostly unchanged bulk
package costs a fraction of the first one. Memory holds one chunk, whatever the file size.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from connectors.base import Chunk, RawRow

AVERAGE_ROWS = 512  # boundary probability 1/AVERAGE_ROWS per record
MAX_ROWS = 4096


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
    line = fh.readline()
    if not line:
        return []
    return [h.strip() for h in next(csv.reader([decode(line)]), [])]


def iter_chunks(
    fh: BinaryIO,
    header: list[str],
    file_label: str,
    known: set[int],
    fingerprint: bytes = b"",
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
            yield _chunk(lines, header, file_label, first_line, known, fingerprint)
            lines = []
            first_line = line_no + 1
    if lines:
        yield _chunk(lines, header, file_label, first_line, known, fingerprint)


def _chunk(
    lines: list[bytes],
    header: list[str],
    file_label: str,
    first_line: int,
    known: set[int],
    fingerprint: bytes,
) -> Chunk:
    raw = b"".join(lines)
    digest = digest64(fingerprint, raw)
    if digest in known:
        return Chunk(digest, len(lines), None)
    rows: list[RawRow] = []
    reader = csv.reader(io.StringIO(decode(raw), newline=""))
    width = len(header)
    for values in reader:
        if not values or (len(values) == 1 and not values[0].strip()):
            continue
        location = f"{file_label}:{first_line + reader.line_num - 1}"
        if len(values) != width:
            # Keep the raw values so quarantine shows exactly what arrived.
            data = {h: (values[i] if i < len(values) else "") for i, h in enumerate(header)}
            data["__width__"] = f"{len(values)} fields, header has {width}"
        else:
            data = dict(zip(header, values, strict=True))
        rows.append(RawRow(location, data))
    return Chunk(digest, len(rows), rows)
