"""A chunk's work items, and the reservations through which its items see each other.

Results must not depend on chunking: a chunk of thousands of tasks must end exactly as the same
tasks one at a time. Strategies therefore validate against what they loaded for the whole chunk
*plus* what earlier items of the chunk did. That cross-item knowledge lives in one object,
``Reservations``, with named operations (an order booked earlier in the chunk, an expected leg
consumed by an earlier confirmation, a booking line still waiting its turn), so strategies never
reach into each other's data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from sqlalchemy.engine import Connection

from recon import staging
from recon.errors import ErrorType
from recon.model import ExpectedLeg, PostedLeg, StagingEntry
from recon.tasks.verdicts import ManualReview
from recon.tracker import ProcessTracker, TaskRef

OrderKey = tuple[str, str]  # (account_id, order_id)


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A claimed tracker task and its staging entry (None when the payload is unusable)."""

    task: TaskRef
    staging: StagingEntry | None
    problem: ManualReview | None = None  # why the payload cannot be processed

    @property
    def task_id(self) -> str:
        return self.task.task_id


def load_items(
    conn: Connection, tracker: ProcessTracker, task_ids: Sequence[str], lock: bool, metadata: bool = True
) -> list[WorkItem]:
    """The tasks in claim order with their staging entries (locked FOR UPDATE with `lock`).

    ``metadata=False`` leaves each entry's metadata empty, for steps whose strategies read none:
    the JSON of thousands of entries is not decoded for nothing.
    """
    tasks = tracker.task_refs(task_ids, conn)
    entries = staging.load_entries(conn, sorted({t.staging_entry_id for t in tasks if t.staging_entry_id}),
                                   lock, metadata)
    items = []
    for task in tasks:
        sid = task.staging_entry_id
        if sid is None:
            message = f"payload has no string staging_entry_id: {_short(task.unusable_payload)}"
            items.append(WorkItem(task, None, ManualReview(ErrorType.INVALID_PAYLOAD, message)))
        elif sid not in entries:
            message = f"staging entry {sid!r} does not exist"
            items.append(WorkItem(task, None, ManualReview(ErrorType.STAGING_ENTRY_NOT_FOUND, message)))
        else:
            items.append(WorkItem(task, entries[sid]))
    return items


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class Reservations:
    """What earlier items of a chunk did that later items must see, as if one at a time.

    One instance per validation of a chunk, and one per run of it (where it carries the legs that
    bookings of the chunk actually wrote to the confirmations of the chunk that fulfil them).
    """

    def __init__(self, chunk_entry_ids: Iterable[str] = ()):
        self.chunk_entry_ids = frozenset(chunk_entry_ids)  # every staging entry of the chunk
        self._booked_logical_ids: set[str] = set()
        self._queued_bookings: Counter[OrderKey] = Counter()
        self._queued_legs: dict[str, dict[str, ExpectedLeg]] = {}  # contra account -> line -> leg
        self._bookings_of_entry: dict[str, list[ExpectedLeg]] = {}
        self._wanted_accounts: set[str] = set()
        self._legs_by_order: dict[OrderKey, list[ExpectedLeg]] = {}
        self._legs_by_account: dict[str, list[ExpectedLeg]] = {}
        self._booked_by_entry: dict[str, tuple[ExpectedLeg, list[PostedLeg]]] = {}
        self._consumed_legs: set[str] = set()
        self._fulfilled_orders: set[OrderKey] = set()

    # ---- bookings ------------------------------------------------------------------------------

    def claim_logical_id(self, logical_id: str) -> bool:
        """Book this logical transaction for the chunk; False when an earlier item already did."""
        if logical_id in self._booked_logical_ids:
            return False
        self._booked_logical_ids.add(logical_id)
        return True

    def announce_booking(self, staging_entry_id: str, legs: Sequence[ExpectedLeg]) -> None:
        """A line of this chunk may book one of these expected legs (one per contra account): until
        it is evaluated, a confirmation that would match one waits for it, as it would for a line
        still in the queue."""
        if legs:
            self._bookings_of_entry[staging_entry_id] = list(legs)
            for leg in legs:
                self._queued_legs.setdefault(leg.account_id, {})[staging_entry_id] = leg
                if leg.order_id:
                    self._queued_bookings[(leg.account_id, leg.order_id)] += 1

    def evaluated(self, staging_entry_id: str) -> None:
        """This item was validated: its booking (if it announced one) no longer counts as queued."""
        for leg in self._bookings_of_entry.pop(staging_entry_id, ()):
            del self._queued_legs[leg.account_id][staging_entry_id]
            if leg.order_id:
                self._queued_bookings[(leg.account_id, leg.order_id)] -= 1

    def is_booking_queued(self, key: OrderKey) -> bool:
        return self._queued_bookings[key] > 0

    def queued_legs(self, account_id: str) -> Iterable[ExpectedLeg]:
        """The legs that lines of this chunk not yet evaluated may book on this account."""
        return self._queued_legs.get(account_id, {}).values()

    def want_accounts(self, account_ids: Iterable[str]) -> None:
        """Confirmations of this chunk arrive on these accounts: bookings on them must be published."""
        self._wanted_accounts.update(account_ids)

    def wants(self, account_id: str) -> bool:
        return account_id in self._wanted_accounts

    def publish_booking(self, staging_entry_id: str, leg: ExpectedLeg, posted: Sequence[PostedLeg] = ()) -> None:
        """An expected leg booked by this chunk's line `staging_entry_id`, visible to later items."""
        if leg.order_id:
            self._legs_by_order.setdefault((leg.account_id, leg.order_id), []).append(leg)
        self._legs_by_account.setdefault(leg.account_id, []).append(leg)
        self._booked_by_entry[staging_entry_id] = (leg, list(posted))

    def booked_legs(self, key: OrderKey) -> list[ExpectedLeg]:
        """Legs booked earlier in the chunk for this (account, order)."""
        return self._legs_by_order.get(key, [])

    def booked_legs_on(self, account_id: str) -> list[ExpectedLeg]:
        """Every leg booked earlier in the chunk on this account."""
        return self._legs_by_account.get(account_id, [])

    def is_booked_in_chunk(self, leg_ref: str) -> bool:
        """Validation names a leg booked in this chunk by its booking line's staging entry id."""
        return leg_ref in self._booked_by_entry

    def booked_leg(self, staging_entry_id: str) -> tuple[ExpectedLeg, list[PostedLeg]]:
        """The leg (and the POSTED legs of its transaction) written by the booking line's run."""
        return self._booked_by_entry[staging_entry_id]

    # ---- confirmations ------------------------------------------------------------------------

    def consume(self, leg_ref: str) -> None:
        """An earlier confirmation fulfilled or mismatched this leg: it is not a candidate again."""
        self._consumed_legs.add(leg_ref)

    def is_consumed(self, leg_ref: str) -> bool:
        return leg_ref in self._consumed_legs

    def mark_fulfilled(self, key: OrderKey) -> None:
        self._fulfilled_orders.add(key)

    def was_fulfilled(self, key: OrderKey) -> bool:
        return key in self._fulfilled_orders
