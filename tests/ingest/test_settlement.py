"""The neutral settlement model: line checks, amounts, format detection, reading limits, fixtures.

No database: these modules only read files.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
from decimal import Decimal
from pathlib import Path

import pytest

from recon.errors import InvalidInputError
from recon.ingest import settlement
from recon.ingest.adyen import read_adyen_settlement
from recon.ingest.settlement import (
    FORMAT_ADYEN,
    FORMAT_STRIPE,
    Flow,
    LineKind,
    SettlementIntegrityError,
    SettlementLine,
    detect_settlement_format,
    parse_signed_amount,
    parse_unsigned_amount,
)
from recon.ingest.stripe import read_stripe_payouts

DATA = Path(__file__).parents[1] / "data" / "settlement"
UTC = dt.timezone.utc
ADYEN_HEADER = (
    "Company Account,Merchant Account,Psp Reference,Merchant Reference,Payment Method,Creation Date,TimeZone,"
    "Type,Modification Reference,Gross Currency,Gross Debit (GC),Gross Credit (GC),Exchange Rate,Net Currency,"
    "Net Debit (NC),Net Credit (NC),Commission (NC),Markup (NC),Scheme Fees (NC),Interchange (NC),"
    "Payment Method Variant,Modification Merchant Reference,Batch Number"
)
STRIPE_HEADER = (
    "automatic_payout_id,balance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,"
    "source_id,charge_id,payment_metadata[order_id]"
)


def line(**overrides) -> SettlementLine:
    fields = dict(
        kind=LineKind.PAYMENT, psp_type="Settled", line_reference="MOD1", psp_reference="PSP1", order_id="ORD-1",
        batch_id="4", currency="EUR", flow=Flow.IN, gross=Decimal("5.00"),
        fees={"Markup": Decimal("0.04"), "Interchange": Decimal("0.07")}, net=Decimal("4.89"),
        booked_at=dt.datetime(2026, 11, 3, tzinfo=UTC), position=17, metadata={},
    )  # fmt: skip
    return SettlementLine(**{**fields, **overrides})


# --- SettlementLine -------------------------------------------------------------------------------


def test_a_line_that_adds_up_exposes_its_totals_and_key():
    payment = line()
    assert (payment.signed_gross, payment.fee_total, payment.natural_key) == (
        Decimal("5.00"), Decimal("0.11"), ("MOD1", "Settled", "4"),
    )  # fmt: skip
    refund = line(kind=LineKind.REFUND, flow=Flow.OUT, fees={"Commission": Decimal("0.11")}, net=Decimal("-5.11"))
    assert refund.signed_gross == Decimal("-5.00")


def test_a_line_whose_net_is_not_gross_minus_fees_is_refused_with_its_figures():
    with pytest.raises(SettlementIntegrityError) as caught:
        line(net=Decimal("4.88"))
    error = caught.value
    assert str(error) == (
        "batch 4, row 17 (Settled, reference MOD1): gross 5.00 - fees 0.11 (Markup 0.04, Interchange 0.07)"
        " = 4.89, but the report's net is 4.88 (difference -0.01)"
    )
    assert (error.batch_id, error.position, error.error_type) == ("4", 17, "SettlementIntegrityError")
    assert error.mismatched_fields == [{"field": "net", "expected": "4.89", "actual": "4.88"}]
    assert isinstance(error, InvalidInputError)


@pytest.mark.parametrize(
    "kind, flow",
    [(LineKind.PAYMENT, Flow.OUT), (LineKind.REFUND, Flow.IN), (LineKind.CHARGEBACK, Flow.IN),
     (LineKind.CHARGEBACK_REVERSAL, Flow.OUT)],
)  # fmt: skip
def test_a_line_whose_money_moves_the_wrong_way_for_its_kind_is_refused(kind, flow):
    net = Decimal("4.89") if flow is Flow.IN else Decimal("-5.11")
    with pytest.raises(SettlementIntegrityError, match=f"a {kind} moves money") as caught:
        line(kind=kind, flow=flow, net=net)
    assert caught.value.mismatched_fields[0]["field"] == "flow"


def test_a_line_needs_an_aware_booking_time_and_a_non_negative_gross():
    with pytest.raises(InvalidInputError, match="has no time zone"):
        line(booked_at=dt.datetime(2026, 11, 3))
    with pytest.raises(InvalidInputError, match="must not be negative"):
        line(gross=Decimal("-5.00"), net=Decimal("-5.11"))


# --- Amounts --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, amount",
    [("12.30", "12.30"), ("-12.30", "-12.30"), ("+7", "7"), (" 0.5 ", "0.5"), ("-0.00", "0.00"), ("0", "0"),
     (".25", "0.25"), ("12.3456", "12.3456"), ("12.34560000", "12.3456"),
     ("9999999999999999.99", "9999999999999999.99")],
)  # fmt: skip
def test_report_amounts_are_plain_decimals(text, amount):
    parsed = parse_signed_amount(text, "Net Credit (NC)")
    assert parsed == Decimal(amount) and str(parsed) != "-0.00"


@pytest.mark.parametrize(
    "text, problem",
    [("12,30", "is not a decimal number"), ("1.234,50", "is not a decimal number"),
     ("$12.00", "is not a decimal number"), ("1e3", "is not a decimal number"), ("NaN", "is not a decimal number"),
     ("Infinity", "is not a decimal number"), ("", "is not a decimal number"),
     ("12.34567", "more than 4 decimal places"),
     ("0.30000000000000004", "more than 4 decimal places"), ("12345678901234567", "too large")],
)  # fmt: skip
def test_anything_else_is_refused_naming_column_and_value(text, problem):
    with pytest.raises(InvalidInputError) as caught:
        parse_signed_amount(text, "Net Credit (NC)")
    assert str(caught.value).startswith(f"Net Credit (NC) {text!r} ") and problem in str(caught.value)


def test_a_debit_or_credit_column_is_never_negative():
    assert parse_unsigned_amount("0.00", "Gross Debit (GC)") == 0
    with pytest.raises(InvalidInputError, match=r"Gross Debit \(GC\) '-5.00' must not be negative"):
        parse_unsigned_amount("-5.00", "Gross Debit (GC)")


# --- Format detection -------------------------------------------------------------------------------


def test_each_report_is_recognised_by_its_header_line():
    assert detect_settlement_format(ADYEN_HEADER) == FORMAT_ADYEN
    assert detect_settlement_format("\ufeff" + ADYEN_HEADER.upper() + "\r\n") == FORMAT_ADYEN
    quoted = ",".join(f'"{name}"' for name in ADYEN_HEADER.split(","))
    assert detect_settlement_format(quoted) == FORMAT_ADYEN
    assert detect_settlement_format(STRIPE_HEADER) == FORMAT_STRIPE
    for path in DATA.glob("*.csv"):
        first_line = path.read_bytes().decode("latin-1").splitlines()[0]  # headers are ASCII
        expected = FORMAT_ADYEN if path.name.startswith("adyen") else FORMAT_STRIPE
        assert detect_settlement_format(first_line) == expected, path.name


@pytest.mark.parametrize(
    "header",
    ["order_id,amount,currency,transaction_date,type", ADYEN_HEADER.replace("Batch Number", "Batch"),
     STRIPE_HEADER.replace("automatic_payout_id", "payout_id"), "", '"unterminated', "\x00\x01"],
)  # fmt: skip
def test_other_headers_are_not_recognised(header):
    assert detect_settlement_format(header) is None


# --- Reading: limits and broken files -----------------------------------------------------------------


def adyen_bytes(*rows: str, header: str = ADYEN_HEADER) -> io.BytesIO:
    return io.BytesIO(("\n".join([header, *rows]) + "\n").encode())


PAYOUT_ROW = "C,M,,,,2026-11-03 23:59:00,CET,MerchantPayout,TX1XT,,,,,EUR,4.89,,,,,,,,4"
SETTLED_ROW = "C,M,PSP1,ORD-1,visa,2026-11-03 10:00:00,CET,Settled,MOD1,EUR,,5.00,1,EUR,,4.89,,0.04,,0.07,visa,,4"


def read_adyen(source) -> list[SettlementLine]:
    return list(read_adyen_settlement(source, "EUR"))


def test_a_report_can_be_read_once_and_its_batches_exist_only_once_it_is_read_to_the_end():
    report = read_adyen_settlement(adyen_bytes(SETTLED_ROW, PAYOUT_ROW), "EUR")
    with pytest.raises(RuntimeError, match="read the report to the end first"):
        report.batches
    lines = iter(report)
    next(lines)
    with pytest.raises(RuntimeError, match="read the report to the end first"):
        report.batches
    assert [line.kind for line in lines] == [LineKind.PAYOUT]
    assert [batch.payout for batch in report.batches] == [Decimal("4.89")]
    with pytest.raises(RuntimeError, match="read only once"):
        list(report)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "the file is empty: expected a adyen-settlement header"),
     (b"\n\n", "the file is empty"),
     (ADYEN_HEADER.encode() + b"\n", "has no data rows: is the file cut short?"),
     (b"a,b\n1,2\n", "missing column(s) Merchant Account, Psp Reference"),
     (ADYEN_HEADER.encode() + b",Type\n", "column 'Type' appears twice"),
     (ADYEN_HEADER.encode() + b"\n" + SETTLED_ROW.encode() + b",extra\n", "row 1 has 24 fields but the header has 23"),
     (ADYEN_HEADER.encode() + b"\n" + SETTLED_ROW.encode()[:40], "row 1 has 7 fields but the header has 23"),
     (ADYEN_HEADER.encode() + b'\n"C\n', "the file ends inside a quoted cell, is it cut short?"),
     (ADYEN_HEADER.encode() + b'\n"C"x,M\n', "line 2: not valid CSV"),
     (ADYEN_HEADER.encode() + b"\nC,M\x00\n", "line 2 contains a NUL byte"),
     (ADYEN_HEADER.encode() + b"\n" + SETTLED_ROW.encode().replace(b"ORD-1", b"ORD-\xe9") + b"\n",
      "line 2: the file is not UTF-8 text (byte 0xe9 at byte 14 of the line"),
     (ADYEN_HEADER.encode("utf-16"), "line 1: the file is not UTF-8 text"),
     ("é".encode("latin-1") + ADYEN_HEADER.encode(), "line 1: the file is not UTF-8 text")],
)  # fmt: skip
def test_broken_files_are_refused_naming_the_line_or_row(content, message):
    with pytest.raises(InvalidInputError) as caught:
        read_adyen(io.BytesIO(content))
    assert message in str(caught.value)


def test_a_utf8_bom_and_crlf_line_ends_are_accepted():
    content = b"\xef\xbb\xbf" + (ADYEN_HEADER + "\r\n" + SETTLED_ROW + "\r\n" + PAYOUT_ROW + "\r\n").encode()
    assert [line.kind for line in read_adyen(io.BytesIO(content))] == [LineKind.PAYMENT, LineKind.PAYOUT]


def test_size_limits_are_named_in_their_errors(monkeypatch):
    long_cell = SETTLED_ROW.replace("visa,", "x" * (settlement.MAX_FIELD_CHARS + 1) + ",", 1)
    expected = r"row 1: Payment Method is 1,001 characters long; .*\(MAX_FIELD_CHARS\)"
    with pytest.raises(InvalidInputError, match=expected):
        read_adyen(adyen_bytes(long_cell))
    open_quote = ADYEN_HEADER + '\n"' + "x," * settlement.MAX_ROW_BYTES
    with pytest.raises(InvalidInputError, match=r"longer than 100,000 bytes \(MAX_ROW_BYTES\); is a quote left open"):
        read_adyen(io.BytesIO(open_quote.encode()))
    with pytest.raises(InvalidInputError, match=r"the header has 201 columns; the limit is 200 \(MAX_COLUMNS\)"):
        read_adyen(io.BytesIO((ADYEN_HEADER + ",x" * 178 + "\n").encode()))
    monkeypatch.setattr(settlement, "MAX_FILE_BYTES", 500)
    with pytest.raises(InvalidInputError, match=r"larger than 500 bytes \(MAX_FILE_BYTES\)"):
        read_adyen(adyen_bytes(SETTLED_ROW, PAYOUT_ROW))
    monkeypatch.setattr(settlement, "MAX_BATCHES", 1)
    monkeypatch.setattr(settlement, "MAX_FILE_BYTES", 10_000)
    with pytest.raises(InvalidInputError, match=r"row 2: the report has more than 1 batches \(MAX_BATCHES\)"):
        read_adyen(adyen_bytes(SETTLED_ROW, SETTLED_ROW.removesuffix(",4") + ",5"))


def test_only_paths_and_binary_streams_are_read(tmp_path):
    with pytest.raises(InvalidInputError, match="open it in 'rb' mode"):
        read_adyen(io.StringIO(ADYEN_HEADER))
    with pytest.raises(InvalidInputError, match="cannot open report file .*missing.csv"):
        read_adyen(tmp_path / "missing.csv")
    with pytest.raises(InvalidInputError, match="binary stream, got int"):
        read_adyen(42)
    stream = adyen_bytes(SETTLED_ROW, PAYOUT_ROW)
    read_adyen(stream)
    assert not stream.closed  # the caller's stream is the caller's to close


def test_the_expected_currency_is_an_iso_code():
    with pytest.raises(InvalidInputError, match="expected currency 'eur' is not an ISO 4217 code"):
        read_adyen_settlement(DATA / "adyen_batch_4.csv", "eur")
    with pytest.raises(InvalidInputError, match="expected currency 'US' is not an ISO 4217 code"):
        read_stripe_payouts(DATA / "stripe_payouts.csv", "US")


# --- Fixtures -----------------------------------------------------------------------------------------


def test_the_committed_fixtures_are_what_the_script_writes(tmp_path, monkeypatch):
    """The fixtures are generated; a hand edit (or a script change not re-run) shows up here."""
    spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "make_fixtures.py")
    assert spec is not None and spec.loader is not None
    make_fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_fixtures)
    monkeypatch.setattr(make_fixtures, "HERE", tmp_path)
    make_fixtures.main()
    written = {path.name: path.read_bytes() for path in tmp_path.glob("*.csv")}
    committed = {path.name: path.read_bytes() for path in DATA.glob("*.csv")}
    assert sorted(written) == sorted(committed)
    stale = [name for name in written if written[name] != committed[name]]
    assert not stale, f"run python {DATA / 'make_fixtures.py'} and commit: {stale}"
