"""CSV ingestion: statement files become staging entries, each with its PROCESS_STAGING_ENTRY task.

Format: a header naming ``order_id, amount, currency, transaction_date, type`` (any order,
case-insensitive, surrounding spaces ignored); further columns are kept verbatim in the
entry's metadata under their header names. ``type`` is Payment, Refund, Debit or Credit:
Payment is the account's normal side (DEBIT on a DEBIT_NORMAL account, CREDIT on a
CREDIT_NORMAL one), Refund the opposite, Debit/Credit as given. ``transaction_date`` is an
ISO 8601 date or datetime; a date or a naive datetime is taken as UTC.

Why it is built this way:

- One file, one database transaction: a file is ingested fully or not at all. A file-level
  problem (unknown account, bad header, not UTF-8 CSV, a size limit) raises
  ``InvalidInputError`` / ``NotFoundError`` and rolls everything back.
- A bad row does not sink the file: every problem of the row is collected and reported with
  its data-row number (1 = the first row after the header); the good rows are ingested.
- Streaming: ``csv.reader`` over a text stream, inserts of ``BATCH_ROWS`` rows per statement.
  Duplicate detection asks the database once per batch; earlier batches of this file are
  already in it (same transaction), so no per-file set is held and memory stays bounded by
  the batch, not the file.
- A transaction-scoped advisory lock per (account, mode) serialises ingests into the same
  account and mode, so two concurrent runs of the same file cannot both insert.
- Cells are data: formula-like text (``=cmd()``), SQL, markup are stored as plain strings and
  only ever passed as bound parameters.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Union

from sqlalchemy.engine import Connection

from recon import staging
from recon.accounts import get_account
from recon.db import Database
from recon.errors import InvalidInputError
from recon.model import Account, AccountType, EntryType
from recon.ingest.reading import csv_records, open_binary
from recon.ingest.report import IngestReport, Pacing, Progress
from recon.staging import MAX_ORDER_ID_LENGTH, NewStagingEntry, insert_staging_entries
from recon.money import parse_amount, parse_currency

# --- Limits (each one is named in the error it causes) ------------------------------------
MAX_FILE_BYTES = 2 * 1024**3  # 2 GiB: larger statements should be split
MAX_FIELD_CHARS = 1_000  # per cell; order_id is further limited to MAX_ORDER_ID_LENGTH (255)
MAX_ROW_CHARS = 100_000  # per CSV record (quoted line breaks included); refused before buffering
MAX_COLUMNS = 100  # in the header
# --- Tuning ----------------------------------------------------------------------------------
BATCH_ROWS = 2_000  # rows per INSERT statement and per duplicate look-up
PROGRESS_EVERY = 50_000  # rows between progress callbacks

REQUIRED_COLUMNS = ("order_id", "amount", "currency", "transaction_date", "type")
# Metadata keys written by this module or by the engine; a column with such a name would be
# overwritten or would confuse the engine, so the header is refused.
RESERVED_COLUMNS = frozenset(
    {
        "source_file", "error", "error_type", "created_transaction_id", "match_type",
        "matched_transaction_id", "matched_entry_id", "evolved_transaction_id",
        "source_staging_entry_id", "recon_rule_id", "fulfilled_expected_entry_id",
        "derived_from_entry_id", "evolved_from_transaction_id",
        "mismatched_fields", "candidates",  # what a reviewer is shown of a line in review
    }
)

CsvSource = Union[str, "os.PathLike[str]", BinaryIO]


# --- Entry point ----------------------------------------------------------------------------


def ingest_csv(
    path_or_binary_stream: CsvSource,
    account_id: str,
    mode: str,
    db: Database,
    source_file: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    *,
    batch_rows: int = BATCH_ROWS,
    progress_every: int = PROGRESS_EVERY,
) -> IngestReport:
    """Ingest one CSV file into `account_id` in processing `mode` (TRANSACTION or CONFIRMATION).

    `path_or_binary_stream` is a path or a stream opened in binary mode (UTF-8, BOM accepted).
    `source_file` is stored in each entry's metadata; it defaults to the file's base name
    (a stream without a name stores none).
    `progress` is called with a Progress every `progress_every` rows (an exception it raises
    aborts the ingest and rolls it back). `batch_rows` is the INSERT batch size.
    Returns the report; raises InvalidInputError (bad file, header, limits) or NotFoundError
    (unknown account), in which case nothing was written.
    """
    started = time.monotonic()
    if not isinstance(account_id, str) or not account_id or "\x00" in account_id:
        raise InvalidInputError(f"account_id must be a non-empty string without NUL, got {_show(account_id)}")
    mode = staging.parse_processing_mode(mode)
    if batch_rows < 1 or progress_every < 1:
        raise InvalidInputError("batch_rows and progress_every must be positive")
    if source_file is None:
        source_file = _file_name(path_or_binary_stream)
    report = IngestReport(account_id, mode, source_file)
    with _open_text(path_or_binary_stream) as text, db.begin() as conn:
        staging.lock_for_ingest(conn, account_id, mode)
        account = get_account(account_id, conn)  # NotFoundError for an unknown account
        lines = _Lines(text)
        reader = csv.reader(lines)
        header = _read_header(reader, lines)
        entry_types = _entry_types(account.account_type)
        batch = _Batch(conn, account, mode, report)
        pacing = Pacing(report, progress, progress_every, batch_rows, started)
        row_number = 0
        for values in csv_records(reader, lines):
            row_number += 1
            if not any(v.strip() for v in values):
                continue  # a blank line: skipped, but it keeps its row number
            report.rows_read += 1
            parsed = _parse_row(values, header, account, entry_types, mode, source_file)
            if isinstance(parsed, NewStagingEntry):
                batch.add(row_number, parsed)
            else:
                report.reject(row_number, parsed)
            pacing.after_row(batch)
        batch.flush()
    report.elapsed_seconds = time.monotonic() - started
    return report


def _file_name(source: object) -> str | None:
    name = source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", None)
    return os.path.basename(os.fspath(name)) if isinstance(name, (str, os.PathLike)) else None


# --- Reading: bytes -> checked lines -> CSV records -------------------------------------------


@contextmanager
def _open_text(source: CsvSource) -> Iterator[io.TextIOWrapper]:
    """A UTF-8 text view (BOM skipped) of a path or a binary stream; closes only what it opened."""
    with open_binary(source, "CSV", MAX_FILE_BYTES) as binary:
        # surrogateescape: an undecodable byte arrives as a lone surrogate in the line it is on, so
        # _Lines can name that line (a strict decoder fails on the whole 8 KiB chunk, i.e. early)
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        try:
            yield text
        finally:
            text.detach()  # the caller's stream stays open; open_binary closes what it opened


# a NUL, or a byte the UTF-8 decoder could not read (surrogateescape turns byte b into U+DC00 + b)
_UNREADABLE = re.compile("[\x00\udc80-\udcff]")


class _Lines:
    """Physical lines for csv.reader, refusing NULs, bad UTF-8 and over-long records before buffering them."""

    def __init__(self, text: io.TextIOWrapper):
        self._text = text
        self.line_number = 0
        self.record_chars = 0  # reset after each record

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        budget = MAX_ROW_CHARS - self.record_chars
        line = self._text.readline(budget + 1)
        if not line:
            raise StopIteration
        self.line_number += 1
        unreadable = _UNREADABLE.search(line)
        if unreadable and unreadable.group() == "\x00":
            raise InvalidInputError(
                f"line {self.line_number} contains a NUL byte: this is not a CSV text file"
                " (binary data, or UTF-16 text?)"
            )
        if unreadable:
            raise InvalidInputError(
                f"line {self.line_number}: the file is not UTF-8 text (byte 0x{ord(unreadable.group()) - 0xDC00:02x}"
                " cannot be decoded): save it as UTF-8 CSV; binary files are not accepted"
            )
        self.record_chars += len(line)
        if self.record_chars > MAX_ROW_CHARS:
            raise InvalidInputError(
                f"line {self.line_number}: a CSV row is longer than {MAX_ROW_CHARS:,} characters"
                " (MAX_ROW_CHARS); is a quote left open?"
            )
        return line

    def record_done(self) -> None:
        self.record_chars = 0


@dataclass(frozen=True)
class _Header:
    width: int
    required: dict[str, int]  # required column -> index
    extras: tuple[tuple[int, str], ...]  # (index, name as written) of the other columns


def _read_header(reader, lines: _Lines) -> _Header:
    expected = ",".join(REQUIRED_COLUMNS)
    row = next((r for r in csv_records(reader, lines) if any(v.strip() for v in r)), None)
    if row is None:
        raise InvalidInputError(f"the file is empty: expected a header line {expected}")
    if len(row) > MAX_COLUMNS:
        raise InvalidInputError(f"the header has {len(row)} columns; the limit is {MAX_COLUMNS} (MAX_COLUMNS)")
    problems: list[str] = []
    index: dict[str, int] = {}
    for i, cell in enumerate(row):
        name = cell.strip()
        if not name:
            problems.append(f"column {i + 1} has no name")
        elif len(name) > MAX_FIELD_CHARS:
            problems.append(f"column {i + 1}'s name is longer than {MAX_FIELD_CHARS:,} characters (MAX_FIELD_CHARS)")
        elif name.lower() in index:
            problems.append(f"column {_show(name)} appears twice")
        elif name.lower() in RESERVED_COLUMNS:
            problems.append(f"column {_show(name)} is reserved for the engine's metadata; rename it")
        else:
            index[name.lower()] = i
    missing = [c for c in REQUIRED_COLUMNS if c not in index]
    if missing:
        found = ", ".join(_show(c) for c in row[:10]) + (", ..." if len(row) > 10 else "")
        problems.append(f"missing column(s) {', '.join(missing)} (found {found})")
    if problems:
        raise InvalidInputError(
            f"bad CSV header: {'; '.join(problems)}. Expected comma-separated columns {expected}"
            " (any order, extra columns allowed)"
        )
    extras = tuple((i, row[i].strip()) for i in range(len(row)) if row[i].strip().lower() not in REQUIRED_COLUMNS)
    return _Header(len(row), {c: index[c] for c in REQUIRED_COLUMNS}, extras)


# --- One row ------------------------------------------------------------------------------


def _parse_row(
    values: list[str],
    header: _Header,
    account: Account,
    entry_types: dict[str, str],
    mode: str,
    source_file: str | None,
) -> NewStagingEntry | list[str]:
    """The row's staging entry, or every problem found in it."""
    errors: list[str] = []
    if len(values) != header.width:
        errors.append(f"the row has {len(values)} fields but the header has {header.width}")
    if len(values) > MAX_COLUMNS:
        return errors  # nothing sensible to validate in such a row

    def cell(i: int, name: str) -> str | None:
        raw = values[i] if i < len(values) else ""
        if len(raw) > MAX_FIELD_CHARS:
            errors.append(f"{name} is {len(raw):,} characters long; the limit is {MAX_FIELD_CHARS:,} (MAX_FIELD_CHARS)")
            return None
        return raw

    fields: dict[str, str] = {}
    for name, i in header.required.items():
        raw = cell(i, name)
        if raw is None:
            continue
        if not raw.strip():
            errors.append(f"{name} is missing")
        else:
            fields[name] = raw.strip()
    extras = {}  # verbatim: a cell is data, whatever it looks like (=cmd(), SQL, markup)
    for i, name in header.extras:
        if i < len(values) and (raw := cell(i, name)) is not None:
            extras[name] = raw

    order_id = fields.get("order_id")
    if order_id is not None and len(order_id) > MAX_ORDER_ID_LENGTH:
        errors.append(f"order_id is {len(order_id):,} characters long; the limit is {MAX_ORDER_ID_LENGTH}")
    amount = _check(errors, parse_amount, fields.get("amount"))
    currency = _check(errors, parse_currency, fields.get("currency"))
    if currency is not None and currency != account.currency:
        errors.append(f"currency {_show(currency)} is not the account's currency {account.currency}")
    effective_date = _check(errors, _parse_date, fields.get("transaction_date"))
    kind = fields.get("type")
    entry_type = entry_types.get(kind.lower()) if kind is not None else None
    if kind is not None and entry_type is None:
        errors.append(f"type {_show(kind)} must be Payment, Refund, Debit or Credit")
    if errors:
        return errors

    metadata = {**extras, "order_id": order_id, "type": kind}
    if source_file is not None:
        metadata["source_file"] = source_file
    try:
        return NewStagingEntry(
            account_id=account.account_id,
            entry_type=entry_type,  # type: ignore[arg-type]
            amount=amount,  # type: ignore[arg-type]
            currency=currency,  # type: ignore[arg-type]
            processing_mode=mode,
            effective_date=effective_date,  # type: ignore[arg-type]
            metadata=metadata,
        )
    except InvalidInputError as exc:  # e.g. the metadata is over MAX_METADATA_BYTES
        return [str(exc)]


