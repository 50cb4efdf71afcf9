"""BAI2 cash management files (US banks) as checked statement lines, read with the ``bai2`` package.

The ``bai2`` package splits records (joining ``88`` continuations) and reads the fields; this
module checks the file and decides what its figures mean.

Why it is built this way:

- Integrity before anything is used: every account's, group's and the file's control total
  and record count (``49``, ``98``, ``99``) must match what the file holds, and each group its
  number of accounts, the file its number of groups. A break is a ``StatementIntegrityError``
  naming the trailer record and both figures. (These checks are ours rather than the
  package's, whose messages name neither the account nor the group.)
- Amounts are integers in the currency's minor unit: turned into Decimal exactly (12345 USD
  is 123.45, 12345 JPY is 12345, 12345 KWD is 12.345), never through a float.
- Every ``16`` transaction detail is one line: type codes the BAI2 list marks as credits are
  CREDIT, debits DEBIT; ``890`` (non-monetary information) and zero amounts move nothing and
  give no line. Its value date is the availability date of a value-dated (``V``) detail,
  else the group's as-of date, which is also the booking date.
- Lines of an interim report (group as-of-date modifier 1 or 3: intraday, not final) are
  pending; prior-day and final reports (2, 4, or none) are booked.
- BAI2 ledger balances (``010``/``015``) are kept out of the balance check: summary-only
  amounts (e.g. ``105`` credits not detailed) routinely make them differ from the details,
  so the control totals are BAI2's integrity check.
- A file must end with its ``99`` trailer: the package would loop forever on a file cut short,
  so a truncated file is refused before parsing.
- Natural key: account + as-of date + type code + amount + bank reference (else the
  customer reference), with '#n' for identical details of one account report.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from decimal import Decimal

from bai2 import bai2 as bai2_reader
from bai2.constants import AsOfDateModifier, FundsType, TypeCodeTransaction
from bai2.exceptions import IntegrityException, NotSupportedYetException, ParsingException

from recon.errors import InvalidInputError
from recon.ingest.statement import (
    BOOKED,
    CREDIT,
    DEBIT,
    PENDING,
    CompositeKeys,
    Statement,
    StatementIntegrityError,
    StatementLine,
    StatementSource,
    amount_key,
    build_line,
    collect_statements,
    compile_order_id_pattern,
    lines_of_checked_statements,
    read_text,
)

# ISO 4217 currencies whose minor unit is not the cent (every other one has two decimals).
_ZERO_DECIMAL_CURRENCIES = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"}
)
_THREE_DECIMAL_CURRENCIES = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})
_SIDES = {TypeCodeTransaction.credit: CREDIT, TypeCodeTransaction.debit: DEBIT}
_INTERIM = {AsOfDateModifier.interim_previous_day, AsOfDateModifier.interim_same_day}
_RECORD_CODE = re.compile(r"^(\d\d),")


def minor_units(currency: str) -> int:
    """Decimal places of the currency's minor unit, as BAI2 amounts imply them."""
    if currency in _ZERO_DECIMAL_CURRENCIES:
        return 0
    if currency in _THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


def to_decimal(minor_amount: int, currency: str) -> Decimal:
    """A BAI2 integer amount in the currency's units, exactly: 12345 USD -> Decimal('123.45')."""
    return Decimal(minor_amount).scaleb(-minor_units(currency))


# --- Entry points ----------------------------------------------------------------------------


def parse_bai2(
    source: StatementSource,
    *,
    expected_currency: str | None = None,
    order_id_pattern: str | re.Pattern[str] | None = None,
    encoding: str = "utf-8",
) -> list[Statement]:
    """One Statement per account report (03...49) of a BAI2 file, all totals checked, or InvalidInputError."""
    return collect_statements(_read(source, order_id_pattern, encoding), expected_currency)


def iter_bai2_lines(
    source: StatementSource,
    *,
    expected_currency: str | None = None,
    order_id_pattern: str | re.Pattern[str] | None = None,
    encoding: str = "utf-8",
) -> Iterator[StatementLine]:
    """The lines of a BAI2 file, the whole file checked before the first line."""
    return lines_of_checked_statements(_read(source, order_id_pattern, encoding), expected_currency)


