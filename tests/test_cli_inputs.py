"""Every refused CLI input is one line on stderr, exit code 2, and nothing written or claimed.

The commands run in-process through ``recon.cli.main`` (the code ``python -m recon`` runs) on a
real database; each test compares every row of the queue and the staging table before and after.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
import pytest

from recon import cli
from tests.dags.seed import Seed


@pytest.fixture
def seed(db_url: str) -> Seed:
    """Work for a run that must not happen: due tasks, a FAILED task in manual review, an expired lease."""
    seed = Seed(db_url)
    seed.stage("acc_bank", "DEBIT", "10.00", "TRANSACTION", "due-1")
    seed.stage("acc_bank", "DEBIT", "11.00", "TRANSACTION", "due-2")
    failed_entry, failed_task = seed.stage("acc_norule", "DEBIT", "12.00", "TRANSACTION", "failed-1")
    _, leased_task = seed.stage("acc_bank", "DEBIT", "13.00", "TRANSACTION", "leased-1")
    with seed.connect() as c:
        c.execute("UPDATE process_tracker SET status = 'FAILED', attempts = 1, last_error = 'x' WHERE task_id = %s",
                  (failed_task,))
        c.execute("UPDATE staging_entries SET status = 'NEEDS_MANUAL_REVIEW' WHERE staging_entry_id = %s",
                  (failed_entry,))
        c.execute("UPDATE process_tracker SET status = 'PROCESSING', attempts = 1, lease_owner = 'gone',"
                  " lease_expires_at = now() - interval '1 hour' WHERE task_id = %s", (leased_task,))
    return seed


def snapshot(url: str) -> dict[str, Any]:
    """Every row of every table a refused command could have touched."""
    with psycopg.connect(url) as c:
        return {
            table: c.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()  # noqa: S608 (fixed names)
            for table in ("process_tracker", "staging_entries", "merchant_accounts", "accounts", "recon_rules",
                          "transactions", "entries")
        }


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`recon ARGV` in-process: (exit code, stderr without the database announcement, stdout)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse refuses before any command runs
        code = exit_.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith("recon: database ")]
    return code, "\n".join(lines), out


def assert_refused(code: int, err: str, out: str, *expected: str) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1, f"one line expected, got:\n{err}"
    assert "Traceback" not in err and out == ""
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize("args, message", [
    (["--chunk-size", "0"], "chunk_size must be an integer from 1 to"),
    (["--chunk-size", "-5"], "chunk_size must be an integer from 1 to"),
    (["--chunk-size", "100000000"], "chunk_size must be an integer from 1 to"),
    (["--chunk-size", "100000"], "chunk_size must be an integer from 1 to 15,000, got 100000"),
    (["--batch-size", "0"], "batch_size must be an integer from 1 to 1,000,000"),
    (["--batch-size", "99999999999999999999"], "got 99999999999999999999"),
    (["--max-batches", "0"], "max_batches must be an integer of at least 1, got 0"),
    (["--max-batches", "-1"], "max_batches must be an integer of at least 1, got -1"),
    (["--batch-size", "ten"], "argument --batch-size: invalid int value: 'ten'"),
    (["--chunk-size", "1.5"], "argument --chunk-size: invalid int value: '1.5'"),
])
def test_process_refuses_bad_sizes_before_claiming_or_reaping(db_url, seed, capsys, args, message):
    before = snapshot(db_url)
    code, err, out = run(capsys, "process", *args)
    assert_refused(code, err, out, message)
    assert snapshot(db_url) == before  # nothing claimed, no attempt burnt, the expired lease not even reaped


def test_process_with_good_sizes_does_the_work_the_refused_calls_did_not(db_url, seed, capsys):
    code, err, _ = run(capsys, "process", "--chunk-size", "1", "--max-batches", "1")
    assert code == 0, err
    statuses = dict(seed.all("SELECT payload ->> 'staging_entry_id', status FROM process_tracker"))
    assert "PENDING" not in statuses.values() and "PROCESSING" not in statuses.values()


@pytest.mark.parametrize("args, message", [
    (["--created-from", "yesterday"], "not an ISO 8601 timestamp: 'yesterday'"),
    (["--created-from", "2026-11-01T00:00:00Z", "--created-to", "2026-13-01"], "not an ISO 8601 timestamp: '2026-13-01'"),
    (["--created-from", "2026-11-08T00:00:00Z", "--created-to", "2026-11-01T00:00:00Z"], "must be before created_to"),
    (["--created-from", "2026-11-01T00:00:00Z", "--created-to", "2026-11-01T00:00:00Z"], "must be before created_to"),
    (["--task-id", ""], "task_ids must be a non-empty list of task ids"),
    ([], "reprocess needs a scope: --created-from and/or --created-to, --task-id, --error-type or --account"),
])
def test_reprocess_refuses_a_bad_scope_before_requeueing(db_url, seed, capsys, args, message):
    before = snapshot(db_url)
    code, err, out = run(capsys, "reprocess", *args)
    assert_refused(code, err, out, message)
    assert snapshot(db_url) == before


def test_reprocess_with_a_good_window_requeues(db_url, seed, capsys):
    now = dt.datetime.now(dt.timezone.utc)
    code, err, _ = run(capsys, "reprocess", "--created-from", (now - dt.timedelta(hours=1)).isoformat(),
                  "--created-to", (now + dt.timedelta(hours=1)).isoformat())
    assert code == 0, err
    assert seed.one("SELECT count(*) FROM process_tracker WHERE status = 'FAILED'")[0] == 0


@pytest.mark.parametrize("make_args, message", [
    (lambda f: [str(f), "--account", "acc_nope", "--mode", "TRANSACTION"], "no account with account_id 'acc_nope'"),
    (lambda f: [str(f), "--account", "", "--mode", "TRANSACTION"], "account_id must be a non-empty string"),
    (lambda f: [str(f), "--account", "acc_bank", "--mode", "BOOK"], "argument --mode: invalid choice: 'BOOK'"),
    (lambda f: [str(f) + ".missing", "--account", "acc_bank", "--mode", "TRANSACTION"], "cannot open statement file"),
    (lambda f: [str(f.parent), "--account", "acc_bank", "--mode", "TRANSACTION"], "cannot open statement file"),
    (lambda f: [str(f), "--mode", "TRANSACTION"], "the following arguments are required: --account"),
])
def test_ingest_refuses_bad_arguments_before_writing(db_url, seed, capsys, tmp_path, make_args, message):
    good = tmp_path / "good.csv"
    good.write_text("order_id,amount,currency,transaction_date,type\nnew-1,5.00,USD,2026-11-01,Payment\n")
    before = snapshot(db_url)
    code, err, out = run(capsys, "ingest", *make_args(good))
    assert_refused(code, err, out, message)
    assert snapshot(db_url) == before


def test_ingest_of_a_file_with_a_bad_header_writes_nothing(db_url, seed, capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("order,amount\nx,1\n")
    before = snapshot(db_url)
    assert_refused(*run(capsys, "ingest", str(bad), "--account", "acc_bank", "--mode", "TRANSACTION"),
                   "bad CSV header")
    assert snapshot(db_url) == before


# ---- issue 19 item 11: set-up commands -----------------------------------------------------------


@pytest.mark.parametrize("currency", ["USD\n", "usd", "US", "USDX", " USD", "U$D", ""])
def test_account_create_refuses_a_currency_that_is_not_three_letters(db_url, seed, capsys, currency):
    before = snapshot(db_url)
    code, err, out = run(capsys, "account", "create", "--merchant", "mer_t", "--name", "X", "--type", "DEBIT_NORMAL",
                    "--currency", currency)
    assert_refused(code, err, out, "is not an ISO 4217 code")
    assert snapshot(db_url) == before


@pytest.mark.parametrize("balance, stored", [("0.00", "0.0000"), ("0", "0.0000"), ("-12.50", "-12.5000"),
                                             ("1000.1234", "1000.1234")])
def test_account_create_accepts_a_zero_or_negative_initial_balance(db_url, seed, capsys, balance, stored):
    code, err, out = run(capsys, "account", "create", "--merchant", "mer_t", "--name", "X", "--type", "DEBIT_NORMAL",
                    "--currency", "USD", f"--initial-balance={balance}")
    assert code == 0, err
    account_id = out.strip()
    assert str(seed.one("SELECT initial_balance FROM accounts WHERE account_id = %s", account_id)[0]) == stored


@pytest.mark.parametrize("balance, message", [
    ("0.00001", "has more than 4 decimal places"),
    ("1e17", "too large"),
    ("abc", "is not a decimal number"),
    ("NaN", "is not a decimal number"),
])
def test_account_create_refuses_a_bad_initial_balance(db_url, seed, capsys, balance, message):
    before = snapshot(db_url)
    code, err, out = run(capsys, "account", "create", "--merchant", "mer_t", "--name", "X", "--type", "DEBIT_NORMAL",
                    "--currency", "USD", f"--initial-balance={balance}")
    assert_refused(code, err, out, f"initial_balance {balance!r}", message)
    assert snapshot(db_url) == before


@pytest.mark.parametrize("bad_id", ["", " ", " padded", "tab\there", "x" * 256])
@pytest.mark.parametrize("command, field", [
    (["merchant", "create", "Shop"], "merchant_id"),
    (["account", "create", "--merchant", "mer_t", "--name", "X", "--type", "DEBIT_NORMAL", "--currency", "USD"],
     "account_id"),
    (["rule", "create", "--account-one", "acc_norule", "--account-two", "acc_psp"], "rule id"),
])
def test_create_refuses_an_empty_or_unusable_id(db_url, seed, capsys, command, field, bad_id):
    before = snapshot(db_url)
    code, err, out = run(capsys, *command, f"--id={bad_id}")
    assert_refused(code, err, out, f"{field} must be 1 to 255 printable characters")
    assert snapshot(db_url) == before


def test_create_with_a_chosen_id_uses_it(db_url, seed, capsys):
    code, err, out = run(capsys, "merchant", "create", "Shop", "--id", "mer_chosen")
    assert (code, out) == (0, "mer_chosen\n"), err
    assert seed.one("SELECT merchant_name FROM merchant_accounts WHERE merchant_id = 'mer_chosen'")[0] == "Shop"
