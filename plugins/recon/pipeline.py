"""Batch orchestration shared by the Airflow DAG and the CLI.

    reap -> claim -> split_into_chunks -> decide_chunk -> validate_chunk -> run_chunk
         -> write_back -> summarize

Every function returns ids and counts only (they travel through XCom). ``process_queue``
drains the queue in-process with the same functions, for the CLI and tests.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections import Counter
from typing import Any, Callable, Sequence

import sqlalchemy as sa

from recon.db import Database, default_database
from recon.errors import ErrorType
from recon.tasks.manager import ChunkResult, TaskManager, mark_exhausted_for_review
from recon.tracker import ProcessTracker, TaskStatus, TaskType, parse_task_type

log = logging.getLogger(__name__)

# Fewer, larger chunks: each chunk is three Airflow task instances (about 0.1-0.3 s of Airflow
# time each), and a chunk's cost per entry is flat from about 2,000 up. 12,500 keeps a DAG
# worker under 450 MiB; a batch of two chunks lets two workers (or mapped tasks) share the
# CPUs. Figures: bench/RESULTS.md.
DEFAULT_BATCH_SIZE = 25_000
DEFAULT_CHUNK_SIZE = 12_500
MAX_CHUNKS = 1_024  # Airflow's [core] max_map_length

SUMMARY_COUNTS = (
    "completed", "failed", "retried", "booked", "matched", "mismatched", "manual_review",
    "waiting", "already_processed", "not_owned",
)


def new_owner(run_id: str) -> str:
    """A lease owner unique per claim: the run it belongs to plus a random suffix."""
    return f"{run_id}:{uuid.uuid4().hex[:12]}"


def _manager(db: Database | None) -> TaskManager:
    return TaskManager(db or default_database())


def reap(db: Database | None = None) -> dict[str, int]:
    """Rescue expired leases; entries of tasks that used up their attempts go to manual review."""
    db = db or default_database()
    tracker = ProcessTracker(db)
    with db.begin() as conn:
        result = tracker.reap_expired_leases(conn)
        mark_exhausted_for_review(conn, result.failed, "lease expired on the last attempt")
    if result.retried or result.failed:
        log.info("reaped %d expired lease(s): %d to RETRY, %d FAILED",
                 len(result.retried) + len(result.failed), len(result.retried), len(result.failed))
    return {"retried": len(result.retried), "failed": len(result.failed)}


def claim(batch_size: int, task_type: str = TaskType.PROCESS_STAGING_ENTRY, owner: str = "",
          db: Database | None = None, lease_seconds: int | None = None) -> list[str]:
    task_ids = ProcessTracker(db or default_database()).claim_ids(task_type, batch_size, lease_seconds, owner)
    log.info("claimed %d task(s) as %s", len(task_ids), owner)
    return task_ids


def peek(batch_size: int, task_type: str = TaskType.PROCESS_STAGING_ENTRY,
         db: Database | None = None) -> list[str]:
    """Due task ids without claiming them (dry runs write nothing)."""
    return [t.task_id for t in ProcessTracker(db or default_database()).due_tasks(task_type, batch_size)]


def split_into_chunks(task_ids: Sequence[str], chunk_size: int) -> list[list[str]]:
    """Chunks of at most chunk_size, never more than MAX_CHUNKS (chunks grow instead)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    task_ids = list(task_ids)
    if not task_ids:
        return []
    size = max(chunk_size, -(-len(task_ids) // MAX_CHUNKS))
    return [task_ids[i : i + size] for i in range(0, len(task_ids), size)]


def decide_chunk(task_ids: Sequence[str], db: Database | None = None) -> dict[str, Any]:
    return _manager(db).decide_chunk(task_ids)


def validate_chunk(decision: dict[str, Any], db: Database | None = None) -> dict[str, Any]:
    return _manager(db).validate_chunk(decision["task_ids"])


def run_chunk(validation: dict[str, Any], owner: str, db: Database | None = None) -> dict[str, Any]:
    result = _manager(db).run_chunk(validation["task_ids"], owner)
    log.info("chunk of %d: %s", len(validation["task_ids"]), _one_line(result.to_dict()))
    return result.to_dict()


def write_back(task_ids: Sequence[str], owner: str, db: Database | None = None) -> dict[str, int]:
    """Whatever happened to the chunks, no claimed task stays PROCESSING: leftovers -> RETRY."""
    db = db or default_database()
    task_ids = list(task_ids)
    with db.begin() as conn:
        leftover = list(
            conn.exec_driver_sql(  # %(ids)b: the ids as a binary array (no per-element escaping)
                "SELECT task_id FROM process_tracker WHERE task_id = ANY(%(ids)b)"
                " AND status = 'PROCESSING' AND lease_owner = %(owner)s",
                {"ids": task_ids, "owner": owner},
            ).scalars()
        )
    if not leftover:
        return {"leftover": 0, "retried": 0, "failed": 0}
    result = _manager(db).retry_tasks(leftover, owner, "the run ended before this task was processed")
    log.warning("write back: %d task(s) left PROCESSING -> %d RETRY, %d FAILED",
                len(leftover), result.retried, result.failed)
    return {"leftover": len(leftover), "retried": result.retried, "failed": result.failed}


def summarize(chunk_results: Sequence[dict[str, Any] | None], claimed: int, started_at: float,
              write_back_result: dict[str, int] | None = None) -> dict[str, Any]:
    """Totals of a run; chunk results may be None for chunks that never ran."""
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for result in chunk_results:
        if not result:
            continue
        for name in SUMMARY_COUNTS:
            totals[name] += int(result.get(name, 0))
        reasons.update(result.get("manual_review_by_type", {}))
    if write_back_result:
        totals["retried"] += write_back_result.get("retried", 0)
        totals["failed"] += write_back_result.get("failed", 0)
        if write_back_result.get("failed"):
            totals["manual_review"] += write_back_result["failed"]
            reasons[ErrorType.RETRIES_EXHAUSTED.value] += write_back_result["failed"]
    duration = max(time.time() - started_at, 1e-9)
    processed = totals["completed"] + totals["failed"]
    summary: dict[str, Any] = {"claimed": claimed, **{n: totals[n] for n in SUMMARY_COUNTS}}
    summary["duration_s"] = round(duration, 3)
    summary["entries_per_s"] = round(processed / duration, 1)
    summary["manual_review_by_type"] = dict(reasons.most_common())
    return summary


def requeue_scope(created_from: dt.datetime | str | None = None, created_to: dt.datetime | str | None = None,
                  task_ids: Sequence[str] | None = None, db: Database | None = None) -> dict[str, int]:
    """Backfill: FAILED tasks and NEEDS_MANUAL_REVIEW entries in scope get processed again.

    The scope is a created_at window (of the staging entry / task) and/or explicit task ids.
    Entries in manual review get a fresh PENDING task when they have no open one.
    """
    created_from, created_to = _as_time(created_from), _as_time(created_to)
    if task_ids is None and created_from is None and created_to is None:
        raise ValueError("reprocess needs created_from/created_to or task_ids")
    db = db or default_database()
    with db.begin() as conn:
        requeued = ProcessTracker(db).requeue(task_ids, created_from, created_to, conn)
        scope = {"ids": list(task_ids) if task_ids is not None else None,
                 "created_from": created_from, "created_to": created_to}
        reopened = conn.execute(
            sa.text(
                """
                WITH in_scope AS (
                    SELECT s.staging_entry_id FROM staging_entries s
                    WHERE s.status = 'NEEDS_MANUAL_REVIEW'
                      AND (CAST(:created_from AS timestamptz) IS NULL OR s.created_at >= :created_from)
                      AND (CAST(:created_to AS timestamptz) IS NULL OR s.created_at < :created_to)
                      AND (CAST(:ids AS text[]) IS NULL OR s.staging_entry_id IN (
                           SELECT payload ->> 'staging_entry_id' FROM process_tracker
                           WHERE task_id = ANY(CAST(:ids AS text[]))))
                    FOR UPDATE OF s
                ), reopened AS (
                    UPDATE staging_entries s SET status = 'PENDING',
                           metadata = s.metadata - 'error' - 'error_type'
                    FROM in_scope WHERE s.staging_entry_id = in_scope.staging_entry_id
                    RETURNING s.staging_entry_id
                )
                INSERT INTO process_tracker (task_type, payload)
                SELECT 'PROCESS_STAGING_ENTRY', jsonb_build_object('staging_entry_id', r.staging_entry_id)
                FROM reopened r
                WHERE NOT EXISTS (
                    SELECT 1 FROM process_tracker o
                    WHERE o.payload ->> 'staging_entry_id' = r.staging_entry_id
                      AND o.status IN ('PENDING', 'PROCESSING', 'RETRY'))
                RETURNING task_id
                """
            ),
            scope,
        ).all()
    log.info("reprocess: %d FAILED task(s) requeued, %d entries reopened with a new task",
             len(requeued), len(reopened))
    return {"requeued_tasks": len(requeued), "reopened_entries": len(reopened)}


def prune(retention_days: int, db: Database | None = None) -> dict[str, int]:
    if retention_days < 0:
        raise ValueError(f"retention_days must be >= 0, got {retention_days}")
    deleted = ProcessTracker(db or default_database()).prune_completed(dt.timedelta(days=retention_days))
    return {"deleted": deleted}


def process_queue(
    batch_size: int = DEFAULT_BATCH_SIZE,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    task_type: str = TaskType.PROCESS_STAGING_ENTRY,
    db: Database | None = None,
    run_id: str = "cli",
    max_batches: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Drain due tasks in-process with the DAG's own steps; returns the overall summary."""
    parse_task_type(task_type)
    db = db or default_database()
    started = time.time()
    results: list[dict[str, Any]] = []
    claimed_total = 0
    reap(db)
    batches = 0
    while max_batches is None or batches < max_batches:
        owner = new_owner(run_id)
        task_ids = claim(batch_size, task_type, owner, db)
        if not task_ids:
            break
        batches += 1
        claimed_total += len(task_ids)
        try:
            for chunk in split_into_chunks(task_ids, chunk_size):
                validation = validate_chunk(decide_chunk(chunk, db), db)
                results.append(run_chunk(validation, owner, db))
        finally:
            written_back = write_back(task_ids, owner, db)
            if written_back["leftover"]:
                results.append({"retried": written_back["retried"], "failed": written_back["failed"]})
        if progress:
            progress(summarize(results, claimed_total, started))
    return summarize(results, claimed_total, started)


def _as_time(value: dt.datetime | str | None) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _one_line(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items() if v and k != "task_ids")


__all__ = [
    "TaskStatus", "ChunkResult", "claim", "decide_chunk", "new_owner", "peek", "process_queue",
    "prune", "reap", "requeue_scope", "run_chunk", "split_into_chunks", "summarize",
    "validate_chunk", "write_back",
]
