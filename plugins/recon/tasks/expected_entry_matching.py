"""CONFIRMATION mode: a statement line on the contra account fulfils an EXPECTED leg.

The one open EXPECTED entry with the same order id (same account, same merchant) is
fulfilled when amount, currency and side agree: version N is archived and version N+1 is
POSTED with the fulfilling leg and the original POSTED leg carried over.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import ClassVar, Sequence

from sqlalchemy.engine import Connection

from recon import accounts, ledger, settings, staging
from recon.db.engine import database_now
from recon.errors import ErrorType
from recon.ledger import LedgerBatch
from recon.model import Account, ExpectedLeg, PostedLeg, ProcessingMode, ReconRule, StagingEntry
from recon.tasks.base import ReconTask, VerdictOutdated
from recon.tasks.chunk import OrderKey, Reservations, WorkItem
from recon.tasks.verdicts import Applied, ManualReview, Plan, RunResult, Verdict, Wait


@dataclass(frozen=True, slots=True)
class Fulfil(Plan):
    """Fulfil this expected leg (an entry id, or the booking line's staging entry id when the leg
    is booked earlier in the same chunk)."""

    leg_ref: str
    booked_in_chunk: bool = False
    summary_kind: ClassVar[str] = "fulfil"


@dataclass(frozen=True, slots=True)
class Mismatch(Plan):
    """The one candidate differs in amount, currency or side: its transaction becomes MISMATCH and
    the line goes to manual review with the differences."""

    leg_ref: str
    booked_in_chunk: bool = False
    summary_kind: ClassVar[str] = "manual_review"

    @property
    def review_type(self) -> str:
        return ErrorType.MISMATCH.value


@dataclass(frozen=True)
class _Loaded:
    rules_by_account_two: dict[str, list[ReconRule]]
    accounts: dict[str, Account]
    expected_by_order: dict[OrderKey, list[ExpectedLeg]]
    fulfilled_orders: set[OrderKey]
    queued_orders: set[OrderKey]  # (contra account, order) with a TRANSACTION line still PENDING
    now: dt.datetime


@dataclass(frozen=True)
class _Prepared:
    legs: dict[str, ExpectedLeg]  # the planned legs, locked and still open
    posted: dict[str, list[PostedLeg]]  # by transaction id


class ExpectedEntryMatchingTask(ReconTask):
    name = "ExpectedEntryMatchingTask"

    def __init__(self, matching_window_seconds: int | None = None):
        self.window = dt.timedelta(
            seconds=settings.matching_window_seconds() if matching_window_seconds is None
            else matching_window_seconds
        )

    def decide(self, item: WorkItem) -> bool:
        return item.staging is not None and item.staging.processing_mode == ProcessingMode.CONFIRMATION

    def load(self, conn: Connection, items: Sequence[WorkItem], reservations: Reservations, lock: bool) -> _Loaded:
        entries = [i.staging for i in items if i.staging is not None]
        rules = accounts.load_rules(conn, sorted({e.account_id for e in entries}))
        rules_by_two: dict[str, list[ReconRule]] = {}
        for rule in rules:
            rules_by_two.setdefault(rule.account_two_id, []).append(rule)
        order_keys = sorted({(e.account_id, e.order_id) for e in entries if e.order_id})
        reservations.want_orders(order_keys)
        # Which orders are still queued as TRANSACTION lines is read *before* the expected entries:
        # a booking another worker commits in between is then seen by the second read (each
        # statement sees what was committed before it started). Read after, such a booking was in
        # neither, and its confirmation went to manual review instead of waiting for it. This
        # chunk's own lines are left out: they count as queued only until they are evaluated.
        queued = self._queued_orders(conn, order_keys, rules_by_two, reservations)
        expected = ledger.expected_legs_by_order(conn, order_keys, lock, metadata=False)
        fulfilled = ledger.fulfilled_orders(conn, [k for k in order_keys if k not in expected])
        return _Loaded(rules_by_two, accounts.load_accounts(conn, sorted({e.account_id for e in entries})),
                       expected, fulfilled, queued, database_now(conn))

    @staticmethod
    def _queued_orders(conn: Connection, order_keys: list[OrderKey], rules_by_two: dict[str, list[ReconRule]],
                       reservations: Reservations) -> set[OrderKey]:
        """Confirmations whose order is itself still waiting in the queue as a TRANSACTION line on
        a rule's account_one: such a confirmation waits instead of failing, so the outcome does not
        depend on which chunk or worker ran first."""
        booking_keys = {(rule.account_one_id, order): (two, order)
                        for two, order in order_keys for rule in rules_by_two.get(two, ())}
        queued = staging.queued_transaction_orders(conn, sorted(booking_keys), sorted(reservations.chunk_entry_ids))
        return {booking_keys[k] for k in queued}

    def validate(self, item: WorkItem, loaded: _Loaded, reservations: Reservations) -> Verdict:
        entry = item.staging
        assert entry is not None
        if not entry.order_id:
            return ManualReview(
                ErrorType.MISSING_ORDER_ID,
                f"confirmation {entry.staging_entry_id} has no metadata.order_id to match on",
            )
        if not loaded.rules_by_account_two.get(entry.account_id):
            return ManualReview(
                ErrorType.NO_RECON_RULE,
                f"no recon rule has account {entry.account_id} as account_two"
                " (confirmations arrive on a rule's contra account)",
            )
        key = (entry.account_id, entry.order_id)
        merchant_id = loaded.accounts[entry.account_id].merchant_id
        candidates = [
            leg
            for leg in loaded.expected_by_order.get(key, []) + reservations.booked_legs(key)
            if leg.merchant_id == merchant_id and not reservations.is_consumed(leg.entry_id)
        ]
        if not candidates:
            return self._unmatched(entry, key, loaded, reservations)
        if len(candidates) > 1:
            ids = ", ".join(leg.entry_id for leg in candidates)
            return ManualReview(
                ErrorType.AMBIGUOUS_MATCH,
                f"{len(candidates)} expected entries match order {entry.order_id!r} on account"
                f" {entry.account_id}: {ids}",
            )
        leg = candidates[0]
        reservations.consume(leg.entry_id)  # fulfilled or mismatched: not available again
        in_chunk = reservations.is_booked_in_chunk(leg.entry_id)
        if _differences(entry, leg):
            return Mismatch(leg.entry_id, in_chunk)
        # a later confirmation of this order in the chunk finds it fulfilled, as it would one at a time
        reservations.mark_fulfilled(key)
        return Fulfil(leg.entry_id, in_chunk)

    def _unmatched(self, entry: StagingEntry, key: OrderKey, loaded: _Loaded, reservations: Reservations) -> Verdict:
        # only a fulfilment makes a later confirmation "already fulfilled"; after a mismatch (here or
        # in an earlier chunk) there is simply no open expected entry left: NoMatchFound, either way
        if key in loaded.fulfilled_orders or reservations.was_fulfilled(key):
            return ManualReview(
                ErrorType.ALREADY_FULFILLED,
                f"the expected entry for order {entry.order_id!r} on account {entry.account_id}"
                " was already fulfilled by another confirmation",
            )
        if key in loaded.queued_orders or reservations.is_booking_queued(key):
            return Wait(
                f"order {entry.order_id!r} is still queued as a TRANSACTION line; waiting for it to be booked",
                seconds=5.0,
            )
        window_end = entry.created_at + self.window
        if loaded.now < window_end:
            waited = (loaded.now - entry.created_at).total_seconds()
            remaining = (window_end - loaded.now).total_seconds()
            return Wait(
                f"no expected entry yet for order {entry.order_id!r} on account {entry.account_id};"
                f" waiting until {window_end.isoformat()}",
                seconds=max(1.0, min(remaining, max(10.0, waited))),  # back off as the wait grows
            )
        return ManualReview(
            ErrorType.NO_MATCH,
            f"no open expected entry for order {entry.order_id!r} on account {entry.account_id}",
        )

    def prepare_run(self, conn: Connection, planned: Sequence[tuple[WorkItem, Fulfil | Mismatch]],
                    reservations: Reservations) -> _Prepared:
        """Another confirmation may have fulfilled or mismatched a planned leg since validate: lock
        the legs' transactions and check that each is still open."""
        in_db = sorted({plan.leg_ref for _, plan in planned if not plan.booked_in_chunk})
        legs = ledger.lock_open_legs(conn, in_db)
        if len(legs) != len(in_db):
            gone = sorted(set(in_db) - set(legs))
            raise VerdictOutdated(f"{len(gone)} expected leg(s) no longer open, e.g. {gone[0]}")
        # bookings of this chunk that these plans fulfil publish what they write (see Reservations)
        reservations.want_orders((item.staging.account_id, item.staging.order_id)
                                 for item, plan in planned if plan.booked_in_chunk and item.staging is not None)
        return _Prepared(legs, ledger.posted_legs(conn, sorted({leg.transaction_id for leg in legs.values()})))

    def run(self, item: WorkItem, plan: Fulfil | Mismatch, prepared: _Prepared, reservations: Reservations,
            batch: LedgerBatch) -> RunResult:
        entry = item.staging
        assert entry is not None
        if plan.booked_in_chunk:
            leg, posted_legs = reservations.booked_leg(plan.leg_ref)
        else:
            leg = prepared.legs[plan.leg_ref]
            posted_legs = prepared.posted.get(leg.transaction_id, [])
        if isinstance(plan, Mismatch):
            batch.mismatch_transaction_ids.append(leg.transaction_id)
            return ManualReview(
                ErrorType.MISMATCH,
                "; ".join(_differences(entry, leg)),
                metadata={"matched_transaction_id": leg.transaction_id, "matched_entry_id": leg.entry_id},
            )
        return _fulfil(entry, leg, posted_legs, batch)


def _fulfil(entry: StagingEntry, leg: ExpectedLeg, posted_legs: Sequence[PostedLeg], batch: LedgerBatch) -> Applied:
    """Version N archived; version N+1 POSTED with the fulfilling leg and the POSTED legs carried over."""
    new_transaction_id = ledger.fulfil_expected_leg(entry, leg, posted_legs, batch)
    return Applied(
        "fulfil",
        {
            "matched_transaction_id": leg.transaction_id,
            "matched_entry_id": leg.entry_id,
            "evolved_transaction_id": new_transaction_id,
            "match_type": "Phase2_Fulfilled",
        },
    )


def _differences(entry: StagingEntry, leg: ExpectedLeg) -> list[str]:
    found = []
    if entry.amount != leg.amount:  # Decimal comparison is numeric: 10.5 == 10.50
        found.append(f"amount: expected {leg.amount}, got {entry.amount}")
    if entry.currency != leg.currency:
        found.append(f"currency: expected {leg.currency}, got {entry.currency}")
    if entry.entry_type != leg.entry_type:
        found.append(f"side: expected {leg.entry_type}, got {entry.entry_type}")
    return found
