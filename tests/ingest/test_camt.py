"""camt.053 / camt.054: the fixtures' figures, hostile files refused, and balances that always add up."""

from __future__ import annotations

import datetime as dt
import io
import tracemalloc
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon.errors import InvalidInputError
from recon.ingest.camt import (
    UnsafeXmlError,
    iter_camt053_lines,
    parse_camt053,
    parse_camt054,
)
from recon.ingest.statement import StatementIntegrityError
from tests.ingest.statement_files import GeneratedLine, GeneratedStatement, camt053_text, write_camt053

DATA = Path(__file__).resolve().parents[1] / "data" / "statements"
ORDER_ID = r"ORD-\d+"
UTC = dt.timezone.utc


# --- camt.053 v2: batch, reversal, pending, fee ------------------------------------------------


@pytest.fixture(scope="module")
def v2_statement():
    (statement,) = parse_camt053(DATA / "camt053_v2.xml", expected_currency="EUR", order_id_pattern=ORDER_ID)
    return statement


def test_v2_statement_header_and_balances(v2_statement):
    assert v2_statement.statement_id == "STMT-2026-01-15-DE89"
    assert v2_statement.account == "DE89370400440532013000"
    assert v2_statement.currency == "EUR"
    assert v2_statement.opening_balance == Decimal("10000.00")
    assert v2_statement.closing_balance == Decimal("11712.60")
    assert v2_statement.booked_total == Decimal("1712.60")


def test_v2_lines_sides_amounts_and_keys(v2_statement):
    assert [(l.entry_type, l.amount, l.status, l.reversal, l.natural_key) for l in v2_statement.lines] == [
        ("CREDIT", Decimal("1250.00"), "booked", False, "2026011500001"),
        ("DEBIT", Decimal("89.90"), "booked", False, "2026011500002"),
        ("CREDIT", Decimal("100.00"), "booked", False, "2026011500003/1"),
        ("CREDIT", Decimal("200.00"), "booked", False, "2026011500003/2"),
        ("CREDIT", Decimal("300.00"), "booked", False, "2026011500003/3"),
        ("DEBIT", Decimal("45.00"), "booked", True, "2026011500004"),
        ("CREDIT", Decimal("75.00"), "pending", False, "DE89370400440532013000|2026-01-16|CREDIT|75|E2E-ORD-1006"),
        ("DEBIT", Decimal("2.50"), "booked", False, "2026011500006"),
    ]
    assert all(isinstance(line.amount, Decimal) for line in v2_statement.lines)


def test_v2_first_line_metadata(v2_statement):
    line = v2_statement.lines[0]
    assert line.metadata == {
        "end_to_end_id": "E2E-ORD-1001",
        "bank_reference": "2026011500001",
        "remittance": "Invoice 2026-17 order ORD-1001 thank you",
        "booking_date": "2026-01-15",
        "value_date": "2026-01-15",
        "bank_transaction_code": "PMNT-RCDT-ESCT",
        "statement_id": "STMT-2026-01-15-DE89",
        "counterparty_name": "Muster Handel GmbH",
        "counterparty_account": "DE02120300000000202051",
        "order_id": "ORD-1001",
    }
    assert line.effective_date == dt.datetime(2026, 1, 15, tzinfo=UTC)
    assert line.booking_date == dt.date(2026, 1, 15)
    assert line.position == "statement STMT-2026-01-15-DE89 entry 1"


def test_v2_value_date_is_the_effective_date(v2_statement):
    line = v2_statement.lines[1]
    assert line.effective_date == dt.datetime(2026, 1, 14, tzinfo=UTC)
    assert (line.metadata["booking_date"], line.metadata["value_date"]) == ("2026-01-15", "2026-01-14")
    assert line.metadata["counterparty_name"] == "Bürobedarf Schmidt AG"


