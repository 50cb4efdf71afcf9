"""The ReconTask contract and what a task's steps produce.

A task implementation answers three questions about a claimed tracker task:
- ``decide``: is this mine? (by the staging entry's processing mode)
- ``validate``: can it be applied? -> a ``Plan`` or a ``ManualReview`` / ``Wait`` verdict
- ``run``: add the plan's ledger writes to the chunk's ``LedgerBatch``.

All three work on a ``ChunkContext`` loaded with a few set-based queries (see
``recon.tasks.context``), so deciding and validating thousands of tasks is in-memory work,
and one chunk's writes are flushed with a handful of statements.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from recon.errors import ErrorType
from recon.ledger import LedgerBatch

if TYPE_CHECKING:
    from recon.tasks.context import ChunkContext, WorkItem


@dataclass(frozen=True, slots=True)
class ManualReview:
    """A business outcome that needs a person: final for the task (FAILED)."""

    error_type: ErrorType
    message: str
    metadata: dict[str, Any] = field(default_factory=dict)  # e.g. matched_transaction_id
    mismatch_transaction_id: str | None = None  # transaction to mark MISMATCH


@dataclass(frozen=True, slots=True)
class Wait:
    """Not decidable yet (e.g. a confirmation that arrived before its order): try again later."""

    reason: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated change, applied by the implementation's ``run``."""

    kind: str  # "book" or "fulfil": the summary counts these
    details: dict[str, Any] = field(default_factory=dict)


Verdict = Plan | ManualReview | Wait


@dataclass(frozen=True, slots=True)
class Applied:
    """What ``run`` did: the staging entry's success metadata."""

    kind: str
    staging_metadata: dict[str, Any]


class ReconTask(ABC):
    """One way of processing a PROCESS_STAGING_ENTRY task.

    Register an implementation with one line in ``recon.tasks.manager.DEFAULT_IMPLEMENTATIONS``.
    """

    name: ClassVar[str]

    @abstractmethod
    def decide(self, item: "WorkItem") -> bool:
        """True when this implementation handles the task."""

    @abstractmethod
    def validate(self, item: "WorkItem", ctx: "ChunkContext") -> Verdict:
        """Check the entry against the loaded context; record reservations in ``ctx`` so later
        items of the same chunk see this one's effect (duplicates, consumed expected entries)."""

    @abstractmethod
    def run(self, item: "WorkItem", plan: Plan, ctx: "ChunkContext", batch: LedgerBatch) -> Applied:
        """Add the ledger writes for ``plan`` to ``batch``."""
