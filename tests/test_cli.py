"""The CLI end to end in a subprocess, as a user runs it (issue: Recon Engine 'Done when')."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def recon(db_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECON_DATABASE_URL": db_url, "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}"}
    result = subprocess.run([sys.executable, "-m", "recon", *args], env=env, capture_output=True,
                            text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"recon {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def test_full_workflow_from_the_command_line(db_url, tmp_path):
    merchant = recon(db_url, "merchant", "create", "Shop").stdout.strip()
    bank = recon(db_url, "account", "create", "--merchant", merchant, "--name", "Bank",
                 "--type", "DEBIT_NORMAL", "--currency", "EUR").stdout.strip()
    psp = recon(db_url, "account", "create", "--merchant", merchant, "--name", "PSP",
                "--type", "CREDIT_NORMAL", "--currency", "EUR", "--initial-balance", "50.00").stdout.strip()
    recon(db_url, "rule", "create", "--account-one", bank, "--account-two", psp)

    orders = tmp_path / "orders.csv"
    orders.write_text("order_id,amount,currency,transaction_date,type\n"
                      "A1,10.00,EUR,2026-11-01,Payment\nA2,20.00,EUR,2026-11-01,Payment\n"
                      "A3,oops,EUR,2026-11-01,Payment\n")
    confirmations = tmp_path / "psp.csv"
    confirmations.write_text("order_id,amount,currency,transaction_date,type\n"
                             "A1,10.00,EUR,2026-11-02,Payment\nA2,25.00,EUR,2026-11-02,Payment\n")
    ingest = recon(db_url, "ingest", str(orders), "--account", bank, "--mode", "TRANSACTION", check=False)
    assert ingest.returncode == 3 and "row 3" in ingest.stdout and "amount 'oops'" in ingest.stdout
    recon(db_url, "ingest", str(confirmations), "--account", psp, "--mode", "CONFIRMATION")

    processed = json.loads(recon(db_url, "process", "--json").stdout)
    assert (processed["booked"], processed["matched"], processed["mismatched"]) == (2, 1, 1)

    report = json.loads(recon(db_url, "report", "--json").stdout)
    assert report["staging_entries"] == {"PENDING": 0, "PROCESSED": 3, "NEEDS_MANUAL_REVIEW": 1}
    (group,) = report["manual_review"]
    assert group["error_type"] == "MismatchError" and "amount" in group["entries"][0]["error"]
    assert report["invariants"]["ok"] is True
    balances = {b["account_id"]: b for b in report["balances"]}
    assert balances[psp]["posted"] == "60.0000" and balances[psp]["pending"] == "80.0000"
    text = recon(db_url, "report").stdout
    assert "MismatchError: 1" in text and "Books: balanced" in text


@pytest.mark.parametrize("args, message", [
    (["account", "create", "--merchant", "mer_nope", "--name", "X", "--type", "DEBIT_NORMAL",
      "--currency", "USD"], "no merchant with merchant_id 'mer_nope'"),
    (["ingest", "/nonexistent.csv", "--account", "acc_x", "--mode", "TRANSACTION"], "nonexistent.csv"),
    (["rule", "create", "--account-one", "a", "--account-two", "a"], "two distinct accounts"),
])
def test_bad_input_is_a_clear_error(db_url, args, message):
    result = recon(db_url, *args, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_database_is_announced_without_password(db_url):
    result = recon(db_url, "tracker", "stats")
    assert "recon: database postgresql+psycopg://" in result.stderr


def test_unreachable_database_is_a_clear_error_without_password():
    result = recon("postgresql://someone:pw-do-not-show@127.0.0.1:1/nowhere", "tracker", "stats", check=False)
    assert result.returncode == 2
    assert "cannot use the database" in result.stderr and "Connection refused" in result.stderr
    assert "pw-do-not-show" not in result.stderr + result.stdout and "Traceback" not in result.stderr


def test_unmigrated_database_says_what_to_do(empty_db_url):
    result = recon(empty_db_url, "report", check=False)
    assert result.returncode == 2 and "run `./recon db migrate` first" in result.stderr