def test_v2_batched_entry_is_one_line_per_transaction_keeping_the_entry_reference(v2_statement):
    batch = v2_statement.lines[2:5]
    assert [line.position for line in batch] == [
        f"statement STMT-2026-01-15-DE89 entry 3 transaction {k}" for k in (1, 2, 3)
    ]
    assert {line.metadata["bank_reference"] for line in batch} == {"2026011500003"}
    assert [line.metadata.get("end_to_end_id") for line in batch] == ["E2E-ORD-1003", "E2E-ORD-1004", None]
    assert [line.metadata.get("order_id") for line in batch] == ["ORD-1003", "ORD-1004", None]
    assert batch[2].metadata["remittance"] == "RF18ORD1005"  # structured creditor reference
    assert sum(line.amount for line in batch) == Decimal("600.00")


def test_v2_reversal_keeps_its_side_and_names_the_original_counterparty(v2_statement):
    reversal = v2_statement.lines[5]
    assert (reversal.entry_type, reversal.reversal, reversal.metadata["reversal"]) == ("DEBIT", True, True)
    assert reversal.metadata["bank_transaction_code"] == "PMNT-RDDT-UPDD"
    assert reversal.metadata["counterparty_name"] == "Peter Vogel"  # the returned direct debit's payer
    assert reversal.metadata["order_id"] == "ORD-0999"


def test_v2_pending_entry_is_pending_and_outside_the_balance(v2_statement):
    pending = v2_statement.lines[6]
    assert pending.status == "pending" and not pending.booked
    assert pending.booking_date is None and "booking_date" not in pending.metadata
    assert pending.effective_date == dt.datetime(2026, 1, 16, tzinfo=UTC)
    booked = sum(line.signed_amount for line in v2_statement.lines if line.booked)
    assert v2_statement.opening_balance + booked == v2_statement.closing_balance


def test_v2_entry_without_details_takes_its_additional_information(v2_statement):
    fee = v2_statement.lines[7]
    assert fee.metadata == {
        "bank_reference": "2026011500006",
        "remittance": "Account maintenance fee January",
        "booking_date": "2026-01-15",
        "value_date": "2026-01-15",
        "bank_transaction_code": "ACMT-MDOP-CHRG",
        "statement_id": "STMT-2026-01-15-DE89",
    }


def test_without_a_pattern_no_order_id_is_guessed():
    (statement,) = parse_camt053(DATA / "camt053_v2.xml")
    assert all("order_id" not in line.metadata for line in statement.lines)


def test_named_group_picks_the_order_id():
    (statement,) = parse_camt053(DATA / "camt053_v2.xml", order_id_pattern=r"order (?P<order_id>ORD-\d+)")
    assert [line.metadata.get("order_id") for line in statement.lines[:2]] == ["ORD-1001", None]


def test_bad_order_id_pattern_is_a_named_error():
    with pytest.raises(InvalidInputError, match=r"order_id_pattern '\(ORD' is not a valid regular expression"):
        parse_camt053(DATA / "camt053_v2.xml", order_id_pattern="(ORD")


# --- camt.053 v8: two statements, v8 status and party shapes, twins ---------------------------


