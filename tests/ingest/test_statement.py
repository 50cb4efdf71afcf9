"""The records every format shares: validated lines, the balance check, natural keys, strict reading."""

from __future__ import annotations

import datetime as dt
import io
import re
from decimal import Decimal
from pathlib import Path

import pytest

from recon.errors import InvalidInputError
from recon.ingest import statement as statement_module
from recon.ingest.bai2 import parse_bai2
from recon.ingest.camt import parse_camt053, parse_camt054
from recon.ingest.mt940 import parse_mt940, parse_mt942
from recon.ingest.statement import (
    CompositeKeys,
    Statement,
    StatementIntegrityError,
    StatementLine,
    amount_key,
    build_line,
    check_statement,
    checked_lines,
    collect_statements,
    find_order_id,
    read_text,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "statements"
UTC = dt.timezone.utc


def _line(amount: str, side: str = "CREDIT", *, status: str = "booked", currency: str = "EUR", key: str = "K1") -> StatementLine:
    return build_line(
        amount=Decimal(amount), entry_type=side, currency=currency, value_date=dt.date(2026, 1, 15),
        booking_date=dt.date(2026, 1, 15), status=status, reversal=False, natural_key=key,
        position=f"statement S1 line {key}", statement_id="S1",
    )


def _statement(opening: str | None, closing: str | None, *lines: StatementLine, currency: str = "EUR") -> Statement:
    return Statement(
        "S1", "DE89370400440532013000", currency,
        Decimal(opening) if opening is not None else None,
        Decimal(closing) if closing is not None else None,
        tuple(lines),
    )


# --- lines ------------------------------------------------------------------------------------


def test_build_line_names_the_metadata_and_leaves_out_empty_values():
    line = build_line(
        amount=Decimal("12.30"), entry_type="DEBIT", currency="EUR", value_date=dt.date(2026, 1, 16),
        booking_date=dt.date(2026, 1, 15), status="booked", reversal=True, natural_key="R1", position="p",
        statement_id="S1", order_id_pattern=re.compile(r"ORD-\d+"), end_to_end_id="E1", bank_reference="",
        remittance="refund ORD-42", counterparty_name=None,
    )
    assert line.metadata == {
        "end_to_end_id": "E1",
        "remittance": "refund ORD-42",
        "booking_date": "2026-01-15",
        "value_date": "2026-01-16",
        "statement_id": "S1",
        "reversal": True,
        "order_id": "ORD-42",
    }
    assert line.effective_date == dt.datetime(2026, 1, 16, tzinfo=UTC)
    assert line.signed_amount == Decimal("-12.30")


def test_a_value_time_becomes_utc():
    line = build_line(
        amount=Decimal("1"), entry_type="CREDIT", currency="EUR",
        value_date=dt.datetime(2026, 1, 16, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        booking_date=None, status="pending", reversal=False, natural_key="k", position="p", statement_id="S1",
    )
    assert line.effective_date == dt.datetime(2026, 1, 16, 8, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"amount": Decimal("0")}, r"statement S1 line 3: amount Decimal\('0'\) must be positive"),
        ({"amount": Decimal("-5")}, "must be positive"),
        ({"amount": 1.5}, "floats are inexact"),
        ({"amount": Decimal("1.00001")}, "more than 4 decimal places"),
        ({"currency": "eur"}, r"statement S1 line 3: currency 'eur' is not an ISO 4217 code"),
        ({"entry_type": "Payment"}, "entry_type 'Payment' must be DEBIT or CREDIT"),
        ({"status": "final"}, "status 'final' must be booked or pending"),
        ({"effective_date": dt.datetime(2026, 1, 15)}, "effective_date must be a timezone-aware datetime"),
        ({"natural_key": ""}, "the line has no natural key"),
    ],
)
def test_a_line_is_validated_when_made(change, message):
    values = dict(
        amount=Decimal("1"), entry_type="CREDIT", currency="EUR", effective_date=dt.datetime(2026, 1, 15, tzinfo=UTC),
        booking_date=None, status="booked", reversal=False, natural_key="k", position="statement S1 line 3",
    )
    with pytest.raises(InvalidInputError, match=message):
        StatementLine(**{**values, **change})


def test_order_id_pattern_groups():
    text = "Invoice 17 for order ORD-123, thanks"
    assert find_order_id(re.compile(r"ORD-\d+"), text) == "ORD-123"
    assert find_order_id(re.compile(r"order (ORD-\d+)"), text) == "ORD-123"
    assert find_order_id(re.compile(r"(Invoice) (?P<order_id>\d+)"), text) == "17"
    assert find_order_id(re.compile(r"XYZ-\d+"), text) is None
    assert find_order_id(None, text) is None


def test_composite_keys_number_twins_only():
    keys = CompositeKeys()
    assert [keys.key("A", "2026-01-15", "D", "5", None) for _ in range(3)] == [
        "A|2026-01-15|D|5|", "A|2026-01-15|D|5|#2", "A|2026-01-15|D|5|#3",
    ]
    assert keys.key("A", "2026-01-15", "D", "6", None) == "A|2026-01-15|D|6|"


@pytest.mark.parametrize("text, key", [("100.50", "100.5"), ("100", "100"), ("0.10", "0.1"), ("1E+2", "100")])
def test_amount_key_is_the_same_however_the_amount_was_written(text, key):
    assert amount_key(Decimal(text)) == key


# --- the balance check ------------------------------------------------------------------------


