"""Bank statement lines (camt.053/054, MT940/942, BAI2) become staging entries.

The format modules hand over checked ``StatementLine`` records (``recon.ingest.statement``); here
they are written in batches inside the file's one database transaction, so a statement that does
not add up (found when its last line is read) rolls the whole file back. Lines the bank has not
booked yet are counted and left out: a pending line booked as final is a classic way books go
wrong. A line whose natural key the account already has (a statement loaded twice, overlapping
statements) is reported as a duplicate and not ingested again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from sqlalchemy.engine import Connection

from recon import staging
from recon.ingest.report import IngestReport, Pacing, Progress
from recon.ingest.statement import StatementLine
from recon.staging import NewStagingEntry, insert_staging_entries

BATCH_ROWS = 2_000  # lines per INSERT statement and per duplicate look-up


def write_lines(
    conn: Connection,
    lines: Iterable[StatementLine],
    report: IngestReport,
    *,
    progress: Callable[[Progress], None] | None = None,
    progress_every: int = 50_000,
    batch_rows: int = BATCH_ROWS,
) -> None:
    """Write `lines` to `report.account_id` on `conn` (the caller's transaction), counting into `report`."""
    batch = NaturalKeyBatch(conn, report)
    pacing = Pacing(report, progress, progress_every, batch_rows, time.monotonic() - report.elapsed_seconds)
    for line in lines:
        report.rows_read += 1
        if not line.booked:
            report.pending_skipped += 1
        else:
            batch.add(report.rows_read, _entry(line, report))
        pacing.after_row(batch)
    batch.flush()


def _entry(line: StatementLine, report: IngestReport) -> NewStagingEntry:
    source = {"source_file": report.source_file} if report.source_file else {}
    return NewStagingEntry(
        account_id=report.account_id,
        entry_type=line.entry_type,
        amount=line.amount,
        currency=line.currency,
        processing_mode=report.processing_mode,
        effective_date=line.effective_date,
        metadata={**line.metadata, **source, "statement_format": report.file_format},
        natural_key=line.natural_key,
    )


class NaturalKeyBatch:
    """Booked lines waiting for one duplicate look-up and one INSERT (settlement reports use it too)."""

    def __init__(self, conn: Connection, report: IngestReport):
        self._conn = conn
        self._report = report
        self._rows: dict[str, tuple[int, NewStagingEntry]] = {}  # natural key -> first row in this batch

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row_number: int, entry: NewStagingEntry) -> None:
        assert entry.natural_key is not None
        if entry.natural_key in self._rows:
            self._report.duplicate(row_number, entry.order_id, "earlier row of this file", entry.natural_key)
        else:
            self._rows[entry.natural_key] = (row_number, entry)

    def flush(self) -> None:
        if not self._rows:
            return
        staged = staging.staged_natural_keys(self._conn, self._report.account_id, list(self._rows))
        entries = []
        for key, (row_number, entry) in self._rows.items():
            if key in staged:
                where = "earlier row of this file" if staged[key] else "existing staging entry"
                self._report.duplicate(row_number, entry.order_id, where, key)
            else:
                entries.append(entry)
        created = insert_staging_entries(self._conn, entries)
        # the ingest lock serialises ingests into one account and mode; a line another producer
        # (another mode, the library, plain SQL) inserted meanwhile is left out by the unique key
        for key in {e.natural_key for e in entries} - {c.natural_key for c in created}:
            row_number, entry = self._rows[key]
            self._report.duplicate(row_number, entry.order_id, "existing staging entry", key)
        self._report.ingested_ids([c.staging_entry_id for c in created])
        self._rows.clear()
