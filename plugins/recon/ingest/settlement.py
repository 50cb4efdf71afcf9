"""PSP settlement reports: the neutral lines and batches shared by every PSP, and their integrity checks.

A settlement report says what a PSP did with the merchant's money in each settlement batch
(Adyen: a batch number; Stripe: an automatic payout): payments settled, refunds, chargebacks,
fees, and how the batch closed (paid out to the bank, or carried to the next batch). The format
modules (``recon.ingest.adyen``, ``recon.ingest.stripe``) turn their rows into ``SettlementLine``
values; this module checks that they add up, so that the engine never books a report that does
not.

Sign conventions (the same for every PSP):

- ``gross`` is a magnitude (>= 0) with a ``flow``: IN adds to the merchant's balance at the PSP
  (a payment settled, a chargeback reversed), OUT takes from it (a refund, a chargeback, a
  payout). ``signed_gross`` is +gross for IN, -gross for OUT.
- ``fees`` are what the PSP charged for the line, by component: positive is a cost to the
  merchant, negative a fee given back. A fee-only line (Adyen Fee, Stripe fee) has gross 0 and
  its amount in ``fees``, so that Σ fee_total over a report is every fee it charged.
- ``net`` is signed: what the line adds to the batch's balance, hence to the payout. Every line
  satisfies ``net == signed_gross - fee_total`` (checked when the line is made).
- A payout line moves the batch's balance to the bank: its net is minus the amount paid. A
  balance transfer to the next batch moves it there: its net is minus the amount carried. So
  for each batch: Σ net of its other lines == payout + carried balance (checked at the end).

Why it is built this way:

- Streaming: ``SettlementReport`` yields lines as they are read and keeps only running sums per
  batch, so memory grows with the number of batches, never with the number of lines. The batch
  checks run when the report is read to the end: a caller that writes lines as it reads them
  does so in one database transaction, and the error at the end rolls everything back. A
  report that does not add up is refused whole.
- A bad row raises at once, naming the row, the batch when it is known, every column at fault
  and its value: a settlement report is an integrity unit, so there is nothing to keep from it.
- Reading mirrors ``recon.ingest.csv`` (strict UTF-8, the same kind of limits, each named in
  the error it causes), decoding line by line so that a bad byte is reported on its own line,
  and with ``csv.reader(strict=True)`` so that a quote left open by a truncated file is an
  error rather than a silently shortened last cell.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import enum
import io
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import BinaryIO, TypeVar, Union

from recon.errors import InvalidInputError
from recon.ingest.reading import csv_records, open_binary
from recon.money import MAX_INTEGER_DIGITS, SCALE
from recon.staging import MAX_ORDER_ID_LENGTH

# --- Limits (each one is named in the error it causes) ------------------------------------
MAX_FILE_BYTES = 2 * 1024**3  # 2 GiB, as for CSV statements
MAX_FIELD_CHARS = 1_000  # per cell
MAX_ROW_BYTES = 100_000  # per CSV record (quoted line breaks included); refused before buffering
MAX_COLUMNS = 200  # in the header: Stripe reports carry one column per metadata key asked for
MAX_BATCHES = 10_000  # per file: the running sums are held per batch

ReportSource = Union[str, "os.PathLike[str]", BinaryIO]

FORMAT_ADYEN = "adyen-settlement"
FORMAT_STRIPE = "stripe-payouts"


class LineKind(enum.StrEnum):
    """What a settlement line is, whatever the PSP calls it (the PSP's word is kept in psp_type)."""

    PAYMENT = "payment"
    REFUND = "refund"
    CHARGEBACK = "chargeback"
    CHARGEBACK_REVERSAL = "chargeback_reversal"
    FEE = "fee"
    PAYOUT = "payout"
    BALANCE_FROM_PREVIOUS_BATCH = "balance_from_previous_batch"
    BALANCE_TO_NEXT_BATCH = "balance_to_next_batch"
    OTHER = "other"


class Flow(enum.StrEnum):
    """Which way a line's gross moves the merchant's balance at the PSP."""

    IN = "in"
    OUT = "out"


# The flow a line of these kinds must have when its gross is not zero.
EXPECTED_FLOW = {
    LineKind.PAYMENT: Flow.IN,
    LineKind.REFUND: Flow.OUT,
    LineKind.CHARGEBACK: Flow.OUT,
    LineKind.CHARGEBACK_REVERSAL: Flow.IN,
}

# Lines that close a batch: their net takes the batch's balance away (to the bank, to the next batch).
CLOSING_KINDS = frozenset({LineKind.PAYOUT, LineKind.BALANCE_TO_NEXT_BATCH})


class SettlementIntegrityError(InvalidInputError):
    """A settlement report that does not add up: a line, a batch, or a currency.

    The message names the batch, the row and the figures; ``mismatched_fields`` lists each
    figure as ``{"field", "expected", "actual"}`` (strings), as the engine's mismatches do.
    """

    error_type = "SettlementIntegrityError"

    def __init__(
        self,
        message: str,
        *,
        batch_id: str | None,
        position: int | None,
        mismatched_fields: Iterable[dict[str, str]] = (),
    ):
        super().__init__(message)
        self.batch_id = batch_id
        self.position = position
        self.mismatched_fields = list(mismatched_fields)


# --- Lines and batches ------------------------------------------------------------------------


@dataclass(frozen=True)
class SettlementLine:
    """One row of a settlement report, checked: ``net == signed_gross - fee_total``.

    ``line_reference`` is the PSP's own reference of this line (Adyen Modification Reference,
    Stripe balance_transaction_id); ``psp_reference`` the payment it belongs to (Adyen Psp
    Reference, Stripe charge). ``position`` is the data-row number (1 = first row after the
    header). ``metadata`` keeps every other non-empty cell verbatim under its column name.
    """

    kind: LineKind
    psp_type: str  # the PSP's own word: "Settled", "MerchantPayout", "charge", "dispute", ...
    line_reference: str
    psp_reference: str | None
    order_id: str | None
    batch_id: str
    currency: str
    flow: Flow
    gross: Decimal
    fees: dict[str, Decimal] = field(hash=False)
    net: Decimal
    booked_at: dt.datetime
    position: int
    metadata: dict[str, str] = field(hash=False)

    def __post_init__(self) -> None:
        where = f"batch {self.batch_id}, row {self.position} ({self.psp_type}, reference {self.line_reference})"
        if self.gross < 0:
            raise InvalidInputError(f"{where}: gross {self.gross} must not be negative (the flow gives the side)")
        if self.booked_at.tzinfo is None:
            raise InvalidInputError(f"{where}: booked_at {self.booked_at} has no time zone")
        expected_flow = EXPECTED_FLOW.get(self.kind)
        if expected_flow is not None and self.gross and self.flow is not expected_flow:
            raise SettlementIntegrityError(
                f"{where}: a {self.kind} moves money {expected_flow.value} of the merchant's balance,"
                f" but this line's gross {self.gross} moves it {self.flow.value}",
                batch_id=self.batch_id,
                position=self.position,
                mismatched_fields=[{"field": "flow", "expected": expected_flow.value, "actual": self.flow.value}],
            )
        expected_net = self.signed_gross - self.fee_total
        if self.net != expected_net:
            components = ", ".join(f"{name} {amount}" for name, amount in self.fees.items()) or "none"
            raise SettlementIntegrityError(
                f"{where}: gross {self.signed_gross} - fees {self.fee_total} ({components}) = {expected_net},"
                f" but the report's net is {self.net} (difference {self.net - expected_net})",
                batch_id=self.batch_id,
                position=self.position,
                mismatched_fields=[{"field": "net", "expected": str(expected_net), "actual": str(self.net)}],
            )

    @property
    def signed_gross(self) -> Decimal:
        return self.gross if self.flow is Flow.IN else -self.gross

    @property
    def fee_total(self) -> Decimal:
        return sum(self.fees.values(), Decimal(0))

    @property
    def natural_key(self) -> tuple[str, str, str]:
        """(line reference, PSP type, batch): unique per PSP account, so a report re-ingested adds nothing."""
        return (self.line_reference, self.psp_type, self.batch_id)


@dataclass(frozen=True)
class SettlementBatch:
    """The checked totals of one batch (its lines are not held: see SettlementReport).

    ``payout`` is what the batch pays to the bank (negative if the PSP debits the bank), None
    when the batch pays nothing and carries its balance forward. ``payout_stated`` says whether a
    payout line of the report states it (Adyen MerchantPayout, a Stripe payout row) or it is
    Σ net of the lines (a Stripe payout listed by its transactions only). ``carried_balance`` is
    what the batch hands to the next one (0 when paid out in full).
    """

    batch_id: str
    currency: str
    line_counts: dict[LineKind, int] = field(hash=False)
    net_by_kind: dict[LineKind, Decimal] = field(hash=False)
    fee_total: Decimal
    payout: Decimal | None
    payout_stated: bool
    carried_balance: Decimal
    first_position: int
    last_position: int

    @property
    def line_count(self) -> int:
        return sum(self.line_counts.values())

    @property
    def net_total(self) -> Decimal:
        """Σ net of the lines that build the balance (all but the payout and the transfer to the next batch)."""
        return _balance_built(self.net_by_kind)


@dataclass
class _RunningBatch:
    """Running sums of one batch while the report is read."""

    batch_id: str
    first_position: int
    last_position: int = 0
    line_counts: dict[LineKind, int] = field(default_factory=dict)
    net_by_kind: dict[LineKind, Decimal] = field(default_factory=dict)
    fee_total: Decimal = Decimal(0)
    closing_positions: list[int] = field(default_factory=list)

    def add(self, line: SettlementLine) -> None:
        self.last_position = line.position
        self.line_counts[line.kind] = self.line_counts.get(line.kind, 0) + 1
        self.net_by_kind[line.kind] = self.net_by_kind.get(line.kind, Decimal(0)) + line.net
        self.fee_total += line.fee_total
        if line.kind in CLOSING_KINDS and len(self.closing_positions) < 10:
            self.closing_positions.append(line.position)


class SettlementReport:
    """The lines of one report file, read lazily; reading to the end checks every batch.

    Iterate once: each line is yielded already checked on its own (its figures, its currency);
    after the last line every batch is checked (Σ net = payout + carried balance) and
    ``batches`` is set. Stopping early skips the batch checks, so a caller that ingests must
    read to the end inside its transaction. Errors are InvalidInputError (unreadable file, bad
    row) or its subclass SettlementIntegrityError (figures that do not add up).
    """

    def __init__(
        self,
        format_name: str,
        lines: Iterator[SettlementLine],
        currency: str,
        *,
        closing_line_required: bool,
        closing_line_hint: str,
    ):
        """`closing_line_required`: True when every batch of the format ends with a payout or a
        transfer to the next batch (a batch without one means the file is cut short); False when a
        batch without a payout line is paid out at Σ net (`closing_line_hint` names those lines)."""
        self.format = format_name
        self.currency = currency
        self._lines = lines
        self._closing_line_required = closing_line_required
        self._closing_line_hint = closing_line_hint
        self._started = False
        self._batches: list[SettlementBatch] | None = None

    def __iter__(self) -> Iterator[SettlementLine]:
        if self._started:
            raise RuntimeError("a SettlementReport can be read only once")
        self._started = True
        running: dict[str, _RunningBatch] = {}
        for line in self._lines:
            self._check_currency(line)
            batch = running.get(line.batch_id)
            if batch is None:
                if len(running) >= MAX_BATCHES:
                    raise InvalidInputError(
                        f"row {line.position}: the report has more than {MAX_BATCHES:,} batches"
                        " (MAX_BATCHES); split it"
                    )
                batch = running[line.batch_id] = _RunningBatch(line.batch_id, line.position)
            batch.add(line)
            yield line
        if not running:
            raise InvalidInputError(f"the {self.format} report has no data rows: is the file cut short?")
        self._batches = [self._close(batch) for batch in running.values()]

    @property
    def batches(self) -> list[SettlementBatch]:
        """Every batch, in order of first appearance; set once the report has been read to the end."""
        if self._batches is None:
            raise RuntimeError("read the report to the end first: the batch checks run there")
        return self._batches

    def _check_currency(self, line: SettlementLine) -> None:
        if line.currency != self.currency:
            raise SettlementIntegrityError(
                f"batch {line.batch_id}, row {line.position} ({line.psp_type}, reference {line.line_reference}):"
                f" currency {line.currency} is not the expected currency {self.currency}",
                batch_id=line.batch_id,
                position=line.position,
                mismatched_fields=[{"field": "currency", "expected": self.currency, "actual": line.currency}],
            )

    def _close(self, batch: _RunningBatch) -> SettlementBatch:
        """The batch's totals, once Σ net of its lines is checked against its payout and carried balance."""
        net_total = _balance_built(batch.net_by_kind)
        has_payout = LineKind.PAYOUT in batch.line_counts
        has_carry = LineKind.BALANCE_TO_NEXT_BATCH in batch.line_counts
        payout = -batch.net_by_kind[LineKind.PAYOUT] if has_payout else None
        carried = -batch.net_by_kind[LineKind.BALANCE_TO_NEXT_BATCH] if has_carry else Decimal(0)
        rows = f"rows {batch.first_position}-{batch.last_position}"
        if not has_payout and not has_carry:
            if self._closing_line_required:
                raise SettlementIntegrityError(
                    f"batch {batch.batch_id} ({rows}) has no closing line ({self._closing_line_hint}):"
                    f" its lines sum to {net_total} {self.currency} but nothing says where that goes."
                    " Is the report cut short, or the batch still open?",
                    batch_id=batch.batch_id,
                    position=batch.last_position,
                )
            payout = net_total  # paid out at Σ net: nothing in the report to check it against
        elif net_total != (payout or 0) + carried:
            stated = []
            if has_payout:
                stated.append(f"payout {payout}")
                mismatched = {"field": "payout", "expected": str(net_total - carried), "actual": str(payout)}
            if has_carry:
                stated.append(f"carried to the next batch {carried}")
                if not has_payout:
                    mismatched = {"field": "carried_balance", "expected": str(net_total), "actual": str(carried)}
            closing_rows = ", ".join(str(p) for p in batch.closing_positions)
            raise SettlementIntegrityError(
                f"batch {batch.batch_id} ({rows}): the net of its lines sums to {net_total} {self.currency},"
                f" but the closing line(s) (row {closing_rows}) state {' + '.join(stated)}"
                f" (difference {net_total - (payout or 0) - carried})",
                batch_id=batch.batch_id,
                position=batch.closing_positions[0],
                mismatched_fields=[mismatched],
            )
        return SettlementBatch(
            batch_id=batch.batch_id,
            currency=self.currency,
            line_counts=dict(batch.line_counts),
            net_by_kind=dict(batch.net_by_kind),
            fee_total=batch.fee_total,
            payout=payout,
            payout_stated=has_payout,
            carried_balance=carried,
            first_position=batch.first_position,
            last_position=batch.last_position,
        )


def _balance_built(net_by_kind: dict[LineKind, Decimal]) -> Decimal:
    """Σ net of the lines that build a batch's balance: all but those that close it."""
    return sum((net for kind, net in net_by_kind.items() if kind not in CLOSING_KINDS), Decimal(0))


def detect_settlement_format(header_line: str) -> str | None:
    """FORMAT_ADYEN or FORMAT_STRIPE when the header line has that report's columns, else None."""
    from recon.ingest import adyen, stripe  # they import this module

    try:
        cells = next(csv.reader([header_line.lstrip("\ufeff")]), [])
    except csv.Error:
        return None
    names = {cell.strip().lower() for cell in cells}
    for format_name, required in ((FORMAT_ADYEN, adyen.REQUIRED_COLUMNS), (FORMAT_STRIPE, stripe.REQUIRED_COLUMNS)):
        if all(column.lower() in names for column in required):
            return format_name
    return None


# --- Cells -> values ---------------------------------------------------------------------------

_PLAIN_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)")


