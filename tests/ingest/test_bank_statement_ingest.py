"""Bank statements into staging entries on a real database: every format through `ingest_file` and
`./recon ingest`, pending lines left out, re-ingest ingests nothing, hostile files write nothing."""

from __future__ import annotations

import io
import shutil
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from recon import accounts, cli
from recon.db import Database
from recon.errors import InvalidInputError
from recon.ingest import bai2, camt, mt940
from recon.ingest.files import ingest_file

DATA = Path(__file__).resolve().parents[1] / "data" / "statements"
ORDER_ID = r"ORD-\d+"

# fixture -> (format, currency, the parser that gives the expected lines)
FIXTURES = {
    "camt053_v2.xml": ("camt053", "EUR", lambda p: camt.parse_camt053(p, expected_currency="EUR", order_id_pattern=ORDER_ID)),
    "camt054_v4.xml": ("camt054", "CHF", lambda p: camt.parse_camt054(p, expected_currency="CHF", order_id_pattern=ORDER_ID)),
    "mt940_structured_swift.sta": ("mt940", "EUR", lambda p: mt940.parse_mt940(p, expected_currency="EUR", order_id_pattern=ORDER_ID)),
    "mt940_freetext_no_final_newline.sta": ("mt940", "GBP", lambda p: mt940.parse_mt940(p, expected_currency="GBP", order_id_pattern=ORDER_ID)),
    "mt940_dutch_slash_codes.sta": ("mt940", "EUR", lambda p: mt940.parse_mt940(p, expected_currency="EUR", order_id_pattern=ORDER_ID)),
    "mt942_interim.sta": ("mt942", "CHF", lambda p: mt940.parse_mt942(p, expected_currency="CHF", order_id_pattern=ORDER_ID)),
    "bai2_prior_day.bai": ("bai2", "USD", lambda p: bai2.parse_bai2(p, expected_currency="USD", order_id_pattern=ORDER_ID)),
}


def make_account(db: Database, currency: str) -> str:
    """A bank account whose lines fit either mode: a rule's account_two (orders settle on it) and
    account_one of another (ingest refuses a mode no rule gives the account)."""
    merchant = accounts.create_merchant("Bank statements", db=db)
    bank = accounts.create_account(merchant, f"Bank {currency}", "DEBIT_NORMAL", currency, db=db)
    orders = accounts.create_account(merchant, f"Orders {currency}", "DEBIT_NORMAL", currency, db=db)
    clearing = accounts.create_account(merchant, f"Clearing {currency}", "CREDIT_NORMAL", currency, db=db)
    accounts.create_recon_rule(orders, bank, db=db)
    accounts.create_recon_rule(bank, clearing, db=db)
    return bank


def staged(db: Database, account: str) -> list:
    with db.begin() as conn:
        return conn.execute(sa.text(
            "SELECT s.*, (SELECT count(*) FROM process_tracker t WHERE t.payload ->> 'staging_entry_id'"
            " = s.staging_entry_id) AS tasks FROM staging_entries s WHERE s.account_id = :a"
            " ORDER BY s.natural_key"), {"a": account}).all()


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_each_format_ingests_its_booked_lines_with_their_metadata(db, fixture):
    file_format, currency, parse = FIXTURES[fixture]
    account = make_account(db, currency)
    expected = [line for statement in parse(DATA / fixture) for line in statement.lines]
    booked = [line for line in expected if line.booked]

    report = ingest_file(DATA / fixture, account, "CONFIRMATION", db=db, order_id_pattern=ORDER_ID)

    assert report.file_format == file_format  # detected from the content
    assert (report.rows_read, report.ingested, report.duplicate_count, report.rejected_count) == (
        len(expected), len(booked), 0, 0)
    assert report.pending_skipped == len(expected) - len(booked)
    rows = staged(db, account)
    assert len(rows) == len(booked) and {r.tasks for r in rows} <= {1}  # each with its task
    by_key = {r.natural_key: r for r in rows}
    for line in booked:
        row = by_key[line.natural_key]
        assert (row.entry_type, row.amount, row.currency, row.processing_mode, row.status) == (
            line.entry_type, line.amount, currency, "CONFIRMATION", "PENDING")
        assert row.effective_date == line.effective_date
        assert row.metadata == {**line.metadata, "source_file": fixture, "statement_format": file_format}
        assert row.order_id == line.metadata.get("order_id")


