"""The audit trail as CSV or Excel (R-E3, R-E4, MLPS 9-10): one writer for the auditor's
page, ``GET /api/v1/audit/events.csv|.xlsx`` and ``pacsd audit export``.

* CSV: UTF-8 with a byte order mark (Excel then reads Chinese user names correctly),
  RFC 4180 quoting, produced batch by batch so a large export streams.
* Excel: openpyxl's write-only workbook (rows go straight to the file, memory stays flat),
  one sheet, at most :data:`XLSX_MAX_ROWS` events (the format's row limit).
* Formula injection: a text cell starting with ``= + - @``, a tab or a carriage return
  is written with a leading apostrophe, so a spreadsheet shows it as text and never runs
  it (a user agent or a plugin's detail is chosen by whoever calls pacsd).

Columns are the trail's own (docs/security.md §6), ``prev_hash`` and ``hash`` included so
an export can be checked against ``pacsd audit verify``'s head hash.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

COLUMNS = ("seq", "event_time", "event_type", "outcome", "actor", "actor_name",
           "source_ip", "device", "study_uid", "object_count", "location", "detail",
           "prev_hash", "hash")
#: Excel's 1,048,576 rows, less the header.
XLSX_MAX_ROWS = 1_048_575
FORMATS = {"csv": "text/csv; charset=utf-8",
           "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}
_RISKY = ("=", "+", "-", "@", "\t", "\r")


class TooManyRows(Exception):
    """More events than one Excel sheet holds."""


def cell(value) -> object:
    """A safe spreadsheet cell: numbers as they are, None empty, text defused."""
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    text = str(value)
    return "'" + text if text.startswith(_RISKY) else text


def csv_chunks(batches: Iterable[list[dict]],
               counter: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """The CSV file as byte chunks: a BOM and the header, then one chunk per batch."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(COLUMNS)
    yield ("\ufeff" + buf.getvalue()).encode()
    for rows in batches:
        buf.seek(0)
        buf.truncate()
        for r in rows:
            w.writerow([cell(r.get(c)) for c in COLUMNS])
        if counter is not None:
            counter(len(rows))
        yield buf.getvalue().encode()


def write_xlsx(path: str | Path, batches: Iterable[list[dict]],
               counter: Callable[[int], None] | None = None) -> int:
    """Write an Excel workbook of the events; returns how many were written; raises
    :class:`TooManyRows` (the file is then incomplete: delete it) past the row limit."""
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("audit")
    ws.append(list(COLUMNS))
    n = 0
    try:
        for rows in batches:
            if n + len(rows) > XLSX_MAX_ROWS:
                raise TooManyRows(f"more than {XLSX_MAX_ROWS} events: narrow the filter "
                                  "or export CSV")
            for r in rows:
                ws.append([cell(r.get(c)) for c in COLUMNS])
            n += len(rows)
            if counter is not None:
                counter(len(rows))
    finally:
        wb.save(str(path))
    return n