def parse_signed_amount(text: str, column: str) -> Decimal:
    """A report amount: a plain decimal ('-12.30'), at most SCALE decimals; exponents, NaN,
    thousands separators and float noise ('0.30000000000000004') are refused."""
    value = text.strip()
    if not _PLAIN_DECIMAL.fullmatch(value):
        raise InvalidInputError(f"{column} {show(text)} is not a decimal number")
    amount = Decimal(value)
    if amount == 0:
        return abs(amount)  # no '-0.00'
    if amount.adjusted() >= MAX_INTEGER_DIGITS:
        raise InvalidInputError(f"{column} {show(text)} is too large (at most {MAX_INTEGER_DIGITS} integer digits)")
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > SCALE:
        raise InvalidInputError(f"{column} {show(text)} has more than {SCALE} decimal places")
    return amount


def parse_unsigned_amount(text: str, column: str) -> Decimal:
    """An amount in a debit or credit column: the column gives the side, so it is never negative."""
    amount = parse_signed_amount(text, column)
    if amount < 0:
        raise InvalidInputError(f"{column} {show(text)} must not be negative (the column gives the side)")
    return amount


def order_id_cell(row: ReportRow, problems: RowProblems, column: str) -> str | None:
    """The order id in `column`, None when empty; one too long for a staging entry is a problem of the row."""
    order_id = row.cell(column) or None
    if order_id is not None and len(order_id) > MAX_ORDER_ID_LENGTH:
        problems.add(f"{column} is {len(order_id):,} characters long; the limit is {MAX_ORDER_ID_LENGTH}")
    return order_id


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "...'"