def _read(
    source: StatementSource, order_id_pattern: str | re.Pattern[str] | None, encoding: str
) -> Iterator[StatementLine | Statement]:
    pattern = compile_order_id_pattern(order_id_pattern)
    records = _records(read_text(source, "BAI2", encoding))
    parsed = _parse(records)
    file_id = parsed.header.file_id or "(no file id)"
    _check_file(parsed, file_id)
    for group_number, group in enumerate(parsed.children, 1):
        for account in group.children:
            yield from _AccountReader(file_id, group_number, group, account, pattern).items()


def _records(text: str) -> list[str]:
    """The file's non-blank lines, refused unless they run from a 01 header to a single 99 trailer."""
    records = [line.strip() for line in text.splitlines() if line.strip()]
    if not records:
        raise InvalidInputError("the BAI2 file is empty")
    for number, record in enumerate(records, 1):
        if not _RECORD_CODE.match(record):
            raise InvalidInputError(f"BAI2 record {number} {record[:40]!r} does not start with a two-digit record code and a comma")
    if not records[0].startswith("01,"):
        raise InvalidInputError(f"the BAI2 file starts with {records[0][:40]!r}, not a 01 file header")
    trailers = [number for number, record in enumerate(records, 1) if record.startswith("99,")]
    if not trailers:
        raise InvalidInputError(
            f"the BAI2 file has no 99 file trailer (its last record is {records[-1][:40]!r}): is it truncated?"
        )
    if trailers != [len(records)]:
        raise InvalidInputError(f"the BAI2 file's 99 trailer is record {trailers[0]} of {len(records)}: records follow it")
    return records


def _parse(records: list[str]):
    try:
        return bai2_reader.parse_from_lines(records, check_integrity=False)
    except (ParsingException, NotSupportedYetException, IntegrityException) as exc:
        raise InvalidInputError(f"the BAI2 file cannot be read: {exc}") from None
    except (ValueError, IndexError, KeyError, TypeError, StopIteration) as exc:
        raise InvalidInputError(f"the BAI2 file cannot be read ({type(exc).__name__}: {exc})") from None


# --- Integrity: control totals and record counts ---------------------------------------------


def _check_file(parsed, file_id: str) -> None:
    """Every account's, group's and the file's totals and counts, innermost first."""
    file_records = len(parsed.header.rows) + len(parsed.trailer.rows)
    group_totals = 0
    for group_number, group in enumerate(parsed.children, 1):
        group_name = f"BAI2 file {file_id} group {group_number}"
        group_records = len(group.header.rows) + len(group.trailer.rows)
        account_totals = 0
        for account in group.children:
            account_name = f"{group_name} account {account.header.customer_account_number}"
            records, total = _account_figures(account)
            currency = account.header.currency or group.header.currency
            _expect(account_name, "49 account trailer", "record count", account.trailer.number_of_records, records)
            _expect(account_name, "49 account trailer", "control total", account.trailer.account_control_total, total, currency)
            group_records += records
            account_totals += account.trailer.account_control_total
        _expect(group_name, "98 group trailer", "number of accounts", group.trailer.number_of_accounts, len(group.children))
        _expect(group_name, "98 group trailer", "record count", group.trailer.number_of_records, group_records)
        _expect(group_name, "98 group trailer", "control total", group.trailer.group_control_total, account_totals,
                group.header.currency)
        file_records += group_records
        group_totals += group.trailer.group_control_total
    file_name = f"BAI2 file {file_id}"
    _expect(file_name, "99 file trailer", "number of groups", parsed.trailer.number_of_groups, len(parsed.children))
    _expect(file_name, "99 file trailer", "record count", parsed.trailer.number_of_records, file_records)
    _expect(file_name, "99 file trailer", "control total", parsed.trailer.file_control_total, group_totals)


def _account_figures(account) -> tuple[int, int]:
    """(records from 03 to 49 with their 88 continuations, sum of the 03 and 16 amounts)."""
    records = len(account.header.rows) + len(account.trailer.rows) + sum(len(d.rows) for d in account.children)
    total = sum(summary.amount or 0 for summary in account.header.summary_items)
    total += sum(detail.amount or 0 for detail in account.children)
    return records, total


