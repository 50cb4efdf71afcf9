"""TaskManager: route each claimed task to the strategy that accepts it, validate the chunk, and
write every outcome of the chunk in one database transaction.

The three steps are a data flow (the DAG runs them as three tasks; ``recon process`` calls them in
a row, through the same XCom forms):

    decide_chunk(task_ids)  -> Decision    which strategy handles each task (read-only)
    validate_chunk(decision) -> Validation a verdict per task (read-only, no locks)
    run_chunk(task_ids, owner, validation) the writes, in one transaction

``run_chunk`` does not decide or validate again: it locks the chunk's staging entries, keeps the
tasks still leased to it, and asks each strategy to re-check under row locks only what another
worker can change between validate and run (the DAG's doc_md lists them):

    every task        its lease (the tracker's finish writes only tasks still leased to us) and
                      its staging entry (a PROCESSED entry makes a plan outdated)
    a booking         that no other worker booked the same logical transaction meanwhile
                      (advisory lock on orders other queued lines book too, then a re-read)
    a fulfilment or   that the expected leg is still open (its transaction locked FOR UPDATE
    a mismatch        SKIP LOCKED): another confirmation may have fulfilled or mismatched it
    a match group     that every leg of the group is still open (the chunk's planned legs are
                      locked in one statement)

Verdicts that write no ledger row (manual review, wait) are written as validated. When a re-check
fails, the chunk is validated again inside the writing transaction, under the same locks, and
only then written: outcomes never depend on how tasks were chunked or which worker ran first.
A leg held by another worker's uncommitted chunk is skipped, not waited for: its line is set
aside, the rest of the chunk is validated again without it and committed, and the set-aside lines
then run on their own, validated under locks, so they wait for that commit and see what it wrote.
Without a validation (a direct call, or a failed chunk retried one task at a time) run_chunk
decides and validates under locks itself.
"""

from __future__ import annotations

import functools
import gc
import logging
from typing import Any, Callable, Sequence

from sqlalchemy.engine import Connection

from recon import settings, staging
from recon.db import Database
from recon.errors import ErrorType, LeaseLostError, is_retryable
from recon.ledger import LedgerBatch
from recon.model import StagingStatus, TaskStatus
from recon.tasks.base import ReconTask, VerdictOutdated
from recon.tasks.chunk import Reservations, WorkItem, load_items
from recon.tasks.expected_entry_matching import ExpectedEntryMatchingTask
from recon.tasks.outcomes import ChunkResult, ItemOutcome
from recon.tasks.settlement_booking import SettlementBookingTask
from recon.tasks.transaction_creation import TransactionCreationTask
from recon.tasks.verdicts import (
    AlreadyProcessed,
    Decision,
    ManualReview,
    Plan,
    Retry,
    Validation,
    Verdict,
)
from recon.tracker import ProcessTracker

log = logging.getLogger(__name__)

# Registering a new implementation is one line here; the first that accepts a task wins.
DEFAULT_IMPLEMENTATIONS: tuple[type[ReconTask], ...] = (
    TransactionCreationTask,
    ExpectedEntryMatchingTask,
    SettlementBookingTask,
)

# decide's routes that name no strategy
ALREADY_PROCESSED = "already_processed"
UNUSABLE_PAYLOAD = "unusable_payload"
NO_HANDLER = "no_handler"


