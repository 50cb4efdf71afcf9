"""The look-ups and exports an operator reaches for (issue 18, problems 1 and 5): merchants and
accounts, an entry with its outcome history (by id or order id), a transaction with its versions,
every open exception streamed as CSV or JSON, ingest --dry-run and standard input."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest

from tests.dags.seed import Seed
from tests.test_cli_inputs import run, snapshot

HEADER = "order_id,amount,currency,transaction_date,type\n"


@pytest.fixture
def books(db_url: str, capsys, tmp_path) -> Seed:
    """Two orders booked; one confirmed, one confirmed for less (a mismatch); two lines without a rule."""
    seed = Seed(db_url)
    orders, psp = tmp_path / "orders.csv", tmp_path / "psp.csv"
    orders.write_text(HEADER + "O-1,1200.00,USD,2026-11-01,Payment\nO-2,1234567.50,USD,2026-11-01,Payment\n")
    psp.write_text(HEADER + "O-1,1150.00,USD,2026-11-02,Payment\nO-2,1234567.50,USD,2026-11-02,Payment\n")
    assert run(capsys, "ingest", str(orders), "--account", "acc_bank", "--mode", "TRANSACTION")[0] == 0
    assert run(capsys, "ingest", str(psp), "--account", "acc_psp", "--mode", "CONFIRMATION")[0] == 0
    seed.stage("acc_norule", "DEBIT", "12.00", "TRANSACTION", "NR-1")
    seed.stage("acc_norule", "DEBIT", "13.00", "TRANSACTION", "NR-2")
    assert run(capsys, "process")[0] == 0
    return seed


def test_merchant_and_account_list_and_show(db_url, books, capsys):
    code, _, out = run(capsys, "merchant", "list")
    assert code == 0 and "mer_t  Acme" in out
    code, _, out = run(capsys, "merchant", "show", "mer_t")
    assert code == 0 and "acc_bank  Bank USD" in out and "acc_psp" in out
    code, _, out = run(capsys, "account", "list", "--merchant", "mer_t", "--json")
    assert code == 0 and {a["account_id"] for a in json.loads(out)} == {"acc_bank", "acc_psp", "acc_norule"}
    code, _, out = run(capsys, "account", "show", "acc_bank")
    assert code == 0 and "posted: 1,235,767.50 USD" in out  # the currency's decimals, grouped
    code, err, _ = run(capsys, "account", "show", "acc_nope")
    assert code == 2 and "no account with account_id 'acc_nope'" in err


def test_entry_show_by_order_id_keeps_every_outcome_after_a_reprocess(db_url, books, capsys):
    assert run(capsys, "reprocess", "--error-type", "MismatchError")[0] == 0
    code, _, out = run(capsys, "entry", "show", "O-1", "--json")
    assert code == 0
    (transaction, confirmation) = json.loads(out)
    assert [h["status"] for h in transaction["history"]] == ["PROCESSED"]
    history = confirmation["history"]
    assert [h["status"] for h in history] == ["NEEDS_MANUAL_REVIEW", "PENDING"]
    assert history[0]["error_type"] == "MismatchError" and "1200" in history[0]["reason"]
    assert history[0]["task_id"] and history[0]["run"].startswith("cli:")
    assert history[1]["reason"] == "reopened by a reprocess"
    code, _, text = run(capsys, "entry", "show", confirmation["entry"]["staging_entry_id"])
    assert code == 0 and "MismatchError" in text and "1,150.00 USD" in text
    with psycopg_connect(db_url) as c:  # the history is append-only
        with pytest.raises(Exception, match="append-only"):
            c.execute("DELETE FROM staging_entry_outcomes")
    assert run(capsys, "entry", "show", "nothing-like-it")[0] == 2


def psycopg_connect(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)


def test_transaction_show_lists_every_version(db_url, books, capsys):
    logical = books.one("SELECT logical_transaction_id FROM transactions WHERE metadata ->> 'order_id' = 'O-2'"
                        " OR transaction_id IN (SELECT transaction_id FROM entries WHERE order_id = 'O-2') LIMIT 1")[0]
    code, err, out = run(capsys, "transaction", "show", logical, "--json")
    assert code == 0, err
    versions = json.loads(out)["versions"]
    assert [v["status"] for v in versions] == ["ARCHIVED", "POSTED"] and all(v["entries"] for v in versions)
    code, _, text = run(capsys, "transaction", "show", versions[0]["transaction_id"])
    assert code == 0 and "2 version(s)" in text and "1,234,567.50 USD" in text


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_exceptions_export_streams_every_open_exception(db_url, books, capsys, tmp_path, fmt):
    for n in range(1, 1_501):  # more than the report's 20 per type and a cursor batch
        books.stage("acc_norule", "DEBIT", f"{n}.00", "TRANSACTION", f"X-{n}")
    assert run(capsys, "process")[0] == 0
    target = tmp_path / f"exceptions.{fmt}"
    code, err, _ = run(capsys, "exceptions", "export", "--format", fmt, "--output", str(target))
    assert code == 0 and "exported 1,503 open exception(s)" in err
    rows = (list(csv.DictReader(io.StringIO(target.read_text()))) if fmt == "csv"
            else json.loads(target.read_text()))
    assert len(rows) == 1_503
    assert {r["error_type"] for r in rows} == {"NoReconRuleFoundError", "MismatchError"}
    code, _, out = run(capsys, "exceptions", "export", "--format", fmt, "--error-type", "MismatchError")
    assert code == 0 and "1150.0000" in out and out.count("O-1") == 1


def test_ingest_dry_run_reports_like_an_ingest_and_writes_nothing(db_url, books, capsys, tmp_path):
    more = tmp_path / "more.csv"
    more.write_text(HEADER + "O-1,1200.00,USD,2026-11-01,Payment\nO-3,5.00,USD,2026-11-03,Payment\n"
                    "O-4,oops,USD,2026-11-03,Payment\n")
    before = snapshot(db_url)
    code, err, out = run(capsys, "ingest", str(more), "--account", "acc_bank", "--mode", "TRANSACTION", "--dry-run")
    assert code == 3 and "1 ingested" in out and "1 duplicates" in out and "row 3" in out
    assert "dry run" in err and snapshot(db_url) == before


def test_ingest_reads_standard_input(db_url, books, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((HEADER + "IN-1,7.00,USD,2026-11-03,Payment\n")
                                                                  .encode())))
    code, err, out = run(capsys, "ingest", "-", "--account", "acc_bank", "--mode", "TRANSACTION", "--name", "pasted.csv")
    assert code == 0, err
    assert books.one("SELECT metadata ->> 'source_file' FROM staging_entries WHERE order_id = 'IN-1'")[0] == "pasted.csv"


def test_unconfirmed_orders_by_account_and_age_in_report_and_export(db_url, books, capsys):
    """Problem 6: orders the PSP never confirmed, by account and age bucket, with amounts."""
    books.stage("acc_bank", "DEBIT", "1000.00", "TRANSACTION", "LATE-1")
    books.stage("acc_bank", "DEBIT", "2500.00", "TRANSACTION", "LATE-2")
    assert run(capsys, "process")[0] == 0
    with psycopg_connect(db_url) as c:  # LATE-2 was ordered ten days ago
        c.execute("UPDATE entries SET effective_date = now() - interval '10 days' WHERE order_id = 'LATE-2'")
    code, _, out = run(capsys, "report", "--json")
    (psp,) = json.loads(out)["unconfirmed"]
    assert (psp["account_id"], psp["count"], psp["amount"]) == ("acc_psp", 2, "3500.0000")
    assert psp["buckets"]["0-1 days"] == {"count": 1, "amount": "1000.0000"}
    assert psp["buckets"]["> 7 days"] == {"count": 1, "amount": "2500.0000"}
    code, _, text = run(capsys, "report")
    assert "acc_psp: 2 legs, 3,500.00 USD" in text and "To review" in text
    code, err, out = run(capsys, "exceptions", "export", "--kind", "unconfirmed")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [(r["order_id"], r["age_days"]) for r in rows] == [("LATE-2", "10"), ("LATE-1", "0")]
