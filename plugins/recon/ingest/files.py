"""Any statement file into staging entries: one entry point for every format.

The format is named or detected from the file's first bytes; CSV goes to ``recon.ingest.csv``,
bank statements (camt.053/054, MT940/942, BAI2) to their format module and then to
``recon.ingest.bank_statement``. Either way a file is ingested in one database transaction,
fully or not at all, and the same ``IngestReport`` comes back.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, Union

from recon import settings, staging
from recon.accounts import get_account, require_rule_for_mode
from recon.db import Database
from recon.db.engine import JoinedTransaction
from recon.errors import InvalidInputError
from recon.ingest import bai2, camt, mt940
from recon.ingest.bank_statement import write_lines
from recon.ingest.csv import ingest_csv
from recon.ingest.report import IngestReport, Progress
from recon.ingest.settlement import detect_settlement_format
from recon.ingest.settlement_entries import FORMATS as SETTLEMENT_FORMATS
from recon.ingest.settlement_entries import ingest_settlement_report
from recon.ingest.statement import DETECT_BYTES, StatementLine, detect_format
from recon.tracker import ProcessTracker

FileSource = Union[str, "os.PathLike[str]", BinaryIO]

# bank formats: the function that reads a file of that format as checked lines
_BANK_READERS: dict[str, Callable[..., Iterator[StatementLine]]] = {
    "camt053": camt.iter_camt053_lines,
    "camt054": camt.iter_camt054_lines,
    "mt940": mt940.iter_mt940_lines,
    "mt942": mt940.iter_mt942_lines,
    "bai2": bai2.iter_bai2_lines,
}
FORMATS = ("auto", "csv", *_BANK_READERS, *SETTLEMENT_FORMATS)
# an ingest this large changes the tables' statistics: ANALYZE them at once (about 0.2 s), so the
# Recon view's and the engine's plans do not depend on autovacuum (slow to come, or off)
ANALYZE_AFTER_ROWS = 10_000


def dry_run_ingest(source: FileSource, account_id: str, mode: str, *, db: Database, **options: object) -> IngestReport:
    """What ingest_file would report, written into a transaction that is rolled back: the same
    parsing, checks, duplicate detection and report, and nothing kept."""
    with db.engine.connect() as conn:
        transaction = conn.begin()
        try:
            return ingest_file(source, account_id, mode, db=JoinedTransaction(conn, db), **options)  # type: ignore[arg-type]
        finally:
            transaction.rollback()


def ingest_file(
    source: FileSource,
    account_id: str,
    mode: str | None,
    *,
    db: Database,
    file_format: str = "auto",
    order_id_pattern: str | re.Pattern[str] | None = None,
    source_file: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    progress_every: int = 50_000,
) -> IngestReport:
    """Ingest one statement file of any supported format into `account_id` in `mode`.

    `order_id_pattern` (default RECON_ORDER_ID_PATTERN) finds an order id in a bank line's
    remittance text. `mode` is None for a PSP settlement report (each line's kind gives its mode;
    see recon.ingest.settlement_entries), required otherwise. Raises InvalidInputError (bad file,
    format, figures that do not add up, limits, a mode no rule gives the account) or NotFoundError
    (unknown account), in which case nothing was written.
    """
    if file_format not in FORMATS:
        raise InvalidInputError(f"format {file_format!r} is not one of {', '.join(FORMATS)}")
    if source_file is None:
        source_file = _file_name(source)
    with _opened(source) as stream:
        if file_format == "auto":
            head = stream.peek(DETECT_BYTES)[:DETECT_BYTES]
            file_format = detect_format(head)
            if file_format == "csv":
                file_format = detect_settlement_format(head.split(b"\n", 1)[0].decode("utf-8", "replace")) or "csv"
        if file_format in SETTLEMENT_FORMATS:
            if mode is not None:
                raise InvalidInputError(f"a {file_format} report sets each line's mode from its type: leave out"
                                        f" --mode (got {mode!r})", field="mode")
            return _ingest_settlement(stream, account_id, db, file_format, source_file, progress, progress_every)
        if mode is None:
            raise InvalidInputError(f"a {file_format} file needs a mode: TRANSACTION or CONFIRMATION", field="mode")
        if isinstance(account_id, str) and account_id.strip():  # an unusable id: the format's reader names it
            with db.begin() as conn:  # before a row is read
                require_rule_for_mode(conn, account_id, staging.parse_processing_mode(mode))
        if file_format == "csv":
            report = ingest_csv(stream, account_id, mode, db, source_file, progress, progress_every=progress_every)
        else:
            report = _ingest_bank_statement(
                stream, account_id, mode, db, file_format,
                order_id_pattern if order_id_pattern is not None else settings.order_id_pattern(),
                source_file, progress, progress_every)
    if report.ingested >= ANALYZE_AFTER_ROWS and not isinstance(db, JoinedTransaction):
        with db.begin() as conn:
            staging.analyze(conn)
            ProcessTracker(db).analyze(conn)
    return report


def _ingest_bank_statement(
    stream: BinaryIO, account_id: str, mode: str, db: Database, file_format: str,
    order_id_pattern: str | re.Pattern[str] | None, source_file: str | None,
    progress: Callable[[Progress], None] | None, progress_every: int,
) -> IngestReport:
    started = time.monotonic()
    report = IngestReport(account_id, staging.parse_processing_mode(mode), source_file, file_format=file_format)
    with db.begin() as conn:
        staging.lock_for_ingest(conn, account_id, report.processing_mode)
        account = get_account(account_id, conn)  # NotFoundError for an unknown account
        lines = _BANK_READERS[file_format](stream, expected_currency=account.currency,
                                           order_id_pattern=order_id_pattern)
        write_lines(conn, lines, report, progress=progress, progress_every=progress_every)
    report.elapsed_seconds = time.monotonic() - started
    return report


def _ingest_settlement(
    stream: BinaryIO, account_id: str, db: Database, file_format: str, source_file: str | None,
    progress: Callable[[Progress], None] | None, progress_every: int,
) -> IngestReport:
    started = time.monotonic()
    report = IngestReport(account_id, "per line", source_file, file_format=file_format)
    with db.begin() as conn:
        for mode in ("CONFIRMATION", "SETTLEMENT", "TRANSACTION"):  # every mode a report writes, in a fixed order
            staging.lock_for_ingest(conn, account_id, mode)
        ingest_settlement_report(stream, account_id, conn, report, progress=progress, progress_every=progress_every)
    report.elapsed_seconds = time.monotonic() - started
    return report


class _opened:
    """A buffered binary view of a path or a binary stream (peekable, for detection); closes only
    what it opened."""

    def __init__(self, source: FileSource):
        self._source = source
        self._own: BinaryIO | None = None

    def __enter__(self) -> io.BufferedReader:
        source = self._source
        if isinstance(source, io.TextIOBase):
            raise InvalidInputError("expected a file path or a binary stream (open the file in 'rb' mode), got text")
        if isinstance(source, (str, os.PathLike)):
            try:
                self._own = open(source, "rb")
            except OSError as exc:
                raise InvalidInputError(f"cannot open statement file {os.fspath(source)!r}: {exc.strerror}") from None
            return self._own  # type: ignore[return-value]
        if not hasattr(source, "read"):
            raise InvalidInputError(f"expected a file path or a binary stream, got {type(source).__name__}")
        return source if isinstance(source, io.BufferedReader) else io.BufferedReader(source)  # type: ignore[arg-type]

    def __exit__(self, *exc: object) -> None:
        if self._own is not None:
            self._own.close()


def _file_name(source: object) -> str | None:
    name = source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", None)
    return os.path.basename(os.fspath(name)) if isinstance(name, (str, os.PathLike)) else None