def test_camt053_figures_as_staged(db):
    account = make_account(db, "EUR")
    report = ingest_file(DATA / "camt053_v2.xml", account, "CONFIRMATION", db=db, order_id_pattern=ORDER_ID)
    assert (report.rows_read, report.ingested, report.pending_skipped) == (8, 7, 1)
    rows = staged(db, account)
    signed = sum((r.amount if r.entry_type == "CREDIT" else -r.amount) for r in rows)
    assert signed == Decimal("1712.60")  # closing 11,712.60 - opening 10,000.00
    reversal = [r for r in rows if r.metadata.get("reversal")]
    assert [(r.natural_key, r.entry_type, r.amount) for r in reversal] == [("2026011500004", "DEBIT", Decimal("45.0000"))]
    assert "2026011500003/2" in {r.natural_key for r in rows}  # a batched transaction is its own line


def test_reingest_ingests_nothing_and_reports_duplicates(db):
    account = make_account(db, "EUR")
    first = ingest_file(DATA / "camt053_v2.xml", account, "CONFIRMATION", db=db)
    again = ingest_file(DATA / "camt053_v2.xml", account, "CONFIRMATION", db=db)
    assert first.ingested == 7 and again.ingested == 0
    assert again.duplicate_count == 7 and {d.duplicate_of for d in again.duplicates} == {"existing staging entry"}
    assert {d.natural_key for d in again.duplicates} == {r.natural_key for r in staged(db, account)}
    assert "bank line '2026011500001' duplicates an existing staging entry" in "\n".join(again.summary_lines())
    # the same statement through the other mode is the same money: still a duplicate
    assert ingest_file(DATA / "camt053_v2.xml", account, "TRANSACTION", db=db).ingested == 0
    assert len(staged(db, account)) == 7


def test_an_overlapping_statement_ingests_only_its_new_lines(db, tmp_path):
    account = make_account(db, "EUR")
    ingest_file(DATA / "mt940_structured_swift.sta", account, "CONFIRMATION", db=db)
    before = {r.natural_key for r in staged(db, account)}
    # a resent file holding the same statements ingests nothing new
    resent = tmp_path / "resent.sta"
    shutil.copy(DATA / "mt940_structured_swift.sta", resent)
    report = ingest_file(resent, account, "CONFIRMATION", db=db)
    assert report.ingested == 0 and report.duplicate_count == len(before)


@pytest.mark.parametrize("fixture, currency, message", [
    ("hostile_camt053_unbalanced.xml", "EUR", "STMT"),
    ("hostile_camt053_billion_laughs.xml", "EUR", "document type declaration"),
    ("hostile_camt053_external_entity.xml", "EUR", "document type declaration"),
    ("hostile_camt053_truncated.xml", "EUR", "truncated"),
    ("hostile_camt053_latin1.xml", "EUR", "UTF-8"),
    ("hostile_camt053_batch_mismatch.xml", "EUR", "its 3 transactions add up to"),
    ("hostile_mt940_unbalanced.sta", "GBP", "NWB2026012001"),
    ("hostile_mt940_truncated.sta", "GBP", "is the file truncated"),
    ("hostile_bai2_account_total.bai", "USD", "control total"),
    ("hostile_bai2_record_count.bai", "USD", "record count"),
    ("camt053_v8_two_statements.xml", "EUR", "USD"),  # its second statement is not in the account's currency
])
def test_a_hostile_or_broken_file_is_refused_whole_and_writes_nothing(db, fixture, currency, message):
    account = make_account(db, currency)
    with pytest.raises(InvalidInputError, match=message):
        ingest_file(DATA / fixture, account, "CONFIRMATION", db=db)
    assert staged(db, account) == []


def test_wrong_account_currency_is_refused_naming_both(db):
    account = make_account(db, "USD")
    with pytest.raises(InvalidInputError, match="EUR") as caught:
        ingest_file(DATA / "camt053_v2.xml", account, "CONFIRMATION", db=db)
    assert "USD" in str(caught.value)
    assert staged(db, account) == []


