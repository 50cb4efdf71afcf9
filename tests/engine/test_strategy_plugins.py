"""A third strategy plugs in with one line and runs through the pipeline's decide -> validate -> run
data flow (the same XCom forms the DAG uses), without any change to the shared chunk loader.

The test-only strategy books TRANSACTION lines that name a suspense account straight to it (both
legs POSTED), refuses a second line for the same order within the chunk through the chunk's
reservations, and leaves every other line to the built-in strategies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from recon import accounts, ledger, pipeline
from recon.errors import ErrorType
from recon.ledger import NewEntry, NewTransaction, new_id
from recon.model import EntryType
from recon.tasks import ReconTask, manager
from recon.tasks.verdicts import Applied, ManualReview, Plan


@dataclass(frozen=True, slots=True)
class BookToSuspense(Plan):
    suspense_account_id: str
    merchant_id: str
    summary_kind: ClassVar[str] = "book"


class SuspenseBookingTask(ReconTask):
    name = "SuspenseBookingTask"
    reads_metadata = True  # it routes on the entry's metadata

    def decide(self, item):
        return item.staging is not None and "suspense_account" in item.staging.metadata

    def load(self, conn, items, reservations, lock):
        ids = {i.staging.account_id for i in items} | {i.staging.metadata["suspense_account"] for i in items}
        return accounts.load_accounts(conn, sorted(ids))

    def validate(self, item, loaded, reservations):
        entry = item.staging
        suspense = loaded.get(entry.metadata["suspense_account"])
        if suspense is None:
            return ManualReview(ErrorType.NO_RECON_RULE, f"no suspense account {entry.metadata['suspense_account']!r}")
        if not reservations.claim_logical_id(f"suspense:{entry.account_id}:{entry.order_id}"):
            return ManualReview(ErrorType.DUPLICATE_ORDER, f"order {entry.order_id!r} already sent to suspense")
        return BookToSuspense(suspense.account_id, loaded[entry.account_id].merchant_id)

    def run(self, item, plan, prepared, reservations, batch):
        entry = item.staging
        transaction_id = new_id("txn")
        batch.transactions.append(NewTransaction(
            transaction_id, f"suspense:{entry.staging_entry_id}", 1, entry.amount, entry.currency,
            plan.merchant_id, "POSTED", {}, entry.staging_entry_id))
        for account_id, side in ((entry.account_id, entry.entry_type),
                                 (plan.suspense_account_id, EntryType(entry.entry_type).opposite.value)):
            batch.entries.append(NewEntry(new_id("ent"), account_id, transaction_id, side, entry.amount,
                                          entry.currency, "POSTED", entry.effective_date, {}))
        return Applied("book", {"match_type": "BookedToSuspense", "created_transaction_id": transaction_id})


def test_a_registered_strategy_runs_through_the_pipeline(books, monkeypatch):
    # the one line that registers it, in front of the built-in strategies
    monkeypatch.setattr(manager, "DEFAULT_IMPLEMENTATIONS", (SuspenseBookingTask, *manager.DEFAULT_IMPLEMENTATIONS))

    suspense = accounts.create_account(books.merchant_id, "Suspense USD", "CREDIT_NORMAL", "USD", db=books.db)
    parked, _ = books.stage(books.bank, "DEBIT", "40.00", "TRANSACTION", order_id="s-1", suspense_account=suspense)
    twice, _ = books.stage(books.bank, "DEBIT", "40.00", "TRANSACTION", order_id="s-1", suspense_account=suspense)
    nowhere, _ = books.stage(books.bank, "DEBIT", "5.00", "TRANSACTION", order_id="s-2", suspense_account="acc_gone")
    booked, _ = books.stage(books.bank, "DEBIT", "12.00", "TRANSACTION", order_id="o-1")
    confirmed, _ = books.stage(books.clearing, "CREDIT", "12.00", "CONFIRMATION", order_id="o-1")

    summary = books.process(batch_size=10, chunk_size=10)  # one chunk: decide -> validate -> run

    assert summary["booked"] == 2 and summary["matched"] == 1 and summary["manual_review"] == 2, summary
    assert books.staging(parked).status == "PROCESSED"
    assert books.staging(parked).metadata["match_type"] == "BookedToSuspense"
    assert books.staging(twice).metadata["error_type"] == "DuplicateOrderError"
    assert books.staging(nowhere).metadata["error_type"] == "NoReconRuleFoundError"
    assert books.staging(booked).metadata["match_type"] == "NewTransactionGenerated"
    assert books.staging(confirmed).metadata["match_type"] == "Phase2_Fulfilled"
    (balance,) = ledger.balances([suspense], db=books.db)
    assert balance.posted == 40  # credit-normal, credited 40.00
    assert ledger.check_invariants(books.db).ok


def test_without_the_registration_the_built_in_strategy_books_those_lines(books):
    suspense = accounts.create_account(books.merchant_id, "Suspense USD", "CREDIT_NORMAL", "USD", db=books.db)
    parked, _ = books.stage(books.bank, "DEBIT", "40.00", "TRANSACTION", order_id="s-1", suspense_account=suspense)
    books.process(batch_size=10, chunk_size=10)
    assert books.staging(parked).metadata["match_type"] == "NewTransactionGenerated"
