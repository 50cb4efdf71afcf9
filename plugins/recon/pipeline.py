"""The steps of a batch, shared by the Airflow DAG and the CLI; orchestration only, no SQL.

    reap -> claim -> split_into_chunks -> decide_chunk -> validate_chunk -> run_chunk
         -> write_back -> summarize

Every function returns ids, counts and compact verdict codes only (they travel through XCom).
``process_queue`` drains the queue in-process with the same functions and the same XCom forms,
for the CLI and tests.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from collections import Counter
from decimal import Decimal
from typing import Any, Callable, Sequence

from recon import settings, staging
from recon.db import Database
from recon.errors import ErrorType, InvalidInputError
from recon.model import TaskStatus, TaskType
from recon.tasks.manager import TaskManager
from recon.tasks.outcomes import ChunkResult, amounts_as_text
from recon.tasks.verdicts import Decision, Validation, pack, unpack
from recon.tracker import ProcessTracker, parse_task_type

log = logging.getLogger(__name__)

SUMMARY_COUNTS = (
    "completed", "failed", "retried", "booked", "matched", "mismatched", "manual_review",
    "waiting", "already_processed", "not_owned",
)


def new_owner(run_id: str) -> str:
    """A lease owner unique per claim: the run it belongs to plus a random suffix."""
    return f"{run_id}:{uuid.uuid4().hex[:12]}"


def reap(db: Database) -> dict[str, int]:
    """Rescue expired leases; entries of tasks that used up their attempts go to manual review."""
    tracker = ProcessTracker(db)
    with db.begin() as conn:
        result = tracker.reap_expired_leases(conn)
        if result.failed:
            staging.mark_for_review(conn, tracker.staging_entry_ids(result.failed, conn),
                                    "lease expired on the last attempt", ErrorType.RETRIES_EXHAUSTED)
    if result.retried or result.failed:
        log.info("reaped %d expired lease(s): %d to RETRY, %d FAILED",
                 len(result.retried) + len(result.failed), len(result.retried), len(result.failed))
    return {"retried": len(result.retried), "failed": len(result.failed)}


def claim(batch_size: int, task_type: str = TaskType.PROCESS_STAGING_ENTRY, owner: str = "", *,
          db: Database, lease_seconds: int | None = None) -> list[str]:
    task_ids = ProcessTracker(db).claim_ids(task_type, batch_size, lease_seconds, owner)
    log.info("claimed %d task(s) as %s", len(task_ids), owner)
    return task_ids


def peek(batch_size: int, task_type: str = TaskType.PROCESS_STAGING_ENTRY, *, db: Database) -> list[str]:
    """Due task ids without claiming them (dry runs write nothing)."""
    return [t.task_id for t in ProcessTracker(db).due_tasks(task_type, batch_size)]


def check_chunk_size(chunk_size: int) -> int:
    return _check_count("chunk_size", chunk_size, settings.MAX_CHUNK_SIZE)


def _check_count(name: str, value: int, maximum: int | None = None) -> int:
    """A positive integer, at most `maximum`: checked before anything is claimed or written."""
    too_large = maximum is not None and isinstance(value, int) and value > maximum
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or too_large:
        limits = f"from 1 to {maximum:,}" if maximum is not None else "of at least 1"
        raise InvalidInputError(f"{name} must be an integer {limits}, got {value!r}")
    return value


def split_into_chunks(task_ids: Sequence[str], chunk_size: int) -> list[list[str]]:
    """Chunks of at most chunk_size, never more than MAX_CHUNKS (chunks grow instead)."""
    check_chunk_size(chunk_size)
    task_ids = list(task_ids)
    if not task_ids:
        return []
    size = max(chunk_size, -(-len(task_ids) // settings.MAX_CHUNKS))
    return [task_ids[i : i + size] for i in range(0, len(task_ids), size)]


def decide_chunk(task_ids: Sequence[str], db: Database) -> dict[str, Any]:
    """Which strategy handles each task: {"count", "task_ids", "routes": {route: [positions]}},
    the lists packed (recon.tasks.verdicts.pack)."""
    return TaskManager(db).decide_chunk(task_ids).to_xcom()


def validate_chunk(decision: dict[str, Any], db: Database) -> dict[str, Any]:
    """decide's routes plus a compact verdict per task, and their counts (what a dry run reports)."""
    return TaskManager(db).validate_chunk(Decision.from_xcom(decision)).to_xcom()


