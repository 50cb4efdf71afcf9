"""TRANSACTION mode: a statement line books a new two-legged transaction.

POSTED leg on the entry's account A (its side), EXPECTED leg on the contra account B of the
recon rule whose account_one is A (the opposite side), transaction EXPECTED, version 1.
"""

from __future__ import annotations

from recon.errors import ErrorType
from recon.staging import EntryType
from recon.ledger import LedgerBatch, NewEntry, NewTransaction, new_id
from recon.tasks.base import Applied, ManualReview, Plan, ReconTask, Verdict
from recon.tasks.context import (
    ChunkContext,
    ExpectedLeg,
    PostedLeg,
    StagingEntry,
    WorkItem,
    logical_transaction_id,
)


class TransactionCreationTask(ReconTask):
    name = "TransactionCreationTask"

    def decide(self, item: WorkItem) -> bool:
        return item.staging is not None and item.staging.processing_mode == "TRANSACTION"

    def validate(self, item: WorkItem, ctx: ChunkContext) -> Verdict:
        entry = item.staging
        assert entry is not None
        rule = ctx.rules_by_account_one.get(entry.account_id)
        if rule is None:
            return ManualReview(
                ErrorType.NO_RECON_RULE,
                f"no recon rule has account {entry.account_id} as account_one",
            )
        account = ctx.accounts[entry.account_id]
        contra = ctx.accounts[rule.account_two_id]
        wrong = [a for a in (account, contra) if a.currency != entry.currency]
        if wrong:
            names = ", ".join(f"{a.account_id} is {a.currency}" for a in wrong)
            return ManualReview(
                ErrorType.CURRENCY_MISMATCH,
                f"entry currency {entry.currency} differs from the account currency ({names})",
            )
        logical_id = logical_transaction_id(entry)
        if logical_id in ctx.booked_logical_ids:
            return ManualReview(
                ErrorType.DUPLICATE_ORDER,
                f"order {entry.order_id!r} is already booked for account {entry.account_id}"
                f" (logical transaction {logical_id})",
            )
        ctx.booked_logical_ids.add(logical_id)  # a later line of this chunk is a duplicate
        plan = Plan("book", {
            "rule_id": rule.id, "contra_account_id": contra.account_id, "merchant_id": account.merchant_id,
            "logical_id": logical_id, "transaction_id": new_id("txn"),
            "posted_entry_id": new_id("ent"), "expected_entry_id": new_id("ent"),
        })
        if entry.order_id and (contra.account_id, entry.order_id) in ctx.confirmed_orders:
            _make_visible_to_later_items(entry, plan, ctx)
        return plan

    def run(self, item: WorkItem, plan: Plan, ctx: ChunkContext, batch: LedgerBatch) -> Applied:
        entry = item.staging
        assert entry is not None
        transaction_id = plan.details["transaction_id"]
        source = {"source_staging_entry_id": entry.staging_entry_id}
        order = {"order_id": entry.order_id} if entry.order_id else {}
        batch.transactions.append(
            NewTransaction(
                transaction_id=transaction_id,
                logical_transaction_id=plan.details["logical_id"],
                version=1,
                amount=entry.amount,
                currency=entry.currency,
                merchant_id=plan.details["merchant_id"],
                status="EXPECTED",
                metadata={**entry.metadata, **source},
                source_staging_entry_id=entry.staging_entry_id,
            )
        )
        batch.entries.append(
            NewEntry(
                entry_id=plan.details["posted_entry_id"],
                account_id=entry.account_id,
                transaction_id=transaction_id,
                entry_type=entry.entry_type,
                amount=entry.amount,
                currency=entry.currency,
                status="POSTED",
                effective_date=entry.effective_date,
                metadata={**entry.metadata, **order, **source},
            )
        )
        batch.entries.append(
            NewEntry(
                entry_id=plan.details["expected_entry_id"],
                account_id=plan.details["contra_account_id"],
                transaction_id=transaction_id,
                entry_type=EntryType(entry.entry_type).opposite.value,
                amount=entry.amount,
                currency=entry.currency,
                status="EXPECTED",
                effective_date=entry.effective_date,
                metadata={**entry.metadata, **order, **source, "recon_rule_id": plan.details["rule_id"]},
            )
        )
        return Applied(
            "book",
            {"created_transaction_id": transaction_id, "match_type": "NewTransactionGenerated"},
        )


def _make_visible_to_later_items(entry: StagingEntry, plan: Plan, ctx: ChunkContext) -> None:
    """A confirmation later in the same chunk must find this booking, as it would one at a time."""
    d = plan.details
    metadata = {**entry.metadata, "source_staging_entry_id": entry.staging_entry_id}
    ctx.expected_by_order.setdefault((d["contra_account_id"], entry.order_id), []).append(
        ExpectedLeg(
            entry_id=d["expected_entry_id"],
            account_id=d["contra_account_id"],
            order_id=entry.order_id,
            entry_type=EntryType(entry.entry_type).opposite.value,
            amount=entry.amount,
            currency=entry.currency,
            transaction_id=d["transaction_id"],
            logical_transaction_id=d["logical_id"],
            version=1,
            merchant_id=d["merchant_id"],
            transaction_amount=entry.amount,
            transaction_metadata=metadata,
        )
    )
    ctx.posted_legs[d["transaction_id"]] = [
        PostedLeg(
            entry_id=d["posted_entry_id"],
            account_id=entry.account_id,
            transaction_id=d["transaction_id"],
            entry_type=entry.entry_type,
            amount=entry.amount,
            currency=entry.currency,
            effective_date=entry.effective_date,
            metadata={**entry.metadata, "order_id": entry.order_id, **metadata},
        )
    ]