def test_a_named_format_that_does_not_fit_the_file_is_an_error(db):
    account = make_account(db, "EUR")
    with pytest.raises(InvalidInputError):
        ingest_file(DATA / "camt053_v2.xml", account, "CONFIRMATION", db=db, file_format="mt940")
    with pytest.raises(InvalidInputError, match="format 'ofx'"):
        ingest_file(DATA / "camt053_v2.xml", account, "CONFIRMATION", db=db, file_format="ofx")
    with pytest.raises(InvalidInputError):
        ingest_file(io.BytesIO(b"\x00\x01\x02 not a statement"), account, "CONFIRMATION", db=db)
    assert staged(db, account) == []


def test_cli_ingests_a_statement_and_exits_0_then_4_when_every_line_is_a_duplicate(db, db_url, capsys):
    account = make_account(db, "EUR")
    path = str(DATA / "camt053_v2.xml")
    assert cli.main(["ingest", path, "--account", account, "--mode", "CONFIRMATION",
                     "--order-id-pattern", ORDER_ID]) == 0
    out, _ = capsys.readouterr()
    assert "camt053_v2.xml [camt053] -> account" in out and "7 ingested" in out and "1 pending" in out
    assert cli.main(["ingest", path, "--account", account, "--mode", "CONFIRMATION", "--format", "camt053"]) == 4
    assert "7 duplicates" in capsys.readouterr()[0]
    assert cli.main(["ingest", str(DATA / "hostile_camt053_unbalanced.xml"), "--account", account,
                     "--mode", "CONFIRMATION"]) == 2
    assert "recon: error:" in capsys.readouterr()[1]
    assert cli.main(["ingest", path, "--account", account, "--mode", "CONFIRMATION",
                     "--order-id-pattern", "ORD-("]) == 2
    assert "not a valid regular expression" in capsys.readouterr()[1]
    assert {r.order_id for r in staged(db, account)} >= {"ORD-1001"}


def test_the_order_id_pattern_setting_is_the_default(db, monkeypatch):
    account = make_account(db, "EUR")
    monkeypatch.setenv("RECON_ORDER_ID_PATTERN", ORDER_ID)
    ingest_file(DATA / "camt053_v2.xml", account, "CONFIRMATION", db=db)
    assert "ORD-1001" in {r.order_id for r in staged(db, account)}


@pytest.mark.slow
def test_a_large_camt053_ingests_in_bounded_memory_with_progress(db, tmp_path):
    """Four times the lines, about the same peak: memory is bounded by the batch, not the file.
    (The README's figure for 100,000 entries comes from `./recon ingest` on such a file.)"""
    import tracemalloc

    from tests.ingest.statement_files import GeneratedLine, GeneratedStatement, write_camt053

    def ingest(entries: int, progress: list) -> int:
        lines = [GeneratedLine("CREDIT" if n % 3 else "DEBIT", Decimal(n % 997 + 1) / 100) for n in range(entries)]
        statement = GeneratedStatement(opening=Decimal("1000.00"), lines=lines, statement_id=f"GEN-{entries}")
        path = tmp_path / f"large-{entries}.xml"
        with path.open("w", encoding="utf-8") as out:
            write_camt053(out, statement)
        account = make_account(db, "EUR")
        del lines, statement
        tracemalloc.start()
        try:
            report = ingest_file(path, account, "CONFIRMATION", db=db, progress=progress.append, progress_every=4_000)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert (report.rows_read, report.ingested) == (entries, entries)
        with db.begin() as conn:
            signed = conn.execute(sa.text(
                "SELECT sum(CASE WHEN entry_type = 'CREDIT' THEN amount ELSE -amount END) FROM staging_entries"
                " WHERE account_id = :a"), {"a": account}).scalar_one()
        assert signed == sum((Decimal(n % 997 + 1) / 100 * (1 if n % 3 else -1) for n in range(entries)), Decimal(0))
        return peak

    small_progress: list = []
    small = ingest(4_000, small_progress)
    large_progress: list = []
    large = ingest(16_000, large_progress)
    assert [p.rows_read for p in large_progress] == [4_000, 8_000, 12_000, 16_000]
    assert large_progress[-1].ingested == 16_000  # progress counts what was written so far
    assert large < 1.5 * small, f"peak traced memory {small / 2**20:.1f} MiB at 4,000 lines, {large / 2**20:.1f} at 16,000"
