"""What an ingest says about one file, whatever its format: rows read, ingested, rejected with
their position and reasons, duplicates, and (bank statements) pending lines left out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

MAX_REPORTED_ROWS = 1_000  # rejected rows, duplicates and ids listed in the report (counts are exact)


@dataclass(frozen=True)
class RowError:
    """A rejected row: its data-row number and every problem found, each naming field and value."""

    row_number: int
    errors: list[str]


@dataclass(frozen=True)
class DuplicateRow:
    row_number: int
    order_id: str | None
    duplicate_of: str  # "earlier row of this file" or "existing staging entry"
    natural_key: str | None = None  # a bank statement line's duplicate key (its bank reference, ...)


@dataclass(frozen=True)
class Progress:
    """Counts so far (not yet committed: the file commits as a whole at the end)."""

    rows_read: int
    ingested: int
    rejected: int
    duplicates: int
    elapsed_seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.rows_read:,} rows read, {self.ingested:,} ingested, {self.rejected:,} rejected,"
            f" {self.duplicates:,} duplicates ({self.rows_per_second:,.0f} rows/s)"
        )


@dataclass
class IngestReport:
    """The outcome of one file. Counts are exact; the lists hold at most MAX_REPORTED_ROWS items.

    ``rows_read == ingested + rejected_count + duplicate_count + pending_skipped`` (CSV: blank
    lines are skipped but keep their row number, so row N is line N + 1 of a file without quoted
    line breaks; statements: a row is a money movement, numbered in file order).
    """

    account_id: str
    processing_mode: str
    source_file: str | None
    file_format: str = "csv"
    rows_read: int = 0
    ingested: int = 0
    rejected_count: int = 0
    duplicate_count: int = 0
    pending_skipped: int = 0  # bank lines not booked yet (camt PDNG, MT942, BAI2 intraday): not final
    rejected: list[RowError] = field(default_factory=list)
    duplicates: list[DuplicateRow] = field(default_factory=list)
    staging_entry_ids: list[str] = field(default_factory=list)  # the first MAX_REPORTED_ROWS
    elapsed_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def progress(self) -> Progress:
        return Progress(self.rows_read, self.ingested, self.rejected_count, self.duplicate_count,
                        self.elapsed_seconds)

    def summary_lines(self) -> list[str]:
        """Human-readable outcome for the CLI: one headline, then the rejected and duplicate rows."""
        name = self.source_file or ("CSV stream" if self.file_format == "csv" else f"{self.file_format} stream")
        kind = "" if self.file_format == "csv" else f" [{self.file_format}]"
        pending = f", {self.pending_skipped:,} pending (not booked yet, skipped)" if self.pending_skipped else ""
        lines = [
            f"{name}{kind} -> account {self.account_id} ({self.processing_mode}): {self.rows_read:,} rows read,"
            f" {self.ingested:,} ingested, {self.rejected_count:,} rejected,"
            f" {self.duplicate_count:,} duplicates{pending} in {self.elapsed_seconds:.1f}s"
        ]
        if self.rejected:
            lines.append("rejected rows:")
            lines += [f"  row {r.row_number}: {'; '.join(r.errors)}" for r in self.rejected]
            if self.rejected_count > len(self.rejected):
                lines.append(f"  ... and {self.rejected_count - len(self.rejected):,} more rejected rows")
        if self.duplicates:
            lines.append("duplicate rows (not ingested):")
            lines += [f"  row {d.row_number}: {_what(d)} duplicates an {d.duplicate_of}"
                      for d in sorted(self.duplicates, key=lambda d: d.row_number)]
            if self.duplicate_count > len(self.duplicates):
                lines.append(f"  ... and {self.duplicate_count - len(self.duplicates):,} more duplicates")
        return lines

    def reject(self, row_number: int, errors: list[str]) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_REPORTED_ROWS:
            self.rejected.append(RowError(row_number, errors))

    def duplicate(self, row_number: int, order_id: str | None, duplicate_of: str,
                  natural_key: str | None = None) -> None:
        self.duplicate_count += 1
        if len(self.duplicates) < MAX_REPORTED_ROWS:
            self.duplicates.append(DuplicateRow(row_number, order_id, duplicate_of, natural_key))

    def ingested_ids(self, staging_entry_ids: list[str]) -> None:
        self.ingested += len(staging_entry_ids)
        room = MAX_REPORTED_ROWS - len(self.staging_entry_ids)
        self.staging_entry_ids += staging_entry_ids[:max(room, 0)]


def _what(duplicate: DuplicateRow) -> str:
    if duplicate.natural_key is not None:
        return f"bank line {_show(duplicate.natural_key)}"
    return f"order_id {_show(duplicate.order_id)}"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


class Batch(Protocol):
    def __len__(self) -> int: ...

    def flush(self) -> None: ...


class Pacing:
    """When a reader's batch is written (full, or before progress is told) and when the caller
    hears how far the file has got (every `every` rows, counts including what was written)."""

    def __init__(self, report: IngestReport, progress: Callable[[Progress], None] | None, every: int,
                 batch_rows: int, started: float):
        self._report = report
        self._progress = progress
        self._every = every
        self._batch_rows = batch_rows
        self._started = started
        self._next = every

    def after_row(self, batch: Batch) -> None:
        if len(batch) >= self._batch_rows:
            batch.flush()
        if self._progress and self._report.rows_read >= self._next:
            batch.flush()  # so that `ingested` is up to date
            self._report.elapsed_seconds = time.monotonic() - self._started
            self._progress(self._report.progress())
            self._next += self._every
