"""The ReconTask contract: how a strategy decides, validates and runs a chunk of tasks.

    decide   is this task mine? (routing; no database)
    load     what my validation needs for these items, in a few set-based queries
    validate a verdict per item: a Plan of mine, or ManualReview / Wait (read-only)
    prepare_run  (run step, in the writing transaction) re-check under row locks only what another
             worker may have changed since validate, and load what the writes need; raise
             VerdictOutdated when a plan no longer holds (the chunk is then validated again under
             those locks before anything is written)
    run      add one plan's ledger writes to a LedgerBatch

Register an implementation with one line in ``recon.tasks.manager.DEFAULT_IMPLEMENTATIONS`` (or
pass ``implementations=`` to TaskManager); the first whose ``decide`` accepts a task handles it.
Cross-item coordination goes through the chunk's ``Reservations``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterable, Sequence

from sqlalchemy.engine import Connection

from recon.ledger import LedgerBatch
from recon.tasks.chunk import Reservations, WorkItem
from recon.tasks.verdicts import Plan, RunResult, Verdict


class VerdictOutdated(Exception):
    """Another worker changed what a plan relied on between validate and run: the chunk is
    validated again under row locks.

    ``busy`` names the tasks whose rows another worker's uncommitted transaction holds: they are
    set aside, the rest of the chunk is validated again without them and written, and then they
    run on their own, waiting for those rows (see TaskManager.run_chunk).
    """

    def __init__(self, message: str, busy: Iterable[str] = ()):
        super().__init__(message)
        self.busy = frozenset(busy)


class ReconTask(ABC):
    """One way of processing a PROCESS_STAGING_ENTRY task."""

    name: ClassVar[str]
    # True when decide or validate read the entry's metadata (run always has it): decoding the
    # metadata of a whole chunk costs, so decide and validate load it only when a strategy asks
    reads_metadata: ClassVar[bool] = False

    @abstractmethod
    def decide(self, item: WorkItem) -> bool:
        """True when this implementation handles the task."""

    def load(self, conn: Connection, items: Sequence[WorkItem], reservations: Reservations, lock: bool) -> Any:
        """What ``validate`` needs for these items (default: nothing). With ``lock`` (a chunk
        validated inside the writing transaction) lock what concurrent workers could change."""
        return None

    @abstractmethod
    def validate(self, item: WorkItem, loaded: Any, reservations: Reservations) -> Verdict:
        """The item's verdict; record in ``reservations`` what later items of the chunk must see."""

    def prepare_run(
        self, conn: Connection, planned: Sequence[tuple[WorkItem, Plan]], reservations: Reservations
    ) -> Any:
        """Run step: re-check the plans under row locks and load what the writes need (default:
        nothing to re-check or load). Raise VerdictOutdated when a plan no longer holds."""
        return None

    @abstractmethod
    def run(self, item: WorkItem, plan: Plan, prepared: Any, reservations: Reservations,
            batch: LedgerBatch) -> RunResult:
        """Add the ledger writes of ``plan`` to ``batch``."""