def _check(errors: list[str], parse: Callable, value: str | None):
    """parse(value), or None with the problem appended; None when the value is already missing."""
    if value is None:
        return None
    try:
        return parse(value)
    except InvalidInputError as exc:
        errors.append(str(exc))
        return None


def _parse_date(text: str) -> dt.datetime:
    """ISO 8601 date or datetime -> aware UTC datetime (a date or naive datetime is UTC)."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        if "isoformat" in str(exc):
            raise InvalidInputError(
                f"transaction_date {_show(text)} is not an ISO 8601 date or datetime"
                " (e.g. 2024-01-31 or 2024-01-31T09:30:00+02:00)"
            ) from None
        raise InvalidInputError(f"transaction_date {_show(text)} is not a valid date ({exc})") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    try:
        return value.astimezone(dt.timezone.utc)  # PostgreSQL refuses offsets beyond +-15:59
    except OverflowError:
        raise InvalidInputError(f"transaction_date {_show(text)} is out of range") from None


def _entry_types(account_type: str) -> dict[str, str]:
    """The `type` cell (lower case) -> entry type, once per file: Payment is the account's
    normal side, Refund the opposite, Debit/Credit as given."""
    normal = EntryType.DEBIT if account_type == AccountType.DEBIT_NORMAL else EntryType.CREDIT
    return {
        "payment": normal.value,
        "refund": normal.opposite.value,
        "debit": EntryType.DEBIT.value,
        "credit": EntryType.CREDIT.value,
    }


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


# --- Batches: duplicate check + one INSERT --------------------------------------------------

class _Batch:
    """Valid rows waiting for one duplicate look-up and one INSERT."""

    def __init__(self, conn: Connection, account: Account, mode: str, report: IngestReport):
        self._conn = conn
        self._account = account
        self._mode = mode
        self._report = report
        self._rows: dict[str, tuple[int, NewStagingEntry]] = {}  # order_id -> first row in this batch

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row_number: int, entry: NewStagingEntry) -> None:
        order_id = entry.order_id
        assert order_id is not None  # required by the CSV format
        if order_id in self._rows:
            self._report.duplicate(row_number, order_id, "earlier row of this file")
        else:
            self._rows[order_id] = (row_number, entry)

    def flush(self) -> None:
        if not self._rows:
            return
        staged = staging.staged_order_ids(self._conn, self._account.account_id, self._mode, list(self._rows))
        entries = []
        for order_id, (row_number, entry) in self._rows.items():
            if order_id in staged:
                where = "earlier row of this file" if staged[order_id] else "existing staging entry"
                self._report.duplicate(row_number, order_id, where)
            else:
                entries.append(entry)
        created = insert_staging_entries(self._conn, entries)
        self._report.ingested_ids([c.staging_entry_id for c in created])
        self._rows.clear()
