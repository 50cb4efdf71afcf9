"""CSV ingestion against a real PostgreSQL: what is ingested, what is reported, what is never written."""

from __future__ import annotations

import datetime as dt
import io
import threading
import tracemalloc
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from recon.ingest import csv as csv_ingest
from recon.ingest.csv import IngestReport, ingest_csv
from recon.staging import lock_for_ingest
from recon.db import Database
from recon.accounts import create_account, create_merchant
from recon.errors import InvalidInputError, NotFoundError
from recon.staging import create_staging_entry

DATA = Path(__file__).parent / "data"
HEADER = "order_id,amount,currency,transaction_date,type\n"
UTC = dt.timezone.utc


@pytest.fixture
def merchant(db: Database) -> str:
    return create_merchant("Acme", db=db)


@pytest.fixture
def debit_account(db: Database, merchant: str) -> str:
    return create_account(merchant, "Bank", "DEBIT_NORMAL", "USD", db=db)


@pytest.fixture
def credit_account(db: Database, merchant: str) -> str:
    return create_account(merchant, "Revenue", "CREDIT_NORMAL", "USD", db=db)


def write(tmp_path: Path, content: str | bytes, name: str = "statement.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def staged(db: Database, account_id: str) -> list[sa.Row]:
    """The account's staging entries with their task counts, by order_id."""
    with db.begin() as conn:
        return conn.execute(
            sa.text(
                """
                SELECT s.*,
                       (SELECT count(*) FROM process_tracker t
                         WHERE t.payload ->> 'staging_entry_id' = s.staging_entry_id) AS tasks,
                       (SELECT count(*) FROM process_tracker t
                         WHERE t.payload ->> 'staging_entry_id' = s.staging_entry_id
                           AND t.status = 'PENDING' AND t.task_type = 'PROCESS_STAGING_ENTRY') AS pending_tasks
                FROM staging_entries s WHERE s.account_id = :a ORDER BY s.order_id, s.processing_mode
                """
            ),
            {"a": account_id},
        ).all()


def row_counts(db: Database) -> tuple[int, int]:
    with db.begin() as conn:
        return (
            conn.execute(sa.text("SELECT count(*) FROM staging_entries")).scalar_one(),
            conn.execute(sa.text("SELECT count(*) FROM process_tracker")).scalar_one(),
        )


def assert_consistent(report: IngestReport) -> None:
    assert report.rows_read == report.ingested + report.rejected_count + report.duplicate_count


# --- Whole files ----------------------------------------------------------------------------


def test_all_valid_file_is_ingested_with_one_pending_task_per_entry(db, debit_account):
    report = ingest_csv(DATA / "valid.csv", debit_account, "TRANSACTION", db=db)

    assert (report.rows_read, report.ingested, report.rejected, report.duplicates) == (4, 4, [], [])
    assert_consistent(report)
    rows = staged(db, debit_account)
    assert sorted(report.staging_entry_ids) == sorted(r.staging_entry_id for r in rows)
    assert [(r.order_id, r.entry_type, r.amount) for r in rows] == [
        ("ORD-1", "DEBIT", Decimal("100.00")),  # Payment on a debit-normal account
        ("ORD-2", "CREDIT", Decimal("25.50")),  # Refund
        ("ORD-3", "DEBIT", Decimal("7")),
        ("ORD-4", "CREDIT", Decimal("0.0001")),
    ]
    for r in rows:
        assert (r.tasks, r.pending_tasks, r.status, r.currency) == (1, 1, "PENDING", "USD")
        assert r.processing_mode == "TRANSACTION"
        assert r.metadata["source_file"] == "valid.csv"
    assert rows[0].metadata == {"order_id": "ORD-1", "type": "Payment", "source_file": "valid.csv"}
    assert rows[2].metadata["type"] == "debit"  # the original spelling is kept


def test_mixed_file_ingests_good_rows_and_reports_every_problem_of_each_bad_row(db, debit_account):
    report = ingest_csv(DATA / "mixed.csv", debit_account, "TRANSACTION", db=db)

    assert (report.rows_read, report.ingested, report.rejected_count) == (8, 3, 5)  # row 6 is blank
    assert_consistent(report)
    assert [r.order_id for r in staged(db, debit_account)] == ["M-1", "M-3", "M-9"]
    errors = {e.row_number: e.errors for e in report.rejected}
    assert sorted(errors) == [2, 4, 5, 7, 8]
    # row 2: amount, currency, date and type are all wrong, and all four are reported
    assert len(errors[2]) == 4
    assert "amount '0' must be positive" in errors[2][0]
    assert "currency 'usd' is not an ISO 4217 code" in errors[2][1]
    assert "transaction_date '2024-02-30' is not a valid date" in errors[2][2]
    assert "type 'Transfer' must be Payment, Refund, Debit or Credit" in errors[2][3]
    # row 4: missing order id, malformed amount, foreign currency, non-ISO date
    assert errors[4] == [
        "order_id is missing",
        "amount 'abc' is not a decimal number",
        "currency 'EUR' is not the account's currency USD",
        "transaction_date '31/01/2024' is not an ISO 8601 date or datetime"
        " (e.g. 2024-01-31 or 2024-01-31T09:30:00+02:00)",
    ]
    assert errors[5] == ["amount '1.23456' has more than 4 decimal places"]
    assert "must be positive" in errors[7][0]
    assert errors[8] == ["amount 'NaN' is not a decimal number"]


def test_all_invalid_file_writes_nothing(db, debit_account):
    report = ingest_csv(DATA / "all_invalid.csv", debit_account, "TRANSACTION", db=db)

    assert (report.rows_read, report.ingested, report.rejected_count) == (5, 0, 5)
    assert row_counts(db) == (0, 0)
    messages = [e.errors[0] for e in report.rejected]
    assert "too large" in messages[1]  # 1e400
    assert "currency 'GBP' is not the account's currency USD" == messages[2]
    assert "'yesterday' is not an ISO 8601 date" in messages[3]


def test_header_names_are_case_and_space_insensitive_in_any_order_and_extra_columns_are_kept(
    db, debit_account, tmp_path
):
    path = write(
        tmp_path,
        " Type ,AMOUNT, Order_ID ,Branch,currency,Transaction_Date,Memo\n"
        "Payment,5.00,X-1,Berlin,USD,2024-03-01,=cmd()\n"
        "Refund,6.00,X-2,,USD,2024-03-01,'; DROP TABLE staging_entries; --\n",
    )
    report = ingest_csv(path, debit_account, "confirmation", db=db)

    assert report.ingested == 2 and report.processing_mode == "CONFIRMATION"
    first, second = staged(db, debit_account)
    assert first.metadata == {
        "order_id": "X-1", "type": "Payment", "source_file": "statement.csv", "Branch": "Berlin", "Memo": "=cmd()",
    }
    assert second.metadata["Memo"] == "'; DROP TABLE staging_entries; --"  # stored verbatim, never run
    assert second.metadata["Branch"] == ""


@pytest.mark.parametrize(
    "account_type, payment, refund",
    [("DEBIT_NORMAL", "DEBIT", "CREDIT"), ("CREDIT_NORMAL", "CREDIT", "DEBIT")],
)
def test_payment_is_the_accounts_normal_side_and_refund_the_opposite(
    db, merchant, tmp_path, account_type, payment, refund
):
    account = create_account(merchant, "A", account_type, "USD", db=db)
    path = write(
        tmp_path,
        HEADER + "P,1,USD,2024-01-01,PAYMENT\nR,1,USD,2024-01-01,refund\n"
        "D,1,USD,2024-01-01,Debit\nC,1,USD,2024-01-01,credit\n",
    )
    ingest_csv(path, account, "TRANSACTION", db=db)

    sides = {r.order_id: r.entry_type for r in staged(db, account)}
    assert sides == {"P": payment, "R": refund, "D": "DEBIT", "C": "CREDIT"}


def test_dates_and_naive_datetimes_are_utc_and_offsets_are_honoured(db, debit_account, tmp_path):
    path = write(
        tmp_path,
        HEADER
        + "d,1,USD,2024-01-31,Payment\n"
        + "naive,1,USD,2024-01-31T10:15:00,Payment\n"
        + "zulu,1,USD,2024-01-31T10:15:00Z,Payment\n"
        + "plus2,1,USD,2024-01-31T10:15:00+02:00,Payment\n"
        + "minus5,1,USD,2024-01-31 23:30:00.250-05:00,Payment\n"
        + "far,1,USD,2024-01-31T00:00:00+20:00,Payment\n",
    )
    report = ingest_csv(path, debit_account, "TRANSACTION", db=db)

    assert report.ingested == 6, report.summary_lines()
    dates = {r.order_id: r.effective_date for r in staged(db, debit_account)}
    assert dates == {
        "d": dt.datetime(2024, 1, 31, tzinfo=UTC),
        "naive": dt.datetime(2024, 1, 31, 10, 15, tzinfo=UTC),
        "zulu": dt.datetime(2024, 1, 31, 10, 15, tzinfo=UTC),
        "plus2": dt.datetime(2024, 1, 31, 8, 15, tzinfo=UTC),
        "minus5": dt.datetime(2024, 2, 1, 4, 30, 0, 250000, tzinfo=UTC),
        "far": dt.datetime(2024, 1, 30, 4, 0, tzinfo=UTC),
    }


def test_impossible_and_out_of_range_dates_are_row_errors(db, debit_account, tmp_path):
    path = write(
        tmp_path,
        HEADER
        + "a,1,USD,2023-02-29,Payment\n"
        + "b,1,USD,2024-13-01,Payment\n"
        + "c,1,USD,2024-01-01T25:00:00,Payment\n"
        + "d,1,USD,0001-01-01T00:00:00+01:00,Payment\n"
        + "e,1,USD,2024-01-01,Payment\n",
    )
    report = ingest_csv(path, debit_account, "TRANSACTION", db=db)

    assert report.ingested == 1 and [e.row_number for e in report.rejected] == [1, 2, 3, 4]
    assert all("transaction_date" in e.errors[0] for e in report.rejected)


# --- Duplicates -----------------------------------------------------------------------------


def test_duplicates_within_the_file_are_reported_once_ingested_once(db, debit_account, tmp_path):
    rows = ["A,1,USD,2024-01-01,Payment", "B,2,USD,2024-01-01,Payment", "A,3,USD,2024-01-01,Payment",
            "C,4,USD,2024-01-01,Payment", "B,5,USD,2024-01-01,Payment", "A,6,USD,2024-01-01,Payment"]
    path = write(tmp_path, HEADER + "\n".join(rows) + "\n")
    # batch_rows=2 puts some duplicates in the same batch and others in later batches
    report = ingest_csv(path, debit_account, "TRANSACTION", db=db, batch_rows=2)

    assert (report.ingested, report.duplicate_count) == (3, 3)
    assert_consistent(report)
    assert sorted((d.row_number, d.order_id, d.duplicate_of) for d in report.duplicates) == [
        (3, "A", "earlier row of this file"),
        (5, "B", "earlier row of this file"),
        (6, "A", "earlier row of this file"),
    ]
    assert {r.order_id: r.amount for r in staged(db, debit_account)} == {
        "A": Decimal("1"), "B": Decimal("2"), "C": Decimal("4"),
    }


def test_duplicates_of_existing_entries_are_reported_and_mode_and_account_scope_them(
    db, debit_account, credit_account, tmp_path
):
    create_staging_entry(debit_account, "DEBIT", "1", "USD", "TRANSACTION", metadata={"order_id": "OLD"}, db=db)
    create_staging_entry(debit_account, "DEBIT", "1", "USD", "CONFIRMATION", metadata={"order_id": "CONF"}, db=db)
    create_staging_entry(credit_account, "DEBIT", "1", "USD", "TRANSACTION", metadata={"order_id": "OTHER"}, db=db)
    path = write(
        tmp_path,
        HEADER + "OLD,1,USD,2024-01-01,Payment\nCONF,1,USD,2024-01-01,Payment\nOTHER,1,USD,2024-01-01,Payment\n",
    )
    report = ingest_csv(path, debit_account, "TRANSACTION", db=db)

    assert report.ingested == 2  # CONF is staged in another mode, OTHER on another account
    assert [(d.row_number, d.order_id, d.duplicate_of) for d in report.duplicates] == [
        (1, "OLD", "existing staging entry")
    ]


def test_ingesting_the_same_file_twice_ingests_nothing_the_second_time(db, debit_account):
    first = ingest_csv(DATA / "valid.csv", debit_account, "TRANSACTION", db=db)
    second = ingest_csv(DATA / "valid.csv", debit_account, "TRANSACTION", db=db)

    assert (first.ingested, second.ingested, second.duplicate_count) == (4, 0, 4)
    assert {d.duplicate_of for d in second.duplicates} == {"existing staging entry"}
    assert row_counts(db) == (4, 4)


def test_a_concurrent_ingest_of_the_same_account_and_mode_waits_for_the_lock(db, debit_account, tmp_path):
    """Without the lock the second ingest would insert before the first commits: two entries per order."""
    path = write(tmp_path, HEADER + "L-1,1,USD,2024-01-01,Payment\nL-2,1,USD,2024-01-01,Payment\n")
    result: dict[str, object] = {}
    with db.begin() as holder:
        lock_for_ingest(holder, debit_account, "TRANSACTION")
        holder_pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()

        def second_ingest() -> None:
            try:
                result["report"] = ingest_csv(path, debit_account, "TRANSACTION", db=db)
            except Exception as exc:  # surfaced by the assertions below
                result["error"] = exc

        thread = threading.Thread(target=second_ingest)
        thread.start()
        wait_until_blocked_by(db, holder_pid)
        # the first "ingest" inserts the same orders while the second one waits
        create_staging_entry(debit_account, "DEBIT", "1", "USD", "TRANSACTION", metadata={"order_id": "L-1"}, db=db)
        create_staging_entry(debit_account, "DEBIT", "1", "USD", "TRANSACTION", metadata={"order_id": "L-2"}, db=db)
    thread.join(timeout=30)

    assert "error" not in result, result
    report = result["report"]
    assert (report.ingested, report.duplicate_count) == (0, 2)
    assert [r.order_id for r in staged(db, debit_account)] == ["L-1", "L-2"]


def wait_until_blocked_by(db: Database, pid: int, timeout: float = 30.0) -> None:
    """Poll pg_stat_activity (a condition, not a guess) until a backend waits on `pid`'s lock."""
    import time

    deadline = time.monotonic() + timeout
    with db.engine.connect() as conn:
        while time.monotonic() < deadline:
            blocked = conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
                {"pid": pid},
            ).scalar_one()
            conn.rollback()
            if blocked:
                return
            time.sleep(0.01)
    raise AssertionError("the second ingest never waited for the lock")