T = TypeVar("T")


class RowProblems:
    """Every problem found in one row, raised together as one InvalidInputError naming the row."""

    def __init__(self, position: int):
        self.position = position
        self.problems: list[str] = []

    def add(self, problem: str) -> None:
        self.problems.append(problem)

    def parse(self, parse: Callable[..., T], text: str, *args: object) -> T | None:
        """parse(text, *args), or None with the problem noted."""
        try:
            return parse(text, *args)
        except InvalidInputError as exc:
            self.problems.append(str(exc))
            return None

    def raise_if_any(self, batch_id: str | None) -> None:
        if self.problems:
            where = f"row {self.position}" + (f", batch {batch_id}" if batch_id else "")
            raise InvalidInputError(f"{where}: {'; '.join(self.problems)}")


# --- Reading report files: bytes -> checked lines -> rows ------------------------------------


@dataclass(frozen=True)
class ReportHeader:
    names: tuple[str, ...]  # as written, stripped
    index: dict[str, int] = field(hash=False)  # lower-case name -> position


@dataclass(frozen=True)
class ReportRow:
    """One data row: ``position`` is its data-row number (1 = the first row after the header)."""

    position: int
    header: ReportHeader
    values: list[str] = field(hash=False)

    def cell(self, column: str) -> str:
        """The stripped cell of `column` (any case), "" when the header has no such column."""
        i = self.header.index.get(column.lower())
        return self.values[i].strip() if i is not None else ""

    def other_cells(self, typed_columns: Iterable[str]) -> dict[str, str]:
        """Non-empty cells of every named column not in `typed_columns`, verbatim, under their names as written."""
        skip = {c.lower() for c in typed_columns}
        return {
            name: value
            for name, value in zip(self.header.names, self.values)
            if name and value.strip() and name.lower() not in skip
        }


