"""TaskManager: route each claimed task to the first implementation that accepts it, and
write every outcome of a chunk in one database transaction.

``decide_chunk`` and ``validate_chunk`` are read-only (they back the DAG's decide/validate
steps and dry runs). ``run_chunk`` reloads the chunk under row locks, because time passes
between steps and another worker may have changed the ledger, then decides, validates and
applies again and commits the ledger effect, the staging statuses and the tracker statuses
together.
"""

from __future__ import annotations

import functools
import gc
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import sqlalchemy as sa
import sqlalchemy.exc
from sqlalchemy.engine import Connection

from recon.db import Database, default_database, json_rows
from recon.errors import ErrorType
from recon.ledger import LedgerBatch
from recon.tasks.base import Applied, ManualReview, Plan, ReconTask, Wait
from recon.tasks.context import ChunkContext, WorkItem, load_chunk, load_items
from recon.tasks.expected_entry_matching import ExpectedEntryMatchingTask
from recon.tasks.transaction_creation import TransactionCreationTask
from recon.tracker import Outcome, ProcessTracker, TaskStatus

log = logging.getLogger(__name__)

# Registering a new implementation is one line here; the first that accepts a task wins.
DEFAULT_IMPLEMENTATIONS: tuple[type[ReconTask], ...] = (
    TransactionCreationTask,
    ExpectedEntryMatchingTask,
)


