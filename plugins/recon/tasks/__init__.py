"""Strategies (decide / validate / run), their verdicts, and the TaskManager that routes to them."""

from recon.tasks.base import ReconTask, VerdictOutdated
from recon.tasks.expected_entry_matching import ExpectedEntryMatchingTask
from recon.tasks.manager import DEFAULT_IMPLEMENTATIONS, TaskManager
from recon.tasks.outcomes import ChunkResult
from recon.tasks.transaction_creation import TransactionCreationTask

__all__ = [
    "DEFAULT_IMPLEMENTATIONS",
    "ChunkResult",
    "ExpectedEntryMatchingTask",
    "ReconTask",
    "TaskManager",
    "TransactionCreationTask",
    "VerdictOutdated",
]
