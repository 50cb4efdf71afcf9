"""TaskManager routing, idempotency and the two-workers race."""

import threading

import sqlalchemy as sa

from recon import ledger
from recon.tasks import ExpectedEntryMatchingTask, TaskManager, TransactionCreationTask
from recon.tasks.base import ReconTask
from recon.tracker import ProcessTracker


class RaisingDecide(ReconTask):
    name = "RaisingDecide"

    def decide(self, item):
        raise RuntimeError("broken implementation")

    def validate(self, item, loaded, reservations):  # pragma: no cover - never chosen
        raise AssertionError

    def run(self, item, plan, prepared, reservations, batch):  # pragma: no cover - never chosen
        raise AssertionError


def _claim(books, owner):
    return [t.task_id for t in ProcessTracker(books.db).claim_batch("PROCESS_STAGING_ENTRY", 100, 60, owner)]


def test_first_accepting_implementation_wins_and_raising_decide_is_skipped(books):
    sid, tid = books.stage(books.bank, "DEBIT", "10", "TRANSACTION", order_id="o")
    manager = TaskManager(books.db, implementations=[RaisingDecide(), TransactionCreationTask()])
    result = manager.run_chunk(_claim(books, "w"), "w")
    assert result.booked == 1 and books.staging(sid).status == "PROCESSED"


def test_no_taker_fails_task_and_sends_entry_to_review(books):
    sid, tid = books.stage(books.bank, "DEBIT", "10", "TRANSACTION", order_id="o")
    manager = TaskManager(books.db, implementations=[ExpectedEntryMatchingTask()])
    manager.run_chunk(_claim(books, "w"), "w")
    task = books.task(tid)
    assert task.status == "FAILED" and "NoTaskHandlerError" in task.last_error
    staging = books.staging(sid)
    assert staging.status == "NEEDS_MANUAL_REVIEW" and staging.metadata["error_type"] == "NoTaskHandlerError"


def test_payload_problems_fail_cleanly(books):
    with books.db.begin() as c:
        c.execute(sa.text("INSERT INTO process_tracker (task_type, payload) VALUES"
                          " ('PROCESS_STAGING_ENTRY', '{\"staging_entry_id\": \"stg_missing\"}'),"
                          " ('PROCESS_STAGING_ENTRY', '{\"other\": 1}')"))
    sid, tid = books.stage(books.bank, "DEBIT", "10", "TRANSACTION", order_id="fine")
    summary = books.process()
    assert summary["failed"] == 2 and summary["booked"] == 1
    errors = sorted(r.last_error.split(":")[0] for r in books.rows(
        "SELECT last_error FROM process_tracker WHERE status = 'FAILED'"))
    assert errors == ["InvalidPayloadError", "StagingEntryNotFoundError"]


def test_late_worker_after_rescue_writes_nothing(books):
    sid, tid = books.stage(books.bank, "DEBIT", "10", "TRANSACTION", order_id="o")
    first = _claim(books, "worker-a")
    with books.db.begin() as c:
        c.execute(sa.text("UPDATE process_tracker SET lease_expires_at = now() - interval '1 second'"))
    from recon import pipeline
    assert pipeline.reap(books.db)["retried"] == 1
    with books.db.begin() as c:
        c.execute(sa.text("UPDATE process_tracker SET run_after = now()"))
    second = _claim(books, "worker-b")
    assert first == second
    late = TaskManager(books.db).run_chunk(first, "worker-a")
    assert late.not_owned == 1 and late.booked == 0
    assert books.staging(sid).status == "PENDING"
    assert TaskManager(books.db).run_chunk(second, "worker-b").booked == 1
    assert len(books.rows("SELECT 1 FROM transactions")) == 1


def test_two_workers_racing_on_one_task_book_once(books):
    """Both workers believe they hold the task (a stale lease owner string reused): one wins."""
    sid, tid = books.stage(books.bank, "DEBIT", "10", "TRANSACTION", order_id="race")
    ids = _claim(books, "shared-owner")
    barrier = threading.Barrier(2)
    results = []

    def work():
        barrier.wait()
        results.append(TaskManager(books.db).run_chunk(ids, "shared-owner"))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.booked for r in results) == 1
    assert books.staging(sid).status == "PROCESSED"
    assert books.task(tid).status == "COMPLETED"
    assert ledger.check_invariants(books.db).ok
    assert len(books.rows("SELECT 1 FROM transactions")) == 1
