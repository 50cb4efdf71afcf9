"""Poison tasks: an implementation that fails the same way on every attempt.

A custom ReconTask is registered in front of the real ones (TaskManager(implementations=...)) and
takes the staging entries marked {"poison": true}. It fails in validate, in run, or by adding a
ledger row the database rejects when the chunk is flushed (which makes the whole chunk's statement
fail, so the TaskManager must isolate the culprit). Expected: the poison task goes RETRY with
growing delays, then FAILED after max_attempts with the exception in last_error and its entry in
NEEDS_MANUAL_REVIEW; the nine healthy tasks of its chunk are processed on the first attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest

from recon import accounts, pipeline
from recon.ledger import LedgerBatch, NewTransaction, new_id
from recon.settings import RetryPolicy
from recon.tasks.base import ReconTask
from recon.tasks.verdicts import Applied, Plan
from recon.tasks.expected_entry_matching import ExpectedEntryMatchingTask
from recon.tasks.manager import TaskManager
from recon.tasks.transaction_creation import TransactionCreationTask
from recon.tracker import ProcessTracker
from tests.reliability import figures
from tests.reliability.helpers import assert_books_consistent, make_retries_due, retry_delays, rows

POLICY = RetryPolicy(max_attempts=4, base_seconds=10, max_seconds=1_000)


@dataclass(frozen=True, slots=True)
class PoisonPlan(Plan):
    merchant_id: str


class PoisonTask(ReconTask):
    name = "PoisonTask"
    reads_metadata = True  # it routes on the entry's metadata

    def __init__(self, where: str):
        self.where = where

    def decide(self, item):
        return item.staging is not None and bool(item.staging.metadata.get("poison"))

    def load(self, conn, items, reservations, lock):
        return accounts.load_accounts(conn, sorted({i.staging.account_id for i in items}))

    def validate(self, item, loaded, reservations):
        if self.where == "validate":
            raise RuntimeError(f"poisoned validate for {item.staging.staging_entry_id}")
        return PoisonPlan(loaded[item.staging.account_id].merchant_id)

    def run(self, item, plan, prepared, reservations, batch: LedgerBatch):
        if self.where == "run":
            raise ZeroDivisionError(f"poisoned run for {item.staging.staging_entry_id}")
        # "flush": a row the database refuses (amount must be > 0), found only when the chunk is written
        batch.transactions.append(NewTransaction(
            transaction_id=new_id("txn"), logical_transaction_id=new_id("poison"), version=1,
            amount=Decimal("-1"), currency="USD", merchant_id=plan.merchant_id,
            status="EXPECTED", metadata={}, source_staging_entry_id=item.staging.staging_entry_id))
        return Applied("book", {})


EXPECTED_ERROR = {
    "validate": "RuntimeError: poisoned validate",
    "run": "ZeroDivisionError: poisoned run",
    "flush": "violates check constraint",
}


@pytest.mark.parametrize("where", list(EXPECTED_ERROR))
def test_poison_task_backs_off_then_fails_and_spares_its_chunk(where, books, db):
    tracker = ProcessTracker(db, POLICY)
    manager = TaskManager(db, tracker, implementations=[
        PoisonTask(where), TransactionCreationTask(), ExpectedEntryMatchingTask()])
    created = books.stage([books.transaction(f"ok-{i}", "12.34") for i in range(9)]
                          + [books.transaction("poison-1", "56.78", poison=True)])
    poison_task, poison_entry = created[-1].task_id, created[-1].staging_entry_id
    healthy = [c.task_id for c in created[:-1]]

    delays = []
    for attempt in range(1, POLICY.max_attempts + 1):
        owner = pipeline.new_owner("poison-test")
        claimed = [t.task_id for t in tracker.claim_batch("PROCESS_STAGING_ENTRY", 100, owner=owner)]
        assert sorted(claimed) == sorted(healthy + [poison_task] if attempt == 1 else [poison_task])
        result = manager.run_chunk(claimed, owner)  # one chunk: the poison task with its neighbours
        assert pipeline.write_back(claimed, owner, db)["leftover"] == 0
        figures.record(faults_injected=1)
        (task,) = rows(db, "SELECT * FROM process_tracker WHERE task_id = :t", t=poison_task)
        (entry,) = rows(db, "SELECT * FROM staging_entries WHERE staging_entry_id = :s", s=poison_entry)
        assert task.attempts == attempt and EXPECTED_ERROR[where] in task.last_error, task.last_error
        if attempt == 1:
            assert result.completed == 9 and result.booked == 9
        if attempt < POLICY.max_attempts:
            assert task.status == "RETRY" and result.retried == 1 and result.failed == 0
            assert entry.status == "PENDING"
            delays.append(retry_delays(db, [poison_task])[poison_task])
            make_retries_due(db)
        else:
            assert task.status == "FAILED" and result.failed == 1
            assert entry.status == "NEEDS_MANUAL_REVIEW"
            assert entry.metadata["error_type"] == "RetriesExhaustedError"
            assert EXPECTED_ERROR[where] in entry.metadata["error"]

    # growing delays: attempt n waits base * 2^(n-1) * jitter, jitter in [0.5, 1)
    assert delays == sorted(delays) and len(set(delays)) == len(delays), delays
    for n, delay in enumerate(delays, start=1):
        assert 0.5 * 10 * 2 ** (n - 1) - 0.1 <= delay < 10 * 2 ** (n - 1) + 0.1, (n, delay)
    # the healthy neighbours: processed once, on the first attempt, untouched afterwards
    assert {(r.status, r.attempts) for r in rows(
        db, "SELECT status, attempts FROM process_tracker WHERE task_id = ANY(:t)", t=healthy)} == {("COMPLETED", 1)}
    report = assert_books_consistent(db)
    assert (report.processed, report.manual_review) == (9, 1)
    assert report.by_error_type == {"RetriesExhaustedError": 1}
    figures.record(tasks_processed_under_faults=len(created))
