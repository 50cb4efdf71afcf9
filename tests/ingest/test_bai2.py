"""BAI2: a prior-day and intraday file with its figures, control totals and record counts enforced."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

from recon.errors import InvalidInputError
from recon.ingest.bai2 import iter_bai2_lines, parse_bai2, to_decimal
from recon.ingest.statement import StatementIntegrityError

DATA = Path(__file__).resolve().parents[1] / "data" / "statements"
FIXTURE = DATA / "bai2_prior_day.bai"
ORDER_ID = r"ORD-\d+"
UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def statements():
    return parse_bai2(FIXTURE, expected_currency="USD", order_id_pattern=ORDER_ID)


def test_one_statement_per_account_report(statements):
    assert [(s.statement_id, s.account, s.currency, s.opening_balance, s.closing_balance, len(s.lines)) for s in statements] == [
        ("FILE0115/1/0123456789", "0123456789", "USD", None, None, 5),
        ("FILE0115/1/9876543210", "9876543210", "USD", None, None, 2),  # currency from the group header
        ("FILE0115/2/0123456789", "0123456789", "USD", None, None, 1),
    ]


def test_details_become_lines_with_exact_amounts(statements):
    operating = statements[0]
    assert [(l.entry_type, l.amount, l.status, l.natural_key) for l in operating.lines] == [
        ("CREDIT", Decimal("10000.00"), "booked", "0123456789|2026-01-14|165|10000|BR-0001"),
        ("CREDIT", Decimal("2500.00"), "booked", "0123456789|2026-01-14|115|2500|BR-0002"),
        ("CREDIT", Decimal("2500.00"), "booked", "0123456789|2026-01-14|195|2500|BR-0003"),
        ("DEBIT", Decimal("199.75"), "booked", "0123456789|2026-01-14|475|199.75|BR-0004"),
        ("DEBIT", Decimal("2500.00"), "booked", "0123456789|2026-01-14|495|2500|BR-0005"),
    ]
    # the file's 010 opening ledger 5,000.00 plus these details is its 015 closing ledger 17,300.25
    assert Decimal("5000.00") + operating.booked_total == Decimal("17300.25")


def test_detail_metadata(statements):
    assert statements[0].lines[0].metadata == {
        "bank_reference": "BR-0001",
        "customer_reference": "ORD-4001",
        "remittance": "ACH CREDIT ACME RETAIL INVOICE ORD-4001",
        "booking_date": "2026-01-14",
        "value_date": "2026-01-14",
        "bank_transaction_code": "165",
        "statement_id": "FILE0115/1/0123456789",
        "order_id": "ORD-4001",
    }


def test_continuation_records_join_the_text(statements):
    lockbox, wire = statements[0].lines[1], statements[0].lines[2]
    assert lockbox.metadata["remittance"] == "LOCKBOX DEPOSIT BATCH 77 CHECKS 12"
    assert wire.metadata["remittance"] == "INCOMING WIRE FROM GLOBEX CORP REF ORD-4002 PAYMENT OBI SETTLEMENT JAN"
    assert wire.metadata["order_id"] == "ORD-4002"
    assert "customer_reference" not in wire.metadata


def test_value_dated_detail_takes_its_availability_date(statements):
    lockbox = statements[0].lines[1]
    assert lockbox.effective_date == dt.datetime(2026, 1, 15, tzinfo=UTC)
    assert lockbox.booking_date == dt.date(2026, 1, 14)


def test_twins_get_distinct_keys_and_non_monetary_details_no_line(statements):
    savings = statements[1]
    assert [line.natural_key for line in savings.lines] == [
        "9876543210|2026-01-14|142|500|ORD-4004",
        "9876543210|2026-01-14|142|500|ORD-4004#2",
    ]
    assert all(line.metadata["bank_transaction_code"] == "142" for line in savings.lines)  # the 890 detail is left out


def test_intraday_group_lines_are_pending(statements):
    (line,) = statements[2].lines
    assert (line.entry_type, line.amount, line.status, line.booked) == ("CREDIT", Decimal("750.00"), "pending", False)


def test_streamed_lines_are_the_parsed_lines(statements):
    assert list(iter_bai2_lines(FIXTURE, order_id_pattern=ORDER_ID)) == [l for s in statements for l in s.lines]


@pytest.mark.parametrize(
    "minor, currency, units",
    [(12345, "USD", "123.45"), (12345, "JPY", "12345"), (12345, "KWD", "12.345"), (-5, "EUR", "-0.05"), (0, "USD", "0.00")],
)
def test_minor_units_convert_exactly(minor, currency, units):
    assert to_decimal(minor, currency) == Decimal(units)
    assert str(to_decimal(minor, currency)) == units


# --- integrity breaks and hostile files ---------------------------------------------------------


@pytest.mark.parametrize(
    "fixture, error, message",
    [
        (
            "hostile_bai2_account_total.bai", StatementIntegrityError,
            r"BAI2 file FILE0115 group 1 account 0123456789: the 49 account trailer gives control total 5769875"
            r" \(57698.75 USD\), but its amounts add up to 5769975 \(57699.75 USD\)",
        ),
        (
            "hostile_bai2_record_count.bai", StatementIntegrityError,
            "BAI2 file FILE0115 group 1 account 0123456789: the 49 account trailer gives record count 12, but it holds 13",
        ),
        (
            "hostile_bai2_file_total.bai", StatementIntegrityError,
            r"BAI2 file FILE0115: the 99 file trailer gives control total 7775100, but its amounts add up to 7775000",
        ),
        (
            "hostile_bai2_truncated.bai", InvalidInputError,
            r"the BAI2 file has no 99 file trailer \(its last record is '88,OBI SETTLEMENT JAN'\): is it truncated\?",
        ),
        ("hostile_bai2_latin1.bai", InvalidInputError, r"line 10 of the BAI2 file is not utf-8 text \(byte 0xd6"),
    ],
)
def test_hostile_file_is_refused_whole(fixture, error, message):
    with pytest.raises(error, match=message):
        parse_bai2(DATA / fixture)
    with pytest.raises(error, match=message):
        next(iter_bai2_lines(DATA / fixture))  # refused before the first line


def test_integrity_error_carries_the_figures():
    with pytest.raises(StatementIntegrityError) as caught:
        parse_bai2(DATA / "hostile_bai2_record_count.bai")
    assert caught.value.mismatched_fields == [{"field": "record_count", "expected": "12", "actual": "13"}]


def test_wrong_account_currency_is_refused():
    with pytest.raises(StatementIntegrityError, match="statement FILE0115/1/0123456789 is in USD, not in the account's currency EUR"):
        parse_bai2(FIXTURE, expected_currency="EUR")


def test_latin1_file_reads_when_its_encoding_is_named():
    statements = parse_bai2(DATA / "hostile_bai2_latin1.bai", encoding="latin-1")
    assert statements[0].lines[2].metadata["remittance"].startswith("INCOMING WIRE FROM GLÖBEX CORP")


def test_every_truncation_is_refused():
    """Cut after any record, the file is refused (the bai2 package alone would loop on some cuts)."""
    records = FIXTURE.read_text().splitlines()
    for end in range(len(records) - 1):
        with pytest.raises(InvalidInputError):
            parse_bai2("\n".join(records[: end + 1]).encode())


def test_every_missing_record_is_refused():
    records = FIXTURE.read_text().splitlines()
    for missing in range(len(records)):
        text = "\n".join(records[:missing] + records[missing + 1 :])
        with pytest.raises(InvalidInputError):
            parse_bai2(text.encode())


@pytest.mark.parametrize(
    "text, message",
    [
        (b"", "the BAI2 file is empty"),
        (b"02,X,Y,1,260114,2400,USD,2/\n99,0,0,2/\n", "starts with '02,X,Y,1,260114,2400,USD,2/', not a 01 file header"),
        (b"01,A,B,260115,0600,F1,80,1,2/\n99,0,0,2/\n99,0,0,2/\n", r"the BAI2 file's 99 trailer is record 2 of 3: records follow it"),
        (b"01,A,B,260115,0600,F1,80,1,2/\nhello\n99,0,0,2/\n", r"BAI2 record 2 'hello' does not start with a two-digit record code"),
        (b"01,A,B,260115,0600,F1,80,1,3/\n99,0,0,2/\n", "the BAI2 file cannot be read: Only BAI version 2 supported"),
        (b"01,A,B,260115,0600,F1,80,1,2/\n99,0,0,2/\n", "the BAI2 file cannot be read: File without groups not allowed"),
    ],
)
def test_malformed_file_is_named(text, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_bai2(text)


def _one_detail(detail: str, total: int) -> bytes:
    return (
        "01,A,B,260115,0600,F1,80,1,2/\n02,B,A,1,260114,2400,USD,2/\n03,111,USD,,,,/\n"
        f"{detail}\n49,{total},3/\n98,{total},1,5/\n99,{total},1,7/\n"
    ).encode()


def test_balance_type_code_in_a_detail_is_refused():
    with pytest.raises(InvalidInputError, match=r"detail 1: type code 015 \(Closing Ledger\) is a balance code, not a transaction"):
        parse_bai2(_one_detail("16,015,100,0,R1,,TEXT", 100))


def test_detail_without_amount_is_refused():
    with pytest.raises(InvalidInputError, match=r"detail 1: the 16 record \(type code 165\) has no amount"):
        parse_bai2(_one_detail("16,165,,0,R1,,TEXT", 0))
