"""Property tests for CSV ingestion: bad input never crashes, never half-writes, never leaks past a row.

The `db` fixture is one database per test function, shared by all of its hypothesis examples,
so every example uses its own order-id prefix and asserts on what it added (counts before
and after), never on absolute table contents.
"""

from __future__ import annotations

import csv
import io
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon.ingest.csv import REQUIRED_COLUMNS, IngestReport, ingest_csv
from recon.db import Database
from recon.accounts import create_account, create_merchant
from recon.errors import InvalidInputError, NotFoundError

fuzz_settings = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

HEADER = ",".join(REQUIRED_COLUMNS) + "\n"
NASTY = [
    "'; DROP TABLE staging_entries; --",
    "\" OR 1=1 --",
    "Robert'); DELETE FROM process_tracker; --",
    "=cmd()",
    "+SUM(A1:A9)",
    "-2+3",
    "@import",
    "=HYPERLINK(\"http://evil\")",
    "<script>alert(1)</script>",
    "$(rm -rf /)",
    "line\nbreak",
    "cr\rreturn",
    "comma, inside",
    "quote \" inside",
    "  padded  ",
    "ünïcødé ✓ 💸",
]


@pytest.fixture
def account(db: Database) -> str:
    """Created once per test function; every hypothesis example of the test reuses it."""
    merchant = create_merchant("Fuzz", db=db)
    return create_account(merchant, "Fuzz bank", "DEBIT_NORMAL", "USD", db=db)


def counts(db: Database) -> tuple[int, int]:
    with db.begin() as conn:
        return tuple(conn.execute(
            sa.text("SELECT (SELECT count(*) FROM staging_entries), (SELECT count(*) FROM process_tracker)")
        ).one())


def ingest_or_refuse(db: Database, account: str, content: bytes) -> IngestReport | None:
    """Ingest `content`; a refusal must be a clear error that wrote nothing."""
    before = counts(db)
    try:
        report = ingest_csv(io.BytesIO(content), account, "TRANSACTION", db=db, source_file="fuzz.csv")
    except (InvalidInputError, NotFoundError) as exc:
        assert str(exc)
        assert counts(db) == before
        return None
    assert report.rows_read == report.ingested + report.rejected_count + report.duplicate_count
    assert counts(db) == (before[0] + report.ingested, before[1] + report.ingested)
    return report


# --- Anything at all --------------------------------------------------------------------------


@fuzz_settings
@given(content=st.binary(max_size=2_000))
def test_random_bytes_never_crash(db, account, content):
    ingest_or_refuse(db, account, content)


@fuzz_settings
@given(content=st.binary(max_size=500))
def test_a_header_followed_by_random_bytes_never_crashes(db, account, content):
    ingest_or_refuse(db, account, HEADER.encode() + content)


CSV_ISH = st.text(alphabet=st.sampled_from(list(',"\r\n \t=+-@.0123456789:TZ-aUSDPymntRfu\xa0é')), max_size=400)


@fuzz_settings
@given(body=CSV_ISH, with_header=st.booleans(), bom=st.booleans())
def test_random_csv_ish_text_never_crashes(db, account, body, with_header, bom):
    content = (HEADER if with_header else "") + body
    ingest_or_refuse(db, account, (b"\xef\xbb\xbf" if bom else b"") + content.encode())


# --- Structured rows: every reported-valid row lands once, every rejected row leaves no trace --

GOOD = {
    "amount": st.one_of(
        st.decimals(min_value=Decimal("0.0001"), max_value=Decimal("9999999999999999.9999"), places=4).map(str),
        st.sampled_from(["1", " 12.50 ", "0.0001", "1e2", "9999999999999999.9999"]),
    ),
    "currency": st.sampled_from(["USD", " USD "]),
    "transaction_date": st.sampled_from(
        ["2024-01-31", "2024-02-29", "2024-01-31T10:00:00", "2024-01-31T10:00:00Z", "2024-01-31T23:59:59.5-05:00",
         "20240131", "9999-12-31T23:59:59"]
    ),
    "type": st.sampled_from(["Payment", "payment", "REFUND", "Debit", "credit", " Refund "]),
}
BAD = {
    "amount": st.sampled_from(
        ["0", "0.00", "-1", "-0.01", "NaN", "nan", "Infinity", "-Infinity", "inf", "1e400", "1.23456",
         "0.00001", "abc", "1,000.00", "", " ", "12.5.1", "$5", "0x10", "10000000000000000", "=1+1"]
    ),
    "currency": st.sampled_from(["usd", "EUR", "US", "USDD", "", "U$D", "ＵＳＤ", "=A1"]),
    "transaction_date": st.sampled_from(
        ["2023-02-29", "2024-13-01", "31/01/2024", "yesterday", "", "2024-01-31T24:00:00", "2024-1-5",
         "0001-01-01T00:00:00+01:00", "2024-01-31T10:00:00+25:00", "'; DROP TABLE accounts; --"]
    ),
    "type": st.sampled_from(["Transfer", "", "Pay", "=1+1", "DEBIT; --"]),
}
NOTE = st.one_of(
    st.sampled_from(NASTY),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
    st.integers(min_value=990, max_value=1_010).map(lambda n: "x" * n),  # around MAX_FIELD_CHARS
)


