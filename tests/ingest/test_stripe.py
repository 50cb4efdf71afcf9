"""Stripe itemized payout reconciliation reports: exact figures, hostile files refused, invariants.

No database: the parser only reads files. Figures are written out, not recomputed.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recon.errors import InvalidInputError
from recon.ingest.settlement import Flow, LineKind, SettlementIntegrityError, SettlementLine
from recon.ingest.stripe import read_stripe_payouts

DATA = Path(__file__).parents[1] / "data" / "settlement"
UTC = dt.timezone.utc
FIRST, SECOND = "po_76dfZTPtLLKjAyS96HBqcbCt", "po_neB0dpUgm4BKXlb9EtDmMZLB"
HEADER = [
    "automatic_payout_id", "balance_transaction_id", "created_utc", "currency", "gross", "fee", "net",
    "reporting_category", "source_id", "charge_id", "payment_intent_id", "description", "payment_metadata[order_id]",
]  # fmt: skip


def read(path_or_stream, currency: str = "USD", **options):
    report = read_stripe_payouts(path_or_stream, currency, **options)
    lines = list(report)
    return lines, report.batches


def report_bytes(rows: list[dict[str, str]], header: list[str] = HEADER) -> io.BytesIO:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, header, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return io.BytesIO(buffer.getvalue().encode())


def charge(n: int, gross: str, fee: str, net: str, payout: str = "po_1", **cells: str) -> dict[str, str]:
    return {
        "automatic_payout_id": payout, "balance_transaction_id": f"txn_{n}", "created_utc": "2026-11-02 10:00:00",
        "currency": "usd", "gross": gross, "fee": fee, "net": net, "reporting_category": "charge",
        "source_id": f"ch_{n}", "charge_id": f"ch_{n}", "payment_intent_id": f"pi_{n}",
        "payment_metadata[order_id]": f"ORD-{n}", **cells,
    }  # fmt: skip


# --- Two automatic payouts ------------------------------------------------------------------------


def test_each_payout_is_paid_out_at_the_net_of_its_transactions():
    lines, batches = read(DATA / "stripe_payouts.csv")

    assert Counter((line.batch_id, line.kind) for line in lines) == {
        (FIRST, LineKind.PAYMENT): 120, (FIRST, LineKind.REFUND): 4, (FIRST, LineKind.CHARGEBACK): 1,
        (FIRST, LineKind.FEE): 1, (SECOND, LineKind.PAYMENT): 60, (SECOND, LineKind.REFUND): 2,
        (SECOND, LineKind.CHARGEBACK_REVERSAL): 1,
    }  # fmt: skip
    assert sum(line.gross for line in lines if line.kind is LineKind.PAYMENT) == Decimal("36681.98")
    assert sum(line.fee_total for line in lines) == Decimal("1126.18")
    assert len({line.natural_key for line in lines}) == 189

    first, second = batches
    assert (first.batch_id, first.currency, first.line_count) == (FIRST, "USD", 126)
    assert first.net_by_kind == {
        LineKind.PAYMENT: Decimal("23720.45"), LineKind.REFUND: Decimal("-362.18"),
        LineKind.CHARGEBACK: Decimal("-80.18"), LineKind.FEE: Decimal("-8.40"),
    }  # fmt: skip
    assert (first.payout, first.payout_stated, first.carried_balance, first.fee_total) == (
        Decimal("23269.69"), False, 0, Decimal("768.91"),
    )  # fmt: skip
    assert second.net_by_kind == {
        LineKind.PAYMENT: Decimal("11843.75"), LineKind.REFUND: Decimal("-155.80"),
        LineKind.CHARGEBACK_REVERSAL: Decimal("89.00"),
    }  # fmt: skip
    assert (second.batch_id, second.payout, second.payout_stated, second.fee_total) == (
        SECOND, Decimal("11776.95"), False, Decimal("357.27"),
    )  # fmt: skip
    assert (second.first_position, second.last_position) == (127, 189)


def test_charges_refunds_disputes_and_fees_map_to_neutral_lines():
    lines, _ = read(DATA / "stripe_payouts.csv")
    first, dispute, fee, reversal = lines[0], lines[124], lines[125], lines[188]

    assert first == SettlementLine(
        kind=LineKind.PAYMENT, psp_type="charge", line_reference="txn_F5MeYT4lUdOqo2gG0pn2ASbw",
        psp_reference="ch_A2klokkFwFI9BzG4wKw1B7yT", order_id="ORD-300001", batch_id=FIRST, currency="USD",
        flow=Flow.IN, gross=Decimal("252.04"), fees={"fee": Decimal("7.61")}, net=Decimal("244.43"),
        booked_at=dt.datetime(2026, 11, 2, 23, 13, 31, tzinfo=UTC), position=1,
        metadata={"automatic_payout_effective_at": "2026-11-04 00:00:00", "available_on_utc": "2026-11-04 00:00:00",
                  "source_id": "ch_A2klokkFwFI9BzG4wKw1B7yT", "description": 'Order ORD-300001, "Red" mug',
                  "customer_facing_amount": "252.04", "customer_facing_currency": "usd",
                  "charge_id": "ch_A2klokkFwFI9BzG4wKw1B7yT", "payment_intent_id": "pi_OprEFXPC3vTICO6YZ2MVDsXZ",
                  "payment_method_type": "card", "card_brand": "amex"},
    )  # fmt: skip
    assert first.natural_key == ("txn_F5MeYT4lUdOqo2gG0pn2ASbw", "charge", FIRST)
    assert (dispute.kind, dispute.psp_type, dispute.order_id, dispute.flow, dispute.gross, dispute.fees) == (
        LineKind.CHARGEBACK, "dispute", "ORD-300111", Flow.OUT, Decimal("65.18"), {"fee": Decimal("15.00")},
    )  # fmt: skip
    assert dispute.net == Decimal("-80.18")
    assert (fee.kind, fee.gross, fee.fees, fee.net, fee.psp_reference, fee.order_id) == (
        LineKind.FEE, 0, {"fee": Decimal("8.40")}, Decimal("-8.40"), None, None,
    )  # fmt: skip
    assert fee.metadata["description"] == "Radar for Fraud Teams (2026-11-02)"
    assert (reversal.kind, reversal.flow, reversal.gross, reversal.fees, reversal.net, reversal.batch_id) == (
        LineKind.CHARGEBACK_REVERSAL, Flow.IN, Decimal("74.00"), {"fee": Decimal("-15.00")}, Decimal("89.00"), SECOND,
    )  # fmt: skip
    refunds = [line for line in lines if line.kind is LineKind.REFUND]
    assert all(r.flow is Flow.OUT and r.fee_total == 0 and r.order_id for r in refunds)
    assert all(r.psp_reference and r.psp_reference.startswith("ch_") for r in refunds)
    assert sum(r.gross for r in refunds) == Decimal("517.98")


def test_a_payout_row_states_the_payout_and_is_checked_against_its_transactions():
    lines, [batch] = read(DATA / "stripe_payout_with_payout_row.csv")

    payout = lines[-1]
    assert (payout.kind, payout.natural_key, payout.psp_reference, payout.flow, payout.gross, payout.net) == (
        LineKind.PAYOUT, ("txn_L1W7rjUuwwgz4Bvq3MYm0hBK", "payout", "po_mfOKNwB3YqqeTcQ70xYiVlQb"),
        "po_mfOKNwB3YqqeTcQ70xYiVlQb", Flow.OUT, Decimal("1120.24"), Decimal("-1120.24"),
    )  # fmt: skip
    assert payout.booked_at == dt.datetime(2026, 11, 11, tzinfo=UTC)
    assert batch.net_by_kind == {
        LineKind.PAYMENT: Decimal("1404.22"), LineKind.REFUND: Decimal("-283.98"), LineKind.PAYOUT: Decimal("-1120.24"),
    }  # fmt: skip
    assert (batch.payout, batch.payout_stated, batch.net_total, batch.fee_total) == (
        Decimal("1120.24"), True, Decimal("1120.24"), Decimal("44.42"),
    )  # fmt: skip


# --- Hostile files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, error, message, batch_id, mismatched",
    [
        ("stripe_line_does_not_add_up.csv", SettlementIntegrityError,
         "batch po_fkQk60UCZpLwE7nUVf9BHsI7, row 5 (charge, reference txn_DpfSDWKdevUv23HOt948PBfr): gross 258.83"
         " - fees 7.81 (fee 7.81) = 251.02, but the report's net is 251.01 (difference -0.01)",
         "po_fkQk60UCZpLwE7nUVf9BHsI7", [{"field": "net", "expected": "251.02", "actual": "251.01"}]),
        ("stripe_payout_does_not_sum.csv", SettlementIntegrityError,
         "batch po_AJIKX7PYJDZ9JNd1NNkKLjzU (rows 1-10): the net of its lines sums to 1483.99 USD, but the"
         " closing line(s) (row 10) state payout 1483.98 (difference 0.01)",
         "po_AJIKX7PYJDZ9JNd1NNkKLjzU", [{"field": "payout", "expected": "1483.99", "actual": "1483.98"}]),
        ("stripe_wrong_currency.csv", SettlementIntegrityError,
         "batch po_4EJvhwkhjcIhMw4OVOU69kss, row 7 (charge, reference txn_XOQT9O3MnY22uagW2OcQ1Vhh): currency EUR"
         " is not the expected currency USD",
         "po_4EJvhwkhjcIhMw4OVOU69kss", [{"field": "currency", "expected": "USD", "actual": "EUR"}]),
        ("stripe_non_decimal_amount.csv", InvalidInputError,
         "row 4, batch po_HhrAbE7AZ7baB7CXPcCNjiPs: gross '$231.56' is not a decimal number", None, None),
        ("stripe_truncated.csv", InvalidInputError,
         "line 9: not valid CSV (unexpected end of data): the file ends inside a quoted cell, is it cut short?",
         None, None),
    ],
)  # fmt: skip
def test_each_hostile_file_is_refused_with_the_named_error(name, error, message, batch_id, mismatched):
    with pytest.raises(error) as caught:
        read(DATA / name)
    assert type(caught.value) is error
    assert str(caught.value) == message
    if mismatched is not None:
        assert (caught.value.batch_id, caught.value.mismatched_fields) == (batch_id, mismatched)


@pytest.mark.parametrize(
    "cells, message",
    [({"automatic_payout_id": ""}, "automatic_payout_id is empty: only balance transactions paid out by an automatic"
                                   " payout can be reconciled per payout"),
     ({"balance_transaction_id": ""}, "balance_transaction_id is missing"),
     ({"reporting_category": ""}, "reporting_category is missing"),
     ({"currency": "us"}, "currency 'us' is not an ISO 4217 code"),
     ({"gross": "10.00 USD"}, "gross '10.00 USD' is not a decimal number"),
     ({"fee": "0.123456"}, "fee '0.123456' has more than 4 decimal places"),
     ({"net": ""}, "net '' is not a decimal number"),
     ({"created_utc": "1764670000"}, "created_utc '1764670000' is not a date and time like 2026-11-02 09:15:22"),
     ({"created_utc": ""}, "created_utc is missing"),
     ({"payment_metadata[order_id]": "x" * 256},
      "payment_metadata[order_id] is 256 characters long; the limit is 255")],
)  # fmt: skip
def test_a_bad_row_is_refused_naming_row_column_and_value(cells, message):
    with pytest.raises(InvalidInputError) as caught:
        read(report_bytes([{**charge(1, "10.00", "0.59", "9.41"), **cells}]))
    assert not isinstance(caught.value, SettlementIntegrityError)
    prefix = "row 1: " if cells.get("automatic_payout_id") == "" else "row 1, batch po_1: "
    assert str(caught.value).startswith(prefix) and message in str(caught.value)


@pytest.mark.parametrize(
    "gross, fee, net",
    [("10.00", "0.59", "9.42"), ("-10.00", "0.00", "10.00"), ("10.00", "-0.59", "9.41")],
)  # fmt: skip
def test_a_row_whose_net_is_not_gross_minus_fee_is_refused(gross, fee, net):
    with pytest.raises(SettlementIntegrityError, match=r"^batch po_1, row 1 \(charge, reference txn_1\)"):
        read(report_bytes([charge(1, gross, fee, net)]))


def test_a_refund_that_adds_money_is_refused():
    refund = charge(2, "5.00", "0.00", "5.00", reporting_category="refund")
    with pytest.raises(SettlementIntegrityError, match="a refund moves money out of the merchant's balance"):
        read(report_bytes([charge(1, "10.00", "0.59", "9.41"), refund]))


def test_the_order_id_column_is_required_and_can_be_renamed():
    header = [*HEADER[:-1], "payment_metadata[orderRef]"]
    row = {**charge(1, "10.00", "0.59", "9.41"), "payment_metadata[orderRef]": "ORD-77"}
    with pytest.raises(InvalidInputError, match=r"missing column\(s\) payment_metadata\[order_id\]"):
        read(report_bytes([row], header=header))
    lines, _ = read(report_bytes([row], header=header), order_id_column="payment_metadata[orderRef]")
    assert lines[0].order_id == "ORD-77" and "payment_metadata[orderRef]" not in lines[0].metadata


def test_other_categories_are_kept_and_count_in_their_payout():
    adjustment = charge(2, "-1.50", "0.00", "-1.50", reporting_category="other_adjustment", charge_id="")
    lines, [batch] = read(report_bytes([charge(1, "10.00", "0.59", "9.41"), adjustment]))
    assert (lines[1].kind, lines[1].psp_type, lines[1].psp_reference, lines[1].net) == (
        LineKind.OTHER, "other_adjustment", "pi_2", Decimal("-1.50"),
    )  # fmt: skip
    assert batch.payout == Decimal("7.91")


def test_created_utc_may_carry_an_offset_and_upper_case_currencies_are_accepted():
    row = charge(1, "10.00", "0.59", "9.41", created_utc="2026-11-02T10:00:00+02:00", currency="USD")
    lines, _ = read(report_bytes([row]))
    assert lines[0].booked_at == dt.datetime(2026, 11, 2, 8, tzinfo=UTC)


def test_a_payout_row_without_its_transactions_is_refused():
    row = charge(9, "-9.41", "0.00", "-9.41", automatic_payout_id="", reporting_category="payout", source_id="po_1")
    with pytest.raises(SettlementIntegrityError, match=r"batch po_1 \(rows 1-1\): the net of its lines sums to 0 USD"):
        read(report_bytes([row]))


# --- Invariants -------------------------------------------------------------------------------------


def cents(amount: int) -> str:
    return f"{'-' if amount < 0 else ''}{abs(amount) // 100}.{abs(amount) % 100:02d}"


SIGN = {"charge": 1, "refund": -1, "dispute": -1, "dispute_reversal": 1, "fee": -1, "other_adjustment": -1}


@st.composite
def payouts(draw):
    """(payout id, rows, Σ net in cents, with a payout row?) of one automatic payout."""
    payout_id = "po_" + draw(st.text("abcdefXYZ0123456789", min_size=4, max_size=24))
    rows, balance = [], 0
    for n in range(draw(st.integers(1, 25))):
        category = draw(st.sampled_from(sorted(SIGN)))
        gross = SIGN[category] * draw(st.integers(0 if category == "other_adjustment" else 1, 10_000_000))
        fee = draw(st.integers(-2_000, 5_000)) if category not in ("fee", "refund") else 0
        rows.append(charge(n, cents(gross), cents(fee), cents(gross - fee), payout_id, reporting_category=category))
        balance += gross - fee
    stated = draw(st.booleans())
    if stated:
        rows.append(charge(999, cents(-balance), "0.00", cents(-balance), "", reporting_category="payout",
                           source_id=payout_id))  # fmt: skip
    return payout_id, rows, balance, stated


@settings(max_examples=100, deadline=None)
@given(payouts())
def test_a_consistent_payout_always_parses_and_its_net_is_its_payout(generated):
    payout_id, rows, balance, stated = generated
    lines, [batch] = read(report_bytes(rows))
    assert (len(lines), batch.batch_id, batch.payout_stated) == (len(rows), payout_id, stated)
    assert batch.payout == batch.net_total == Decimal(cents(balance))


@settings(max_examples=100, deadline=None)
@given(payouts(), st.data())
def test_any_amount_off_by_one_cent_is_refused_naming_its_payout(generated, data):
    payout_id, rows, _, _ = generated
    row = data.draw(st.sampled_from(rows))
    column = data.draw(st.sampled_from(["gross", "fee", "net"]))
    row[column] = str(Decimal(row[column]) + data.draw(st.sampled_from([Decimal("0.01"), Decimal("-0.01")])))
    with pytest.raises(SettlementIntegrityError) as caught:
        read(report_bytes(rows))
    assert caught.value.batch_id == payout_id
    assert str(caught.value).startswith(f"batch {payout_id}")
