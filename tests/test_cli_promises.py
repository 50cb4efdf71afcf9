"""What the README promises a CLI user, each pinned by its exit code and its words (issue 18, problem 9)."""

from __future__ import annotations

import pytest

from recon import cli, local_airflow
from tests.dags.seed import Seed
from tests.test_cli_inputs import run, snapshot

HEADER = "order_id,amount,currency,transaction_date,type\n"


@pytest.fixture
def seed(db_url: str) -> Seed:
    return Seed(db_url)


@pytest.mark.parametrize("command", [
    ["merchant", "create", "Again", "--id", "mer_t"],
    ["account", "create", "--merchant", "mer_t", "--name", "X", "--type", "DEBIT_NORMAL", "--currency", "USD",
     "--id", "acc_bank"],
    ["rule", "create", "--account-one", "acc_norule", "--account-two", "acc_psp", "--id", "rule_t"],
])
def test_a_duplicate_id_is_exit_2_naming_the_id(db_url, seed, capsys, command):
    before = snapshot(db_url)
    code, err, out = run(capsys, *command)
    assert code == 2 and out == "" and "Traceback" not in err
    assert "is already taken" in err and repr(command[-1]) in err
    assert snapshot(db_url) == before


def test_an_ingest_of_only_duplicates_is_not_a_success(db_url, seed, capsys, tmp_path):
    orders = tmp_path / "orders.csv"
    orders.write_text(HEADER + "D1,10.00,USD,2026-11-01,Payment\n")
    assert run(capsys, "ingest", str(orders), "--account", "acc_bank", "--mode", "TRANSACTION")[0] == 0
    code, err, out = run(capsys, "ingest", str(orders), "--account", "acc_bank", "--mode", "TRANSACTION")
    assert code == 4, err
    assert "0 ingested" in out and "1 duplicates" in out and "every row was ingested before" in err


def test_reprocess_counts_the_entries_it_reopened(db_url, seed, capsys):
    entry, task = seed.stage("acc_norule", "DEBIT", "12.00", "TRANSACTION", "NR-1")
    assert run(capsys, "process")[0] == 0
    assert seed.staging(entry)["status"] == "NEEDS_MANUAL_REVIEW"
    code, err, out = run(capsys, "reprocess", "--task-id", task)
    assert code == 0, err
    assert "reopened 1 entries" in out, out
    assert seed.staging(entry)["status"] == "PENDING"


def test_reprocess_without_a_scope_names_the_options(db_url, seed, capsys):
    code, err, out = run(capsys, "reprocess")
    assert code == 2 and out == ""
    assert "--created-from" in err and "--task-id" in err and "created_from/created_to" not in err


def test_db_url_hides_the_password_unless_asked(monkeypatch, capsys):
    monkeypatch.setenv("RECON_DATABASE_URL", "postgresql://recon:s3cr3t-pw@db.example:5433/ledger")
    from recon.db import reset_default_database

    reset_default_database()
    assert cli.main(["db", "url"]) == 0
    hidden = capsys.readouterr().out
    assert "s3cr3t-pw" not in hidden and "recon:***@db.example:5433/ledger" in hidden
    assert cli.main(["db", "url", "--show-password"]) == 0
    assert "recon:s3cr3t-pw@db.example" in capsys.readouterr().out
    reset_default_database()


NO_DATABASES = {"base": {"PATH": "/usr/bin"}, "port": 8099, "metadata_url": "postgresql://m/airflow",
                "recon_url": "postgresql://r/recon"}


def test_recon_ui_binds_this_machine_and_sizes_its_workers(tmp_path):
    env = local_airflow.airflow_environment(tmp_path, **NO_DATABASES)
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert 1 <= int(env["AIRFLOW__CORE__PARALLELISM"]) <= 2 * (local_airflow.os.cpu_count() or 1)
    told = local_airflow.airflow_environment(tmp_path, **NO_DATABASES, host="0.0.0.0")
    assert told["AIRFLOW__API__HOST"] == "0.0.0.0"


def test_tracker_stats_reads_like_a_sentence(db_url, seed, capsys):
    """Problem 10: `tracker stats` printed Python dicts."""
    for n in range(3):
        seed.stage("acc_bank", "DEBIT", "1.00", "TRANSACTION", f"TS-{n}")
    code, err, out = run(capsys, "tracker", "stats")
    assert code == 0, err
    assert "tasks: 3 (3 PENDING)" in out and "PROCESS_STAGING_ENTRY: 3 PENDING" in out
    assert "oldest due task: waiting" in out and "leases held: 0" in out
    assert "{" not in out


def test_run_summary_words_partition_the_claim(db_url, seed, capsys):
    """Problem 10: business exceptions are "to review", mismatches part of them, never "failed"."""
    seed.stage("acc_bank", "DEBIT", "10.00", "TRANSACTION", "W-1")
    seed.stage("acc_psp", "CREDIT", "9.00", "CONFIRMATION", "W-1")
    seed.stage("acc_norule", "DEBIT", "1.00", "TRANSACTION", "W-2")
    code, err, out = run(capsys, "process")
    assert code == 0, err
    assert "3 claimed: 1 booked, 0 matched, 2 to review (1 of them mismatches)" in out
    assert "failed" not in out and "to review: MismatchError x1" in out