@st.composite
def rows(draw) -> dict:
    row = {}
    bad = set()
    for name in GOOD:
        if draw(st.integers(0, 4)) == 0:  # each field is bad one time in five
            row[name] = draw(BAD[name])
            bad.add(name)
        else:
            row[name] = draw(GOOD[name])
    row["order_suffix"] = draw(st.one_of(st.just(""), st.sampled_from(NASTY)))
    row["note"] = draw(NOTE)
    if len(row["note"]) > 1_000:
        bad.add("note")
    row["repeat_previous_order"] = draw(st.integers(0, 5)) == 0
    row["bad"] = bad
    return row


@st.composite
def headers(draw) -> list[str]:
    """The required columns and a note column, in any order, any case, padded with spaces."""
    names = draw(st.permutations([*REQUIRED_COLUMNS, "note"]))
    return [
        draw(st.sampled_from(["", " "])) + (n.upper() if draw(st.booleans()) else n) + draw(st.sampled_from(["", "  "]))
        for n in names
    ]


@fuzz_settings
@given(data=st.lists(rows(), min_size=1, max_size=25), header=headers(), batch_rows=st.sampled_from([1, 3, 2_000]))
def test_rows_land_exactly_as_reported(db, account, data, header, batch_rows):
    prefix = f"F{uuid.uuid4().hex[:10]}-"
    order_ids = []
    for i, row in enumerate(data):
        if row["repeat_previous_order"] and order_ids:
            order_ids.append(order_ids[-1])
        else:
            order_ids.append(f"{prefix}{i}{row['order_suffix']}")
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    keys = [h.strip().lower() for h in header]
    note_column = header[keys.index("note")].strip()  # extra columns keep their name as written
    for row, order_id in zip(data, order_ids):
        values = {**row, "order_id": order_id}
        writer.writerow([values[k] for k in keys])

    before = counts(db)
    report = ingest_csv(io.BytesIO(buffer.getvalue().encode()), account, "TRANSACTION", db=db,
                        source_file="fuzz.csv", batch_rows=batch_rows)

    # the oracle: a valid row is ingested unless its (stripped) order id already was
    expected_ingested: dict[str, int] = {}
    expected_rejected, expected_duplicates = {}, set()
    for number, (row, order_id) in enumerate(zip(data, order_ids), start=1):
        if row["bad"]:
            expected_rejected[number] = row["bad"]
        elif order_id.strip() in expected_ingested:
            expected_duplicates.add(number)
        else:
            expected_ingested[order_id.strip()] = number

    assert report.rows_read == len(data)
    assert {e.row_number: {m.split()[0].lower() for m in e.errors} for e in report.rejected} == expected_rejected
    assert {d.row_number for d in report.duplicates} == expected_duplicates
    assert report.ingested == len(expected_ingested)
    assert counts(db) == (before[0] + report.ingested, before[1] + report.ingested)

    with db.begin() as conn:
        stored = conn.execute(
            sa.text(
                """
                SELECT s.order_id, s.amount, s.metadata,
                       (SELECT count(*) FROM process_tracker t
                         WHERE t.payload ->> 'staging_entry_id' = s.staging_entry_id AND t.status = 'PENDING') AS tasks
                FROM staging_entries s WHERE s.order_id LIKE :prefix || '%'
                """
            ),
            {"prefix": prefix},
        ).all()
    assert sorted(r.order_id for r in stored) == sorted(expected_ingested)  # each exactly once
    for r in stored:
        row = data[expected_ingested[r.order_id] - 1]
        assert r.tasks == 1
        assert r.amount == Decimal(row["amount"].strip())
        assert r.metadata[note_column] == row["note"]  # verbatim, however hostile
        assert r.metadata["source_file"] == "fuzz.csv"


@fuzz_settings
@given(account_id=st.one_of(st.sampled_from(NASTY), st.text(max_size=30)).filter(bool))
def test_unknown_or_hostile_account_ids_are_not_found(db, account, account_id):
    before = counts(db)
    with pytest.raises((NotFoundError, InvalidInputError)):
        ingest_csv(io.BytesIO((HEADER + "A,1,USD,2024-01-01,Payment\n").encode()), account_id, "TRANSACTION", db=db)
    assert counts(db) == before


def test_a_literal_backslash_u0000_cell_is_stored_verbatim(db, account):
    content = (HEADER.strip() + ",note\n" + "LIT-1,1,USD,2024-01-01,Payment,C:\\u0000\\dir\n").encode()
    report = ingest_or_refuse(db, account, content)
    assert report is not None and report.ingested == 1, report and report.rejected
