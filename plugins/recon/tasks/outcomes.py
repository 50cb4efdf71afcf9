"""What became of each task of a chunk, and everything derived from it in one place: the tracker
outcome, the staging entry's new status, and the chunk's counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from recon.errors import ErrorType
from recon.model import StagingStatus, TaskStatus
from recon.staging import StagingUpdate
from recon.tasks.chunk import WorkItem
from recon.tasks.verdicts import AlreadyProcessed, Applied, ManualReview, Retry, Wait
from recon.tracker import WAIT_PREFIX, Outcome

ItemResult = Applied | ManualReview | Wait | Retry | AlreadyProcessed


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
    # money per outcome and currency ("booked", "matched", "to_review"): what a controller asks of a
    # run; read from the chunk's own lines, no query
    amounts: dict[str, dict[str, Decimal]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly (XCom): amounts as exact text."""
        return {**asdict(self), "amounts": amounts_as_text(self.amounts)}

    def add(self, other: "ChunkResult") -> None:
        for name, value in other.to_dict().items():
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)
        for error_type, n in other.manual_review_by_type.items():
            self.count_review(error_type, n)
        for kind, by_currency in other.amounts.items():
            for currency, amount in by_currency.items():
                self.add_amount(kind, currency, amount)

    def add_amount(self, kind: str, currency: str, amount: Decimal) -> None:
        by_currency = self.amounts.setdefault(kind, {})
        by_currency[currency] = by_currency.get(currency, Decimal(0)) + amount

    def count_review(self, error_type: str, n: int = 1) -> None:
        self.manual_review += n
        self.manual_review_by_type[error_type] = self.manual_review_by_type.get(error_type, 0) + n


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """One task's result in a chunk."""

    item: WorkItem
    result: ItemResult

    def tracker_outcome(self) -> Outcome:
        task_id, result = self.item.task_id, self.result
        if isinstance(result, ManualReview):
            return Outcome(task_id, TaskStatus.FAILED, f"{result.error_type}: {result.message}")
        if isinstance(result, Wait):
            return Outcome(task_id, TaskStatus.RETRY, WAIT_PREFIX + result.reason, result.seconds)
        if isinstance(result, Retry):
            return Outcome(task_id, TaskStatus.RETRY, result.error)
        return Outcome(task_id, TaskStatus.COMPLETED)  # applied, or already processed

    def staging_update(self, written: str) -> StagingUpdate | None:
        """The entry's new status and metadata keys (`written`: the tracker status the task got),
        or None to leave the entry as it is."""
        entry, result = self.item.staging, self.result
        if entry is None or isinstance(result, AlreadyProcessed):
            return None
        if isinstance(result, ManualReview):
            return StagingUpdate(entry.staging_entry_id, StagingStatus.NEEDS_MANUAL_REVIEW, {
                **result.metadata, "error": result.message, "error_type": result.error_type.value,
            }, self.item.task_id)
        if isinstance(result, Applied):
            return StagingUpdate(entry.staging_entry_id, StagingStatus.PROCESSED, result.staging_metadata,
                                 self.item.task_id)
        if written == TaskStatus.FAILED:  # a retry that used up its attempts
            error = result.error if isinstance(result, Retry) else "retries exhausted"
            return StagingUpdate(entry.staging_entry_id, StagingStatus.NEEDS_MANUAL_REVIEW, {
                "error": error, "error_type": ErrorType.RETRIES_EXHAUSTED.value,
            }, self.item.task_id)
        return None  # waiting or retrying: the entry stays PENDING

    def count(self, totals: ChunkResult, written: str) -> None:
        if written == TaskStatus.COMPLETED:
            totals.completed += 1
        elif written == TaskStatus.FAILED:
            totals.failed += 1
        else:
            totals.retried += 1
        result, entry = self.result, self.item.staging
        if isinstance(result, AlreadyProcessed):
            totals.already_processed += 1
        elif isinstance(result, Applied):
            kind = "booked" if result.kind == "book" else "matched"
            setattr(totals, kind, getattr(totals, kind) + 1)
            if entry is not None:
                totals.add_amount(kind, entry.currency, entry.amount)
        elif isinstance(result, Wait):
            totals.waiting += 1
        if isinstance(result, ManualReview):
            totals.count_review(result.error_type.value)
            if result.error_type == ErrorType.MISMATCH:
                totals.mismatched += 1
        elif written == TaskStatus.FAILED and entry is not None:
            totals.count_review(ErrorType.RETRIES_EXHAUSTED.value)
        if entry is not None and (isinstance(result, ManualReview) or written == TaskStatus.FAILED):
            totals.add_amount("to_review", entry.currency, entry.amount)


def amounts_as_text(amounts: dict[str, dict[str, Decimal]]) -> dict[str, dict[str, str]]:
    return {kind: {currency: str(amount) for currency, amount in sorted(by_currency.items())}
            for kind, by_currency in amounts.items()}
