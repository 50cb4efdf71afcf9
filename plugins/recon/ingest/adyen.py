"""Adyen "Settlement details report" (settlement_detail_report_batch_N.csv) -> checked settlement lines.

The report (docs.adyen.com, Reporting > Settlement details report) has one header line, then one
line per booking of a settlement batch: transactions (Settled, Refunded, Chargeback, ...), fees
(Fee, MiscCosts, ...), corrections, and the line that closes the batch: MerchantPayout (the
amount paid to the bank) or Balancetransfer (the balance carried to the next batch).

Columns read (any order, any case; every other non-empty cell goes to the line's metadata, as
do Modification Reference, the dates and Modification Merchant Reference):

- Psp Reference (the payment), Modification Reference (this booking: a capture's or refund's own
  reference, a fee's description, the payout's bank reference; for a Balancetransfer the
  Modification Merchant Reference, "Balancetransfer to batch 124", is the line's reference),
  Merchant Reference (the order), Type, Batch Number.
- Gross Debit (GC) / Gross Credit (GC) in Gross Currency; Net Debit (NC) / Net Credit (NC) in Net
  Currency: unsigned, the column gives the side (credit: to the merchant). Commission, Markup,
  Scheme Fees and Interchange (NC): the fee components, costs to the merchant.
- Booking Date + Booking Date TimeZone when the report has them, else Creation Date + TimeZone
  ("2026-11-02 09:15:22" + "CET").

Mapped to the neutral line (recon.ingest.settlement): net = Net Credit - Net Debit; gross and its
flow from the gross columns; fees from the four fee columns. A booking without gross columns
(Fee, MerchantPayout, Balancetransfer, ...) has its gross derived from the net: 0 for the fee
kinds, whose amount then becomes a fee component named after the Type. A Balancetransfer is
"to" or "from" another batch as its Modification Merchant Reference says ("Balancetransfer to
batch 124"); one that says neither (a transfer between merchant accounts) is an ordinary line
(kind other). Every batch must close with a MerchantPayout or a Balancetransfer to the next
batch, so a report cut short at a row boundary is refused too.

Refused: a Gross Currency other than the Net Currency (settlement with currency conversion is
not supported yet), rows of more than one Merchant Account (batch numbers are per merchant
account), time zones that are not in TIME_ZONE_OFFSETS nor IANA names.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Iterator
from decimal import Decimal

from recon.errors import InvalidInputError
from recon.ingest.settlement import (
    EXPECTED_FLOW,
    FORMAT_ADYEN,
    Flow,
    LineKind,
    ReportRow,
    ReportSource,
    RowProblems,
    SettlementLine,
    SettlementReport,
    order_id_cell,
    parse_signed_amount,
    parse_unsigned_amount,
    read_report_rows,
    show,
)
from recon.money import parse_currency

FORMAT = FORMAT_ADYEN

REQUIRED_COLUMNS = (
    "Merchant Account", "Psp Reference", "Merchant Reference", "Creation Date", "TimeZone", "Type",
    "Modification Reference", "Gross Currency", "Gross Debit (GC)", "Gross Credit (GC)", "Net Currency",
    "Net Debit (NC)", "Net Credit (NC)", "Commission (NC)", "Markup (NC)", "Scheme Fees (NC)",
    "Interchange (NC)", "Batch Number",
)  # fmt: skip
FEE_COLUMNS = {
    "Commission": "Commission (NC)",
    "Markup": "Markup (NC)",
    "Scheme Fees": "Scheme Fees (NC)",
    "Interchange": "Interchange (NC)",
}
# Columns whose value is a typed field of the line; every other non-empty cell is metadata.
TYPED_COLUMNS = (
    "Psp Reference", "Merchant Reference", "Type", "Batch Number", "Gross Currency", "Net Currency",
    "Gross Debit (GC)", "Gross Credit (GC)", "Net Debit (NC)", "Net Credit (NC)", *FEE_COLUMNS.values(),
)  # fmt: skip

# Adyen journal types (lower case) -> kind; any other type is LineKind.OTHER, kept with its name.
KIND_BY_TYPE = {
    "settled": LineKind.PAYMENT,
    "refunded": LineKind.REFUND,
    "chargeback": LineKind.CHARGEBACK,
    "secondchargeback": LineKind.CHARGEBACK,
    "chargebackreversed": LineKind.CHARGEBACK_REVERSAL,
    "chargebackreversal": LineKind.CHARGEBACK_REVERSAL,
    "fee": LineKind.FEE,
    "misccosts": LineKind.FEE,
    "paymentcost": LineKind.FEE,
    "invoicededuction": LineKind.FEE,
    "merchantpayout": LineKind.PAYOUT,
}
_TRANSFER_TO = re.compile(r"\bto batch\b", re.IGNORECASE)
_TRANSFER_FROM = re.compile(r"\bfrom batch\b", re.IGNORECASE)
_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")

# The abbreviations Adyen writes in its TimeZone columns -> UTC offset in hours. Ambiguous ones
# (CST: US Central or China; IST: India, Ireland or Israel) are left out on purpose: refused.
TIME_ZONE_OFFSETS = {
    "UTC": 0, "GMT": 0, "WET": 0, "WEST": 1, "BST": 1, "CET": 1, "CEST": 2, "EET": 2, "EEST": 3,
    "MSK": 3, "EST": -5, "EDT": -4, "CDT": -5, "MST": -7, "MDT": -6, "PST": -8, "PDT": -7,
    "SGT": 8, "HKT": 8, "JST": 9, "AEST": 10, "AEDT": 11,
}  # fmt: skip


def read_adyen_settlement(source: ReportSource, currency: str) -> SettlementReport:
    """The lines of an Adyen Settlement details report whose batches settle in `currency`.

    `source` is a path or a binary stream (UTF-8, BOM accepted); it is opened when the report is
    iterated. Read it to the end: see SettlementReport.
    """
    currency = parse_currency(currency, "expected currency")
    return SettlementReport(
        FORMAT,
        _lines(source),
        currency,
        closing_line_required=True,
        closing_line_hint="a MerchantPayout, or a Balancetransfer to the next batch",
    )


def _lines(source: ReportSource) -> Iterator[SettlementLine]:
    merchant_account: tuple[int, str] | None = None  # (first row, name)
    for row in read_report_rows(source, FORMAT, REQUIRED_COLUMNS):
        account = row.cell("Merchant Account")
        if merchant_account is None:
            merchant_account = (row.position, account)
        elif account != merchant_account[1]:
            raise InvalidInputError(
                f"row {row.position}: Merchant Account {show(account)} differs from {show(merchant_account[1])}"
                f" (row {merchant_account[0]}): batch numbers are per merchant account, so ingest one"
                " merchant account per file"
            )
        yield _parse_line(row)


def _parse_line(row: ReportRow) -> SettlementLine:
    problems = RowProblems(row.position)
    batch_id = row.cell("Batch Number")
    if not batch_id:
        problems.add("Batch Number is missing")
    elif not batch_id.isdigit():
        problems.add(f"Batch Number {show(batch_id)} is not a batch number (digits only)")
        batch_id = ""
    psp_type = row.cell("Type")
    if not psp_type:
        problems.add("Type is missing")
    line_reference = row.cell("Modification Reference") or row.cell("Psp Reference")
    if psp_type.lower() == "balancetransfer" and row.cell("Modification Merchant Reference"):
        # Adyen writes "Balancetransfer" as the reference of every transfer; "Balancetransfer to
        # batch 124" names the other batch, so a batch's transfer in and out keep distinct keys.
        line_reference = row.cell("Modification Merchant Reference")
    if not line_reference:
        problems.add("Modification Reference and Psp Reference are both empty: the line has no reference")
    order_id = order_id_cell(row, problems, "Merchant Reference")

    currency = problems.parse(parse_currency, row.cell("Net Currency"), "Net Currency")
    gross_currency = row.cell("Gross Currency")
    if gross_currency and currency and gross_currency != currency:
        problems.add(
            f"Gross Currency {show(gross_currency)} differs from Net Currency {show(currency)}:"
            " settlements with currency conversion are not supported"
        )
    gross_debit = _amount(row, problems, "Gross Debit (GC)")
    gross_credit = _amount(row, problems, "Gross Credit (GC)")
    net_debit = _amount(row, problems, "Net Debit (NC)")
    net_credit = _amount(row, problems, "Net Credit (NC)")
    fees = {}
    for name, column in FEE_COLUMNS.items():
        if text := row.cell(column):
            fees[name] = problems.parse(parse_signed_amount, text, column)
    for debit, credit, columns in (
        (gross_debit, gross_credit, "Gross Debit (GC) and Gross Credit (GC)"),
        (net_debit, net_credit, "Net Debit (NC) and Net Credit (NC)"),
    ):
        if debit and credit:
            problems.add(f"both {columns} are set ({debit}, {credit}): a line has one side")
    booked_at = _booked_at(row, problems)
    kind = _kind(psp_type, row.cell("Modification Merchant Reference"))
    if kind in EXPECTED_FLOW and not row.cell("Gross Debit (GC)") and not row.cell("Gross Credit (GC)"):
        problems.add(f"a {psp_type} line needs its Gross Debit (GC) or Gross Credit (GC), both are empty")
    problems.raise_if_any(batch_id)

    net = (net_credit or Decimal(0)) - (net_debit or Decimal(0))
    if gross_debit is not None or gross_credit is not None:
        signed_gross = (gross_credit or Decimal(0)) - (gross_debit or Decimal(0))
    elif kind is LineKind.FEE:
        signed_gross = Decimal(0)
        if not fees:
            fees = {psp_type: -net}  # the booking's amount is the fee itself
    else:
        signed_gross = net + sum(fees.values(), Decimal(0))  # nothing to check: one figure only
    flow = Flow.IN if signed_gross > 0 or (signed_gross == 0 and net >= 0) else Flow.OUT
    return SettlementLine(
        kind=kind,
        psp_type=psp_type,
        line_reference=line_reference,
        psp_reference=row.cell("Psp Reference") or None,
        order_id=order_id,
        batch_id=batch_id,
        currency=currency,  # type: ignore[arg-type]  # checked by raise_if_any
        flow=flow,
        gross=abs(signed_gross),
        fees=fees,  # type: ignore[arg-type]
        net=net,
        booked_at=booked_at,  # type: ignore[arg-type]
        position=row.position,
        metadata=row.other_cells(TYPED_COLUMNS),
    )


def _amount(row: ReportRow, problems: RowProblems, column: str) -> Decimal | None:
    """The unsigned amount of a debit/credit column, None when empty."""
    text = row.cell(column)
    return problems.parse(parse_unsigned_amount, text, column) if text else None


def _kind(psp_type: str, modification_merchant_reference: str) -> LineKind:
    if psp_type.lower() == "balancetransfer":
        if _TRANSFER_TO.search(modification_merchant_reference):
            return LineKind.BALANCE_TO_NEXT_BATCH
        if _TRANSFER_FROM.search(modification_merchant_reference):
            return LineKind.BALANCE_FROM_PREVIOUS_BATCH
        return LineKind.OTHER
    return KIND_BY_TYPE.get(psp_type.lower(), LineKind.OTHER)


def _booked_at(row: ReportRow, problems: RowProblems) -> dt.datetime | None:
    """Booking Date in its time zone when the report has it, else Creation Date; as an aware UTC datetime."""
    date_column, zone_column = "Creation Date", "TimeZone"
    if row.cell("Booking Date"):
        date_column, zone_column = "Booking Date", "Booking Date TimeZone"
    text, zone_name = row.cell(date_column), row.cell(zone_column)
    if not text:
        problems.add(f"{date_column} is missing")
        return None
    try:
        if not _DATE_TIME.fullmatch(text):
            raise ValueError(text)
        local = dt.datetime.fromisoformat(text)  # strptime is 20x slower on large reports
    except ValueError:
        problems.add(f"{date_column} {show(text)} is not a date and time like 2026-11-02 09:15:22")
        return None
    zone = _time_zone(zone_name)
    if zone is None:
        problems.add(
            f"{zone_column} {show(zone_name)} is not a time zone this parser knows"
            f" ({', '.join(TIME_ZONE_OFFSETS)}, or an IANA name such as Europe/Amsterdam)"
        )
        return None
    try:
        return local.replace(tzinfo=zone).astimezone(dt.timezone.utc)
    except OverflowError:
        problems.add(f"{date_column} {show(text)} is out of range")
        return None


def _time_zone(name: str) -> dt.tzinfo | None:
    if name.upper() in TIME_ZONE_OFFSETS:
        return dt.timezone(dt.timedelta(hours=TIME_ZONE_OFFSETS[name.upper()]))
    if "/" in name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            return None
    return None
