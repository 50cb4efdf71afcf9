"""Adyen Settlement details reports: exact figures of the fixtures, every hostile file refused, invariants.

No database: the parser only reads files. Figures are written out, not recomputed, so that a
change in the parser's arithmetic shows up as a failing number.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import tracemalloc
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recon.errors import InvalidInputError
from recon.ingest.adyen import read_adyen_settlement
from recon.ingest.settlement import Flow, LineKind, SettlementIntegrityError, SettlementLine

DATA = Path(__file__).parents[1] / "data" / "settlement"
UTC = dt.timezone.utc
HEADER = [
    "Company Account", "Merchant Account", "Psp Reference", "Merchant Reference", "Payment Method", "Creation Date",
    "TimeZone", "Type", "Modification Reference", "Gross Currency", "Gross Debit (GC)", "Gross Credit (GC)",
    "Exchange Rate", "Net Currency", "Net Debit (NC)", "Net Credit (NC)", "Commission (NC)", "Markup (NC)",
    "Scheme Fees (NC)", "Interchange (NC)", "Payment Method Variant", "Modification Merchant Reference", "Batch Number",
]  # fmt: skip
AMOUNT_COLUMNS = [
    "Gross Debit (GC)", "Gross Credit (GC)", "Net Debit (NC)", "Net Credit (NC)", "Commission (NC)", "Markup (NC)",
    "Scheme Fees (NC)", "Interchange (NC)",
]  # fmt: skip


def read(path_or_stream, currency: str = "EUR"):
    report = read_adyen_settlement(path_or_stream, currency)
    lines = list(report)
    return lines, report.batches


def report_bytes(rows: list[dict[str, str]], header: list[str] = HEADER) -> io.BytesIO:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, header, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return io.BytesIO(buffer.getvalue().encode())


def settled(reference: str, gross: str, net: str, batch: str = "4", **cells: str) -> dict[str, str]:
    return {
        "Company Account": "AcmeGroup", "Merchant Account": "AcmeShopEUR", "Psp Reference": f"PSP{reference}",
        "Merchant Reference": f"ORD-{reference}", "Creation Date": "2026-11-03 10:00:00", "TimeZone": "CET",
        "Type": "Settled", "Modification Reference": f"MOD{reference}", "Gross Currency": "EUR",
        "Gross Credit (GC)": gross, "Net Currency": "EUR", "Net Credit (NC)": net, "Batch Number": batch, **cells,
    }  # fmt: skip


def payout(amount: str, batch: str = "4", **cells: str) -> dict[str, str]:
    return {
        "Company Account": "AcmeGroup", "Merchant Account": "AcmeShopEUR", "Creation Date": "2026-11-03 23:59:00",
        "TimeZone": "CET", "Type": "MerchantPayout", "Modification Reference": f"TX{batch}XT", "Net Currency": "EUR",
        "Net Debit (NC)": amount, "Batch Number": batch, **cells,
    }  # fmt: skip


# --- A day of sales: batch 4 ------------------------------------------------------------------------


def test_batch_4_pays_out_exactly_what_its_lines_add_up_to():
    lines, batches = read(DATA / "adyen_batch_4.csv")

    assert Counter(line.kind for line in lines) == {
        LineKind.PAYMENT: 300, LineKind.REFUND: 6, LineKind.CHARGEBACK: 1, LineKind.CHARGEBACK_REVERSAL: 1,
        LineKind.FEE: 1, LineKind.PAYOUT: 1,
    }  # fmt: skip
    assert [line.position for line in lines] == list(range(1, 311))
    assert sum(line.gross for line in lines if line.kind is LineKind.PAYMENT) == Decimal("75661.72")
    components = Counter()
    for line in lines:
        components.update(line.fees)
    assert components == {
        "Commission": Decimal("307.01"), "Markup": Decimal("318.49"), "Scheme Fees": Decimal("14.72"),
        "Interchange": Decimal("159.28"), "Fee": Decimal("12.40"),
    }  # fmt: skip
    assert len({line.natural_key for line in lines}) == 310

    [batch] = batches
    assert (batch.batch_id, batch.currency, batch.line_count) == ("4", "EUR", 310)
    assert batch.net_by_kind == {
        LineKind.PAYMENT: Decimal("74877.88"), LineKind.REFUND: Decimal("-996.76"),
        LineKind.CHARGEBACK: Decimal("-119.15"), LineKind.CHARGEBACK_REVERSAL: Decimal("129.90"),
        LineKind.FEE: Decimal("-12.40"), LineKind.PAYOUT: Decimal("-73879.47"),
    }  # fmt: skip
    assert batch.fee_total == Decimal("811.90")
    assert batch.net_total == batch.payout == Decimal("73879.47")
    assert (batch.payout_stated, batch.carried_balance) == (True, 0)
    assert (batch.first_position, batch.last_position) == (1, 310)


def test_batch_4_lines_carry_their_references_figures_and_booking_time():
    lines, _ = read(DATA / "adyen_batch_4.csv")
    first, chargeback, reversal, fee, payout_line = lines[0], lines[306], lines[307], lines[308], lines[309]

    assert first == SettlementLine(
        kind=LineKind.PAYMENT, psp_type="Settled", line_reference="8813678806651409",
        psp_reference="1310498725211298", order_id="ORD-100001", batch_id="4", currency="EUR", flow=Flow.IN,
        gross=Decimal("159.69"),
        fees={"Commission": Decimal("0.11"), "Markup": Decimal("0.96"), "Scheme Fees": Decimal("0.05"),
              "Interchange": Decimal("0.48")},
        net=Decimal("158.09"),
        booked_at=dt.datetime(2026, 11, 3, 16, 53, 19, tzinfo=UTC),  # 17:53:19 CET
        position=1,
        metadata={"Company Account": "AcmeGroup", "Merchant Account": "AcmeShopEUR", "Payment Method": "mc",
                  "Creation Date": "2026-11-03 17:53:19", "TimeZone": "CET",
                  "Modification Reference": "8813678806651409", "Exchange Rate": "1",
                  "Payment Method Variant": "mccredit", "Booking Date": "2026-11-03 17:53:19",
                  "Booking Date TimeZone": "CET"},
    )  # fmt: skip
    assert first.natural_key == ("8813678806651409", "Settled", "4")
    assert (chargeback.kind, chargeback.order_id, chargeback.flow, chargeback.gross, chargeback.fees) == (
        LineKind.CHARGEBACK, "ORD-100251", Flow.OUT, Decimal("104.15"), {"Commission": Decimal("15.00")},
    )  # fmt: skip
    assert chargeback.net == Decimal("-119.15")
    assert (reversal.psp_type, reversal.flow, reversal.gross, reversal.fee_total, reversal.net) == (
        "ChargebackReversed", Flow.IN, Decimal("129.90"), 0, Decimal("129.90"),
    )  # fmt: skip
    assert (fee.kind, fee.natural_key, fee.gross, fee.fees, fee.net, fee.order_id, fee.psp_reference) == (
        LineKind.FEE, ("Transaction Fees November 2026", "Fee", "4"), 0, {"Fee": Decimal("12.40")},
        Decimal("-12.40"), None, None,
    )  # fmt: skip
    assert (payout_line.kind, payout_line.natural_key, payout_line.flow, payout_line.gross, payout_line.net) == (
        LineKind.PAYOUT, ("TX4821937650XT", "MerchantPayout", "4"), Flow.OUT, Decimal("73879.47"),
        Decimal("-73879.47"),
    )  # fmt: skip
    assert payout_line.booked_at == dt.datetime(2026, 11, 3, 22, 59, tzinfo=UTC)
    refunds = [line for line in lines if line.kind is LineKind.REFUND]
    assert all(r.flow is Flow.OUT and r.fees == {"Commission": Decimal("0.11")} for r in refunds)
    assert sum(r.gross for r in refunds) == Decimal("996.10")
    assert {r.order_id for r in refunds} <= {line.order_id for line in lines if line.kind is LineKind.PAYMENT}


# --- Carrying a balance to the next batch -------------------------------------------------------------


def test_a_batch_in_deficit_pays_nothing_and_carries_the_deficit_to_the_next_batch():
    lines, [batch] = read(DATA / "adyen_batch_5_carry_over.csv")

    assert Counter(line.kind for line in lines) == {
        LineKind.PAYMENT: 4, LineKind.REFUND: 1, LineKind.CHARGEBACK: 1, LineKind.FEE: 1,
        LineKind.BALANCE_TO_NEXT_BATCH: 1,
    }  # fmt: skip
    assert (batch.batch_id, batch.payout, batch.payout_stated) == ("5", None, False)
    assert batch.net_total == batch.carried_balance == Decimal("-468.35")
    assert batch.fee_total == Decimal("22.76")
    transfer = lines[-1]
    assert (transfer.natural_key, transfer.flow, transfer.net) == (
        ("Balancetransfer to batch 6", "Balancetransfer", "5"), Flow.IN, Decimal("468.35"),
    )  # fmt: skip


def test_the_next_batch_takes_the_deficit_over_and_pays_out_the_rest():
    lines, [batch] = read(DATA / "adyen_batch_6_after_carry_over.csv")

    transfer = lines[0]
    assert (transfer.kind, transfer.natural_key, transfer.net) == (
        LineKind.BALANCE_FROM_PREVIOUS_BATCH, ("Balancetransfer from batch 5", "Balancetransfer", "6"),
        Decimal("-468.35"),
    )  # fmt: skip
    assert batch.net_by_kind[LineKind.PAYMENT] == Decimal("9656.85")
    assert batch.net_total == batch.payout == Decimal("9188.50")  # 9656.85 - 468.35
    assert (batch.line_count, batch.carried_balance, batch.fee_total) == (42, 0, Decimal("134.63"))


def test_a_balance_transfer_that_names_no_batch_is_an_ordinary_line():
    transfer = {
        **payout("10.00"), "Type": "Balancetransfer", "Modification Reference": "Balancetransfer",
        "Net Debit (NC)": "", "Net Credit (NC)": "10.00", "Modification Merchant Reference": "from AcmeShopUSD",
    }  # fmt: skip
    lines, [batch] = read(report_bytes([settled("1", "5.00", "5.00"), transfer, payout("15.00")]))
    assert (lines[1].kind, lines[1].psp_type, lines[1].net) == (LineKind.OTHER, "Balancetransfer", Decimal("10.00"))
    assert batch.payout == Decimal("15.00")


# --- Hostile files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, error, message, mismatched",
    [
        ("adyen_line_does_not_add_up.csv", SettlementIntegrityError,
         "batch 7, row 4 (Settled, reference 7593441800941814): gross 489.77 - fees 12.35 (Commission 12.35)"
         " = 477.42, but the report's net is 477.43 (difference 0.01)",
         [{"field": "net", "expected": "477.42", "actual": "477.43"}]),
        ("adyen_batch_does_not_sum.csv", SettlementIntegrityError,
         "batch 7 (rows 1-10): the net of its lines sums to 1515.62 EUR, but the closing line(s) (row 10)"
         " state payout 1515.63 (difference -0.01)",
         [{"field": "payout", "expected": "1515.62", "actual": "1515.63"}]),
        ("adyen_wrong_currency.csv", SettlementIntegrityError,
         "batch 7, row 6 (Settled, reference 3957349192038640): currency USD is not the expected currency EUR",
         [{"field": "currency", "expected": "EUR", "actual": "USD"}]),
        ("adyen_truncated_before_payout.csv", SettlementIntegrityError,
         "batch 7 (rows 1-9) has no closing line (a MerchantPayout, or a Balancetransfer to the next batch):"
         " its lines sum to 918.92 EUR but nothing says where that goes. Is the report cut short, or the batch"
         " still open?", []),
        ("adyen_non_decimal_amount.csv", InvalidInputError,
         "row 5, batch 7: Gross Credit (GC) '326,14' is not a decimal number", None),
        ("adyen_float_amount.csv", InvalidInputError,
         "row 7, batch 7: Net Credit (NC) '461.340000000001' has more than 4 decimal places", None),
        ("adyen_truncated_mid_row.csv", InvalidInputError,
         "row 10 has 8 fields but the header has 25: is the file cut short, or a comma left unquoted?", None),
        ("adyen_not_utf8.csv", InvalidInputError,
         "line 3: the file is not UTF-8 text (byte 0xe9 at byte 43 of the line cannot be decoded):"
         " export the report as UTF-8 CSV", None),
    ],
)  # fmt: skip
def test_each_hostile_file_is_refused_with_the_named_error(name, error, message, mismatched):
    with pytest.raises(error) as caught:
        read(DATA / name)
    assert type(caught.value) is error
    assert str(caught.value) == message
    if mismatched is not None:
        assert caught.value.batch_id == "7"
        assert caught.value.mismatched_fields == mismatched


def test_the_wrong_expected_currency_refuses_the_first_line():
    expected = r"^batch 4, row 1 .*: currency EUR is not the expected currency GBP$"
    with pytest.raises(SettlementIntegrityError, match=expected):
        read(DATA / "adyen_batch_4.csv", "GBP")


@pytest.mark.parametrize(
    "cells, message",
    [({"Gross Currency": "USD"}, "Gross Currency 'USD' differs from Net Currency 'EUR': settlements with currency"
                                 " conversion are not supported"),
     ({"Gross Debit (GC)": "5.00"}, "both Gross Debit (GC) and Gross Credit (GC) are set (5.00, 5.00)"),
     ({"Net Debit (NC)": "1.00"}, "both Net Debit (NC) and Net Credit (NC) are set (1.00, 5.00)"),
     ({"Gross Credit (GC)": "-5.00"}, "Gross Credit (GC) '-5.00' must not be negative"),
     ({"Net Currency": "eur"}, "Net Currency 'eur' is not an ISO 4217 code"),
     ({"Markup (NC)": "0.1.0"}, "Markup (NC) '0.1.0' is not a decimal number"),
     ({"Batch Number": ""}, "Batch Number is missing"),
     ({"Batch Number": "4a"}, "Batch Number '4a' is not a batch number (digits only)"),
     ({"Type": ""}, "Type is missing"),
     ({"Gross Credit (GC)": ""}, "a Settled line needs its Gross Debit (GC) or Gross Credit (GC), both are empty"),
     ({"Modification Reference": "", "Psp Reference": ""}, "the line has no reference"),
     ({"Merchant Reference": "x" * 256}, "Merchant Reference is 256 characters long; the limit is 255"),
     ({"Creation Date": "03/11/2026 10:00"}, "Creation Date '03/11/2026 10:00' is not a date and time like"),
     ({"Creation Date": ""}, "Creation Date is missing"),
     ({"TimeZone": "CST"}, "TimeZone 'CST' is not a time zone this parser knows"),
     ({"TimeZone": "Mars/Olympus"}, "TimeZone 'Mars/Olympus' is not a time zone this parser knows")],
)  # fmt: skip
def test_a_bad_row_is_refused_naming_row_column_and_value(cells, message):
    row = settled("1", "5.00", "5.00", **cells)
    with pytest.raises(InvalidInputError) as caught:
        read(report_bytes([row, payout("5.00")]))
    assert not isinstance(caught.value, SettlementIntegrityError)
    batch = cells.get("Batch Number", "4")
    assert str(caught.value).startswith("row 1" + (f", batch {batch}: " if batch.isdigit() else ": "))
    assert message in str(caught.value)


def test_every_problem_of_a_row_is_listed_at_once():
    row = settled("1", "5,00", "abc", **{"Net Currency": "EURO", "TimeZone": "XYZ"})
    with pytest.raises(InvalidInputError) as caught:
        read(report_bytes([row]))
    assert str(caught.value).count(";") == 3  # four problems


def test_one_merchant_account_per_file():
    other = settled("2", "1.00", "1.00", **{"Merchant Account": "AcmeShopUSD"})
    expected = r"row 2: Merchant Account 'AcmeShopUSD' differs from 'AcmeShopEUR' \(row 1\)"
    with pytest.raises(InvalidInputError, match=expected):
        read(report_bytes([settled("1", "5.00", "5.00"), other, payout("6.00")]))


def test_missing_columns_are_named():
    expected = r"bad adyen-settlement header: missing column\(s\) Batch Number \(found"
    with pytest.raises(InvalidInputError, match=expected):
        read(report_bytes([settled("1", "5.00", "5.00")], header=HEADER[:-1]))


# --- Dates, types, fee-only lines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "zone, utc_hour",
    [("CET", 9), ("CEST", 8), ("BST", 9), ("UTC", 10), ("GMT", 10), ("PST", 18), ("Europe/Amsterdam", 9),
     ("America/New_York", 15)],
)  # fmt: skip
def test_creation_dates_are_read_in_their_time_zone(zone, utc_hour):
    lines, _ = read(report_bytes([settled("1", "5.00", "5.00", TimeZone=zone), payout("5.00")]))
    assert lines[0].booked_at == dt.datetime(2026, 11, 3, utc_hour, tzinfo=UTC)


def test_the_booking_date_wins_over_the_creation_date_when_the_report_has_it():
    header = [*HEADER, "Booking Date", "Booking Date TimeZone"]
    row = settled("1", "5.00", "5.00", **{"Booking Date": "2026-11-04 01:30:00", "Booking Date TimeZone": "CET"})
    lines, _ = read(report_bytes([row, payout("5.00")], header=header))
    assert lines[0].booked_at == dt.datetime(2026, 11, 4, 0, 30, tzinfo=UTC)
    assert lines[1].booked_at == dt.datetime(2026, 11, 3, 22, 59, tzinfo=UTC)  # no booking date: creation date


def test_unknown_types_are_kept_as_other_lines_and_count_in_the_batch():
    correction = {**payout("2.50"), "Type": "DepositCorrection", "Modification Reference": "Deposit Nov 2026"}
    lines, [batch] = read(report_bytes([settled("1", "10.00", "10.00"), correction, payout("7.50")]))
    assert (lines[1].kind, lines[1].psp_type, lines[1].flow, lines[1].gross, lines[1].net) == (
        LineKind.OTHER, "DepositCorrection", Flow.OUT, Decimal("2.50"), Decimal("-2.50"),
    )  # fmt: skip
    assert batch.net_by_kind == {
        LineKind.PAYMENT: 10, LineKind.OTHER: Decimal("-2.50"), LineKind.PAYOUT: Decimal("-7.50"),
    }  # fmt: skip


def test_a_fee_line_with_fee_columns_is_checked_against_them():
    cost = {**payout("0.30"), "Type": "PaymentCost", "Psp Reference": "PSP1", "Modification Reference": "COST1",
            "Commission (NC)": "0.30"}  # fmt: skip
    lines, _ = read(report_bytes([settled("1", "5.00", "5.00"), cost, payout("4.70")]))
    assert (lines[1].kind, lines[1].gross, lines[1].fees, lines[1].net) == (
        LineKind.FEE, 0, {"Commission": Decimal("0.30")}, Decimal("-0.30"),
    )  # fmt: skip
    cost["Commission (NC)"] = "0.31"
    expected = r"batch 4, row 2 \(PaymentCost, reference COST1\): gross 0 - fees 0.31"
    with pytest.raises(SettlementIntegrityError, match=expected):
        read(report_bytes([settled("1", "5.00", "5.00"), cost, payout("4.70")]))


def test_a_settled_payment_smaller_than_its_fees_has_a_net_debit():
    row = settled("1", "0.10", "", **{"Net Debit (NC)": "0.05", "Commission (NC)": "0.15"})
    lines, [batch] = read(report_bytes([row, payout("", **{"Net Credit (NC)": "0.05"})]))  # Adyen debits the bank
    assert (lines[0].flow, lines[0].gross, lines[0].net) == (Flow.IN, Decimal("0.10"), Decimal("-0.05"))
    assert batch.payout == Decimal("-0.05")


# --- Invariants -------------------------------------------------------------------------------------


def cents(amount: int) -> str:
    return f"{'-' if amount < 0 else ''}{abs(amount) // 100}.{abs(amount) % 100:02d}"


@st.composite
def balanced_batches(draw):
    """(batch number, rows) of one Adyen batch whose lines add up and that closes with a payout or a carry."""
    batch = str(draw(st.integers(1, 999_999)))
    rows, balance = [], 0
    for n in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["Settled", "Refunded", "Chargeback", "ChargebackReversed", "Fee"]))
        fees = draw(st.dictionaries(st.sampled_from(AMOUNT_COLUMNS[4:]), st.integers(0, 5_000), max_size=4))
        row = {
            "Merchant Account": "M", "Psp Reference": f"P{n}", "Merchant Reference": f"ORD-{n}",
            "Creation Date": "2026-11-03 10:00:00", "TimeZone": "UTC", "Type": kind, "Modification Reference": f"R{n}",
            "Net Currency": "EUR", "Batch Number": batch, **{column: cents(fee) for column, fee in fees.items()},
        }  # fmt: skip
        if kind == "Fee":
            net = -draw(st.integers(1, 100_000))
            row = {key: value for key, value in row.items() if key not in AMOUNT_COLUMNS}
        else:
            gross = draw(st.integers(1, 10_000_000)) * (1 if kind in ("Settled", "ChargebackReversed") else -1)
            gross_column = "Gross Credit (GC)" if gross > 0 else "Gross Debit (GC)"
            row.update({"Gross Currency": "EUR", gross_column: cents(abs(gross))})
            net = gross - sum(fees.values())
        row["Net Credit (NC)" if net >= 0 else "Net Debit (NC)"] = cents(abs(net))
        rows.append(row)
        balance += net
    carry = balance < 0 or draw(st.booleans())
    closing = {
        "Merchant Account": "M", "Creation Date": "2026-11-03 23:59:00", "TimeZone": "UTC", "Net Currency": "EUR",
        "Batch Number": batch, "Net Debit (NC)" if balance >= 0 else "Net Credit (NC)": cents(abs(balance)),
    }  # fmt: skip
    if carry:
        closing.update({"Type": "Balancetransfer", "Modification Reference": "Balancetransfer",
                        "Modification Merchant Reference": f"Balancetransfer to batch {int(batch) + 1}"})  # fmt: skip
    else:
        closing.update({"Type": "MerchantPayout", "Modification Reference": f"TX{batch}XT"})
    return batch, [*rows, closing], balance, carry


@settings(max_examples=100, deadline=None)
@given(balanced_batches())
def test_a_balanced_batch_always_parses_and_its_net_is_its_payout_or_carried_balance(generated):
    batch_id, rows, balance, carry = generated
    lines, [batch] = read(report_bytes(rows))
    assert len(lines) == len(rows) and batch.batch_id == batch_id
    assert batch.net_total == Decimal(cents(balance)) == sum((line.net for line in lines[:-1]), Decimal(0))
    if carry:
        assert (batch.payout, batch.carried_balance) == (None, batch.net_total)
    else:
        assert (batch.payout, batch.carried_balance) == (batch.net_total, 0)


@settings(max_examples=100, deadline=None)
@given(balanced_batches(), st.data())
def test_any_amount_off_by_one_cent_is_refused_naming_its_batch(generated, data):
    batch_id, rows, _, _ = generated
    row = data.draw(st.sampled_from(rows))
    column = data.draw(st.sampled_from([c for c in AMOUNT_COLUMNS if row.get(c)]))
    cent = data.draw(st.sampled_from([1, -1])) if Decimal(row[column]) >= Decimal("0.01") else 1
    row[column] = str(Decimal(row[column]) + Decimal(cent) / 100)
    with pytest.raises(SettlementIntegrityError) as caught:
        read(report_bytes(rows))
    assert caught.value.batch_id == batch_id
    assert str(caught.value).startswith(f"batch {batch_id}")


# --- Streaming ----------------------------------------------------------------------------------------


def write_generated_report(path: Path, settled_rows: int) -> None:
    """A one-batch report of `settled_rows` Settled lines and its payout, written row by row."""
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, HEADER, lineterminator="\n")
        writer.writeheader()
        for n in range(settled_rows):
            writer.writerow(settled(str(n), "12.34", "12.00", **{"Markup (NC)": "0.30", "Interchange (NC)": "0.04"}))
        writer.writerow(payout(str(Decimal("12.00") * settled_rows)))


def traced_peak(action):
    tracemalloc.start()
    try:
        result = action()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def count_lines(path: Path):
    report = read_adyen_settlement(path, "EUR")
    count = sum(1 for _ in report)
    return count, report.batches


def test_a_large_report_streams_in_bounded_memory(tmp_path):
    """Peak memory does not grow with the number of lines: 20x the rows, about the same peak."""
    small, big, rows = tmp_path / "small.csv", tmp_path / "big.csv", 10_000
    write_generated_report(small, rows // 20)
    write_generated_report(big, rows)

    _, small_peak = traced_peak(lambda: count_lines(small))
    (count, [batch]), peak = traced_peak(lambda: count_lines(big))

    assert (count, batch.line_counts, batch.payout) == (
        rows + 1, {LineKind.PAYMENT: rows, LineKind.PAYOUT: 1}, Decimal("120000.00"),
    )  # fmt: skip
    print(f"file {big.stat().st_size / 1e6:.1f} MB: peak {peak / 1e6:.2f} MB ({small_peak / 1e6:.2f} MB for 1/20)")
    assert peak < 1.5 * small_peak
    assert peak < big.stat().st_size / 10
