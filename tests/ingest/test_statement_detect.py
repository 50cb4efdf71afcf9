"""detect_format: every fixture is told apart from its first bytes; what cannot be told is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from recon.errors import InvalidInputError
from recon.ingest.statement import DETECT_BYTES, detect_format

DATA = Path(__file__).resolve().parents[1] / "data"
STATEMENTS = DATA / "statements"


def _head(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(DETECT_BYTES)


@pytest.mark.parametrize(
    "fixture, expected",
    [
        ("statements/camt053_v2.xml", "camt053"),
        ("statements/camt053_v8_two_statements.xml", "camt053"),
        ("statements/hostile_camt053_billion_laughs.xml", "camt053"),  # detected; the parser refuses it
        ("statements/camt054_v4.xml", "camt054"),
        ("statements/mt940_structured_swift.sta", "mt940"),
        ("statements/mt940_freetext_no_final_newline.sta", "mt940"),
        ("statements/mt940_dutch_slash_codes.sta", "mt940"),
        ("statements/mt942_interim.sta", "mt942"),
        ("statements/bai2_prior_day.bai", "bai2"),
        ("valid.csv", "csv"),
        ("mixed.csv", "csv"),
    ],
)
def test_fixture_format_is_detected(fixture, expected):
    assert detect_format(_head(DATA / fixture)) == expected


@pytest.mark.parametrize(
    "head, expected",
    [
        (b"\xef\xbb\xbf<?xml version='1.0'?>\n<Document xmlns='urn:iso:std:iso:20022:tech:xsd:camt.053.001.08'>", "camt053"),
        (b"\n\n  <Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:camt.054.001.02\">", "camt054"),
        (b"{1:F01BANKBEBBAXXX0000000000}{2:I942BANKDEFFXXXXN}{4:\r\n:20:X\r\n", "mt942"),
        (b":20:REF\n:25:ACC\n:28C:1\n:34F:EUR0,\n:13D:2601221405+0100\n", "mt942"),
        (b":20:REF\n:25:ACC\n:28C:1\n:60F:C260120EUR0,00\n", "mt940"),
        (b"ABNANL2A\n940\nABNANL2A\n:20:ABN AMRO BANK NV\n:25:NL91\n:28:1\n:60F:C260120EUR0,00\n", "mt940"),
        (b"01,BANK,CUST,260115,0600,F1,80,1,2/\n", "bai2"),
        (b"order_id,amount,currency,transaction_date,type\nORD-1,1.00,EUR,2026-01-01,Payment\n", "csv"),
        (b"\xef\xbb\xbforder_id,amount\nX,1\n", "csv"),
    ],
)
def test_format_is_detected_from_its_start(head, expected):
    assert detect_format(head) == expected


@pytest.mark.parametrize(
    "head, message",
    [
        (b"", "the file is empty"),
        (b"  \r\n\n", "the file is empty"),
        ("<?xml version='1.0'?><Document/>".encode("utf-16"), "the file contains NUL bytes: it is binary or UTF-16 text"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "contains NUL bytes"),
        (
            b"<Document xmlns='urn:iso:std:iso:20022:tech:xsd:camt.052.001.08'><BkToCstmrAcctRpt>",
            r"camt.052 documents are not supported \(namespace urn:iso:std:iso:20022:tech:xsd:camt.052.001.08\)",
        ),
        (
            b"<Document xmlns='urn:iso:std:iso:20022:tech:xsd:pain.001.001.09'>",
            "an XML file, but not an ISO 20022 camt.053 or camt.054 document",
        ),
        (b"<html><body>Login</body></html>", "not an ISO 20022 camt.053 or camt.054 document"),
        (b":20:REF\n:25:ACC\n:28C:1\n", r"SWIFT MT tags \(:20:\) but neither MT940 balances"),
        (b"order_id;amount;currency\n", r"or CSV \(a comma-separated header\); name the format"),
        (b"Kontoauszug Januar 2026\nSaldo 100 EUR\n", r"cannot tell the statement format from the file's start b'Kontoauszug Januar 2026"),
    ],
)
def test_undetectable_start_is_a_clear_error(head, message):
    with pytest.raises(InvalidInputError, match=message):
        detect_format(head)
