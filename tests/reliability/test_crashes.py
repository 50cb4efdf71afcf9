"""kill -9 of a real worker process at each point of a run, then reap and run again.

The worker (tests/reliability/worker.py) runs pipeline.process_queue and SIGKILLs itself at a
chosen point, so the crash lands exactly there without sleeps. Afterwards the test expires the
leases (as if lease_seconds had passed), reaps, lets the backoff pass and runs a fresh worker:
nothing may be lost, nothing booked twice, and the tracker must end final.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from recon import pipeline
from recon.db import libpq_url
from tests.reliability import figures
from tests.reliability.helpers import (
    Worker,
    assert_books_consistent,
    check_books,
    expire_leases,
    make_retries_due,
    retry_delays,
    rows,
    run_worker,
    scalar,
    task_statuses,
    wait_backends_gone,
    wait_until,
)

pytestmark = pytest.mark.slow

ORDERS = 12  # booked before the crash, confirmed in the crashed run
NEW = 12  # booked in the crashed run
CHUNK = 8  # the crashed batch of 24 tasks is three chunks


def _crash_batch(books):
    """12 orders booked and processed; then 12 confirmations and 12 new orders are queued."""
    books.stage([books.transaction(f"old-{i}", f"{10 + i}.25") for i in range(ORDERS)])
    pipeline.process_queue(db=books.db, batch_size=100, chunk_size=CHUNK)
    queued = books.stage(
        [books.confirmation(f"old-{i}", f"{10 + i}.25") for i in range(ORDERS)]
        + [books.transaction(f"new-{i}", f"{20 + i}.50") for i in range(NEW)]
    )
    return [c.task_id for c in queued]


def books_url(books) -> str:
    return libpq_url(books.db.url)


# point -> how many of the 24 queued tasks the crashed run committed before dying
CRASH_POINTS = {
    "after_claim": 0,  # claimed (PROCESSING, leased), nothing else
    "after_lock": 0,  # inside the first chunk's transaction, rows locked
    "after_ledger_write": 0,  # inside the first chunk's transaction: tracker + ledger rows written, uncommitted
    "after_chunk_commit": CHUNK,  # first chunk committed, two chunks still PROCESSING
    "before_write_back": ORDERS + NEW,  # every chunk committed, the run had not ended
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_kill_9_at_each_point_then_reap_and_rerun(point, books, db):
    queued = _crash_batch(books)
    before = scalar(db, "SELECT count(*) FROM transactions")

    worker = Worker(books_url(books), fault=f"{point}:kill", batch_size=100, chunk_size=CHUNK)
    assert worker.wait() == -9, f"the worker was not killed at {point}:\n{worker.stderr}"
    figures.record(faults_injected=1)
    wait_backends_gone(db, worker.app_name)  # the server has rolled back the dead session

    # right after the crash: only committed chunks are visible, nothing half-written
    committed = CRASH_POINTS[point]
    statuses = task_statuses(db)
    assert statuses.get("COMPLETED", 0) == ORDERS + committed  # the earlier bookings + committed chunks
    assert statuses.get("PROCESSING", 0) == len(queued) - committed
    new_effects = scalar(db, "SELECT count(*) FROM transactions") - before
    assert new_effects == committed, f"{new_effects} ledger rows visible, {committed} chunk tasks committed"

    # the leases expire; the reaper puts the stranded tasks back with backoff
    assert expire_leases(db) == len(queued) - committed
    reaped = pipeline.reap(db)
    assert reaped == {"retried": len(queued) - committed, "failed": 0}
    delays = retry_delays(db)
    assert len(delays) == len(queued) - committed
    assert all(4.9 <= d < 10.1 for d in delays.values()), delays  # base 10s * jitter [0.5, 1)
    assert all(r.last_error.startswith("rescued by the reaper") for r in rows(
        db, "SELECT last_error FROM process_tracker WHERE status = 'RETRY'"))
    stranded = check_books(db)  # a valid state already: each stranded entry PENDING with a retrying task
    assert not stranded.violations and stranded.pending == len(queued) - committed

    # a fresh worker finishes the job once the backoff has passed
    make_retries_due(db)
    summary = run_worker(books_url(books), batch_size=100, chunk_size=CHUNK)
    assert summary["claimed"] == len(queued) - committed
    report = assert_books_consistent(db)
    assert report.processed == report.entries == 2 * ORDERS + NEW
    assert task_statuses(db) == {"COMPLETED": 2 * ORDERS + NEW}
    attempts = dict(rows(db, "SELECT task_id, attempts FROM process_tracker WHERE task_id = ANY(:ids)", ids=queued))
    assert sorted(attempts.values()) == sorted([1] * committed + [2] * (len(queued) - committed))
    # 12 old versions archived, 12 fulfilled versions, 12 new bookings: one effect per entry
    assert dict(rows(db, "SELECT status, count(*) FROM transactions GROUP BY 1")) == {
        "ARCHIVED": ORDERS, "POSTED": ORDERS, "EXPECTED": NEW}
    figures.record(tasks_processed_under_faults=len(queued))


def test_kill_9_after_commit_then_a_forced_rerun_books_nothing_twice(books, db):
    """The ledger write committed, then the worker died; an operator forces the task to run again
    (update_task_status to PENDING): the second run must be a no-op, never a second booking."""
    queued = _crash_batch(books)
    worker = Worker(books_url(books), fault="after_chunk_commit:kill", batch_size=100, chunk_size=CHUNK)
    assert worker.wait() == -9
    figures.record(faults_injected=1)
    wait_backends_gone(db, worker.app_name)

    done = [r.task_id for r in rows(db, "SELECT task_id FROM process_tracker WHERE task_id = ANY(:ids)"
                                        " AND status = 'COMPLETED'", ids=queued)]
    assert len(done) == CHUNK
    with db.begin() as conn:  # force the committed tasks to be processed again
        conn.execute(sa.text(
            "UPDATE process_tracker SET status = 'PENDING', completed_at = NULL WHERE task_id = ANY(:ids)"),
            {"ids": done})
    expire_leases(db)
    pipeline.reap(db)
    make_retries_due(db)
    summary = run_worker(books_url(books), batch_size=100, chunk_size=CHUNK)
    assert summary["already_processed"] == CHUNK
    report = assert_books_consistent(db)
    assert report.processed == report.entries and report.booked_twice == 0
    figures.record(tasks_processed_under_faults=len(queued))


@pytest.mark.parametrize("point", ["after_claim", "after_lock"])
def test_a_late_worker_after_a_rescue_overwrites_nothing(point, books, db):
    """The rescue race queues are criticised for: worker A stalls (paused here, as a long GC pause
    or a network partition would), its lease expires, the reaper rescues the tasks and worker B
    processes them. When A wakes up it must write nothing: its lease is gone."""
    created = books.stage([books.transaction(f"late-{i}", "3.30") for i in range(6)])
    url = books_url(books)
    stalled = Worker(url, fault=f"{point}:pause", batch_size=100, chunk_size=100)
    stalled.wait_paused()
    assert expire_leases(db) == len(created)
    assert pipeline.reap(db) == {"retried": len(created), "failed": 0}
    make_retries_due(db)
    rescuer = Worker(url, batch_size=100, chunk_size=100)
    if point == "after_lock":  # A still holds the staging rows: B must wait for them, not skip them
        wait_until(lambda: scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = :a"
                                      " AND wait_event_type = 'Lock'", a=rescuer.app_name) == 1,
                   "the rescuing worker to wait for the stalled worker's locks")
    else:
        assert rescuer.wait() == 0, rescuer.stderr
    stalled.resume()
    assert stalled.wait() == 0 and rescuer.wait() == 0, stalled.stderr + rescuer.stderr
    figures.record(faults_injected=1, tasks_processed_under_faults=len(created))

    assert stalled.summary()["booked"] == 0 and stalled.summary()["not_owned"] == len(created)
    assert rescuer.summary()["booked"] == len(created)
    report = assert_books_consistent(db)
    assert report.processed == report.entries == len(created)
    assert {(r.status, r.attempts) for r in rows(db, "SELECT status, attempts FROM process_tracker")} == {
        ("COMPLETED", 2)}


def test_a_task_that_kills_its_worker_every_time_ends_in_manual_review(books, db, monkeypatch):
    """A line that crashes the worker on every attempt (kill -9 mid-chunk each time) must not loop
    forever: after max_attempts the reaper fails it and its entry goes to manual review."""
    monkeypatch.setenv("RECON_MAX_ATTEMPTS", "3")
    created = books.stage([books.transaction(f"crash-{i}", "8.80") for i in range(4)])
    for attempt in range(1, 4):
        worker = Worker(books_url(books), fault="after_ledger_write:kill", batch_size=100, chunk_size=100)
        assert worker.wait() == -9
        figures.record(faults_injected=1)
        wait_backends_gone(db, worker.app_name)
        assert expire_leases(db) == len(created)
        reaped = pipeline.reap(db)
        if attempt < 3:
            assert reaped == {"retried": len(created), "failed": 0}
            make_retries_due(db)
        else:
            assert reaped == {"retried": 0, "failed": len(created)}
    report = assert_books_consistent(db)
    assert report.manual_review == report.entries == len(created)
    assert report.by_error_type == {"RetriesExhaustedError": len(created)}
    assert scalar(db, "SELECT count(*) FROM transactions") == 0
    assert {(r.status, r.attempts) for r in rows(db, "SELECT status, attempts FROM process_tracker")} == {("FAILED", 3)}
    figures.record(tasks_processed_under_faults=len(created))
