"""MT940 / MT942: three banks' dialects with their figures, hostile files refused, balances that always add up."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recon.errors import InvalidInputError
from recon.ingest.mt940 import iter_mt940_lines, iter_mt942_lines, parse_mt940, parse_mt942
from recon.ingest.statement import StatementIntegrityError
from tests.ingest.statement_files import GeneratedLine, GeneratedStatement, mt940_text

DATA = Path(__file__).resolve().parents[1] / "data" / "statements"
ORDER_ID = r"ORD-\d+"
UTC = dt.timezone.utc


def _figures(statement):
    return [(l.entry_type, l.amount, l.reversal, l.natural_key) for l in statement.lines]


# --- German bank: SWIFT envelope, CRLF, ?NN sub-fields, two statements ---------------------------


def test_structured_swift_file_has_two_statements_that_add_up():
    first, second = parse_mt940(DATA / "mt940_structured_swift.sta", expected_currency="EUR", order_id_pattern=ORDER_ID)
    account = "37040044/0532013000"
    assert (first.statement_id, first.account, first.currency) == ("STARTUMS/00015/001", account, "EUR")
    assert (first.opening_balance, first.closing_balance) == (Decimal("10000.00"), Decimal("11112.60"))
    assert _figures(first) == [
        ("CREDIT", Decimal("1250.00"), False, f"{account}|2026-01-15|C|1250|2601151234567"),
        ("DEBIT", Decimal("89.90"), False, f"{account}|2026-01-15|D|89.9|2601151234568"),
        ("DEBIT", Decimal("45.00"), True, f"{account}|2026-01-15|RC|45|2601151234569"),
        ("DEBIT", Decimal("2.50"), False, f"{account}|2026-01-15|D|2.5|2601151234570"),
    ]
    assert (second.statement_id, second.opening_balance, second.closing_balance) == (
        "STARTUMS/00016/001", Decimal("11112.60"), Decimal("11802.50"),
    )
    assert _figures(second) == [
        ("CREDIT", Decimal("600.00"), False, f"{account}|2026-01-16|C|600|2601161234571"),
        ("CREDIT", Decimal("89.90"), True, f"{account}|2026-01-16|RD|89.9|2601161234572"),
    ]
    assert all(line.status == "booked" for line in first.lines + second.lines)


def test_question_mark_sub_fields_become_the_shared_metadata():
    first, _ = parse_mt940(DATA / "mt940_structured_swift.sta", order_id_pattern=ORDER_ID)
    assert first.lines[0].metadata == {
        "end_to_end_id": "E2E-ORD-1001",
        "bank_reference": "2601151234567",
        "remittance": "Invoice 2026-17 order ORD-1001",
        "booking_date": "2026-01-15",
        "value_date": "2026-01-15",
        "bank_transaction_code": "NTRF",
        "statement_id": "STARTUMS/00015/001",
        "counterparty_name": "Muster Handel GmbH",
        "counterparty_account": "DE02120300000000202051",
        "order_id": "ORD-1001",
    }
    outgoing = first.lines[1].metadata
    assert outgoing["customer_reference"] == "PAY-2026-0007"  # KREF+ wins over the :61: reference
    assert outgoing["end_to_end_id"] == "PO-55120"
    assert outgoing["remittance"] == "Order ORD-1002 office supplies"
    assert first.lines[0].effective_date == dt.datetime(2026, 1, 15, tzinfo=UTC)


def test_reversal_marks():
    first, second = parse_mt940(DATA / "mt940_structured_swift.sta")
    returned_debit, returned_transfer = first.lines[2], second.lines[1]
    assert (returned_debit.entry_type, returned_debit.metadata["reversal"]) == ("DEBIT", True)  # RC
    assert returned_debit.metadata["bank_transaction_code"] == "NRTI"
    assert (returned_transfer.entry_type, returned_transfer.metadata["reversal"]) == ("CREDIT", True)  # RD
    assert "reversal" not in first.lines[0].metadata


def test_latin1_file_reads_when_its_encoding_is_named():
    first, _ = parse_mt940(DATA / "hostile_mt940_latin1.sta", encoding="latin-1")
    assert first.lines[1].metadata["counterparty_name"] == "Bürobedarf Schmidt AG"


# --- UK bank: free-text :86:, negative opening balance, twins, no final line break --------------


def test_free_text_file_without_final_newline():
    (statement,) = parse_mt940(DATA / "mt940_freetext_no_final_newline.sta", expected_currency="GBP", order_id_pattern=ORDER_ID)
    account = "GB29NWBK60161331926819"
    assert (statement.statement_id, statement.account) == ("NWB2026012001/42/1", account)
    assert (statement.opening_balance, statement.closing_balance) == (Decimal("-1000.00"), Decimal("360.00"))
    assert _figures(statement) == [
        ("CREDIT", Decimal("1500.00"), False, f"{account}|2026-01-20|C|1500|FP26012000001"),
        ("DEBIT", Decimal("250.00"), False, f"{account}|2026-01-20|D|250|DD26012000002"),
        ("DEBIT", Decimal("5.00"), False, f"{account}|2026-01-20|D|5|"),
        ("DEBIT", Decimal("5.00"), False, f"{account}|2026-01-20|D|5|#2"),  # two equal charges: both real
        ("CREDIT", Decimal("120.00"), True, f"{account}|2026-01-20|RD|120|RT26012000004"),
    ]
    payment = statement.lines[0].metadata
    assert payment["remittance"] == "FASTER PAYMENT FROM ACME RETAIL LTD REF ORD-3001 INVOICE 3001"
    assert payment["customer_reference"] == "20260120-001"
    assert payment["order_id"] == "ORD-3001"
    assert "counterparty_name" not in payment and "end_to_end_id" not in payment
    assert statement.lines[4].metadata["order_id"] == "ORD-2999"


# --- Dutch bank: header lines, /CODE/ fields ----------------------------------------------------


def test_slash_code_details_after_bank_header_lines():
    (statement,) = parse_mt940(DATA / "mt940_dutch_slash_codes.sta", order_id_pattern=ORDER_ID)
    assert (statement.statement_id, statement.account, statement.currency) == (
        "ABN AMRO BANK NV/20001", "NL91ABNA0417164300", "EUR",
    )
    assert (statement.opening_balance, statement.closing_balance) == (Decimal("-500.00"), Decimal("380.00"))
    credit, debit = statement.lines
    assert (credit.entry_type, credit.amount, debit.entry_type, debit.amount) == (
        "CREDIT", Decimal("1000.00"), "DEBIT", Decimal("120.00"),
    )
    assert credit.metadata == {
        "end_to_end_id": "E2E-7001",
        "remittance": "SETTLEMENT ORD-7001",
        "booking_date": "2026-01-20",
        "value_date": "2026-01-20",
        "bank_transaction_code": "N654",
        "statement_id": "ABN AMRO BANK NV/20001",
        "counterparty_name": "ACME RETAIL BV",
        "counterparty_account": "NL20INGB0001234567",
        "order_id": "ORD-7001",
    }
    assert (debit.metadata["counterparty_name"], debit.metadata["counterparty_account"]) == (
        "Sanne de Vries", "NL39RABO0300065264",  # from /CNTP/account/BIC/name/city/
    )
    assert debit.metadata["remittance"] == "Expenses January"


# --- MT942 -------------------------------------------------------------------------------------


def test_mt942_items_are_pending_and_match_their_totals():
    (report,) = parse_mt942(DATA / "mt942_interim.sta", expected_currency="CHF", order_id_pattern=ORDER_ID)
    assert (report.statement_id, report.account, report.currency) == ("INTRADAY-0042/7/1", "CH9300762011623852957", "CHF")
    assert (report.opening_balance, report.closing_balance) == (None, None)
    assert [(l.entry_type, l.amount, l.status) for l in report.lines] == [
        ("CREDIT", Decimal("1000.00"), "pending"),
        ("CREDIT", Decimal("500.00"), "pending"),
        ("DEBIT", Decimal("35.40"), "pending"),
    ]
    card = report.lines[2]
    assert card.booking_date == dt.date(2026, 1, 22)
    assert card.effective_date == dt.datetime(2026, 1, 23, tzinfo=UTC)
    assert card.natural_key == "CH9300762011623852957|2026-01-22|D|35.4|CH-7790"
    assert [line.metadata.get("order_id") for line in report.lines] == ["ORD-2001", "ORD-2002", None]
    assert list(iter_mt942_lines(DATA / "mt942_interim.sta", order_id_pattern=ORDER_ID)) == list(report.lines)


# --- hostile and broken files -------------------------------------------------------------------


@pytest.mark.parametrize(
    "parse, fixture, error, message",
    [
        (
            parse_mt940, "hostile_mt940_unbalanced.sta", StatementIntegrityError,
            r"statement NWB2026012001/42/1 does not add up: opening balance -1000.00 GBP \+ booked lines"
            r" \+1360.00 GBP = 360.00 GBP, but its closing balance is 350.00 GBP \(difference -10.00\)",
        ),
        (
            parse_mt940, "hostile_mt940_truncated.sta", InvalidInputError,
            r"MT940 statement NWB2026012001/42/1 has no closing balance \(:62F: or :62M:\); is the file truncated\?",
        ),
        (
            parse_mt940, "hostile_mt940_truncated_swift.sta", InvalidInputError,
            r"has 2 SWIFT message text blocks \(\{4:\) but 1 end with '-\}': is it truncated\?",
        ),
        (
            parse_mt940, "hostile_mt940_latin1.sta", InvalidInputError,
            r"line 13 of the MT940 file is not utf-8 text \(byte 0xfc cannot be decoded\); if the bank sends"
            r" another encoding, name it",
        ),
        (
            parse_mt942, "hostile_mt942_bad_totals.sta", StatementIntegrityError,
            r"MT942 statement INTRADAY-0042/7/1: :90C: gives 1550.00 CHF of credit items, but its credit lines"
            r" add up to 1500.00 CHF",
        ),
    ],
)
def test_hostile_file_is_refused_whole(parse, fixture, error, message):
    with pytest.raises(error, match=message):
        parse(DATA / fixture)
    lines = iter_mt940_lines if parse is parse_mt940 else iter_mt942_lines
    with pytest.raises(error, match=message):
        next(lines(DATA / fixture))  # refused before the first line


def test_mt940_and_mt942_are_not_read_as_each_other():
    with pytest.raises(InvalidInputError, match=r"MT942 statement NWB2026012001/42/1 has opening or closing balances \(:60F:/:62F:\): it is an MT940 statement"):
        parse_mt942(DATA / "mt940_freetext_no_final_newline.sta")
    with pytest.raises(InvalidInputError, match=r"MT940 statement INTRADAY-0042/7/1 has no opening balance \(:60F: or :60M:\); is it an MT942 interim report"):
        parse_mt940(DATA / "mt942_interim.sta")
    with pytest.raises(InvalidInputError, match="MT942 statement R has no :34F: floor limit"):
        parse_mt942(b":20:R\n:25:A\n:61:260120C1,00NTRF\n")


def test_wrong_account_currency_is_refused():
    with pytest.raises(StatementIntegrityError, match="statement NWB2026012001/42/1 is in GBP, not in the account's currency EUR"):
        parse_mt940(DATA / "mt940_freetext_no_final_newline.sta", expected_currency="EUR")
    with pytest.raises(StatementIntegrityError, match="is in GBP, not in the account's currency EUR"):
        list(iter_mt940_lines(DATA / "mt940_freetext_no_final_newline.sta", expected_currency="EUR"))


def _statement(lines: str, closing: str = "100,00", opening: str = ":60F:C260120EUR0,00\n") -> bytes:
    return f":20:S1\n:25:ACC-1\n{opening}{lines}:62F:C260120EUR{closing}\n".encode()


@pytest.mark.parametrize(
    "text, message",
    [
        (b"", "the MT940 file has no statement"),
        (b"just some text\n", r"the MT940 file has no statement \(no line starting with :20:\)"),
        (_statement(":61:2601XXC100,00NTRF\n"), r"MT940 statement 1 \(:20:S1\): tag :61: '2601XXC100,00NTRF' is not a valid Statement tag"),
        (_statement(":61:261320C100,00NTRF\n"), r"MT940 statement 1 \(:20:S1\): cannot be read \(ValueError: month must be in 1..12\)"),
        (_statement(":61:260120C,NTRF\n", "0,00"), r"MT940 statement 1 \(:20:S1\): an amount is not a number"),
        (
            _statement(":61:260120C100,00\n:61:260120C50,00NTRFNONREF\n", "150,00"),
            r"MT940 statement S1 has 2 :61: lines but 1 could be read; is a :61: missing its transaction type",
        ),
        (_statement(":61:260120C100,00NTRF\n", opening=""), r"MT940 statement S1 has no opening balance \(:60F: or :60M:\)"),
        (b":20:S1\n:60F:C260120EUR0,00\n:62F:C260120EUR0,00\n", r"MT940 statement S1 has no account identification \(:25:\)"),
        (
            _statement(":61:260120C100,00NTRF\n").replace(b":62F:C260120EUR", b":62F:C260120USD"),
            "MT940 statement S1: its closing balance is in USD, but the statement is in EUR",
        ),
        (b"\x00:20:S1", "line 1 of the MT940 file contains a NUL byte"),
    ],
)
def test_broken_statement_is_named(text, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_mt940(text)


def test_zero_amount_line_moves_nothing_and_gives_no_line():
    (statement,) = parse_mt940(_statement(":61:260120C0,00NTRF\n:61:260120C100,00NTRF\n"))
    assert [line.amount for line in statement.lines] == [Decimal("100.00")]


def test_text_is_not_mistaken_for_a_file_name(tmp_path, monkeypatch):
    """mt-940 reads a str naming an existing file; the parser never hands it one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").write_text(_statement(":61:260120C100,00NTRF\n").decode())
    with pytest.raises(InvalidInputError, match="has no statement"):
        parse_mt940(b"x")


