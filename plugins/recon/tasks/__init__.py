"""Task implementations (decide / validate / run) and the TaskManager that routes to them."""

from recon.tasks.base import ReconTask
from recon.tasks.expected_entry_matching import ExpectedEntryMatchingTask
from recon.tasks.manager import DEFAULT_IMPLEMENTATIONS, ChunkResult, TaskManager
from recon.tasks.transaction_creation import TransactionCreationTask

__all__ = [
    "DEFAULT_IMPLEMENTATIONS",
    "ChunkResult",
    "ExpectedEntryMatchingTask",
    "ReconTask",
    "TaskManager",
    "TransactionCreationTask",
]