def test_v8_file_with_two_statements():
    first, second = parse_camt053(DATA / "camt053_v8_two_statements.xml", order_id_pattern=ORDER_ID)
    assert (first.statement_id, first.account, first.currency) == ("NL91-2026-020", "NL91ABNA0417164300", "EUR")
    assert (first.opening_balance, first.closing_balance) == (Decimal("-500.00"), Decimal("250.00"))
    assert [(l.entry_type, l.amount, l.status, l.reversal, l.natural_key) for l in first.lines] == [
        ("CREDIT", Decimal("1000.00"), "booked", False, "NL-20260120-0001"),
        ("DEBIT", Decimal("120.00"), "booked", False, "NL-20260120-0002/NL-20260120-0002-A"),
        ("DEBIT", Decimal("180.00"), "booked", False, "NL-20260120-0002/2"),
        ("CREDIT", Decimal("50.00"), "booked", True, "NL-20260120-0003"),
        ("DEBIT", Decimal("20.00"), "pending", False, "NL91ABNA0417164300|2026-01-21|DEBIT|20|"),
    ]
    assert first.lines[0].metadata["counterparty_name"] == "Acme Retail BV"  # Dbtr/Pty/Nm (v8)
    assert first.lines[0].metadata["counterparty_account"] == "NL20INGB0001234567"
    assert first.lines[0].metadata["order_id"] == "ORD-7001"
    assert first.lines[2].metadata["counterparty_account"] == "0417164300"  # Othr/Id
    assert first.lines[3].metadata["counterparty_name"] == "Closed Account Supplies"  # the returned payment's payee

    assert (second.statement_id, second.currency) == ("NL02-USD-2026-020", "USD")
    assert (second.opening_balance, second.closing_balance) == (Decimal("0.00"), Decimal("119.99"))
    assert [(l.amount, l.natural_key) for l in second.lines] == [
        (Decimal("99.99"), "NL02ABNA0123456789|2026-01-20|CREDIT|99.99|"),
        (Decimal("10.00"), "NL02ABNA0123456789|2026-01-20|CREDIT|10|"),
        (Decimal("10.00"), "NL02ABNA0123456789|2026-01-20|CREDIT|10|#2"),  # a real twin, kept apart
    ]
    timed = second.lines[0]
    assert timed.effective_date == dt.datetime(2026, 1, 20, 9, 30, tzinfo=UTC)
    assert timed.metadata["value_date"] == "2026-01-20T10:30:00+01:00"


def test_statements_of_one_file_are_checked_against_the_expected_currency():
    with pytest.raises(StatementIntegrityError, match="statement NL02-USD-2026-020 is in USD, not in the account's currency EUR"):
        parse_camt053(DATA / "camt053_v8_two_statements.xml", expected_currency="EUR")


def test_streamed_lines_are_the_parsed_lines():
    parsed = [line for s in parse_camt053(DATA / "camt053_v8_two_statements.xml") for line in s.lines]
    streamed = list(iter_camt053_lines((DATA / "camt053_v8_two_statements.xml").read_bytes()))
    assert streamed == parsed


def test_a_binary_stream_is_read_and_left_open():
    stream = io.BytesIO((DATA / "camt053_v2.xml").read_bytes())
    (statement,) = parse_camt053(stream)
    assert len(statement.lines) == 8 and not stream.closed


# --- camt.054 -------------------------------------------------------------------------------


def test_camt054_notification():
    (notification,) = parse_camt054(DATA / "camt054_v4.xml", expected_currency="CHF", order_id_pattern=ORDER_ID)
    assert (notification.statement_id, notification.account, notification.currency) == (
        "NTF-20260122-0042", "CH9300762011623852957", "CHF",
    )
    assert (notification.opening_balance, notification.closing_balance) == (None, None)
    assert [(l.entry_type, l.amount, l.status, l.natural_key) for l in notification.lines] == [
        ("CREDIT", Decimal("1000.00"), "booked", "CH-20260122-7781/CH-20260122-7781-01"),
        ("CREDIT", Decimal("500.00"), "booked", "CH-20260122-7781/CH-20260122-7781-02"),
        ("DEBIT", Decimal("35.40"), "pending", "CH-20260122-7790"),
    ]
    first, second, card = notification.lines
    assert first.metadata["remittance"] == "210000000003139471430009017 ORD-2001"  # QR reference + its text
    assert first.metadata["order_id"] == "ORD-2001"
    assert first.metadata["bank_reference"] == second.metadata["bank_reference"] == "CH-20260122-7781"
    assert card.metadata["remittance"] == "Card payment SBB Bern"
    assert card.metadata["counterparty_name"] == "SBB CFF FFS"