def read_report_rows(source: ReportSource, format_name: str, required_columns: Iterable[str]) -> Iterator[ReportRow]:
    """The data rows of a CSV report, header checked; blank lines are skipped but keep their number."""
    required = tuple(required_columns)
    with open_binary(source, "report", MAX_FILE_BYTES) as binary:
        lines = _Lines(binary)
        records = csv_records(csv.reader(lines, strict=True), lines)
        header = _read_header(records, format_name, required)
        position = 0
        for values in records:
            position += 1
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header.names):
                raise InvalidInputError(
                    f"row {position} has {len(values)} fields but the header has {len(header.names)}:"
                    " is the file cut short, or a comma left unquoted?"
                )
            for name, value in zip(header.names, values):
                if len(value) > MAX_FIELD_CHARS:
                    raise InvalidInputError(
                        f"row {position}: {name} is {len(value):,} characters long; the limit is"
                        f" {MAX_FIELD_CHARS:,} (MAX_FIELD_CHARS)"
                    )
            yield ReportRow(position, header, values)


def _read_header(records: Iterator[list[str]], format_name: str, required: tuple[str, ...]) -> ReportHeader:
    expected = ", ".join(required)
    row = next((r for r in records if any(v.strip() for v in r)), None)
    if row is None:
        raise InvalidInputError(f"the file is empty: expected a {format_name} header with the columns {expected}")
    if len(row) > MAX_COLUMNS:
        raise InvalidInputError(f"the header has {len(row)} columns; the limit is {MAX_COLUMNS} (MAX_COLUMNS)")
    names = tuple(cell.strip() for cell in row)
    problems: list[str] = []
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        if len(name) > MAX_FIELD_CHARS:
            problems.append(f"column {i + 1}'s name is longer than {MAX_FIELD_CHARS:,} characters (MAX_FIELD_CHARS)")
        elif name and name.lower() in index:
            problems.append(f"column {show(name)} appears twice")
        elif name:
            index[name.lower()] = i
    missing = [c for c in required if c.lower() not in index]
    if missing:
        found = ", ".join(show(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
        problems.append(f"missing column(s) {', '.join(missing)} (found {found})")
    if problems:
        raise InvalidInputError(
            f"bad {format_name} header: {'; '.join(problems)}. Expected the columns {expected}"
            " (any order, extra columns allowed)"
        )
    return ReportHeader(names, index)


class _Lines:
    """Physical lines for csv.reader, decoded one at a time as strict UTF-8 (BOM skipped), so that a
    bad byte is reported on its line; NULs and over-long records are refused before buffering them."""

    def __init__(self, binary: io.BufferedReader):
        self._binary = binary
        self.line_number = 0
        self.record_bytes = 0  # reset after each record

    def __iter__(self) -> "_Lines":
        return self

    def __next__(self) -> str:
        budget = MAX_ROW_BYTES - self.record_bytes
        data = self._binary.readline(budget + 1)
        if not data:
            raise StopIteration
        self.line_number += 1
        self.record_bytes += len(data)
        if self.record_bytes > MAX_ROW_BYTES:
            raise InvalidInputError(
                f"line {self.line_number}: a CSV row is longer than {MAX_ROW_BYTES:,} bytes"
                " (MAX_ROW_BYTES); is a quote left open?"
            )
        if self.line_number == 1 and data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8) :]
        try:
            line = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(
                f"line {self.line_number}: the file is not UTF-8 text (byte 0x{data[exc.start]:02x} at"
                f" byte {exc.start + 1} of the line cannot be decoded): export the report as UTF-8 CSV"
            ) from None
        if "\x00" in line:
            raise InvalidInputError(
                f"line {self.line_number} contains a NUL byte: this is not a CSV text file"
                " (binary data, or UTF-16 text?)"
            )
        return line

    def record_done(self) -> None:
        self.record_bytes = 0
