"""TRANSACTION mode: a statement line books a new two-legged transaction.

POSTED leg on the entry's account A (its side), EXPECTED leg on the contra account B of the
recon rule whose account_one is A (the opposite side), transaction EXPECTED, version 1.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import ClassVar, Sequence

from sqlalchemy.engine import Connection

from recon import accounts, ledger, match_keys, staging
from recon.errors import ErrorType
from recon.ledger import LedgerBatch, NewEntry, NewTransaction, new_id
from recon.model import Account, EntryType, ExpectedLeg, ProcessingMode, ReconRule, StagingEntry, StagingStatus
from recon.tasks.base import ReconTask, VerdictOutdated
from recon.tasks.chunk import Reservations, WorkItem
from recon.tasks.verdicts import Applied, ManualReview, Plan, Verdict


@dataclass(frozen=True, slots=True)
class Book(Plan):
    """Book the line under this rule: POSTED on its account, EXPECTED on the rule's contra account."""

    rule_id: str
    contra_account_id: str
    merchant_id: str
    summary_kind: ClassVar[str] = "book"

    def detail(self) -> str:
        return f"rule {self.rule_id}, expected on {self.contra_account_id}"


@dataclass(frozen=True)
class _Loaded:
    rules_by_account_one: dict[str, ReconRule]
    accounts: dict[str, Account]
    booked_logical_ids: set[str]
    lines: dict[str, StagingEntry]  # lines read with their metadata (when a contra rule keys on it)


def logical_transaction_id(entry: StagingEntry) -> str:
    """The order's logical id (see order_logical_id), or the staging entry id when the line has no
    order id."""
    return order_logical_id(entry.account_id, entry.order_id) if entry.order_id else entry.staging_entry_id


def order_logical_id(account_id: str, order_id: str) -> str:
    """`<account_id>_<order_id>` with the order id's '%' and '_' written %25 and %5F.

    The last '_' then separates account and order, so no two pairs share an id: plain joining gave
    account `bank` + order `eu_123` and account `bank_eu` + order `123` the same one, and the second
    line went to review as a duplicate. sql/0050 rewrote the ids booked before in this form.
    """
    return f"{account_id}_{order_id.replace('%', '%25').replace('_', '%5F')}"