def test_camt054_is_not_read_as_a_statement_nor_the_reverse():
    with pytest.raises(InvalidInputError, match="camt.054 document, not a camt.053 statement; read it as camt054"):
        parse_camt053(DATA / "camt054_v4.xml")
    with pytest.raises(InvalidInputError, match="camt.053 document, not a camt.054 notification; read it as camt053"):
        parse_camt054(DATA / "camt053_v2.xml")


# --- hostile and broken files -----------------------------------------------------------------


@pytest.mark.parametrize(
    "fixture, error, message",
    [
        ("hostile_camt053_billion_laughs.xml", UnsafeXmlError, r"document type declaration \(<!DOCTYPE Document>\)"),
        ("hostile_camt053_external_entity.xml", UnsafeXmlError, "refused unread"),
        ("hostile_camt053_external_dtd.xml", UnsafeXmlError, r'SYSTEM "http://127.0.0.1:9/camt.dtd"'),
        ("hostile_camt053_truncated.xml", InvalidInputError, r"not well-formed XML at line 204, column 13 \(no element found\); is it truncated"),
        ("hostile_camt053_latin1.xml", InvalidInputError, r"line 157 of the camt.053 statement file is not UTF-8 text \(byte 0xfc"),
        (
            "hostile_camt053_unbalanced.xml",
            StatementIntegrityError,
            r"statement STMT-2026-01-15-DE89 does not add up: opening balance 10000.00 EUR \+ booked lines"
            r" \+1712.60 EUR = 11712.60 EUR, but its closing balance is 11712.61 EUR \(difference \+0.01\)",
        ),
        ("hostile_camt053_entry_currency.xml", StatementIntegrityError, "entry 6's Amt is in USD, but the statement is in EUR"),
        (
            "hostile_camt053_batch_mismatch.xml",
            StatementIntegrityError,
            r"entry 3: its 3 transactions add up to \+599.00 EUR, but the entry's amount is \+600.00 EUR",
        ),
    ],
)
def test_hostile_file_is_refused_whole(fixture, error, message):
    with pytest.raises(error, match=message):
        parse_camt053(DATA / fixture)
    with pytest.raises(error, match=message):
        list(iter_camt053_lines(DATA / fixture))


def test_unbalanced_statement_names_the_figures():
    with pytest.raises(StatementIntegrityError) as caught:
        parse_camt053(DATA / "hostile_camt053_unbalanced.xml")
    error = caught.value
    assert (error.statement_id, error.field, error.expected, error.found) == (
        "STMT-2026-01-15-DE89", "closing_balance", Decimal("11712.60"), Decimal("11712.61"),
    )
    assert error.mismatched_fields == [{"field": "closing_balance", "expected": "11712.60", "actual": "11712.61"}]
    assert error.error_type == "StatementIntegrityError"


def test_wrong_account_currency_is_refused():
    with pytest.raises(StatementIntegrityError, match="statement STMT-2026-01-15-DE89 is in EUR, not in the account's currency USD"):
        parse_camt053(DATA / "camt053_v2.xml", expected_currency="USD")