def run_chunk(validation: dict[str, Any], owner: str, db: Database) -> dict[str, Any]:
    """The writes of validate's verdicts, in one transaction (see recon.tasks.manager)."""
    from recon.reporting import metrics

    checked = Validation.from_xcom(validation)
    started = time.monotonic()
    result = TaskManager(db).run_chunk(checked.task_ids, owner, checked)
    metrics.record_chunk_duration(time.monotonic() - started)
    log.info("chunk of %d: %s", len(checked.task_ids), _one_line(result.to_dict()))
    return result.to_dict()


def write_back(task_ids: Sequence[str], owner: str, db: Database) -> dict[str, int]:
    """Whatever happened to the chunks, no claimed task stays PROCESSING: leftovers -> RETRY."""
    leftover = ProcessTracker(db).leased_ids(list(task_ids), owner)
    if not leftover:
        return {"leftover": 0, "retried": 0, "failed": 0}
    result = TaskManager(db).retry_tasks(leftover, owner, "the run ended before this task was processed")
    log.warning("write back: %d task(s) left PROCESSING -> %d RETRY, %d FAILED",
                len(leftover), result.retried, result.failed)
    return {"leftover": len(leftover), "retried": result.retried, "failed": result.failed}


def summarize(chunk_results: Sequence[dict[str, Any] | None], claimed: int, started_at: float,
              write_back_result: dict[str, int] | None = None) -> dict[str, Any]:
    """Totals of a run; chunk results may be None for chunks that never ran."""
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    amounts = ChunkResult()
    for result in chunk_results:
        if not result:
            continue
        for name in SUMMARY_COUNTS:
            totals[name] += int(result.get(name, 0))
        reasons.update(result.get("manual_review_by_type", {}))
        for kind, by_currency in (result.get("amounts") or {}).items():
            for currency, amount in by_currency.items():
                amounts.add_amount(kind, currency, Decimal(amount))
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
    summary["amounts"] = amounts_as_text(amounts.amounts)  # per outcome and currency, exact text
    return summary


def requeue_scope(created_from: dt.datetime | str | None = None, created_to: dt.datetime | str | None = None,
                  task_ids: Sequence[str] | None = None, *, db: Database,
                  review: staging.ReviewFilter | None = None, exclude_error_types: Sequence[str] = (),
                  dry_run: bool = False) -> dict[str, Any]:
    """Backfill: FAILED tasks and NEEDS_MANUAL_REVIEW entries in scope get processed again.

    The scope is a created_at window (of the staging entry / task), explicit task ids, and the
    Recon view's filter (error type, account, order id, text); ``exclude_error_types`` leaves some out. With a
    filter or an exclusion, only the FAILED tasks of the entries it selects are requeued. Entries in manual review
    get a fresh PENDING task when they have no open one. A dry run counts and writes nothing.
    """
    created_from, created_to = parse_time(created_from), parse_time(created_to)
    review = review or staging.ReviewFilter()
    narrowed = any(v is not None for v in review.params().values())
    filtered = narrowed or bool(exclude_error_types)
    if task_ids is None and created_from is None and created_to is None and not narrowed:
        raise InvalidInputError("reprocess needs a scope: created_from/created_to, task_ids or a review filter"
                                " (error_type, account_id, order_id, q)")
    if created_from is not None and created_to is not None and created_from >= created_to:
        raise InvalidInputError(
            f"created_from {created_from.isoformat()} must be before created_to {created_to.isoformat()}"
            " (the window is [created_from, created_to))"
        )
    if task_ids is not None:
        task_ids = list(task_ids)
        if not task_ids or not all(isinstance(t, str) and t.strip() for t in task_ids):
            raise InvalidInputError(f"task_ids must be a non-empty list of task ids, got {task_ids!r}")
    tracker = ProcessTracker(db)
    with db.begin() as conn:
        entry_ids = tracker.staging_entry_ids(task_ids, conn) if task_ids is not None else None
        scope = staging.ReprocessScope(created_from, created_to, entry_ids, review, tuple(exclude_error_types))

        def reopen() -> tuple[list[str], list[str], list[str]]:
            """FAILED tasks requeued, entries reopened, and the fresh tasks of entries that had none."""
            if filtered:
                reopened = staging.reopen_for_review(conn, scope)
                requeued = tracker.requeue(tracker.failed_task_ids(reopened, conn), conn=conn) if reopened else []
            else:
                requeued = tracker.requeue(task_ids, created_from, created_to, conn)
                reopened = staging.reopen_for_review(conn, scope)
            return requeued, reopened, tracker.enqueue_entries(reopened, conn)

        if dry_run:
            before = staging.review_scope_types(conn, scope)
            failed = (len(tracker.failed_task_ids(list(before), conn)) if filtered
                      else tracker.count_failed(task_ids, created_from, created_to, conn))
            return {"dry_run": True, "failed_tasks": failed, "entries": len(before),
                    "entries_by_error_type": dict(Counter(before.values()).most_common()),
                    **_preview(conn, db, reopen, before)}
        requeued, reopened, _ = reopen()
    log.info("reprocess: %d FAILED task(s) requeued, %d entries reopened", len(requeued), len(reopened))
    return {"requeued_tasks": len(requeued), "reopened_entries": len(reopened)}


