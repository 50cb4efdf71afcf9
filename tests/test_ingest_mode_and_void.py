"""A wrong ingest is refused up front or can be taken back (issue 18, problem 8)."""

from __future__ import annotations

import json

import pytest

from tests.dags.seed import Seed
from tests.test_cli_inputs import assert_refused, run, snapshot

HEADER = "order_id,amount,currency,transaction_date,type\n"


@pytest.fixture
def seed(db_url: str) -> Seed:
    """Seed's rule: acc_bank (account_one, TRANSACTION lines) -> acc_psp (account_two, CONFIRMATION lines)."""
    return Seed(db_url)


@pytest.mark.parametrize("account, mode, message", [
    ("acc_bank", "CONFIRMATION", "account acc_bank is no recon rule's account_two, so CONFIRMATION lines"),
    ("acc_psp", "TRANSACTION", "account acc_psp is no recon rule's account_one, so TRANSACTION lines"),
    ("acc_norule", "TRANSACTION", "create a rule with --account-one acc_norule first"),
])
def test_a_mode_that_does_not_fit_the_account_is_refused_before_any_row(db_url, seed, capsys, tmp_path,
                                                                          account, mode, message):
    settlement = tmp_path / "settlement.csv"
    settlement.write_text(HEADER + "S1,10.00,USD,2026-11-01,Payment\n")
    before = snapshot(db_url)
    assert_refused(*run(capsys, "ingest", str(settlement), "--account", account, "--mode", mode), message)
    assert snapshot(db_url) == before


def test_void_discards_the_unprocessed_lines_and_names_the_processed_ones(db_url, seed, capsys, tmp_path):
    orders = tmp_path / "orders-2026-11-01.csv"
    orders.write_text(HEADER + "V1,10.00,USD,2026-11-01,Payment\n")
    assert run(capsys, "ingest", str(orders), "--account", "acc_bank", "--mode", "TRANSACTION")[0] == 0
    assert run(capsys, "process")[0] == 0  # V1 is booked: only review actions may undo it
    orders.write_text(HEADER + "V1,10.00,USD,2026-11-01,Payment\nV2,20.00,USD,2026-11-01,Payment\n"
                      "V3,30.00,USD,2026-11-01,Payment\n")
    assert run(capsys, "ingest", str(orders), "--account", "acc_bank", "--mode", "TRANSACTION")[0] == 0
    processed = seed.one("SELECT staging_entry_id FROM staging_entries WHERE order_id = 'V1'")[0]

    code, err, out = run(capsys, "ingest", "void", str(orders), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert len(report["voided"]) == 2
    assert report["already_processed"] == [{"staging_entry_id": processed, "status": "PROCESSED"}]
    assert seed.all("SELECT order_id, status FROM staging_entries") == [("V1", "PROCESSED")]
    assert seed.task_statuses() == {"COMPLETED": 1}  # the two tasks cancelled with their lines

    code, err, out = run(capsys, "ingest", "void", processed)  # by one of its lines' id: nothing left
    assert code == 0 and "voided 0 entries" in out and f"{processed} PROCESSED" in out


def test_void_of_an_unknown_file_is_exit_2(db_url, seed, capsys):
    assert_refused(*run(capsys, "ingest", "void", "never-ingested.csv"),
                   "no staging entries were ingested from a file named 'never-ingested.csv'")
