"""CONFIRMATION mode: a statement line on the contra account fulfils an EXPECTED leg.

The one open EXPECTED entry with the same order id (same account, same merchant) is
fulfilled when amount, currency and side agree: version N is archived and version N+1 is
POSTED with the fulfilling leg and the original POSTED leg carried over.
"""

from __future__ import annotations

import datetime as dt

from recon import settings
from recon.errors import ErrorType
from recon.ledger import LedgerBatch, NewEntry, NewTransaction, new_id
from recon.tasks.base import Applied, ManualReview, Plan, ReconTask, Verdict, Wait
from recon.tasks.context import ChunkContext, ExpectedLeg, StagingEntry, WorkItem


class ExpectedEntryMatchingTask(ReconTask):
    name = "ExpectedEntryMatchingTask"

    def __init__(self, matching_window_seconds: int | None = None):
        self.window = dt.timedelta(
            seconds=settings.matching_window_seconds() if matching_window_seconds is None
            else matching_window_seconds
        )

    def decide(self, item: WorkItem) -> bool:
        return item.staging is not None and item.staging.processing_mode == "CONFIRMATION"

    def validate(self, item: WorkItem, ctx: ChunkContext) -> Verdict:
        entry = item.staging
        assert entry is not None
        if not entry.order_id:
            return ManualReview(
                ErrorType.MISSING_ORDER_ID,
                f"confirmation {entry.staging_entry_id} has no metadata.order_id to match on",
            )
        if not ctx.rules_by_account_two.get(entry.account_id):
            return ManualReview(
                ErrorType.NO_RECON_RULE,
                f"no recon rule has account {entry.account_id} as account_two"
                " (confirmations arrive on a rule's contra account)",
            )
        merchant_id = ctx.accounts[entry.account_id].merchant_id
        candidates = [
            leg
            for leg in ctx.expected_by_order.get((entry.account_id, entry.order_id), [])
            if leg.merchant_id == merchant_id and leg.entry_id not in ctx.consumed_expected
        ]
        if not candidates:
            return self._unmatched(entry, ctx)
        if len(candidates) > 1:
            ids = ", ".join(leg.entry_id for leg in candidates)
            return ManualReview(
                ErrorType.AMBIGUOUS_MATCH,
                f"{len(candidates)} expected entries match order {entry.order_id!r} on account"
                f" {entry.account_id}: {ids}",
            )
        leg = candidates[0]
        ctx.consumed_expected.add(leg.entry_id)  # fulfilled or mismatched: not available again
        differences = _differences(entry, leg)
        if differences:
            return ManualReview(
                ErrorType.MISMATCH,
                "; ".join(differences),
                metadata={"matched_transaction_id": leg.transaction_id, "matched_entry_id": leg.entry_id},
                mismatch_transaction_id=leg.transaction_id,
            )
        # a later confirmation of this order in the chunk finds it fulfilled, as it would one at a time
        ctx.fulfilled_orders.add((entry.account_id, entry.order_id))
        return Plan("fulfil", {"leg": leg})

    def _unmatched(self, entry: StagingEntry, ctx: ChunkContext) -> Verdict:
        key = (entry.account_id, entry.order_id)
        # only a fulfilment makes a later confirmation "already fulfilled"; after a mismatch (here or
        # in an earlier chunk) there is simply no open expected entry left: NoMatchFound, either way
        if key in ctx.fulfilled_orders:
            return ManualReview(
                ErrorType.ALREADY_FULFILLED,
                f"the expected entry for order {entry.order_id!r} on account {entry.account_id}"
                " was already fulfilled by another confirmation",
            )
        if ctx.is_queued(key):
            return Wait(
                f"order {entry.order_id!r} is still queued as a TRANSACTION line; waiting for it to be booked",
                seconds=5.0,
            )
        window_end = entry.created_at + self.window
        if ctx.now < window_end:
            waited = (ctx.now - entry.created_at).total_seconds()
            remaining = (window_end - ctx.now).total_seconds()
            return Wait(
                f"no expected entry yet for order {entry.order_id!r} on account {entry.account_id};"
                f" waiting until {window_end.isoformat()}",
                seconds=max(1.0, min(remaining, max(10.0, waited))),  # back off as the wait grows
            )
        return ManualReview(
            ErrorType.NO_MATCH,
            f"no open expected entry for order {entry.order_id!r} on account {entry.account_id}",
        )

    def run(self, item: WorkItem, plan: Plan, ctx: ChunkContext, batch: LedgerBatch) -> Applied:
        entry = item.staging
        assert entry is not None
        leg: ExpectedLeg = plan.details["leg"]
        new_transaction_id = new_id("txn")
        batch.archive_transaction_ids.append(leg.transaction_id)
        batch.transactions.append(
            NewTransaction(
                transaction_id=new_transaction_id,
                logical_transaction_id=leg.logical_transaction_id,
                version=leg.version + 1,
                amount=leg.transaction_amount,
                currency=leg.currency,
                merchant_id=leg.merchant_id,
                status="POSTED",
                metadata={
                    **leg.transaction_metadata,
                    "evolved_from_transaction_id": leg.transaction_id,
                    "fulfilled_expected_entry_id": leg.entry_id,
                },
                source_staging_entry_id=entry.staging_entry_id,
            )
        )
        fulfilling_entry_id = new_id("ent")
        batch.entries.append(
            NewEntry(
                entry_id=fulfilling_entry_id,
                account_id=entry.account_id,
                transaction_id=new_transaction_id,
                entry_type=entry.entry_type,
                amount=entry.amount,
                currency=entry.currency,
                status="POSTED",
                effective_date=entry.effective_date,
                metadata={
                    **entry.metadata,
                    "source_staging_entry_id": entry.staging_entry_id,
                    "fulfilled_expected_entry_id": leg.entry_id,
                },
                fulfilled_expected_entry_id=leg.entry_id,
            )
        )
        for posted in ctx.posted_legs.get(leg.transaction_id, []):
            batch.entries.append(
                NewEntry(
                    entry_id=new_id("ent"),
                    account_id=posted.account_id,
                    transaction_id=new_transaction_id,
                    entry_type=posted.entry_type,
                    amount=posted.amount,
                    currency=posted.currency,
                    status="POSTED",
                    effective_date=posted.effective_date,
                    metadata={**posted.metadata, "derived_from_entry_id": posted.entry_id},
                )
            )
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