def _expect(name: str, trailer: str, figure: str, expected: int | None, found: int, currency: str | None = None) -> None:
    """A trailer's figure against what the file holds; amounts are shown as written (minor units)
    and, where one currency applies, in that currency too."""
    if expected == found:
        return
    if figure != "control total":
        message = f"{name}: the {trailer} gives {figure} {expected}, but it holds {found}"
    elif currency and expected is not None:
        message = (
            f"{name}: the {trailer} gives control total {expected} ({to_decimal(expected, currency)} {currency}),"
            f" but its amounts add up to {found} ({to_decimal(found, currency)} {currency})"
        )
    else:
        message = f"{name}: the {trailer} gives control total {expected}, but its amounts add up to {found} (minor units)"
    raise StatementIntegrityError(
        message, statement_id=name, field=figure.replace(" ", "_"), expected=expected, found=found
    )


# --- One account report ----------------------------------------------------------------------


class _AccountReader:
    """One 03...49 account report of a group: its detail lines, then its Statement."""

    def __init__(self, file_id: str, group_number: int, group, account, order_id_pattern: re.Pattern[str] | None):
        self._group = group
        self._account = account
        self._pattern = order_id_pattern
        self.account_number = (account.header.customer_account_number or "").strip()
        self.currency = (account.header.currency or group.header.currency or "").strip()
        self.statement_id = f"{file_id}/{group_number}/{self.account_number}"
        self._where = f"BAI2 file {file_id} group {group_number} account {self.account_number}"
        self._keys = CompositeKeys()

    def items(self) -> Iterator[StatementLine | Statement]:
        if not self.account_number:
            raise InvalidInputError(f"{self._where}: its 03 record has no customer account number")
        as_of = self._group.header.as_of_date
        if as_of is None:
            raise InvalidInputError(f"{self._where}: its 02 group header has no as-of date")
        status = PENDING if self._group.header.as_of_date_modifier in _INTERIM else BOOKED
        for number, detail in enumerate(self._account.children, 1):
            line = self._line(detail, number, as_of, status)
            if line is not None:
                yield line
        yield Statement(self.statement_id, self.account_number, self.currency, None, None)

    def _line(self, detail, number: int, as_of: dt.date, status: str) -> StatementLine | None:
        """The 16 record as a line; None for non-monetary details and zero amounts."""
        where = f"{self._where} detail {number}"
        type_code = detail.type_code
        if type_code.transaction == TypeCodeTransaction.misc:
            return None
        if type_code.transaction not in _SIDES:
            raise InvalidInputError(
                f"{where}: type code {type_code.code} ({type_code.description}) is a balance code, not a transaction"
            )
        if detail.amount is None:
            raise InvalidInputError(f"{where}: the 16 record (type code {type_code.code}) has no amount")
        if detail.amount < 0:
            raise InvalidInputError(f"{where}: amount {detail.amount} is negative; BAI2 detail amounts are unsigned")
        if detail.amount == 0:
            return None
        amount = to_decimal(detail.amount, self.currency)
        bank_reference = (detail.bank_reference or "").strip() or None
        customer_reference = (detail.customer_reference or "").strip() or None
        return build_line(
            amount=amount,
            entry_type=_SIDES[type_code.transaction],
            currency=self.currency,
            value_date=_value_date(detail) or as_of,
            booking_date=as_of,
            status=status,
            reversal=False,
            natural_key=self._keys.key(
                self.account_number, as_of.isoformat(), type_code.code, amount_key(amount),
                bank_reference or customer_reference,
            ),
            position=where,
            statement_id=self.statement_id,
            order_id_pattern=self._pattern,
            bank_reference=bank_reference,
            customer_reference=customer_reference,
            remittance=" ".join((detail.text or "").split()) or None,
            bank_transaction_code=type_code.code,
        )


def _value_date(detail) -> dt.date | None:
    """The availability date of a value-dated (V) detail (its time is the bank's local time: left out)."""
    if detail.funds_type != FundsType.value_dated or not detail.availability:
        return None
    return detail.availability.get("date")
