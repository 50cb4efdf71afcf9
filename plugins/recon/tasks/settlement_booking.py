"""SETTLEMENT mode: a PSP settlement line that books itself (a refund, a chargeback, a chargeback
reversal, a fee, an adjustment, a balance carried to the next batch).

Such a line answers no expectation: the PSP report is already checked to add up per batch, so it is
booked as one POSTED transaction (version 1, its logical id the staging entry id) on the clearing
account, the line's account, against the accounts of the first rule (by priority) whose account_two
is the clearing account: its account_one (the orders) and its fee account. Sides are the statement's
(money arriving on an account is a CREDIT there; see ledger.book_pair):

    refund, chargeback        clearing pays the gross back to the order account (clearing DEBIT,
                              orders CREDIT: the sale is given back), linked to the order by
                              metadata.order_id (the orders leg's order_id column)
    chargeback reversal       the other way (clearing CREDIT, orders DEBIT)
    fee                       clearing -> fee account, the fee (negative: a fee given back)
    other (an adjustment)     between clearing and the fee account at gross
    balance to next batch     clearing -> clearing: the carried balance leaves this batch's legs
                              (metadata.settlement_batch) for the next batch's, so each batch's
                              clearing legs sum to zero once it is paid out
    balance from a batch      books nothing: the previous batch's transfer line booked both ends

Every line also moves its own fees from clearing to the fee account, in the same transaction.
Metadata is read only for the chunk's SETTLEMENT lines (one query), so other lines pay nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Sequence

from sqlalchemy.engine import Connection

from recon import accounts, ledger, staging
from recon.errors import ErrorType
from recon.ledger import LedgerBatch, NewEntry, NewTransaction, new_id
from recon.model import EntryType, ProcessingMode, ReconRule, StagingEntry
from recon.tasks.base import ReconTask
from recon.tasks.chunk import Reservations, WorkItem
from recon.tasks.expected_entry_matching import settlement_fee as fee_of
from recon.tasks.verdicts import Applied, ManualReview, Plan, Verdict

# settlement_kind values (recon.ingest.settlement.LineKind) booked against the order account
_ORDER_KINDS = frozenset({"refund", "chargeback", "chargeback_reversal"})
CARRIED_OUT, CARRIED_IN = "balance_to_next_batch", "balance_from_previous_batch"


@dataclass(frozen=True, slots=True)
class BookSettlement(Plan):
    """Book the line against the rule's order account and fee account (None: the line needs none)."""

    rule_id: str | None
    order_account_id: str | None
    fee_account_id: str | None
    merchant_id: str
    summary_kind: ClassVar[str] = "book"


@dataclass(frozen=True)
class _Loaded:
    rules: dict[str, ReconRule]  # clearing account -> its first rule as account_two
    merchants: dict[str, str]  # account -> merchant
    lines: dict[str, StagingEntry]  # with metadata