def test_external_entity_is_never_fetched(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    xml = (DATA / "hostile_camt053_external_entity.xml").read_text().replace("file:///etc/passwd", secret.as_uri())
    with pytest.raises(UnsafeXmlError) as caught:
        parse_camt053(xml.encode())
    assert "TOP-SECRET" not in str(caught.value)


@pytest.mark.parametrize(
    "xml, message",
    [
        (b"", "not well-formed XML at line 1, column 0"),
        (b'<?xml version="1.0" encoding="ISO-8859-1"?><Document/>', "declares encoding 'ISO-8859-1': ISO 20022 messages are UTF-8"),
        (b"<Document><BkToCstmrStmt/></Document>", "root element is 'Document', not an ISO 20022 camt Document"),
        (
            b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.01"><BkToCstmrStmt/></Document>',
            r"camt.053.001.01 is not supported \(versions .001.02 to .001.13\)",
        ),
        (
            b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.052.001.08"><BkToCstmrAcctRpt/></Document>',
            "the file is a camt.052 document, not a camt.053 statement",
        ),
        (
            b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"><BkToCstmrStmt><GrpHdr/></BkToCstmrStmt></Document>',
            "the camt.053 statement file has no Stmt",
        ),
    ],
)
def test_documents_that_are_not_camt053_statements(xml, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_camt053(xml)


def _one_statement(body: str, balances: str = "") -> bytes:
    return (
        '<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.053.001.08"><BkToCstmrStmt><Stmt><Id>S1</Id>'
        '<Acct><Id><IBAN>DE89370400440532013000</IBAN></Id><Ccy>EUR</Ccy></Acct>'
        f"{balances}{body}</Stmt></BkToCstmrStmt></Document>"
    ).encode()


_BALANCES = (
    '<Bal><Tp><CdOrPrtry><Cd>OPBD</Cd></CdOrPrtry></Tp><Amt Ccy="EUR">0</Amt><CdtDbtInd>CRDT</CdtDbtInd></Bal>'
    '<Bal><Tp><CdOrPrtry><Cd>CLBD</Cd></CdOrPrtry></Tp><Amt Ccy="EUR">5.00</Amt><CdtDbtInd>CRDT</CdtDbtInd></Bal>'
)


@pytest.mark.parametrize(
    "entry, message",
    [
        ('<Ntry><Amt Ccy="EUR">5,00</Amt></Ntry>', r"statement S1 entry 1: Amt '5,00' is not an ISO 20022 amount"),
        ('<Ntry><Amt Ccy="EUR">5.00</Amt><CdtDbtInd>CREDIT</CdtDbtInd></Ntry>', r"entry 1: CdtDbtInd 'CREDIT' must be CRDT or DBIT"),
        (
            '<Ntry><Amt Ccy="EUR">5.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>DONE</Cd></Sts>'
            "<BookgDt><Dt>2026-01-15</Dt></BookgDt></Ntry>",
            r"entry 1: status \(Sts\) 'DONE' must be BOOK, PDNG, FUTR or INFO",
        ),
        (
            '<Ntry><Amt Ccy="EUR">5.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts></Ntry>',
            r"entry 1 has neither a value date \(ValDt\) nor a booking date \(BookgDt\)",
        ),
        (
            '<Ntry><Amt Ccy="EUR">5.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>'
            "<BookgDt><Dt>2026-02-30</Dt></BookgDt></Ntry>",
            r"entry 1: BookgDt/Dt '2026-02-30' is not a date",
        ),
        (
            '<Ntry><Amt Ccy="EUR">123456789012345678901.00</Amt></Ntry>',
            r"Amt '123456789012345678901.00' is not an ISO 20022 amount",
        ),
    ],
)
def test_bad_entry_is_named_with_its_position(entry, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_camt053(_one_statement(entry, _BALANCES))


def test_statement_without_balances_cannot_be_checked():
    with pytest.raises(InvalidInputError, match=r"statement S1 has no opening booked balance \(Bal of type OPBD, PRCD or ITBD; found none\)"):
        parse_camt053(_one_statement(""))


def test_paginated_statement_uses_interim_balances():
    balances = (
        '<Bal><Tp><CdOrPrtry><Cd>ITBD</Cd></CdOrPrtry></Tp><Amt Ccy="EUR">10.00</Amt><CdtDbtInd>CRDT</CdtDbtInd></Bal>'
        '<Bal><Tp><CdOrPrtry><Cd>ITBD</Cd></CdOrPrtry></Tp><Amt Ccy="EUR">4.00</Amt><CdtDbtInd>CRDT</CdtDbtInd></Bal>'
    )
    entry = (
        '<Ntry><Amt Ccy="EUR">6.00</Amt><CdtDbtInd>DBIT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>'
        "<BookgDt><Dt>2026-01-15</Dt></BookgDt><AcctSvcrRef>R1</AcctSvcrRef></Ntry>"
    )
    (statement,) = parse_camt053(_one_statement(entry, balances))
    assert (statement.opening_balance, statement.closing_balance) == (Decimal("10.00"), Decimal("4.00"))


def test_zero_amount_entry_moves_nothing_and_gives_no_line():
    entry = (
        '<Ntry><Amt Ccy="EUR">0.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>'
        "<BookgDt><Dt>2026-01-15</Dt></BookgDt></Ntry>"
        '<Ntry><Amt Ccy="EUR">5.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>'
        "<BookgDt><Dt>2026-01-15</Dt></BookgDt></Ntry>"
    )
    (statement,) = parse_camt053(_one_statement(entry, _BALANCES))
    assert [line.amount for line in statement.lines] == [Decimal("5.00")]


def test_over_long_text_is_refused_with_its_limit():
    entry = (
        '<Ntry><Amt Ccy="EUR">5.00</Amt><CdtDbtInd>CRDT</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>'
        f"<BookgDt><Dt>2026-01-15</Dt></BookgDt><AddtlNtryInf>{'x' * 1001}</AddtlNtryInf></Ntry>"
    )
    with pytest.raises(InvalidInputError, match=r"entry 1: AddtlNtryInf is 1,001 characters long; the limit is 1,000 \(MAX_TEXT_CHARS\)"):
        parse_camt053(_one_statement(entry, _BALANCES))


# --- property: a generated statement always adds up --------------------------------------------

amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99999999.99"), places=2)
generated_lines = st.builds(
    GeneratedLine,
    side=st.sampled_from(["CREDIT", "DEBIT"]),
    amount=amounts,
    reversal=st.booleans(),
    pending=st.integers(0, 9).map(lambda n: n == 0),
)
generated_statements = st.builds(
    GeneratedStatement,
    opening=st.decimals(min_value=Decimal("-99999999.99"), max_value=Decimal("99999999.99"), places=2),
    lines=st.lists(generated_lines, max_size=25),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(statement=generated_statements, version=st.sampled_from([2, 4, 8]), batch_size=st.integers(1, 4))
def test_generated_camt053_lines_sum_to_closing_minus_opening(statement, version, batch_size):
    (parsed,) = parse_camt053(camt053_text(statement, version, batch_size), expected_currency="EUR")
    booked = [line for line in parsed.lines if line.booked]
    assert sum(line.signed_amount for line in booked) == parsed.closing_balance - parsed.opening_balance
    assert parsed.closing_balance - parsed.opening_balance == statement.closing - statement.opening
    assert [(l.entry_type, l.amount, l.reversal, l.booked) for l in parsed.lines] == [
        (g.side, g.amount, g.reversal, not g.pending) for g in statement.lines
    ]
    assert len({line.natural_key for line in parsed.lines}) == len(parsed.lines)


# --- size: a 100,000-entry statement in bounded memory -----------------------------------------


@pytest.mark.slow
def test_100k_entry_statement_parses_in_bounded_memory(tmp_path):
    lines = [GeneratedLine("CREDIT" if n % 3 else "DEBIT", Decimal(n % 997 + 1) / 100) for n in range(100_000)]
    statement = GeneratedStatement(opening=Decimal("1000.00"), lines=lines)
    path = tmp_path / "large.xml"
    with path.open("w", encoding="utf-8") as out:
        write_camt053(out, statement)
    file_bytes = path.stat().st_size

    tracemalloc.start()
    try:
        count, total = 0, Decimal(0)
        for line in iter_camt053_lines(path, expected_currency="EUR"):
            count += 1
            total += line.signed_amount
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert count == 100_000
    assert total == statement.closing - statement.opening
    print(f"\n100,000-entry camt.053: {file_bytes / 2**20:.1f} MiB file, peak traced memory {peak / 2**20:.1f} MiB")
    assert peak < file_bytes / 20, f"peak {peak:,} bytes for a {file_bytes:,}-byte file"