# --- File-level errors: a clear error and nothing written -----------------------------------


def test_unknown_account_is_not_found_and_writes_nothing(db):
    with pytest.raises(NotFoundError, match="no account with account_id 'acc_missing'"):
        ingest_csv(DATA / "valid.csv", "acc_missing", "TRANSACTION", db=db)
    assert row_counts(db) == (0, 0)


def test_invalid_mode_is_refused(db, debit_account):
    with pytest.raises(InvalidInputError, match="must be TRANSACTION or CONFIRMATION"):
        ingest_csv(DATA / "valid.csv", debit_account, "BOTH", db=db)


def test_missing_file_is_a_clear_error(db, debit_account, tmp_path):
    with pytest.raises(InvalidInputError, match="cannot open CSV file .*nope.csv"):
        ingest_csv(tmp_path / "nope.csv", debit_account, "TRANSACTION", db=db)


@pytest.mark.parametrize(
    "content, message",
    [
        ("A-1,1,USD,2024-01-01,Payment\n", r"missing column\(s\) order_id, amount, currency, transaction_date, type"),
        ("order_id,amount,currency,type\nA,1,USD,Payment\n", r"missing column\(s\) transaction_date"),
        ("order_id;amount;currency;transaction_date;type\n", r"missing column\(s\) .*Expected comma-separated"),
        (HEADER.strip() + ",Amount\n", "column 'Amount' appears twice"),
        (HEADER.strip() + ",,note\n", "column 6 has no name"),
        (HEADER.strip() + ",source_file\n", "column 'source_file' is reserved"),
        (HEADER.strip() + "," + ",".join(f"c{i}" for i in range(200)) + "\n", "the limit is 100 \\(MAX_COLUMNS\\)"),
    ],
)
def test_bad_headers_are_refused(db, debit_account, tmp_path, content, message):
    with pytest.raises(InvalidInputError, match=message):
        ingest_csv(write(tmp_path, content), debit_account, "TRANSACTION", db=db)
    assert row_counts(db) == (0, 0)


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf", b"\n\n  \r\n", b",,,\n"])
def test_empty_files_are_refused(db, debit_account, tmp_path, content):
    with pytest.raises(InvalidInputError, match="the file is empty"):
        ingest_csv(write(tmp_path, content), debit_account, "TRANSACTION", db=db)