class SettlementBookingTask(ReconTask):
    name = "SettlementBookingTask"

    def decide(self, item: WorkItem) -> bool:
        return item.staging is not None and item.staging.processing_mode == ProcessingMode.SETTLEMENT

    def load(self, conn: Connection, items: Sequence[WorkItem], reservations: Reservations, lock: bool) -> _Loaded:
        ids = sorted({i.staging.staging_entry_id for i in items if i.staging is not None})
        lines = staging.load_entries(conn, ids, lock=False)
        account_ids = sorted({e.account_id for e in lines.values()})
        rules: dict[str, ReconRule] = {}
        for rule in accounts.load_rules(conn, account_ids):  # by (priority, id): the first wins
            if rule.account_two_id in account_ids:
                rules.setdefault(rule.account_two_id, rule)
        merchants = {a.account_id: a.merchant_id for a in accounts.load_accounts(conn, account_ids).values()}
        return _Loaded(rules, merchants, lines)

    def validate(self, item: WorkItem, loaded: _Loaded, reservations: Reservations) -> Verdict:
        assert item.staging is not None
        entry = loaded.lines.get(item.staging.staging_entry_id, item.staging)
        kind = entry.metadata.get("settlement_kind")
        merchant_id = loaded.merchants[entry.account_id]
        if kind in (CARRIED_OUT, CARRIED_IN) and not fee_of(entry):
            return BookSettlement(None, None, None, merchant_id)
        rule = loaded.rules.get(entry.account_id)
        if rule is None:
            return ManualReview(
                ErrorType.NO_RECON_RULE,
                f"no recon rule has the clearing account {entry.account_id} as account_two: a {kind} line"
                " is booked against that rule's order and fee accounts",
            )
        needs_fee_account = kind not in _ORDER_KINDS or bool(fee_of(entry))
        if needs_fee_account and rule.fee_account_id is None:
            return ManualReview(
                ErrorType.NO_RECON_RULE,
                f"rule {rule.id} has no fee account for the {kind} line's fee {fee_of(entry)}"
                f" (`recon rule update {rule.id} --fee-account ACCOUNT`)",
            )
        return BookSettlement(rule.id, rule.account_one_id, rule.fee_account_id, merchant_id)

    def run(self, item: WorkItem, plan: BookSettlement, prepared: Any, reservations: Reservations,
            batch: LedgerBatch) -> Applied:
        entry = item.staging
        assert entry is not None
        kind = entry.metadata.get("settlement_kind", "other")
        if kind == CARRIED_IN and not fee_of(entry):
            return Applied("book", {"match_type": "SettlementCarriedIn",
                                    "note": "booked by the other batch's balance transfer"})
        transaction_id = new_id("txn")
        clearing = entry.account_id
        # the report's gross, signed as it moves the merchant's balance at the PSP (a refund's is negative)
        gross = Decimal(entry.metadata.get("gross", 0))
        legs = {"source_staging_entry_id": entry.staging_entry_id,
                **{k: entry.metadata[k] for k in ("order_id", "settlement_batch", "settlement_kind", "psp_type",
                                                  "psp_line_reference") if k in entry.metadata}}
        booked = len(batch.entries)
        fee = fee_of(entry)
        if kind in _ORDER_KINDS:
            assert plan.order_account_id is not None
            ledger.book_pair(batch, transaction_id, clearing, plan.order_account_id, gross, entry.currency,
                             entry.effective_date, legs)
        elif kind == CARRIED_OUT:
            # this batch's clearing legs get the balance; the next batch's give it
            other = {**legs, "settlement_batch": entry.metadata.get("other_batch", "next")}
            _book_transfer(batch, transaction_id, entry, legs, other)
        elif kind != CARRIED_IN and kind != "fee":
            assert plan.fee_account_id is not None
            ledger.book_pair(batch, transaction_id, clearing, plan.fee_account_id, gross, entry.currency,
                             entry.effective_date, legs)
        if fee:
            assert plan.fee_account_id is not None
            ledger.book_pair(batch, transaction_id, plan.fee_account_id, clearing, fee, entry.currency,
                             entry.effective_date, {**legs, "fee_of_staging_entry_id": entry.staging_entry_id})
        written = batch.entries[booked:]
        if not written:
            return Applied("book", {"match_type": "SettlementNothingToBook"})
        amount = max(e.amount for e in written)
        batch.transactions.append(NewTransaction(
            transaction_id=transaction_id, logical_transaction_id=entry.staging_entry_id, version=1, amount=amount,
            currency=entry.currency, merchant_id=plan.merchant_id, status="POSTED",
            metadata={**legs, **({"recon_rule_id": plan.rule_id} if plan.rule_id else {})},
            source_staging_entry_id=entry.staging_entry_id,
        ))
        return Applied("book", {"created_transaction_id": transaction_id, "match_type": "SettlementBooked",
                                **({"fee_account_id": plan.fee_account_id, "fee": str(fee)} if fee else {})})


def _book_transfer(batch: LedgerBatch, transaction_id: str, entry: StagingEntry, this_batch: dict[str, Any],
                   next_batch: dict[str, Any]) -> None:
    """The carried balance, both legs on the clearing account: this batch's leg on the line's side,
    the other batch's on the opposite one."""
    side = EntryType(entry.entry_type)
    for metadata, entry_type in ((this_batch, side), (next_batch, side.opposite)):
        batch.entries.append(NewEntry(
            entry_id=new_id("ent"), account_id=entry.account_id, transaction_id=transaction_id,
            entry_type=entry_type.value, amount=entry.amount, currency=entry.currency, status="POSTED",
            effective_date=entry.effective_date, metadata=metadata,
        ))