def without_gc_pauses(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a chunk step with Python's cyclic garbage collector paused.

    A chunk builds hundreds of thousands of short-lived, acyclic objects (rows, entries, metadata
    dicts); each generation-2 collection rescans all of them, which was a third of the engine's CPU
    with large chunks. Reference counting still frees everything; the collector resumes after.
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


class TaskManager:
    def __init__(
        self,
        db: Database,
        tracker: ProcessTracker | None = None,
        implementations: Sequence[ReconTask] | None = None,
    ):
        self.db = db
        self.tracker = tracker or ProcessTracker(db)
        self.implementations = list(implementations or [cls() for cls in DEFAULT_IMPLEMENTATIONS])
        self._by_name = {impl.name: impl for impl in self.implementations}
        self._metadata = any(impl.reads_metadata for impl in self.implementations)

    # ---- decide -------------------------------------------------------------------------------

    def pick(self, item: WorkItem) -> ReconTask | None:
        """The first implementation whose decide accepts the item; one that raises is skipped."""
        for implementation in self.implementations:
            try:
                if implementation.decide(item):
                    return implementation
            except Exception:
                log.exception("%s.decide raised for task %s; skipped", implementation.name, item.task_id)
        return None

    def route(self, item: WorkItem) -> str:
        """The item's route: a strategy's name, or why no strategy handles it."""
        if item.problem is not None:
            return UNUSABLE_PAYLOAD
        assert item.staging is not None
        if item.staging.status == StagingStatus.PROCESSED:
            return ALREADY_PROCESSED
        implementation = self.pick(item)
        return implementation.name if implementation is not None else NO_HANDLER

    @without_gc_pauses
    def decide_chunk(self, task_ids: Sequence[str]) -> Decision:
        with self.db.begin() as conn:
            items = load_items(conn, self.tracker, task_ids, lock=False, metadata=self._metadata)
        return self._decide(list(task_ids), items)

    def _decide(self, task_ids: list[str], items: list[WorkItem]) -> Decision:
        routes: dict[str, list[int]] = {}
        position = {task_id: i for i, task_id in enumerate(task_ids)}
        for item in items:
            routes.setdefault(self.route(item), []).append(position[item.task_id])
        return Decision(task_ids, routes)

    # ---- validate -----------------------------------------------------------------------------

    @without_gc_pauses
    def validate_chunk(self, decision: Decision) -> Validation:
        with self.db.begin() as conn:
            items = load_items(conn, self.tracker, decision.task_ids, lock=False, metadata=self._metadata)
            return Validation(decision, self._validate(conn, decision, items, lock=False))

    def _validate(self, conn: Connection, decision: Decision, items: list[WorkItem], lock: bool) -> list[Verdict]:
        """A verdict per task of `decision` (tasks no longer found: retried)."""
        routes = decision.route_of_each()
        position = {task_id: i for i, task_id in enumerate(decision.task_ids)}
        reservations = Reservations(i.staging.staging_entry_id for i in items if i.staging is not None)
        mine: dict[str, list[WorkItem]] = {}
        for item in items:
            route = routes[position[item.task_id]]
            if route in self._by_name and _processable(item):
                mine.setdefault(route, []).append(item)
        loaded = {name: self._by_name[name].load(conn, its, reservations, lock) for name, its in mine.items()}

        verdicts: list[Verdict] = [Retry("the task was not found when its chunk was validated")] * len(routes)
        for item in items:
            i = position[item.task_id]
            verdicts[i] = self._verdict(item, routes[i], loaded, reservations)
        return verdicts

    def _verdict(self, item: WorkItem, route: str, loaded: dict[str, Any], reservations: Reservations) -> Verdict:
        if item.problem is not None:
            return item.problem
        assert item.staging is not None
        if item.staging.status == StagingStatus.PROCESSED or route == ALREADY_PROCESSED:
            return AlreadyProcessed()
        implementation = self._by_name.get(route)
        if implementation is None:
            return ManualReview(
                ErrorType.NO_TASK_HANDLER,
                f"no task implementation accepts staging entry {item.staging.staging_entry_id}"
                f" (processing_mode {item.staging.processing_mode})",
            )
        try:
            verdict = implementation.validate(item, loaded[route], reservations)
        except Exception as exc:  # a poison task must not take its chunk down with it
            log.exception("%s.validate failed on task %s", implementation.name, item.task_id)
            return Retry(f"{ErrorType.UNEXPECTED}: {type(exc).__name__}: {exc}")
        reservations.evaluated(item.staging.staging_entry_id)  # no longer queued for later items
        return verdict

    def preview(self, conn: Connection, task_ids: Sequence[str]) -> list[tuple[WorkItem, Verdict]]:
        """What decide and validate would say of each task, read on the caller's connection: a
        reprocess dry run reopens its scope in a savepoint, asks this, and rolls back. A chunk at a
        time, as the DAG would (verdicts do not depend on chunking)."""
        size = settings.chunk_size()
        found: list[tuple[WorkItem, Verdict]] = []
        for start in range(0, len(task_ids), size):
            chunk = list(task_ids[start:start + size])
            items = load_items(conn, self.tracker, chunk, lock=False, metadata=self._metadata)
            decision = self._decide(chunk, items)
            verdicts = self._validate(conn, decision, items, lock=False)
            position = {task_id: i for i, task_id in enumerate(chunk)}
            found.extend((item, verdicts[position[item.task_id]]) for item in items)
        return found

    # ---- run ----------------------------------------------------------------------------------

    @without_gc_pauses
    def run_chunk(self, task_ids: Sequence[str], owner: str, validation: Validation | None = None,
                  set_aside_busy: bool = True) -> ChunkResult:
        """Process a claimed chunk; every task ends COMPLETED, FAILED or RETRY (or is not ours).

        A task whose rows another worker's uncommitted chunk holds is set aside while the rest of
        the chunk is written and committed; then the set-aside tasks run on their own, validated
        afresh under locks, so they wait for that commit and see what it wrote. Waiting with the
        whole chunk held a worker (and its thousands of locked rows) for the other chunk's length
        over a few contended lines.
        """
        task_ids = list(task_ids)
        set_aside: list[str] = []
        try:
            with self.db.begin() as conn:
                result = self._run_in_transaction(conn, task_ids, owner, validation,
                                                  set_aside if set_aside_busy else None)
        except LeaseLostError as exc:
            log.warning("chunk not written: %s", exc)
            return ChunkResult(task_ids=len(task_ids), not_owned=len(task_ids))
        except Exception as exc:
            if is_retryable(exc) or len(task_ids) == 1:
                log.warning("chunk of %d task(s) will be retried: %s", len(task_ids), exc)
                return self.retry_tasks(task_ids, owner, f"{type(exc).__name__}: {exc}")
            # a data error in a bulk statement: isolate the culprit by running one task at a time
            log.warning("chunk of %d failed (%s); running its tasks one by one", len(task_ids), exc)
            total = ChunkResult()
            for task_id in task_ids:
                total.add(self.run_chunk([task_id], owner))
            return total
        if set_aside:
            log.info("%d task(s) set aside for rows another worker holds: run after the rest", len(set_aside))
            result.add(self.run_chunk(set_aside, owner, set_aside_busy=False))
        return result

    def _run_in_transaction(
        self, conn: Connection, task_ids: list[str], owner: str, validation: Validation | None,
        set_aside: list[str] | None,
    ) -> ChunkResult:
        """The chunk's writes in the caller's transaction; busy tasks go to `set_aside` (None: wait
        for their rows instead)."""
        items = load_items(conn, self.tracker, task_ids, lock=True)
        owned = [i for i in items if i.task.status == TaskStatus.PROCESSING and i.task.lease_owner == owner]
        result = ChunkResult(task_ids=len(task_ids), not_owned=len(task_ids) - len(owned))
        decision = validation.decision if validation is not None else self._decide(task_ids, owned)
        verdicts = validation.verdicts if validation is not None else self._validate(conn, decision, owned, lock=True)
        position = {task_id: i for i, task_id in enumerate(decision.task_ids)}
        routes = decision.route_of_each()
        reservations = Reservations()
        try:
            prepared = self._prepare_run(conn, owned, routes, verdicts, position, reservations)
        except VerdictOutdated as outdated:
            log.info("chunk validated again under locks: %s", outdated)
            if outdated.busy and set_aside is not None:
                # validated again without them: no item may count on what a set-aside one would consume
                set_aside.extend(i.task_id for i in owned if i.task_id in outdated.busy)
                owned = [i for i in owned if i.task_id not in outdated.busy]
                result.task_ids -= len(set_aside)  # counted by their own run
            decision = self._decide(task_ids, owned)
            routes, position = decision.route_of_each(), {t: i for i, t in enumerate(decision.task_ids)}
            verdicts = self._validate(conn, decision, owned, lock=True)
            reservations = Reservations()
            prepared = self._prepare_run(conn, owned, routes, verdicts, position, reservations)

        batch = LedgerBatch()
        outcomes = []
        for item in owned:
            i = position[item.task_id]
            outcomes.append(ItemOutcome(item, self._apply(item, routes[i], verdicts[i], prepared, reservations, batch)))
        del items, owned, prepared, reservations  # only the outcomes and the batch from here on

        written = self.tracker.finish([o.tracker_outcome() for o in outcomes], owner, conn)
        if len(written) != len(outcomes):
            lost = sorted({o.item.task_id for o in outcomes} - set(written))
            raise LeaseLostError(f"{len(lost)} task(s) no longer leased to {owner}: {lost[:5]}")
        updates = []
        for outcome in outcomes:
            status = written[outcome.item.task_id]
            outcome.count(result, status)
            update = outcome.staging_update(status)
            if update is not None:
                updates.append(update)
        del outcomes
        batch.flush(conn)
        staging.apply_updates(conn, updates, run=owner)
        return result

    def _prepare_run(
        self, conn: Connection, owned: list[WorkItem], routes: list[str], verdicts: list[Verdict],
        position: dict[str, int], reservations: Reservations,
    ) -> dict[str, Any]:
        """Each strategy re-checks its plans under locks and loads what their writes need."""
        planned: dict[str, list[tuple[WorkItem, Plan]]] = {}
        for item in owned:
            i = position[item.task_id]
            if isinstance(verdicts[i], Plan):
                if item.staging is None or item.staging.status == StagingStatus.PROCESSED:
                    raise VerdictOutdated(f"staging entry of task {item.task_id} was processed meanwhile")
                planned.setdefault(routes[i], []).append((item, verdicts[i]))  # type: ignore[arg-type]
        return {
            name: self._by_name[name].prepare_run(conn, plans, reservations)
            for name, plans in sorted(planned.items(), key=lambda kv: self.implementations.index(self._by_name[kv[0]]))
        }

    def _apply(self, item: WorkItem, route: str, verdict: Verdict, prepared: dict[str, Any],
               reservations: Reservations, batch: LedgerBatch) -> Any:
        """A plan's writes added to `batch` (collected apart, so a failing item adds none)."""
        if not isinstance(verdict, Plan):
            return verdict
        implementation = self._by_name[route]
        own = LedgerBatch()
        try:
            result = implementation.run(item, verdict, prepared.get(route), reservations, own)
        except Exception as exc:  # a poison task must not take its chunk down with it
            log.exception("%s.run failed on task %s", implementation.name, item.task_id)
            return Retry(f"{ErrorType.UNEXPECTED}: {type(exc).__name__}: {exc}")
        batch.extend(own)
        return result

    def retry_tasks(self, task_ids: Sequence[str], owner: str, error: str) -> ChunkResult:
        """Put tasks still leased to `owner` back as RETRY; exhausted ones go to manual review."""
        with self.db.begin() as conn:
            written = self.tracker.retry({t: error for t in task_ids}, owner, conn)
            exhausted = [t for t, status in written.items() if status == TaskStatus.FAILED]
            staging.mark_for_review(conn, self.tracker.staging_entry_ids(exhausted, conn) if exhausted else [],
                                    error, ErrorType.RETRIES_EXHAUSTED)
        result = ChunkResult(task_ids=len(task_ids), not_owned=len(task_ids) - len(written))
        result.retried = sum(1 for s in written.values() if s == TaskStatus.RETRY)
        result.failed = len(exhausted)
        if exhausted:
            result.count_review(ErrorType.RETRIES_EXHAUSTED.value, len(exhausted))
        return result


def _processable(item: WorkItem) -> bool:
    return item.staging is not None and item.problem is None and item.staging.status != StagingStatus.PROCESSED