def test_header_only_file_is_an_empty_report(db, debit_account, tmp_path):
    report = ingest_csv(write(tmp_path, HEADER), debit_account, "TRANSACTION", db=db)
    assert (report.rows_read, report.ingested, report.rejected_count) == (0, 0, 0)
    assert row_counts(db) == (0, 0)


def test_utf8_bom_is_accepted(db, debit_account, tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbf" + (HEADER + "B-1,1,USD,2024-01-01,Payment\n").encode())
    assert ingest_csv(path, debit_account, "TRANSACTION", db=db).ingested == 1
    assert staged(db, debit_account)[0].order_id == "B-1"


@pytest.mark.parametrize(
    "content, message",
    [
        (bytes(range(256)) * 4, "not UTF-8|NUL byte"),
        (b"\x89PNG\r\n\x1a\n" + bytes(200), "not UTF-8|NUL byte"),
        ((HEADER + "A,1,USD,2024-01-01,Payment\n").encode("utf-16"), "not UTF-8|NUL byte"),
        (HEADER.encode() + b"A,1,USD,2024-01-01,Payment,\x00\n", "line 2 contains a NUL byte"),
    ],
)
def test_binary_data_is_not_csv(db, debit_account, tmp_path, content, message):
    with pytest.raises(InvalidInputError, match=message):
        ingest_csv(write(tmp_path, content), debit_account, "TRANSACTION", db=db)
    assert row_counts(db) == (0, 0)


def test_latin1_bytes_fail_the_whole_file_even_after_good_batches(db, debit_account, tmp_path):
    good = "".join(f"G-{i},1,USD,2024-01-01,Payment\n" for i in range(50))
    content = (HEADER + good).encode() + "Z-1,1,USD,2024-01-01,Payment,Café\n".encode("latin-1")
    path = write(tmp_path, HEADER.strip().encode() + b",note\n" + content[len(HEADER):])
    with pytest.raises(InvalidInputError, match=r"^line 52: the file is not UTF-8 text \(byte 0xe9"):
        ingest_csv(path, debit_account, "TRANSACTION", db=db, batch_rows=5)
    assert row_counts(db) == (0, 0)  # the batches inserted before the bad byte were rolled back


@pytest.mark.parametrize("line", [2, 3, 400])
def test_the_not_utf8_error_names_the_line_the_bad_byte_is_on(db, debit_account, tmp_path, line):
    rows = [f"R-{i},1,USD,2024-01-01,Payment\n".encode() for i in range(2, 500)]
    rows[line - 2] = b"R-bad,1,USD,2024-01-01,Pay\xffment\n"
    path = write(tmp_path, HEADER.encode() + b"".join(rows))
    with pytest.raises(InvalidInputError, match=rf"^line {line}: the file is not UTF-8 text \(byte 0xff"):
        ingest_csv(path, debit_account, "TRANSACTION", db=db)
    assert row_counts(db) == (0, 0)


# --- Limits ---------------------------------------------------------------------------------


def test_overlong_fields_are_row_errors(db, debit_account, tmp_path):
    path = write(
        tmp_path,
        HEADER.strip() + ",note\n"
        + "ok,1,USD,2024-01-01,Payment,short\n"
        + f"{'o' * 300},1,USD,2024-01-01,Payment,\n"
        + f"note,1,USD,2024-01-01,Payment,{'n' * 1001}\n"
        + f"amount,{'1' * 1001},USD,2024-01-01,Payment,\n",
    )
    report = ingest_csv(path, debit_account, "TRANSACTION", db=db)

    assert report.ingested == 1
    errors = {e.row_number: e.errors for e in report.rejected}
    assert errors[2] == ["order_id is 300 characters long; the limit is 255"]
    assert errors[3] == ["note is 1,001 characters long; the limit is 1,000 (MAX_FIELD_CHARS)"]
    assert errors[4] == ["amount is 1,001 characters long; the limit is 1,000 (MAX_FIELD_CHARS)"]


def test_wrong_field_count_is_a_row_error(db, debit_account, tmp_path):
    path = write(tmp_path, HEADER + "A,1,USD,2024-01-01\nB,1,USD,2024-01-01,Payment,extra\n")
    report = ingest_csv(path, debit_account, "TRANSACTION", db=db)
    assert report.ingested == 0
    assert report.rejected[0].errors == ["the row has 4 fields but the header has 5", "type is missing"]
    assert report.rejected[1].errors == ["the row has 6 fields but the header has 5"]


def test_an_overlong_row_or_open_quote_fails_the_file(db, debit_account, tmp_path):
    long_line = "A,1,USD,2024-01-01,Payment," + "x" * csv_ingest.MAX_ROW_CHARS + "\n"
    with pytest.raises(InvalidInputError, match="longer than 100,000 characters"):
        ingest_csv(write(tmp_path, HEADER + long_line), debit_account, "TRANSACTION", db=db)
    open_quote = 'A,1,USD,2024-01-01,"Payment\n' + "B,1,USD,2024-01-01,Payment\n" * 5000
    with pytest.raises(InvalidInputError, match="is a quote left open"):
        ingest_csv(write(tmp_path, HEADER + open_quote), debit_account, "TRANSACTION", db=db)
    assert row_counts(db) == (0, 0)


def test_file_size_limit(db, debit_account, monkeypatch):
    monkeypatch.setattr(csv_ingest, "MAX_FILE_BYTES", 1_000)
    content = (HEADER + "".join(f"S-{i},1,USD,2024-01-01,Payment\n" for i in range(100))).encode()
    with pytest.raises(InvalidInputError, match="larger than 1,000 bytes \\(MAX_FILE_BYTES\\)"):
        ingest_csv(io.BytesIO(content), debit_account, "TRANSACTION", db=db, batch_rows=3)
    assert row_counts(db) == (0, 0)


# --- Streams, progress, report ----------------------------------------------------------------


def test_binary_stream_input_and_text_stream_refused(db, debit_account):
    stream = io.BytesIO((HEADER + "S-1,1,USD,2024-01-01,Payment\n").encode())
    report = ingest_csv(stream, debit_account, "TRANSACTION", db=db, source_file="upload.csv")
    assert report.ingested == 1 and not stream.closed  # the caller's stream stays open
    assert staged(db, debit_account)[0].metadata["source_file"] == "upload.csv"
    with pytest.raises(InvalidInputError, match="binary stream"):
        ingest_csv(io.StringIO(HEADER), debit_account, "TRANSACTION", db=db)


def test_progress_is_reported_while_reading(db, debit_account, tmp_path):
    path = write(tmp_path, HEADER + "".join(f"P-{i},1,USD,2024-01-01,Payment\n" for i in range(25)))
    seen = []
    ingest_csv(path, debit_account, "TRANSACTION", db=db, progress=seen.append, progress_every=10, batch_rows=4)
    assert [(p.rows_read, p.ingested) for p in seen] == [(10, 10), (20, 20)]
    assert "10 rows read, 10 ingested, 0 rejected, 0 duplicates" in seen[0].line()


def test_report_summary_and_dict(db, debit_account):
    report = ingest_csv(DATA / "mixed.csv", debit_account, "TRANSACTION", db=db)
    lines = report.summary_lines()
    assert lines[0].startswith(f"mixed.csv -> account {debit_account} (TRANSACTION): 8 rows read, 3 ingested,")
    assert "  row 5: amount '1.23456' has more than 4 decimal places" in lines
    as_dict = report.to_dict()
    assert as_dict["rejected"][0] == {"row_number": 2, "errors": report.rejected[0].errors}
    assert as_dict["ingested"] == 3 and len(as_dict["staging_entry_ids"]) == 3


def test_report_lists_are_capped_but_counts_are_exact(db, debit_account, tmp_path, monkeypatch):
    from recon.ingest import report as ingest_report

    monkeypatch.setattr(ingest_report, "MAX_REPORTED_ROWS", 3)
    path = write(tmp_path, HEADER + "".join(f"R-{i},0,USD,2024-01-01,Payment\n" for i in range(10)))
    report = ingest_csv(path, debit_account, "TRANSACTION", db=db)
    assert (report.rejected_count, len(report.rejected)) == (10, 3)
    assert report.summary_lines()[-1] == "  ... and 7 more rejected rows"


def write_generated_csv(path: Path, rows: int, prefix: str) -> None:
    """One rejected row in 1,000 (amount 0); an extra column so rows look like real exports."""
    with path.open("w") as f:
        f.write(HEADER.strip() + ",reference\n")
        for i in range(rows):
            amount = "0" if i % 1000 == 999 else f"{i % 997 + 1}.25"
            f.write(f"{prefix}-{i:07d},{amount},USD,2024-01-01T00:00:{i % 60:02d}Z,Payment,ref-{i:09d}\n")


def traced_peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_a_large_file_streams_in_bounded_memory(db, debit_account, tmp_path):
    """Peak memory is set by the batch size, not the file: 20x the rows, about the same peak."""
    small, big, rows = tmp_path / "small.csv", tmp_path / "big.csv", 200_000
    write_generated_csv(small, rows // 20, "SMALL")
    write_generated_csv(big, rows, "BIG")

    _, small_peak = traced_peak(lambda: ingest_csv(small, debit_account, "TRANSACTION", db=db))
    progress = []
    report, peak = traced_peak(
        lambda: ingest_csv(big, debit_account, "TRANSACTION", db=db, progress=progress.append)
    )

    assert (report.rows_read, report.ingested, report.rejected_count) == (rows, rows - 200, 200)
    assert [p.rows_read for p in progress] == [50_000, 100_000, 150_000, 200_000]
    assert row_counts(db) == (rows * 21 // 20 - 210, rows * 21 // 20 - 210)
    file_size = big.stat().st_size
    print(f"file {file_size / 1e6:.1f} MB: peak {peak / 1e6:.1f} MB ({small_peak / 1e6:.1f} MB for 1/20 of it)")
    assert peak < 1.5 * small_peak
    assert peak < file_size / 2