class TransactionCreationTask(ReconTask):
    name = "TransactionCreationTask"

    def decide(self, item: WorkItem) -> bool:
        return item.staging is not None and item.staging.processing_mode == ProcessingMode.TRANSACTION

    def load(self, conn: Connection, items: Sequence[WorkItem], reservations: Reservations, lock: bool) -> _Loaded:
        entries = [i.staging for i in items if i.staging is not None]
        rules = accounts.load_rules(conn, sorted({e.account_id for e in entries}))
        rules_by_one: dict[str, ReconRule] = {}
        contras: dict[str, list[ReconRule]] = {}
        for rule in rules:  # by (priority, id): the first rule of an account_one wins
            rules_by_one.setdefault(rule.account_one_id, rule)
            contras.setdefault(rule.account_one_id, []).append(rule)
        account_ids = {e.account_id for e in entries} | {r.account_two_id for r in rules_by_one.values()}
        if lock:
            _lock_contested_orders(conn, entries)
        booked = ledger.existing_logical_ids(conn, sorted({logical_transaction_id(e) for e in entries}))
        # validate reads no metadata unless asked: a confirmation keyed on the metadata of a booked
        # line needs this chunk's lines with theirs to see their bookings
        contra_ids = sorted({r.account_two_id for rs in contras.values() for r in rs})
        if any(expected.startswith(match_keys.METADATA) for r in accounts.load_rules(conn, contra_ids)
               if r.account_two_id in contra_ids for _, expected in match_keys.lookup_keys(r)):
            lines = staging.load_entries(conn, [e.staging_entry_id for e in entries], lock=False)
            entries = [lines.get(e.staging_entry_id, e) for e in entries]
        for e in entries:  # a confirmation of the chunk waits for these lines, as for queued ones
            if e.status == StagingStatus.PENDING:
                reservations.announce_booking(e.staging_entry_id, [
                    _expected_leg(e, r.account_two_id, r.merchant_id, e.staging_entry_id, e.staging_entry_id)
                    for r in contras.get(e.account_id, ())])
        return _Loaded(rules_by_one, accounts.load_accounts(conn, sorted(account_ids)), booked,
                       {e.staging_entry_id: e for e in entries if e.metadata})

    def validate(self, item: WorkItem, loaded: _Loaded, reservations: Reservations) -> Verdict:
        assert item.staging is not None
        entry = loaded.lines.get(item.staging.staging_entry_id, item.staging)
        rule = loaded.rules_by_account_one.get(entry.account_id)
        if rule is None:
            return ManualReview(
                ErrorType.NO_RECON_RULE,
                f"no recon rule has account {entry.account_id} as account_one",
            )
        account = loaded.accounts[entry.account_id]
        contra = loaded.accounts[rule.account_two_id]
        wrong = [a for a in (account, contra) if a.currency != entry.currency]
        if wrong:
            names = ", ".join(f"{a.account_id} is {a.currency}" for a in wrong)
            return ManualReview(
                ErrorType.CURRENCY_MISMATCH,
                f"entry currency {entry.currency} differs from the account currency ({names})",
                {"mismatched_fields": [{"field": "currency", "expected": wrong[0].currency, "actual": entry.currency}]},
            )
        logical_id = logical_transaction_id(entry)
        if logical_id in loaded.booked_logical_ids or not reservations.claim_logical_id(logical_id):
            return ManualReview(
                ErrorType.DUPLICATE_ORDER,
                f"order {entry.order_id!r} is already booked for account {entry.account_id}"
                f" (logical transaction {logical_id})",
            )
        if reservations.wants(contra.account_id):
            # a confirmation later in the chunk finds this booking, as it would one at a time; until
            # run writes it, the leg is named by this line's staging entry id
            reservations.publish_booking(entry.staging_entry_id, _expected_leg(
                entry, contra.account_id, account.merchant_id, entry.staging_entry_id, entry.staging_entry_id))
        return Book(rule.id, contra.account_id, account.merchant_id)

    def prepare_run(self, conn: Connection, planned: Sequence[tuple[WorkItem, Book]], reservations: Reservations) -> None:
        """Another worker may have booked the same order since validate (a duplicate line in its chunk)."""
        entries = [item.staging for item, _ in planned if item.staging is not None]
        _lock_contested_orders(conn, entries)
        booked = ledger.existing_logical_ids(conn, sorted({logical_transaction_id(e) for e in entries}))
        if booked:
            raise VerdictOutdated(f"{len(booked)} order(s) booked by another worker meanwhile, e.g. {min(booked)}")

    def run(self, item: WorkItem, plan: Book, prepared: None, reservations: Reservations, batch: LedgerBatch) -> Applied:
        entry = item.staging
        assert entry is not None
        transaction_id, expected_id = new_id("txn"), new_id("ent")
        source = {"source_staging_entry_id": entry.staging_entry_id}
        order = {"order_id": entry.order_id} if entry.order_id else {}
        batch.transactions.append(
            NewTransaction(
                transaction_id=transaction_id,
                logical_transaction_id=logical_transaction_id(entry),
                version=1,
                amount=entry.amount,
                currency=entry.currency,
                merchant_id=plan.merchant_id,
                status="EXPECTED",
                metadata={**entry.metadata, **source},
                source_staging_entry_id=entry.staging_entry_id,
            )
        )
        posted = ledger.leg_from(entry, transaction_id, "POSTED", {**entry.metadata, **order, **source})
        batch.entries.append(posted)
        batch.entries.append(
            NewEntry(
                entry_id=expected_id,
                account_id=plan.contra_account_id,
                transaction_id=transaction_id,
                entry_type=EntryType(entry.entry_type).opposite.value,
                amount=entry.amount,
                currency=entry.currency,
                status="EXPECTED",
                effective_date=entry.effective_date,
                metadata={**entry.metadata, **order, **source, "recon_rule_id": plan.rule_id},
            )
        )
        if reservations.wants(plan.contra_account_id):
            # the confirmation of this chunk that fulfils this booking carries its POSTED leg over
            reservations.publish_booking(entry.staging_entry_id, _expected_leg(
                entry, plan.contra_account_id, plan.merchant_id, expected_id, transaction_id), [posted.as_posted_leg()])
        return Applied("book", {"created_transaction_id": transaction_id, "match_type": "NewTransactionGenerated"})


def _pending_with_order(entry: StagingEntry) -> bool:
    return entry.status == StagingStatus.PENDING and bool(entry.order_id)


def _expected_leg(entry: StagingEntry, contra_account_id: str, merchant_id: str, entry_id: str,
                  transaction_id: str) -> ExpectedLeg:
    """The EXPECTED leg this line books, as a confirmation of the same chunk sees it."""
    return ExpectedLeg(
        entry_id=entry_id,
        account_id=contra_account_id,
        order_id=entry.order_id or "",
        entry_type=EntryType(entry.entry_type).opposite.value,
        amount=entry.amount,
        currency=entry.currency,
        transaction_id=transaction_id,
        logical_transaction_id=logical_transaction_id(entry),
        version=1,
        merchant_id=merchant_id,
        transaction_amount=entry.amount,
        transaction_metadata={**entry.metadata, "source_staging_entry_id": entry.staging_entry_id},
        effective_date=entry.effective_date,
        metadata=entry.metadata,
    )


def _lock_contested_orders(conn: Connection, entries: Sequence[StagingEntry]) -> None:
    """Serialise bookings of an order that another queued TRANSACTION line books too.

    Only such an order can be booked twice by concurrent chunks: the lines of this chunk are
    counted against all PENDING lines for the same (account, order), and where there are more
    (another chunk's, or one not yet claimed) the order's logical id is locked, in a fixed order;
    the chunk that gets the lock second then sees the first one's booking. Orders queued once,
    the usual case, take no lock, so concurrent chunks do not wait for each other (one lock per
    order of a large chunk would overflow PostgreSQL's lock table). A line ingested after this
    check and booked concurrently still cannot be booked twice: the unique (logical_transaction_id,
    version) makes the later chunk fail and retry its tasks one by one.
    """
    in_chunk = Counter((e.account_id, e.order_id) for e in entries if _pending_with_order(e))
    contested = staging.contested_orders(conn, in_chunk)
    ledger.lock_logical_ids(conn, [order_logical_id(account, order) for account, order in contested])