def _preview(conn: Any, db: Database, reopen: Callable[[], tuple[list[str], list[str], list[str]]],
             before: dict[str, str]) -> dict[str, Any]:
    """What decide/validate would say of each entry in scope: the scope is reopened in a savepoint,
    each task asked as a run would ask it, and everything rolled back (a dry run writes nothing)."""
    savepoint = conn.begin_nested()
    try:
        requeued, _, enqueued = reopen()
        found = TaskManager(db).preview(conn, requeued + enqueued)
    finally:
        savepoint.rollback()
    entries = sorted(({
        "staging_entry_id": item.staging.staging_entry_id if item.staging else None,
        "task_id": item.task_id,
        "error_type": before.get(item.staging.staging_entry_id, "(none)") if item.staging else "(none)",
        "would": verdict.outcome(),
        "detail": verdict.detail()[:300],
    } for item, verdict in found), key=lambda e: (e["staging_entry_id"] or "", e["task_id"]))
    return {"would": dict(Counter(e["would"] for e in entries).most_common()), "preview": entries}


def prune(retention_days: int, db: Database) -> dict[str, int]:
    if retention_days < 0:
        raise InvalidInputError(f"retention_days must be >= 0, got {retention_days}")
    return {"deleted": ProcessTracker(db).prune_completed(dt.timedelta(days=retention_days),
                                                          settings.prune_batch_size())}


def process_queue(
    batch_size: int | None = None,
    chunk_size: int | None = None,
    task_type: str = TaskType.PROCESS_STAGING_ENTRY,
    *,
    db: Database,
    run_id: str = "cli",
    max_batches: int | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Drain due tasks in-process with the DAG's own steps (sizes default to recon.settings);
    returns the overall summary. Every argument is checked before anything is claimed."""
    batch_size = settings.batch_size() if batch_size is None else batch_size
    chunk_size = settings.chunk_size() if chunk_size is None else chunk_size
    parse_task_type(task_type)
    check_chunk_size(chunk_size)
    _check_count("batch_size", batch_size, settings.MAX_BATCH_SIZE)
    if max_batches is not None:
        _check_count("max_batches", max_batches)
    started = time.time()
    results: list[dict[str, Any]] = []
    claimed_total = 0
    reap(db)
    batches = 0
    while max_batches is None or batches < max_batches:
        owner = new_owner(run_id)
        task_ids = claim(batch_size, task_type, owner, db=db)
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


def parse_time(value: dt.datetime | str | None) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InvalidInputError(f"not an ISO 8601 timestamp: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _one_line(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counts.items() if v and k != "task_ids")


__all__ = [
    "TaskStatus", "claim", "decide_chunk", "new_owner", "pack", "peek", "process_queue",
    "prune", "reap", "requeue_scope", "run_chunk", "split_into_chunks", "summarize",
    "unpack", "validate_chunk", "write_back",
]
