"""Bank statements in any format, as neutral checked records: what camt, MT940/942 and BAI2 share.

Each format module (``camt``, ``mt940``, ``bai2``) turns a file into ``StatementLine`` and
``Statement`` records built here, so every format names its metadata the same way and a
matching rule can key on ``end_to_end_id`` or ``bank_reference`` whatever the bank sent.

Why it is built this way:

- Integrity before anything is used: a statement whose opening balance plus its booked lines
  is not its closing balance, or whose currency is not the account's, is refused whole with
  ``StatementIntegrityError`` naming the statement and both figures.
- Streaming: a format module yields each statement's lines and then the ``Statement`` itself
  (its ``lines`` left empty), so the balance is checked from running totals
  (``checked_lines``) without holding the lines; ``collect_statements`` builds whole
  ``Statement`` objects from the same stream for callers that want them, and
  ``lines_of_checked_statements`` hands out their lines once all of them are checked.
- Every line has a ``natural_key``, the format's duplicate key (unique per account), so a
  statement loaded twice, or two overlapping statements, can be ingested without booking a
  line twice.
- Money is Decimal; amounts are positive and the side is ``entry_type``.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Literal

from recon.errors import InvalidInputError
from recon.ingest import reading
from recon.money import parse_amount, parse_currency

# --- Limits (each one is named in the error it causes) ------------------------------------
MAX_FILE_BYTES = 2 * 1024**3  # 2 GiB, read as a stream (camt)
MAX_TEXT_FILE_BYTES = 256 * 1024**2  # 256 MiB, read whole by their parser packages (MT940/942, BAI2)
DETECT_BYTES = 65_536  # how much of a file's start detect_format needs

FORMATS = ("camt053", "camt054", "mt940", "mt942", "bai2", "csv")
DEBIT, CREDIT = "DEBIT", "CREDIT"
BOOKED, PENDING = "booked", "pending"

StatementSource = reading.FileSource
_UTF8_BOM = b"\xef\xbb\xbf"


# --- Records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatementLine:
    """One money movement on the statement's account, the same for every format.

    ``effective_date`` is the value date (aware, UTC); ``status`` is ``booked`` or ``pending``
    (camt PDNG/FUTR/INFO, MT942 items, BAI2 interim reports: not final, never in a balance).
    ``metadata`` holds only JSON values, under the names ``build_line`` gives them.
    """

    amount: Decimal
    entry_type: Literal["DEBIT", "CREDIT"]
    currency: str
    effective_date: dt.datetime
    booking_date: dt.date | None
    status: Literal["booked", "pending"]
    reversal: bool
    natural_key: str
    position: str  # where the line is in its file, for messages: "statement STMT-1 entry 3 transaction 2"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = self.position or "a statement line"
        object.__setattr__(self, "amount", parse_amount(self.amount, f"{where}: amount"))
        object.__setattr__(self, "currency", parse_currency(self.currency, f"{where}: currency"))
        if self.entry_type not in (DEBIT, CREDIT):
            raise InvalidInputError(f"{where}: entry_type {self.entry_type!r} must be DEBIT or CREDIT")
        if self.status not in (BOOKED, PENDING):
            raise InvalidInputError(f"{where}: status {self.status!r} must be booked or pending")
        if not isinstance(self.effective_date, dt.datetime) or self.effective_date.tzinfo is None:
            raise InvalidInputError(f"{where}: effective_date must be a timezone-aware datetime")
        if not self.natural_key:
            raise InvalidInputError(f"{where}: the line has no natural key")

    @property
    def signed_amount(self) -> Decimal:
        """The line's effect on the account's balance: credits add, debits subtract."""
        return self.amount if self.entry_type == CREDIT else -self.amount

    @property
    def booked(self) -> bool:
        return self.status == BOOKED


@dataclass(frozen=True)
class Statement:
    """One account's statement (or notification, or BAI2 account report) from a file.

    Balances are signed (a debit balance is negative) and None where the format carries no
    booked balance to check (camt.054, MT942, BAI2: those are checked by their own totals).
    """

    statement_id: str
    account: str  # IBAN or account number, as the file gives it
    currency: str
    opening_balance: Decimal | None
    closing_balance: Decimal | None
    lines: tuple[StatementLine, ...] = ()

    @property
    def booked_total(self) -> Decimal:
        return sum((line.signed_amount for line in self.lines if line.booked), Decimal(0))


class StatementIntegrityError(InvalidInputError):
    """A statement whose figures do not agree: the whole file is refused.

    ``mismatched_fields`` follows the project's convention (field, expected, actual).
    """

    error_type = "StatementIntegrityError"

    def __init__(self, message: str, *, statement_id: str, field: str, expected: object, found: object):
        super().__init__(message)
        self.statement_id = statement_id
        self.field = field
        self.expected = expected
        self.found = found
        self.mismatched_fields = [{"field": field, "expected": str(expected), "actual": str(found)}]


# --- Building lines: one place names the metadata --------------------------------------------


def build_line(
    *,
    amount: Decimal,
    entry_type: str,
    currency: str,
    value_date: dt.date | dt.datetime,
    booking_date: dt.date | None,
    status: str,
    reversal: bool,
    natural_key: str,
    position: str,
    statement_id: str,
    order_id_pattern: re.Pattern[str] | None = None,
    end_to_end_id: str | None = None,
    bank_reference: str | None = None,
    customer_reference: str | None = None,
    remittance: str | None = None,
    bank_transaction_code: str | None = None,
    counterparty_name: str | None = None,
    counterparty_account: str | None = None,
) -> StatementLine:
    """A StatementLine whose metadata uses the shared names; empty values are left out."""
    metadata: dict[str, object] = {
        "end_to_end_id": end_to_end_id,
        "bank_reference": bank_reference,
        "customer_reference": customer_reference,
        "remittance": remittance,
        "booking_date": booking_date.isoformat() if booking_date else None,
        "value_date": value_date.isoformat(),
        "bank_transaction_code": bank_transaction_code,
        "statement_id": statement_id,
        "counterparty_name": counterparty_name,
        "counterparty_account": counterparty_account,
    }
    metadata = {name: value for name, value in metadata.items() if value}
    if reversal:
        metadata["reversal"] = True
    order_id = find_order_id(order_id_pattern, remittance)
    if order_id:
        metadata["order_id"] = order_id
    return StatementLine(
        amount=amount,
        entry_type=entry_type,  # type: ignore[arg-type]
        currency=currency,
        effective_date=as_utc_datetime(value_date),
        booking_date=booking_date,
        status=status,  # type: ignore[arg-type]
        reversal=reversal,
        natural_key=natural_key,
        position=position,
        metadata=metadata,
    )


def as_utc_datetime(value: dt.date | dt.datetime) -> dt.datetime:
    """A value date as an aware UTC datetime: a date is its midnight UTC, a naive time is UTC."""
    if not isinstance(value, dt.datetime):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def compile_order_id_pattern(pattern: str | re.Pattern[str] | None) -> re.Pattern[str] | None:
    """The regex that finds an order id in remittance text; a bad pattern is a named error."""
    if pattern is None or isinstance(pattern, re.Pattern):
        return pattern
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InvalidInputError(f"order_id_pattern {pattern!r} is not a valid regular expression ({exc})") from None


def find_order_id(pattern: re.Pattern[str] | None, text: str | None) -> str | None:
    """The order id in `text`: the group named order_id, else group 1, else the whole match."""
    if pattern is None or not text:
        return None
    match = pattern.search(text)
    if match is None:
        return None
    if "order_id" in pattern.groupindex:
        found = match.group("order_id")
    elif pattern.groups:
        found = match.group(1)
    else:
        found = match.group(0)
    if not found or not found.strip():
        return None
    return found.strip()


def amount_key(amount: Decimal) -> str:
    """An amount as the same text however the file wrote it (100,5 and 100.50 are one key)."""
    return format(amount.normalize(), "f")


class CompositeKeys:
    """Natural keys made of a line's figures, for lines without a reference unique on its own.

    Two identical lines in one statement are both real (two equal payments on one day): the
    second gets '#2'. A resent statement lists them in the same order, so it gets the same keys.
    """

    def __init__(self) -> None:
        self._seen: Counter[str] = Counter()

    def key(self, *parts: object) -> str:
        base = "|".join("" if part is None else str(part) for part in parts)
        self._seen[base] += 1
        count = self._seen[base]
        return base if count == 1 else f"{base}#{count}"


# --- Integrity --------------------------------------------------------------------------------


def check_statement(statement: Statement, expected_currency: str | None = None) -> None:
    """Refuse a statement whose lines, balances or currency do not agree (StatementIntegrityError).

    Checks: every line is in the statement's currency; the statement's currency is
    `expected_currency` (the account's) when given; opening + Σ signed booked lines = closing,
    exactly, when the statement has both balances.
    """
    for line in statement.lines:
        _check_line_currency(statement, line)
    _check_totals(statement, statement.booked_total, expected_currency)


def checked_lines(
    items: Iterable[StatementLine | Statement], expected_currency: str | None = None
) -> Iterator[StatementLine]:
    """A format module's stream as lines, each statement checked when it closes.

    The stream is each statement's lines followed by the Statement (lines empty). The check
    of a statement raises after its lines were yielded: a caller writing them must do so in
    one transaction and roll back on the error, as the CSV ingest does.
    """
    booked_total = Decimal(0)
    first_line_by_currency: dict[str, StatementLine] = {}
    for item in items:
        if isinstance(item, StatementLine):
            if expected_currency is not None and item.currency != expected_currency:
                raise _currency_error(item.metadata.get("statement_id", item.position), expected_currency, item.currency)
            first_line_by_currency.setdefault(item.currency, item)
            if item.booked:
                booked_total += item.signed_amount
            yield item
        else:
            for line in first_line_by_currency.values():
                _check_line_currency(item, line)
            _check_totals(item, booked_total, expected_currency)
            booked_total = Decimal(0)
            first_line_by_currency = {}


def collect_statements(
    items: Iterable[StatementLine | Statement], expected_currency: str | None = None
) -> list[Statement]:
    """A format module's stream as whole, checked Statements (all of them, or an error)."""
    statements: list[Statement] = []
    lines: list[StatementLine] = []
    for item in items:
        if isinstance(item, StatementLine):
            lines.append(item)
        else:
            statement = replace(item, lines=tuple(lines))
            check_statement(statement, expected_currency)
            statements.append(statement)
            lines = []
    return statements


def lines_of_checked_statements(
    items: Iterable[StatementLine | Statement], expected_currency: str | None = None
) -> Iterator[StatementLine]:
    """A format module's stream as lines, every statement checked before the first line is handed out.

    For the formats whose parser package holds the whole text anyway (MT940/942, BAI2): streaming
    would save nothing there, and a caller never sees a line of a file that is then refused.
    """
    statements = collect_statements(items, expected_currency)
    return (line for statement in statements for line in statement.lines)


def _check_line_currency(statement: Statement, line: StatementLine) -> None:
    if line.currency != statement.currency:
        raise StatementIntegrityError(
            f"{line.position}: currency {line.currency} differs from the currency {statement.currency}"
            f" of statement {statement.statement_id}",
            statement_id=statement.statement_id, field="currency",
            expected=statement.currency, found=line.currency,
        )


def _check_totals(statement: Statement, booked_total: Decimal, expected_currency: str | None) -> None:
    if expected_currency is not None and statement.currency != expected_currency:
        raise _currency_error(statement.statement_id, expected_currency, statement.currency)
    opening, closing = statement.opening_balance, statement.closing_balance
    if opening is None or closing is None:
        return
    expected_closing = opening + booked_total
    if expected_closing != closing:
        currency = statement.currency
        raise StatementIntegrityError(
            f"statement {statement.statement_id} does not add up: opening balance {opening} {currency}"
            f" + booked lines {booked_total:+} {currency} = {expected_closing} {currency}, but its closing"
            f" balance is {closing} {currency} (difference {closing - expected_closing:+})",
            statement_id=statement.statement_id, field="closing_balance",
            expected=expected_closing, found=closing,
        )


def _currency_error(statement_id: str, expected: str, found: str) -> StatementIntegrityError:
    return StatementIntegrityError(
        f"statement {statement_id} is in {found}, not in the account's currency {expected}",
        statement_id=statement_id, field="currency", expected=expected, found=found,
    )


# --- Which format ----------------------------------------------------------------------------

_CAMT_NAMESPACE = re.compile(rb"urn:iso:std:iso:20022:tech:xsd:camt\.(\d{3})\.001\.(\d{2})")
_SWIFT_APPLICATION_HEADER = re.compile(rb"\{2:[IO](940|942)")
_MT940_TAG = re.compile(rb"^:(60F|60M|62F|62M):", re.MULTILINE)
_MT942_TAG = re.compile(rb"^:(34F|13D):", re.MULTILINE)
_MT_REFERENCE_TAG = re.compile(rb"^:20:", re.MULTILINE)


def detect_format(head: bytes) -> str:
    """camt053, camt054, mt940, mt942, bai2 or csv, from the first DETECT_BYTES of a file.

    Raises InvalidInputError saying what the file looks like when it is none of them.
    """
    text = head.removeprefix(_UTF8_BOM)
    start = text.lstrip()
    if not start:
        raise InvalidInputError("the file is empty: expected a camt.053/054, MT940/942, BAI2 or CSV statement")
    if b"\x00" in text[:4096]:
        raise InvalidInputError(
            "the file contains NUL bytes: it is binary or UTF-16 text, not a statement file (save it as UTF-8)"
        )
    if start.startswith(b"<"):
        return _detect_xml(start)
    if start.startswith(b"01,"):
        return "bai2"
    swift = _detect_swift(text)
    if swift:
        return swift
    first_line = start.split(b"\n", 1)[0]
    if b"," in first_line:
        return "csv"
    raise InvalidInputError(
        f"cannot tell the statement format from the file's start {_show_bytes(start)}: expected camt.053/camt.054"
        " XML, MT940/MT942 (:20: tags), BAI2 (01, record) or CSV (a comma-separated header); name the format"
    )


def _detect_xml(start: bytes) -> str:
    match = _CAMT_NAMESPACE.search(start)
    if match is None:
        raise InvalidInputError(
            f"an XML file, but not an ISO 20022 camt.053 or camt.054 document: no camt namespace"
            f" (urn:iso:std:iso:20022:tech:xsd:camt.053.001.NN) in its first {len(start):,} bytes"
        )
    message = match.group(1).decode()
    if message in ("053", "054"):
        return f"camt{message}"
    raise InvalidInputError(
        f"camt.{message} documents are not supported (namespace {match.group(0).decode()}):"
        " statements are read from camt.053 and notifications from camt.054"
    )


def _detect_swift(text: bytes) -> str | None:
    header = _SWIFT_APPLICATION_HEADER.search(text)
    if header:
        return f"mt{header.group(1).decode()}"
    if not _MT_REFERENCE_TAG.search(text):
        return None
    if _MT942_TAG.search(text):
        return "mt942"
    if _MT940_TAG.search(text):
        return "mt940"
    raise InvalidInputError(
        "the file has SWIFT MT tags (:20:) but neither MT940 balances (:60F:/:62F:) nor MT942 tags"
        f" (:34F:/:13D:) in its first {len(text):,} bytes; name the format"
    )


def _show_bytes(data: bytes) -> str:
    return repr(data[:40]) + ("..." if len(data) > 40 else "")


# --- Reading a source ------------------------------------------------------------------------


def open_utf8_stream(source: StatementSource, what: str) -> ContextManager[io.BufferedReader]:
    """A buffered binary stream of the source that refuses bytes that are not UTF-8 (naming their
    line) and files over MAX_FILE_BYTES as it reads (camt: streamed)."""
    return reading.open_binary(source, what, MAX_FILE_BYTES, utf8_only=True, buffer_size=DETECT_BYTES)


def read_text(source: StatementSource, what: str, encoding: str = "utf-8") -> str:
    """The whole source as text, up to MAX_TEXT_FILE_BYTES (MT940/942 and BAI2: their parser
    packages need the whole text), strictly decoded."""
    return reading.read_text(source, what, MAX_TEXT_FILE_BYTES, limit_name="MAX_TEXT_FILE_BYTES", encoding=encoding)
