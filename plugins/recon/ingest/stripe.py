"""Stripe payout reconciliation report (itemized CSV) -> checked settlement lines.

The itemized payout reconciliation report (docs.stripe.com, Reports > Payout reconciliation;
API report type payout_reconciliation.itemized.N) has one row per balance transaction with the
automatic payout that paid it out: a settlement batch is an automatic payout. Amounts are in
major units of the balance currency (``currency``, lower case as Stripe writes it), signed as
the balance moves (a refund's gross is negative), and ``net = gross - fee`` on every row.

Columns read (any order, any case; every other non-empty cell goes to the line's metadata,
charge_id, payment_intent_id, source_id, description and refund_metadata[...] included):
balance_transaction_id (this line), created_utc, currency, gross, fee, net, reporting_category,
automatic_payout_id (the batch), and the order id column, by default payment_metadata[order_id]
(the order id the merchant put in the payment's metadata; for refunds and disputes Stripe
repeats the original payment's metadata).

Mapped to the neutral line (recon.ingest.settlement): gross keeps its sign as the flow (charge
IN, refund and dispute OUT), ``fees = {"fee": fee}``, net as given; a fee row's amount becomes
its fee (gross 0). reporting_category charge, refund, dispute, dispute_reversal, fee and payout
have their own kinds; any other category (other_adjustment, partial_capture_reversal, ...) is
kept as kind other.

The report lists a payout by its transactions only, so a batch is paid out at Σ net of its
lines. A file may also carry the payout's own row (reporting_category payout, as in the balance
report; its batch is automatic_payout_id, or its source_id po_...): its amount is then checked
against that sum. A row with no automatic_payout_id (a manual or instant payout, or not yet
paid out) cannot be tied to a batch and is refused.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal

from recon.errors import InvalidInputError
from recon.ingest.settlement import (
    FORMAT_STRIPE,
    Flow,
    LineKind,
    ReportRow,
    ReportSource,
    RowProblems,
    SettlementLine,
    SettlementReport,
    order_id_cell,
    parse_signed_amount,
    read_report_rows,
    show,
)
from recon.money import parse_currency

FORMAT = FORMAT_STRIPE
ORDER_ID_COLUMN = "payment_metadata[order_id]"

REQUIRED_COLUMNS = (
    "balance_transaction_id", "created_utc", "currency", "gross", "fee", "net", "reporting_category",
    "automatic_payout_id",
)  # fmt: skip

KIND_BY_CATEGORY = {
    "charge": LineKind.PAYMENT,
    "refund": LineKind.REFUND,
    "dispute": LineKind.CHARGEBACK,
    "dispute_reversal": LineKind.CHARGEBACK_REVERSAL,
    "fee": LineKind.FEE,
    "payout": LineKind.PAYOUT,
}


def read_stripe_payouts(
    source: ReportSource, currency: str, *, order_id_column: str = ORDER_ID_COLUMN
) -> SettlementReport:
    """The lines of a Stripe itemized payout reconciliation report whose payouts are in `currency`.

    `source` is a path or a binary stream (UTF-8, BOM accepted); it is opened when the report is
    iterated. `order_id_column` names the metadata column holding the order id; the report must
    have it. Read it to the end: see SettlementReport.
    """
    currency = parse_currency(currency, "expected currency")
    return SettlementReport(
        FORMAT,
        _lines(source, order_id_column),
        currency,
        closing_line_required=False,
        closing_line_hint="a row with reporting_category payout",
    )


def _lines(source: ReportSource, order_id_column: str) -> Iterator[SettlementLine]:
    for row in read_report_rows(source, FORMAT, (*REQUIRED_COLUMNS, order_id_column)):
        yield _parse_line(row, order_id_column)


def _parse_line(row: ReportRow, order_id_column: str) -> SettlementLine:
    problems = RowProblems(row.position)
    category = row.cell("reporting_category")
    if not category:
        problems.add("reporting_category is missing")
    kind = KIND_BY_CATEGORY.get(category.lower(), LineKind.OTHER)
    batch_id = row.cell("automatic_payout_id")
    if not batch_id and kind is LineKind.PAYOUT:
        batch_id = row.cell("source_id")  # the payout's own row: its source is the payout
    if not batch_id:
        problems.add(
            "automatic_payout_id is empty: only balance transactions paid out by an automatic payout"
            " can be reconciled per payout"
        )
    line_reference = row.cell("balance_transaction_id")
    if not line_reference:
        problems.add("balance_transaction_id is missing")
    order_id = order_id_cell(row, problems, order_id_column)
    currency = problems.parse(_parse_currency, row.cell("currency"))
    gross = problems.parse(parse_signed_amount, row.cell("gross"), "gross")
    fee = problems.parse(parse_signed_amount, row.cell("fee"), "fee")
    net = problems.parse(parse_signed_amount, row.cell("net"), "net")
    booked_at = _booked_at(row, problems)
    problems.raise_if_any(batch_id)

    assert gross is not None and fee is not None and net is not None  # raise_if_any
    if kind is LineKind.FEE:
        gross, fee = Decimal(0), fee - gross  # a fee row's amount is the fee itself
    return SettlementLine(
        kind=kind,
        psp_type=category,
        line_reference=line_reference,
        psp_reference=row.cell("charge_id") or row.cell("payment_intent_id") or row.cell("source_id") or None,
        order_id=order_id,
        batch_id=batch_id,
        currency=currency,  # type: ignore[arg-type]
        flow=Flow.IN if gross > 0 or (gross == 0 and net >= 0) else Flow.OUT,
        gross=abs(gross),
        fees={"fee": fee},
        net=net,
        booked_at=booked_at,  # type: ignore[arg-type]
        position=row.position,
        metadata=row.other_cells((*REQUIRED_COLUMNS, order_id_column)),
    )


def _parse_currency(text: str) -> str:
    """Stripe writes currencies in lower case ('usd'); the error shows the cell as written."""
    try:
        return parse_currency(text.upper(), "currency")
    except InvalidInputError:
        raise InvalidInputError(f"currency {show(text)} is not an ISO 4217 code (three letters)") from None


def _booked_at(row: ReportRow, problems: RowProblems) -> dt.datetime | None:
    """created_utc ("2026-11-02 09:15:22", UTC unless it carries an offset) as an aware UTC datetime."""
    text = row.cell("created_utc")
    if not text:
        problems.add("created_utc is missing")
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        problems.add(f"created_utc {show(text)} is not a date and time like 2026-11-02 09:15:22")
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    try:
        return value.astimezone(dt.timezone.utc)
    except OverflowError:
        problems.add(f"created_utc {show(text)} is out of range")
        return None