def without_gc_pauses(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a chunk step with Python's cyclic garbage collector paused.

    A chunk builds hundreds of thousands of short-lived, acyclic objects (rows, entries,
    metadata dicts); each generation-2 collection rescans all of them, and with chunks of
    20,000 tasks that was a third of the engine's CPU. Reference counting still frees
    everything; the collector resumes when the step returns.
    """

    @functools.wraps(method)
    def paused(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():
            return method(*args, **kwargs)
        gc.disable()
        try:
            return method(*args, **kwargs)
        finally:
            gc.enable()

    return paused


class LeaseLostError(RuntimeError):
    """Some tasks of the chunk are no longer ours (rescued and re-claimed): write nothing."""


def is_infrastructure_error(exc: BaseException) -> bool:
    """Lost connections, timeouts, serialization failures and deadlocks: worth retrying."""
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        return True  # psycopg: connection errors, QueryCanceled, serialization, deadlock
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


@dataclass
class ChunkResult:
    """Counts for one chunk; JSON-friendly for XCom."""

    task_ids: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    booked: int = 0
    matched: int = 0
    mismatched: int = 0
    manual_review: int = 0
    waiting: int = 0
    already_processed: int = 0
    not_owned: int = 0
    manual_review_by_type: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class StagingUpdate:
    """A staging entry's new status and the keys to merge into its metadata."""

    staging_entry_id: str
    status: str
    patch: dict[str, Any]


@dataclass(slots=True)
class _Evaluation:
    item: WorkItem
    verdict: Plan | ManualReview | Wait | None = None
    applied: Applied | None = None
    batch: LedgerBatch | None = None
    error: str | None = None  # an unexpected exception while evaluating this item
    noop: bool = False
    problem: ManualReview | None = None  # payload or routing problem


class TaskManager:
    def __init__(
        self,
        db: Database | None = None,
        tracker: ProcessTracker | None = None,
        implementations: Sequence[ReconTask] | None = None,
    ):
        self.db = db or default_database()
        self.tracker = tracker or ProcessTracker(self.db)
        self.implementations = list(implementations or [cls() for cls in DEFAULT_IMPLEMENTATIONS])

    # ---- routing ------------------------------------------------------------------------------

    def pick(self, item: WorkItem) -> ReconTask | None:
        """The first implementation whose decide accepts the item; one that raises is skipped."""
        for implementation in self.implementations:
            try:
                if implementation.decide(item):
                    return implementation
            except Exception:
                log.exception("%s.decide raised for task %s; skipped", implementation.name, item.task_id)
        return None

    def route(self, item: WorkItem) -> ReconTask | ManualReview | None:
        """Who handles the item: an implementation, a ManualReview saying why nobody can,
        or None when its entry is already PROCESSED (a second run is a no-op)."""
        if item.problem is not None:
            return item.problem
        assert item.staging is not None
        if item.staging.status == "PROCESSED":
            return None
        implementation = self.pick(item)
        if implementation is None:
            return ManualReview(
                ErrorType.NO_TASK_HANDLER,
                f"no task implementation accepts staging entry {item.staging.staging_entry_id}"
                f" (processing_mode {item.staging.processing_mode})",
            )
        return implementation

    def _evaluate(self, ctx: ChunkContext, apply: bool) -> list[_Evaluation]:
        evaluations = []
        for item in ctx.items:
            evaluation = _Evaluation(item)
            evaluations.append(evaluation)
            implementation = self.route(item)
            if implementation is None:
                evaluation.noop = True
                continue
            if isinstance(implementation, ManualReview):
                evaluation.problem = implementation
                continue
            try:
                evaluation.verdict = implementation.validate(item, ctx)
                if apply and isinstance(evaluation.verdict, Plan):
                    own_batch = LedgerBatch()
                    evaluation.applied = implementation.run(item, evaluation.verdict, ctx, own_batch)
                    evaluation.batch = own_batch
                ctx.evaluated(item)  # its line is processed now: no longer queued for later items
            except Exception as exc:  # a poison task must not take its chunk down with it
                log.exception("%s failed on task %s", implementation.name, item.task_id)
                evaluation.verdict = None
                evaluation.error = f"{ErrorType.UNEXPECTED}: {type(exc).__name__}: {exc}"
        return evaluations

    # ---- read-only steps ----------------------------------------------------------------------

    @without_gc_pauses
    def decide_chunk(self, task_ids: Sequence[str]) -> dict[str, Any]:
        with self.db.begin() as conn:
            items = load_items(conn, task_ids, lock=False, metadata=False)  # routing needs no more
        routes: Counter[str] = Counter()
        for item in items:
            route = self.route(item)
            if route is None:
                routes["already_processed"] += 1
            elif isinstance(route, ManualReview):
                routes["unusable_payload" if item.staging is None else "no_handler"] += 1
            else:
                routes[route.name] += 1
        return {"task_ids": list(task_ids), "routes": dict(routes)}

    @without_gc_pauses
    def validate_chunk(self, task_ids: Sequence[str]) -> dict[str, Any]:
        with self.db.begin() as conn:
            ctx = load_chunk(conn, task_ids, lock=False, details=False)
            evaluations = self._evaluate(ctx, apply=False)
        verdicts: Counter[str] = Counter()
        by_type: Counter[str] = Counter()
        for e in evaluations:
            review = e.problem or (e.verdict if isinstance(e.verdict, ManualReview) else None)
            if review is not None:
                verdicts["manual_review"] += 1
                by_type[review.error_type.value] += 1
            elif isinstance(e.verdict, Plan):
                verdicts[e.verdict.kind] += 1
            elif isinstance(e.verdict, Wait):
                verdicts["waiting"] += 1
            elif e.noop:
                verdicts["already_processed"] += 1
            else:
                verdicts["error"] += 1
        return {"task_ids": list(task_ids), "verdicts": dict(verdicts), "manual_review_by_type": dict(by_type)}

    # ---- the run step -------------------------------------------------------------------------

    @without_gc_pauses
    def run_chunk(self, task_ids: Sequence[str], owner: str) -> ChunkResult:
        """Process a claimed chunk; every task ends COMPLETED, FAILED or RETRY (or is not ours)."""
        task_ids = list(task_ids)
        try:
            with self.db.begin() as conn:
                return self._run_in_transaction(conn, task_ids, owner)
        except LeaseLostError as exc:
            log.warning("chunk not written: %s", exc)
            return ChunkResult(task_ids=len(task_ids), not_owned=len(task_ids))
        except Exception as exc:
            if is_infrastructure_error(exc) or len(task_ids) == 1:
                log.warning("chunk of %d task(s) will be retried: %s", len(task_ids), exc)
                return self.retry_tasks(task_ids, owner, f"{type(exc).__name__}: {exc}")
            # a data error in a bulk statement: isolate the culprit by running one task at a time
            log.warning("chunk of %d failed (%s); running its tasks one by one", len(task_ids), exc)
            total = ChunkResult()
            for task_id in task_ids:
                _add(total, self.run_chunk([task_id], owner))
            return total

    def _run_in_transaction(self, conn: Connection, task_ids: list[str], owner: str) -> ChunkResult:
        ctx = load_chunk(conn, task_ids, lock=True)
        result = ChunkResult(task_ids=len(task_ids))
        owned = [i for i in ctx.items if i.task.status == TaskStatus.PROCESSING and i.task.lease_owner == owner]
        result.not_owned = len(task_ids) - len(owned)
        ctx.items = owned
        evaluations = self._evaluate(ctx, apply=True)
        del ctx, owned  # only through the evaluations from here on

        outcomes = [_tracker_outcome(e) for e in evaluations]
        written = self.tracker.finish(outcomes, owner, conn)
        if len(written) != len(outcomes):
            lost = sorted({o.task_id for o in outcomes} - set(written))
            raise LeaseLostError(f"{len(lost)} task(s) no longer leased to {owner}: {lost[:5]}")

        batch = LedgerBatch()
        staging_updates: list[StagingUpdate] = []
        for evaluation in evaluations:
            status = written[evaluation.item.task_id]
            _count(result, evaluation, status)
            update = _staging_update(evaluation, status)
            if update is not None:
                staging_updates.append(update)
            if evaluation.batch is not None:
                batch.extend(evaluation.batch)
            review = _review(evaluation)
            if review is not None and review.mismatch_transaction_id:
                batch.mismatch_transaction_ids.append(review.mismatch_transaction_id)
        del evaluations, outcomes  # nor the evaluated items: the writes below need only batch and updates
        batch.flush(conn)
        write_staging_updates(conn, staging_updates)
        return result

    def retry_tasks(self, task_ids: Sequence[str], owner: str, error: str) -> ChunkResult:
        """Put tasks still leased to `owner` back as RETRY; exhausted ones go to manual review."""
        with self.db.begin() as conn:
            written = self.tracker.retry({t: error for t in task_ids}, owner, conn)
            exhausted = [t for t, status in written.items() if status == TaskStatus.FAILED]
            mark_exhausted_for_review(conn, exhausted, error)
        result = ChunkResult(task_ids=len(task_ids), not_owned=len(task_ids) - len(written))
        result.retried = sum(1 for s in written.values() if s == TaskStatus.RETRY)
        result.failed = len(exhausted)
        result.manual_review = len(exhausted)
        if exhausted:
            result.manual_review_by_type = {ErrorType.RETRIES_EXHAUSTED.value: len(exhausted)}
        return result


def _review(evaluation: _Evaluation) -> ManualReview | None:
    if evaluation.problem is not None:
        return evaluation.problem
    return evaluation.verdict if isinstance(evaluation.verdict, ManualReview) else None


def _tracker_outcome(evaluation: _Evaluation) -> Outcome:
    task_id = evaluation.item.task_id
    review = _review(evaluation)
    if review is not None:
        return Outcome(task_id, TaskStatus.FAILED, f"{review.error_type}: {review.message}")
    if isinstance(evaluation.verdict, Wait):
        return Outcome(task_id, TaskStatus.RETRY, evaluation.verdict.reason, evaluation.verdict.seconds)
    if evaluation.error is not None:
        return Outcome(task_id, TaskStatus.RETRY, evaluation.error)
    return Outcome(task_id, TaskStatus.COMPLETED)  # applied, or already processed


def _staging_update(evaluation: _Evaluation, task_status: str) -> StagingUpdate | None:
    """The entry's new status and metadata keys, or None to leave the entry as it is."""
    entry = evaluation.item.staging
    if entry is None or evaluation.noop:
        return None
    review = _review(evaluation)
    if review is not None:
        return StagingUpdate(entry.staging_entry_id, "NEEDS_MANUAL_REVIEW", {
            **review.metadata, "error": review.message, "error_type": review.error_type.value
        })
    if evaluation.applied is not None:
        return StagingUpdate(entry.staging_entry_id, "PROCESSED", evaluation.applied.staging_metadata)
    if task_status == TaskStatus.FAILED:  # a retry that used up its attempts
        return StagingUpdate(entry.staging_entry_id, "NEEDS_MANUAL_REVIEW", {
            "error": evaluation.error or "retries exhausted",
            "error_type": ErrorType.RETRIES_EXHAUSTED.value,
        })
    return None  # waiting or retrying: the entry stays PENDING


def _count(result: ChunkResult, evaluation: _Evaluation, task_status: str) -> None:
    if task_status == TaskStatus.COMPLETED:
        result.completed += 1
    elif task_status == TaskStatus.FAILED:
        result.failed += 1
    else:
        result.retried += 1
    if evaluation.noop:
        result.already_processed += 1
    elif evaluation.applied is not None:
        if evaluation.applied.kind == "book":
            result.booked += 1
        else:
            result.matched += 1
    elif isinstance(evaluation.verdict, Wait):
        result.waiting += 1
    review = _review(evaluation)
    if review is not None or (task_status == TaskStatus.FAILED and evaluation.item.staging is not None):
        error_type = review.error_type.value if review else ErrorType.RETRIES_EXHAUSTED.value
        result.manual_review += 1
        result.manual_review_by_type[error_type] = result.manual_review_by_type.get(error_type, 0) + 1
        if review is not None and review.error_type == ErrorType.MISMATCH:
            result.mismatched += 1


def _add(total: ChunkResult, part: ChunkResult) -> None:
    for name, value in part.to_dict().items():
        if isinstance(value, int):
            setattr(total, name, getattr(total, name) + value)
    for key, n in part.manual_review_by_type.items():
        total.manual_review_by_type[key] = total.manual_review_by_type.get(key, 0) + n


_UPDATE_STAGING = sa.text(
    """
    UPDATE staging_entries s SET
        status = u.status,
        metadata = CASE WHEN u.status = 'PROCESSED' THEN (s.metadata - 'error' - 'error_type') || u.patch
                        ELSE s.metadata || u.patch END,
        discarded_at = CASE WHEN u.status = 'PROCESSED' THEN now() ELSE s.discarded_at END,
        updated_at = now()  -- set here, the touch trigger is skipped (sql/0002)
    FROM json_to_recordset(CAST(:rows AS json)) AS u(staging_entry_id text, status text, patch jsonb)
    WHERE s.staging_entry_id = u.staging_entry_id AND s.status <> 'PROCESSED'
    """
)


def write_staging_updates(conn: Connection, updates: list[StagingUpdate]) -> None:
    """One statement for all staging status changes of a chunk; PROCESSED is never undone."""
    if updates:
        conn.execute(_UPDATE_STAGING, {"rows": json_rows(updates)})


def mark_exhausted_for_review(conn: Connection, task_ids: Sequence[str], error: str) -> None:
    """Staging entries of tasks that ran out of attempts go to manual review, same transaction."""
    if not task_ids:
        return
    conn.execute(
        sa.text(
            """
            UPDATE staging_entries SET status = 'NEEDS_MANUAL_REVIEW',
                   metadata = metadata || jsonb_build_object('error', CAST(:error AS text),
                                                             'error_type', CAST(:error_type AS text))
            WHERE status <> 'PROCESSED' AND staging_entry_id IN (
                SELECT payload ->> 'staging_entry_id' FROM process_tracker WHERE task_id = ANY(:ids))
            """
        ),
        {"ids": list(task_ids), "error": error[:4000], "error_type": ErrorType.RETRIES_EXHAUSTED.value},
    )
