"""The batch path and the per-task path end in the same books, on the benchmark's workload.

The benchmark's generator (bench.workload, with its edge cases: duplicate and unknown orders,
amount, side and currency mismatches, ambiguous orders booked on two accounts, lines without
an order id or a rule, second confirmations of fulfilled and of mismatched orders) is staged once
and copied, so both databases hold the same rows with the same ids. One copy is drained one task
at a time (batch 1, chunk 1), the other in batches and chunks; confirmations are due from the
start, so chunks mix bookings with the confirmations of those bookings. Then, ignoring generated
ids and timestamps:

- per staging entry: status, error_type and match_type are equal;
- the ledger rows are the same multiset of (account, side, amount, status, transaction version),
  and the transactions of (logical id, version, status, amount);
- both books pass the ledger invariants.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from bench import workload
from bench.databases import Server, database_name
from recon import ledger, pipeline, settings
from recon.db import Database, reset_default_database

pytestmark = pytest.mark.slow


@pytest.fixture
def staged(db: Database, db_url: str, pg_admin_url: str):
    """The workload in the test database, plus a copy of it; yields (original, copy) Databases."""
    generated = workload.generate(db, 600, seed=11, edge_cases=True)
    assert generated.entries > 600  # the edge cases came on top
    db.dispose()
    reset_default_database()
    server = Server(pg_admin_url)
    copy_name = f"{database_name(db_url)}_copy"
    copy = Database(server.copy(database_name(db_url), copy_name), "copy")
    original = Database(db_url, "original")
    try:
        yield original, copy
    finally:
        original.dispose()
        copy.dispose()
        server.drop(copy_name)


def drain(db: Database, batch_size: int, chunk_size: int) -> None:
    with db.begin() as conn:
        workload.release_confirmations(conn)  # everything due at once: chunks mix both modes
    summary = pipeline.process_queue(batch_size=batch_size, chunk_size=chunk_size, db=db, run_id="equivalence")
    assert summary["retried"] == 0, summary


def state(db: Database) -> dict[str, Any]:
    with db.begin() as conn:
        staging = {
            r.staging_entry_id: (r.status, r.error_type, r.match_type, r.variance, r.fields)
            for r in conn.execute(sa.text(
                "SELECT staging_entry_id, status, metadata ->> 'error_type' AS error_type,"
                " metadata ->> 'match_type' AS match_type, metadata ->> 'variance' AS variance,"
                " metadata ->> 'mismatched_fields' AS fields FROM staging_entries"))
        }
        entries = Counter(tuple(r) for r in conn.execute(sa.text(
            "SELECT e.account_id, e.entry_type, e.amount, e.status, t.version"
            " FROM entries e JOIN transactions t USING (transaction_id)")))
        transactions = Counter(tuple(r) for r in conn.execute(sa.text(
            "SELECT logical_transaction_id, version, status, amount FROM transactions")))
        tasks = Counter(r[0] for r in conn.execute(sa.text("SELECT status FROM process_tracker")))
    return {"staging": staging, "entries": entries, "transactions": transactions, "tasks": tasks}


@pytest.mark.parametrize("batch_size, chunk_size", [(settings.DEFAULT_BATCH_SIZE, settings.DEFAULT_CHUNK_SIZE),
                                                    (300, 37)])
def test_batch_path_and_per_task_path_end_in_the_same_books(staged, batch_size, chunk_size):
    one_at_a_time, batched = staged
    drain(one_at_a_time, batch_size=1, chunk_size=1)
    drain(batched, batch_size=batch_size, chunk_size=chunk_size)

    want, got = state(one_at_a_time), state(batched)
    assert set(got["staging"]) == set(want["staging"])
    differing = {sid: (got["staging"][sid], want["staging"][sid])
                 for sid in want["staging"] if got["staging"][sid] != want["staging"][sid]}
    assert not differing, f"{len(differing)} entries differ (batched, one at a time): {list(differing.items())[:5]}"
    assert got["entries"] == want["entries"]
    assert got["transactions"] == want["transactions"]
    assert got["tasks"] == want["tasks"]
    assert set(got["tasks"]) <= {"COMPLETED", "FAILED"}  # nothing left waiting or in flight

    # the edge cases really were exercised
    outcomes = Counter(s[1] or s[2] for s in want["staging"].values())
    for expected in ("NewTransactionGenerated", "Phase2_Fulfilled", "MismatchError", "NoMatchFoundError",
                     "AlreadyFulfilledError", "AmbiguousMatchError", "DuplicateOrderError",
                     "NoReconRuleFoundError", "CurrencyMismatchError", "MissingOrderIdError",
                     "FulfilledWithTolerance"):
        assert outcomes[expected], f"no {expected} in the workload: {outcomes}"
    for db in (one_at_a_time, batched):
        assert ledger.check_invariants(db).ok
