"""Several OS processes drain one queue: every task must be claimed exactly once.

Each worker is a spawned process with its own ProcessTracker and connections, as Airflow
workers would be. A barrier releases them together so their claims really overlap.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter

import pytest
import sqlalchemy as sa

from recon.db import Database
from recon.settings import RetryPolicy
from recon.tracker import ProcessTracker

pytestmark = [pytest.mark.external_ok, pytest.mark.slow]

TASKS = 10_000
WORKERS = 4
BATCH = 50


def drain(url: str, worker: int, start) -> list[str]:
    """Claim and complete batches until a claim comes back empty; return the ids claimed."""
    database = Database(url, f"worker {worker}")
    tracker = ProcessTracker(database, RetryPolicy())
    claimed: list[str] = []
    try:
        with database.begin() as conn:  # connect before the start line, not after it
            conn.execute(sa.text("SELECT 1"))
        start.wait()
        batch_number = 0
        while True:
            owner = f"worker-{worker}/batch-{batch_number}"
            tasks = tracker.claim_batch("PROCESS_STAGING_ENTRY", BATCH, lease_seconds=600, owner=owner)
            if not tasks:
                return claimed
            ids = [t.task_id for t in tasks]
            claimed.extend(ids)
            assert tracker.complete(ids, owner=owner) == len(ids)
            batch_number += 1
    finally:
        database.dispose()


def test_concurrent_workers_claim_every_task_exactly_once(tracker, db, db_url):
    created = tracker.create_tasks(
        "PROCESS_STAGING_ENTRY", [{"staging_entry_id": f"stg_{i}"} for i in range(TASKS)]
    )
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(WORKERS) as pool:
        start = manager.Barrier(WORKERS)
        results = pool.starmap_async(drain, [(db_url, w, start) for w in range(WORKERS)])
        per_worker = results.get(timeout=120)

    claims = Counter(task_id for ids in per_worker for task_id in ids)
    assert sum(claims.values()) == TASKS, "a task was claimed twice or lost"
    assert set(claims) == {t.task_id for t in created}
    assert sum(1 for ids in per_worker if ids) >= 2, "the workers did not overlap at all"
    with db.begin() as conn:
        statuses = dict(conn.execute(sa.text(
            "SELECT status || '/' || attempts, count(*) FROM process_tracker GROUP BY 1")).all())
    assert statuses == {"COMPLETED/1": TASKS}