# --- property: a generated statement always adds up --------------------------------------------

amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("9999999.99"), places=2)
generated_statements = st.builds(
    GeneratedStatement,
    opening=st.decimals(min_value=Decimal("-9999999.99"), max_value=Decimal("9999999.99"), places=2),
    lines=st.lists(
        st.builds(GeneratedLine, side=st.sampled_from(["CREDIT", "DEBIT"]), amount=amounts, reversal=st.booleans()),
        max_size=25,
    ),
    currency=st.sampled_from(["EUR", "GBP", "CHF"]),
)


@settings(max_examples=80, deadline=None)
@given(statement=generated_statements, line_end=st.sampled_from(["\r\n", "\n"]), final_newline=st.booleans())
def test_generated_mt940_lines_sum_to_closing_minus_opening(statement, line_end, final_newline):
    text = mt940_text(statement, line_end)
    if not final_newline:
        text = text.rstrip()
    (parsed,) = parse_mt940(text, expected_currency=statement.currency)
    assert sum(line.signed_amount for line in parsed.lines) == parsed.closing_balance - parsed.opening_balance
    assert (parsed.opening_balance, parsed.closing_balance) == (statement.opening, statement.closing)
    assert [(l.entry_type, l.amount, l.reversal) for l in parsed.lines] == [
        (g.side, g.amount, g.reversal) for g in statement.lines
    ]
