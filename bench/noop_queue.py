"""Claim+complete throughput of no-op tasks: the tracker's API against a bare SQL bound.

The API: ``ProcessTracker.claim_batch(1,000)`` then one ``complete()`` of those ids, repeated
until the queue is empty (two transactions per 1,000 tasks, as a worker does).
The bound: the same rows in a table of the same shape (``LIKE process_tracker INCLUDING ALL``,
same fillfactor, no trigger), claimed 1,000 at a time with a bare
``UPDATE ... WHERE task_id = ANY(ARRAY(SELECT ... FOR UPDATE SKIP LOCKED))`` and completed with
one ``UPDATE ... WHERE task_id = ANY(...)``, psycopg only, autocommit.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from recon.db import Database
from recon.tracker import ProcessTracker, TaskType

BATCH = 1_000

CREATE_RAW = """
CREATE TABLE raw_tracker (LIKE process_tracker INCLUDING ALL) WITH (fillfactor = 70);
INSERT INTO raw_tracker SELECT * FROM process_tracker;
"""

RAW_CLAIM = """
UPDATE raw_tracker SET status = 'PROCESSING', attempts = attempts + 1, processing_started_at = now(),
       lease_owner = %(owner)s, lease_expires_at = now() + interval '10 minutes'
WHERE task_id = ANY(ARRAY(
    SELECT task_id FROM raw_tracker
    WHERE task_type = 'PROCESS_STAGING_ENTRY' AND status IN ('PENDING', 'RETRY') AND run_after <= now()
    ORDER BY run_after, task_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
RETURNING task_id
"""

RAW_COMPLETE = """
UPDATE raw_tracker SET status = 'COMPLETED', completed_at = now(), lease_owner = NULL, lease_expires_at = NULL
WHERE task_id = ANY(%(ids)s) AND status = 'PROCESSING' AND lease_owner = %(owner)s
"""


def populate(db: Database, tasks: int) -> None:
    """`tasks` no-op PENDING tasks through the API, and the same rows in raw_tracker."""
    tracker = ProcessTracker(db)
    with db.begin() as conn:
        for start in range(0, tasks, 10_000):
            payloads = [{"noop": i} for i in range(start, min(tasks, start + 10_000))]
            tracker.create_tasks(TaskType.PROCESS_STAGING_ENTRY, payloads, conn=conn)
        conn.exec_driver_sql(CREATE_RAW)


def run_raw(url: str) -> dict[str, Any]:
    done = 0
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        n = 0
        while True:
            owner = f"raw-{n}"
            ids = [r[0] for r in conn.execute(RAW_CLAIM, {"owner": owner, "limit": BATCH})]
            if not ids:
                break
            conn.execute(RAW_COMPLETE, {"ids": ids, "owner": owner})
            done += len(ids)
            n += 1
    seconds = time.perf_counter() - started
    return {"tasks": done, "seconds": seconds, "tasks_per_s": done / seconds}


def run_api(db: Database) -> dict[str, Any]:
    tracker = ProcessTracker(db)
    done = 0
    started = time.perf_counter()
    n = 0
    while True:
        owner = f"bench-noop:{n}"
        tasks = tracker.claim_batch(TaskType.PROCESS_STAGING_ENTRY, BATCH, owner=owner)
        if not tasks:
            break
        done += tracker.complete([t.task_id for t in tasks], owner)
        n += 1
    seconds = time.perf_counter() - started
    return {"tasks": done, "seconds": seconds, "tasks_per_s": done / seconds}