def test_balanced_statement_passes_and_pending_lines_do_not_count():
    check_statement(_statement("100.00", "130.00", _line("50"), _line("20", "DEBIT", key="K2"),
                               _line("999", status="pending", key="K3")))


def test_unbalanced_statement_names_statement_and_figures():
    with pytest.raises(StatementIntegrityError) as caught:
        check_statement(_statement("100.00", "131.00", _line("50"), _line("20", "DEBIT", key="K2")))
    assert str(caught.value) == (
        "statement S1 does not add up: opening balance 100.00 EUR + booked lines +30 EUR = 130.00 EUR,"
        " but its closing balance is 131.00 EUR (difference +1.00)"
    )
    assert (caught.value.expected, caught.value.found) == (Decimal("130.00"), Decimal("131.00"))


def test_a_cent_is_a_break():
    with pytest.raises(StatementIntegrityError, match=r"difference \+0.01"):
        check_statement(_statement("0", "10.01", _line("10.00")))


def test_statement_without_balances_checks_currency_only():
    check_statement(_statement(None, None, _line("10.00")), expected_currency="EUR")
    with pytest.raises(StatementIntegrityError, match="statement S1 is in EUR, not in the account's currency USD"):
        check_statement(_statement(None, None, _line("10.00")), expected_currency="USD")


def test_line_in_another_currency_is_a_break():
    with pytest.raises(StatementIntegrityError, match="statement S1 line K2: currency USD differs from the currency EUR of statement S1"):
        check_statement(_statement("0", "10.00", _line("10.00"), _line("0.01", currency="USD", key="K2")))


def test_stream_checks_each_statement_when_it_ends():
    good = [_line("5"), _statement("0", "5", currency="EUR")]
    bad = [_line("7", key="K2"), _statement("5", "13")]
    stream = checked_lines(iter(good + bad))
    assert next(stream).amount == Decimal("5")
    assert next(stream).amount == Decimal("7")
    with pytest.raises(StatementIntegrityError, match=r"opening balance 5 EUR \+ booked lines \+7 EUR = 12 EUR, but its closing balance is 13"):
        next(stream)


def test_stream_refuses_a_line_in_another_currency_than_its_statement():
    items = [_line("5", currency="USD"), _statement("0", "5", currency="EUR")]
    with pytest.raises(StatementIntegrityError, match="currency USD differs from the currency EUR"):
        list(checked_lines(iter(items)))


def test_collect_returns_all_statements_or_nothing():
    items = [_line("5"), _statement("0", "5"), _line("7", key="K2"), _statement("5", "12")]
    first, second = collect_statements(iter(items))
    assert [len(first.lines), len(second.lines)] == [1, 1]
    with pytest.raises(StatementIntegrityError):
        collect_statements(iter(items[:2] + [_line("7", key="K2"), _statement("5", "13")]))


# --- reading ----------------------------------------------------------------------------------


def test_read_text_drops_a_bom_and_refuses_bad_bytes():
    assert read_text(b"\xef\xbb\xbf:20:X\n", "MT940") == ":20:X\n"
    with pytest.raises(InvalidInputError, match=r"line 2 of the MT940 file is not utf-8 text \(byte 0xe9"):
        read_text(b":20:X\nCaf\xe9\n", "MT940")
    assert read_text(b":20:X\nCaf\xe9\n", "MT940", encoding="latin-1") == ":20:X\nCafé\n"


def test_read_text_refuses_text_streams_and_missing_files(tmp_path):
    with pytest.raises(InvalidInputError, match="open it in 'rb' mode"):
        read_text(io.StringIO(":20:X"), "MT940")
    with pytest.raises(InvalidInputError, match="cannot open MT940 file .*missing.sta"):
        read_text(str(tmp_path / "missing.sta"), "MT940")


def test_read_text_has_a_size_limit(monkeypatch):
    monkeypatch.setattr(statement_module, "MAX_TEXT_FILE_BYTES", 10)
    with pytest.raises(InvalidInputError, match=r"larger than 10 bytes \(MAX_TEXT_FILE_BYTES\)"):
        read_text(b"x" * 11, "BAI2")


def test_stream_has_a_size_limit(monkeypatch):
    monkeypatch.setattr(statement_module, "MAX_FILE_BYTES", 100)
    with pytest.raises(InvalidInputError, match=r"larger than 100 bytes \(MAX_FILE_BYTES\)"):
        parse_camt053(b"<Document>" + b" " * 200_000 + b"</Document>")


# --- natural keys of every fixture ---------------------------------------------------------------


PARSERS = {
    "camt053_v2.xml": parse_camt053,
    "camt053_v8_two_statements.xml": parse_camt053,
    "camt054_v4.xml": parse_camt054,
    "mt940_structured_swift.sta": parse_mt940,
    "mt940_freetext_no_final_newline.sta": parse_mt940,
    "mt940_dutch_slash_codes.sta": parse_mt940,
    "mt942_interim.sta": parse_mt942,
    "bai2_prior_day.bai": parse_bai2,
}


@pytest.mark.parametrize("fixture", sorted(PARSERS))
def test_natural_keys_are_unique_per_account_and_the_same_on_every_read(fixture):
    """What makes re-ingesting a statement, or an overlapping one, ingest no line twice."""
    parse = PARSERS[fixture]
    path = DATA / fixture
    keys = [(s.account, line.natural_key) for s in parse(path) for line in s.lines]
    assert len(set(keys)) == len(keys)
    assert keys == [(s.account, line.natural_key) for s in parse(path.read_bytes()) for line in s.lines]
