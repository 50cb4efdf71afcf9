"""The versioned double-entry ledger: transactions, entries, balances and invariants; the only
module whose SQL reads or writes ``transactions`` and ``entries``.

A transaction is never edited in place when it is fulfilled: version N is ARCHIVED and
version N+1 is written. Writes are collected in a ``LedgerBatch`` and flushed with one
statement per kind, so a chunk of thousands of entries costs a handful of round trips. The
engine's reads are set-based too: one statement per chunk for each question a strategy asks.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable, Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recon import accounts, match_groups
from recon.db import Database, copy_rows, copy_statement
from recon.errors import ConflictError, LedgerInvariantError
from recon.match_groups import GroupItem, MatchGroup
from recon.model import Account, EntryLeg, EntryType, ExpectedLeg, PostedLeg, StagingEntry


_RANDOM_HEX: list[str] = []  # 128-bit random ids drawn 1,024 at a time (one urandom call)
os.register_at_fork(after_in_child=_RANDOM_HEX.clear)  # a forked worker must not reuse the parent's


def new_id(prefix: str) -> str:
    """Same shape as the database default recon_new_id(prefix): prefix, '_', 32 random hex digits."""
    try:
        return f"{prefix}_{_RANDOM_HEX.pop()}"
    except IndexError:
        pool = os.urandom(16 * 1024).hex()
        _RANDOM_HEX.extend(pool[i : i + 32] for i in range(0, len(pool), 32))
        return f"{prefix}_{_RANDOM_HEX.pop()}"


@dataclass(frozen=True, slots=True)
class TransactionHeader:
    """The columns every view of a ``transactions`` row starts with, in column order: NewTransaction
    and TransactionVersion add theirs after these, so a transaction's fields are named once."""

    transaction_id: str
    logical_transaction_id: str
    version: int
    amount: Decimal
    currency: str
    merchant_id: str
    status: str
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NewTransaction(TransactionHeader):
    """A transaction version to insert into ``transactions`` (LedgerBatch.flush)."""

    source_staging_entry_id: str


@dataclass(frozen=True, slots=True)
class NewEntry(EntryLeg):
    """A leg to insert into ``entries`` (LedgerBatch.flush)."""

    status: str
    effective_date: dt.datetime
    metadata: dict[str, Any]
    fulfilled_expected_entry_id: str | None = None

    def as_posted_leg(self) -> PostedLeg:
        """This leg as a later fulfilment carries it over, for one in the same chunk that runs before
        the batch is flushed (Reservations.publish_booking)."""
        return PostedLeg(self.entry_id, self.account_id, self.transaction_id, self.entry_type, self.amount,
                         self.currency, self.effective_date, self.metadata)


def leg_from(row: StagingEntry | PostedLeg, transaction_id: str, status: str, metadata: dict[str, Any]) -> NewEntry:
    """A new leg of `transaction_id` on a row's account, side, amount, currency and date: a statement
    line's own leg, or a leg carried over from an earlier version (_carried)."""
    return NewEntry(
        entry_id=new_id("ent"),
        account_id=row.account_id,
        transaction_id=transaction_id,
        entry_type=row.entry_type,
        amount=row.amount,
        currency=row.currency,
        status=status,
        effective_date=row.effective_date,
        metadata=metadata,
    )


@dataclass(slots=True)
class LedgerBatch:
    """Ledger writes of one chunk, flushed together inside the caller's transaction."""

    transactions: list[NewTransaction] = field(default_factory=list)
    entries: list[NewEntry] = field(default_factory=list)
    archive_transaction_ids: list[str] = field(default_factory=list)
    mismatch_transaction_ids: list[str] = field(default_factory=list)
    match_groups: list[MatchGroup] = field(default_factory=list)  # N:1 fulfilments (book_group_fulfilment)
    match_group_items: list[GroupItem] = field(default_factory=list)

    def extend(self, other: "LedgerBatch") -> None:
        """Add another batch's writes (one item's, collected apart so a failing item adds none)."""
        self.transactions.extend(other.transactions)
        self.entries.extend(other.entries)
        self.archive_transaction_ids.extend(other.archive_transaction_ids)
        self.mismatch_transaction_ids.extend(other.mismatch_transaction_ids)
        self.match_groups.extend(other.match_groups)
        self.match_group_items.extend(other.match_group_items)

    def flush(self, conn: Connection) -> None:
        # inserts first: a transaction booked earlier in the same chunk may be archived or
        # marked MISMATCH by a later confirmation of the chunk
        copy_rows(conn, _COPY_TRANSACTIONS, self.transactions)
        copy_rows(conn, _COPY_ENTRIES, self.entries)
        if self.archive_transaction_ids:
            conn.exec_driver_sql(_ARCHIVE, {"ids": self.archive_transaction_ids})
        if self.mismatch_transaction_ids:
            conn.exec_driver_sql(_MISMATCH, {"ids": self.mismatch_transaction_ids})
        if self.match_groups:  # after the transactions they refer to
            match_groups.insert(conn, self.match_groups, self.match_group_items)
        written = [t.transaction_id for t in self.transactions]
        if written:
            assert_balanced(conn, written)


_COPY_TRANSACTIONS = copy_statement("transactions", NewTransaction)
_COPY_ENTRIES = copy_statement("entries", NewEntry)

# The id-list statements run with exec_driver_sql: %(ids)b sends the list as a binary array,
# which psycopg builds without escaping each element in Python as the text format does.
_ARCHIVE = (
    """
    WITH archived AS (
        UPDATE transactions SET status = 'ARCHIVED', discarded_at = now(), updated_at = now()
        WHERE transaction_id = ANY(CAST(%(ids)b AS text[]))
        RETURNING transaction_id
    )
    UPDATE entries SET status = 'ARCHIVED', discarded_at = now(), updated_at = now()
    -- = ANY(ARRAY(...)) keeps this on entries_transaction_idx; `IN (SELECT ...)` became a hash
    -- semi-join over a sequential scan of the whole entries table
    WHERE transaction_id = ANY(ARRAY(SELECT transaction_id FROM archived))
    """
)

_MISMATCH = (
    "UPDATE transactions SET status = 'MISMATCH', updated_at = now()"
    " WHERE transaction_id = ANY(CAST(%(ids)b AS text[]))"
)

# debits equal credits per transaction and currency
_UNBALANCED = (
    """
    SELECT transaction_id, currency,
           sum(CASE WHEN entry_type = 'DEBIT' THEN amount ELSE -amount END) AS difference
    FROM entries
    WHERE transaction_id = ANY(CAST(%(ids)b AS text[]))
    GROUP BY transaction_id, currency
    HAVING sum(CASE WHEN entry_type = 'DEBIT' THEN amount ELSE -amount END) <> 0
    """
)


def assert_balanced(conn: Connection, transaction_ids: Iterable[str]) -> None:
    rows = conn.exec_driver_sql(_UNBALANCED, {"ids": list(transaction_ids)}).all()
    if rows:
        shown = ", ".join(f"{r.transaction_id} {r.currency} off by {r.difference}" for r in rows[:5])
        raise LedgerInvariantError(f"{len(rows)} unbalanced transaction(s): {shown}")


@dataclass(frozen=True, slots=True)
class Fulfilment:
    """What book_fulfilment wrote: the new version's transaction id and its variance leg, if any."""

    transaction_id: str
    variance: NewEntry | None


def book_fulfilment(batch: LedgerBatch, leg: ExpectedLeg, posted_legs: Sequence[PostedLeg], line: StagingEntry,
                    variance_account_id: str | None = None, metadata: dict[str, Any] | None = None) -> Fulfilment:
    """Fulfil an expected leg with a statement line (the one booking of a fulfilment: the matching
    strategy's and a reviewer's accept / force-match).

    Version N is archived; version N+1 is POSTED with the fulfilling leg on the line's account at the
    line's amount, the POSTED legs carried over, and, when the line's amount differs from the
    expected one, a variance leg on `variance_account_id` for the difference, on the side that
    balances the transaction. `metadata` adds to the new version's transaction metadata.
    """
    difference = line.amount - leg.amount
    if difference and variance_account_id is None:
        raise ValueError(f"line {line.staging_entry_id} differs from expected entry {leg.entry_id} by"
                         f" {difference}: a variance account is needed to book the difference")
    transaction_id = new_id("txn")
    batch.archive_transaction_ids.append(leg.transaction_id)
    variance = {"variance": str(difference), "variance_account_id": variance_account_id} if difference else {}
    batch.transactions.append(NewTransaction(
        transaction_id=transaction_id, logical_transaction_id=leg.logical_transaction_id, version=leg.version + 1,
        amount=leg.transaction_amount, currency=leg.currency, merchant_id=leg.merchant_id, status="POSTED",
        metadata={**leg.transaction_metadata, "evolved_from_transaction_id": leg.transaction_id,
                  "fulfilled_expected_entry_id": leg.entry_id, **variance, **(metadata or {})},
        source_staging_entry_id=line.staging_entry_id,
    ))
    legs = [NewEntry(
        entry_id=new_id("ent"), account_id=line.account_id, transaction_id=transaction_id,
        entry_type=leg.entry_type, amount=line.amount, currency=leg.currency, status="POSTED",
        effective_date=line.effective_date,
        metadata={**line.metadata, "source_staging_entry_id": line.staging_entry_id,
                  "fulfilled_expected_entry_id": leg.entry_id},
        fulfilled_expected_entry_id=leg.entry_id,
    )]
    legs.extend(_carried(posted, transaction_id) for posted in posted_legs)
    if difference:
        legs.append(_variance_leg(legs, variance_account_id, line, {
            "source_staging_entry_id": line.staging_entry_id, "variance_of_expected_entry_id": leg.entry_id,
            **({"order_id": leg.order_id} if leg.order_id else {})}))
    batch.entries.extend(legs)
    return Fulfilment(transaction_id, legs[-1] if difference else None)


def _variance_leg(legs: Sequence[NewEntry], account_id: str | None, line: StagingEntry,
                  metadata: dict[str, Any]) -> NewEntry:
    """The leg on the variance account that balances these legs: CREDIT when debits exceed credits."""
    debits_over_credits = sum((e.amount if e.entry_type == EntryType.DEBIT else -e.amount for e in legs), Decimal(0))
    return NewEntry(
        entry_id=new_id("ent"), account_id=account_id, transaction_id=legs[0].transaction_id,
        entry_type=(EntryType.CREDIT if debits_over_credits > 0 else EntryType.DEBIT).value,
        amount=abs(debits_over_credits), currency=legs[0].currency, status="POSTED",
        effective_date=line.effective_date, metadata=metadata,
    )


def signed_amount(leg: ExpectedLeg, line: StagingEntry) -> Decimal:
    """What an expected leg contributes to a line's amount: its amount on the line's side, minus
    on the other (a refund netted in a payout)."""
    return leg.amount if leg.entry_type == line.entry_type else -leg.amount


@dataclass(frozen=True, slots=True)
class GroupFulfilment:
    """What book_group_fulfilment wrote: the group, its transaction and its variance leg, if any."""

    match_group_id: str
    transaction_id: str
    variance: NewEntry | None


def book_group_fulfilment(batch: LedgerBatch, legs: Sequence[tuple[ExpectedLeg, Sequence[PostedLeg]]],
                          line: StagingEntry, *, recon_rule_id: str, group_by: str, group_value: str,
                          variance_account_id: str | None = None) -> GroupFulfilment:
    """Fulfil several expected legs with one statement line (N:1), in ONE balanced transaction.

    Each leg's transaction is archived; the new transaction (its own logical transaction, named by
    the match group) is POSTED with one leg on the line's account at the line's amount (the bank
    sees one movement), every archived transaction's POSTED legs carried over and, when the line
    differs from the legs' net sum, a leg on `variance_account_id` for the difference. The group
    and one item per leg go into the batch with it.
    """
    if not legs:
        raise ValueError(f"line {line.staging_entry_id}: a match group needs at least one expected leg")
    total = sum((signed_amount(leg, line) for leg, _ in legs), Decimal(0))
    difference = line.amount - total
    if total <= 0 or (difference and variance_account_id is None):
        raise ValueError(f"line {line.staging_entry_id} of {line.amount} cannot settle group {group_value!r}: its legs"
                         f" sum to {total} and the variance account is {variance_account_id}")
    group_id, transaction_id = new_id("mgrp"), new_id("txn")
    variance = {"variance": str(difference), "variance_account_id": variance_account_id} if difference else {}
    batch.transactions.append(NewTransaction(
        transaction_id=transaction_id, logical_transaction_id=group_id, version=1, amount=total,
        currency=line.currency, merchant_id=legs[0][0].merchant_id, status="POSTED",
        metadata={"match_group_id": group_id, "group_by": group_by, "group_value": group_value,
                  "recon_rule_id": recon_rule_id, "source_staging_entry_id": line.staging_entry_id, **variance},
        source_staging_entry_id=line.staging_entry_id,
    ))
    new_legs = [leg_from(line, transaction_id, "POSTED", {
        **line.metadata, "source_staging_entry_id": line.staging_entry_id, "match_group_id": group_id})]
    carried: set[str] = set()  # a transaction with two legs in the group is archived and carried once
    for leg, posted_legs in legs:
        if leg.transaction_id in carried:
            continue
        carried.add(leg.transaction_id)
        batch.archive_transaction_ids.append(leg.transaction_id)
        new_legs.extend(_carried(posted, transaction_id) for posted in posted_legs)
    if difference:
        new_legs.append(_variance_leg(new_legs, variance_account_id, line, {
            "source_staging_entry_id": line.staging_entry_id, "variance_of_match_group_id": group_id}))
    batch.entries.extend(new_legs)
    batch.match_groups.append(MatchGroup(
        match_group_id=group_id, staging_entry_id=line.staging_entry_id, recon_rule_id=recon_rule_id,
        account_id=line.account_id, group_by=group_by, group_value=group_value, currency=line.currency,
        line_amount=line.amount, expected_total=total, variance=difference, transaction_id=transaction_id))
    batch.match_group_items.extend(GroupItem(group_id, leg.entry_id, leg.transaction_id, signed_amount(leg, line))
                                   for leg, _ in legs)
    return GroupFulfilment(group_id, transaction_id, new_legs[-1] if difference else None)


def book_pair(batch: LedgerBatch, transaction_id: str, money_in_account_id: str, money_out_account_id: str,
              amount: Decimal, currency: str, effective_date: dt.datetime, metadata: dict[str, Any]) -> None:
    """Two POSTED legs of `transaction_id` moving `amount` from one account to another, in the
    statement sides the engine reads (money arriving on an account is a CREDIT there, as on a bank
    or PSP statement): CREDIT on `money_in_account_id`, DEBIT on `money_out_account_id`. A negative
    amount moves it the other way. Balanced by itself, so it may join any transaction (a PSP's
    fee booked with the fulfilment it was charged on)."""
    if amount < 0:
        money_in_account_id, money_out_account_id, amount = money_out_account_id, money_in_account_id, -amount
    if amount == 0:
        return
    for account_id, side in ((money_in_account_id, EntryType.CREDIT), (money_out_account_id, EntryType.DEBIT)):
        batch.entries.append(NewEntry(
            entry_id=new_id("ent"), account_id=account_id, transaction_id=transaction_id, entry_type=side.value,
            amount=amount, currency=currency, status="POSTED", effective_date=effective_date, metadata=metadata,
        ))


@dataclass(frozen=True)
class InvariantReport:
    unbalanced_transactions: int
    non_positive_amounts: int
    expected_entries_fulfilled_twice: int
    entries_booked_twice: int

    @property
    def ok(self) -> bool:
        return not any(vars(self).values())


def check_invariants(db: Database) -> InvariantReport:
    """Whole-ledger check used by reports and tests: every number must be zero."""
    with db.begin() as conn:
        row = conn.execute(
            sa.text(
                """
                SELECT
                  (SELECT count(*) FROM (
                      SELECT 1 FROM entries GROUP BY transaction_id, currency
                      HAVING sum(CASE WHEN entry_type = 'DEBIT' THEN amount ELSE -amount END) <> 0) u)
                    AS unbalanced_transactions,
                  (SELECT count(*) FROM entries WHERE amount <= 0)
                  + (SELECT count(*) FROM transactions WHERE amount <= 0) AS non_positive_amounts,
                  (SELECT count(*) FROM (
                      SELECT 1 FROM entries WHERE fulfilled_expected_entry_id IS NOT NULL
                      GROUP BY fulfilled_expected_entry_id HAVING count(*) > 1) f)
                    AS expected_entries_fulfilled_twice,
                  (SELECT count(*) FROM (
                      SELECT 1 FROM transactions WHERE source_staging_entry_id IS NOT NULL
                        AND status <> 'ARCHIVED'  -- a reopened confirmation may confirm again (sql/0020)
                      GROUP BY source_staging_entry_id HAVING count(*) > 1) d) AS entries_booked_twice
                """
            )
        ).one()
    return InvariantReport(**row._mapping)


@dataclass(frozen=True)
class Balance:
    account_id: str
    account_name: str
    account_type: str
    currency: str
    initial_balance: Decimal
    posted: Decimal
    pending: Decimal
    available: Decimal


_SIDE_SUMS = sa.text(
    """
    SELECT account_id, currency,
           coalesce(sum(amount) FILTER (WHERE status = 'POSTED' AND entry_type = 'DEBIT'), 0) AS posted_debits,
           coalesce(sum(amount) FILTER (WHERE status = 'POSTED' AND entry_type = 'CREDIT'), 0) AS posted_credits,
           coalesce(sum(amount) FILTER (WHERE status = 'EXPECTED' AND entry_type = 'DEBIT'), 0) AS expected_debits,
           coalesce(sum(amount) FILTER (WHERE status = 'EXPECTED' AND entry_type = 'CREDIT'), 0) AS expected_credits
    FROM entries
    WHERE status IN ('POSTED', 'EXPECTED')
      AND (CAST(:ids AS text[]) IS NULL OR account_id = ANY(CAST(:ids AS text[])))
    GROUP BY account_id, currency
    """
)


@dataclass(frozen=True)
class _SideSums:
    posted_debits: Decimal = Decimal(0)
    posted_credits: Decimal = Decimal(0)
    expected_debits: Decimal = Decimal(0)
    expected_credits: Decimal = Decimal(0)


_NO_ENTRIES = _SideSums()


def balances(account_ids: list[str] | None = None, *, db: Database) -> list[Balance]:
    """Posted, pending and available balance per account (all, or these), by merchant and name."""
    with db.begin() as conn:
        return balances_of(conn, accounts.list_accounts(conn, account_ids))


def balances_of(conn: Connection, listed: Sequence[Account]) -> list[Balance]:
    """Posted, pending and available balance of each of these accounts, in its currency (ARCHIVED excluded).

    Debit-normal accounts grow with debits, credit-normal ones with credits:
      posted    = initial + normal-side POSTED - other-side POSTED
      pending   = posted + normal-side EXPECTED - other-side EXPECTED
      available = posted - other-side EXPECTED (money promised away is not available,
                  money promised in is not yet available)
    """
    if not listed:
        return []
    ids = [a.account_id for a in listed]
    sums = {(r.account_id, r.currency): r for r in conn.execute(_SIDE_SUMS, {"ids": ids})}
    result = []
    for a in listed:
        r = sums.get((a.account_id, a.currency), _NO_ENTRIES)  # entries in another currency are not this account's
        if a.account_type == "DEBIT_NORMAL":
            grow_posted, shrink_posted = r.posted_debits, r.posted_credits
            grow_expected, shrink_expected = r.expected_debits, r.expected_credits
        else:
            grow_posted, shrink_posted = r.posted_credits, r.posted_debits
            grow_expected, shrink_expected = r.expected_credits, r.expected_debits
        posted = a.initial_balance + grow_posted - shrink_posted
        result.append(
            Balance(
                account_id=a.account_id,
                account_name=a.account_name,
                account_type=a.account_type,
                currency=a.currency,
                initial_balance=a.initial_balance,
                posted=posted,
                pending=posted + grow_expected - shrink_expected,
                available=posted - shrink_expected,
            )
        )
    return result


# ---- the engine's reads (one statement per chunk and question) --------------------------------------
#
# Statements whose parameters are arrays of a chunk's size run through exec_driver_sql with
# psycopg's %(name)b placeholders: the list travels as a binary array, built without the
# per-element escaping of the text format.

_NO_METADATA = "NULL"  # validation does not read metadata: no JSON to decode


def _key_arrays(keys: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """(account, order) keys as the two parallel arrays the unnest() queries take."""
    return {"accounts": [k[0] for k in keys], "orders": [k[1] for k in keys]}


def existing_logical_ids(conn: Connection, logical_ids: Sequence[str]) -> set[str]:
    """Which of these logical transactions are already booked (in any version)."""
    if not logical_ids:
        return set()
    rows = conn.exec_driver_sql(
        "SELECT DISTINCT logical_transaction_id FROM transactions"
        " WHERE logical_transaction_id = ANY(CAST(%(ids)b AS text[]))",
        {"ids": list(logical_ids)},
    )
    return set(rows.scalars())


def lock_logical_ids(conn: Connection, logical_ids: Sequence[str]) -> None:
    """Serialise bookings of these logical transactions across workers (transaction-scoped
    advisory locks, taken in a fixed order so two chunks cannot deadlock on them)."""
    if logical_ids:
        conn.exec_driver_sql(
            "SELECT pg_advisory_xact_lock(k) FROM ("
            " SELECT DISTINCT hashtextextended(x, 0) AS k FROM unnest(CAST(%(ids)b AS text[])) AS x"
            " ORDER BY k) AS keys",
            {"ids": list(logical_ids)},
        )


_EXPECTED_LEG_COLUMNS = """
    e.entry_id, e.account_id, e.order_id, e.entry_type, e.amount, e.currency,
    t.transaction_id, t.logical_transaction_id, t.version, t.merchant_id,
    t.amount AS transaction_amount, {transaction_metadata}, e.effective_date
"""


def _expected_leg(row: Sequence[Any]) -> ExpectedLeg:
    """A row of _EXPECTED_LEG_COLUMNS (its transaction metadata NULL when not selected)."""
    return ExpectedLeg(*row[:11], row[11] or {}, row[12])
_OPEN = "e.status = 'EXPECTED' AND t.status NOT IN ('ARCHIVED', 'MISMATCH')"


def expected_legs_by_order(
    conn: Connection, keys: Sequence[tuple[str, str]], lock: bool, metadata: bool = True
) -> dict[tuple[str, str], list[ExpectedLeg]]:
    """Open EXPECTED legs per (account, order), in a fixed order (transaction id, entry id); with
    `lock`, their transactions are locked FOR UPDATE in that order."""
    if not keys:
        return {}
    columns = _EXPECTED_LEG_COLUMNS.format(transaction_metadata="t.metadata" if metadata else _NO_METADATA)
    rows = conn.exec_driver_sql(
        f"""
        SELECT {columns}
        FROM unnest(CAST(%(accounts)b AS text[]), CAST(%(orders)b AS text[])) AS k(account_id, order_id)
        JOIN entries e ON e.account_id = k.account_id AND e.order_id = k.order_id
        JOIN transactions t ON t.transaction_id = e.transaction_id
        WHERE {_OPEN}
        ORDER BY t.transaction_id, e.entry_id
        """ + (" FOR UPDATE OF t" if lock else ""),
        _key_arrays(keys),
    )
    legs: dict[tuple[str, str], list[ExpectedLeg]] = {}
    for r in rows:  # in ExpectedLeg's field order
        leg = _expected_leg(r)
        legs.setdefault((leg.account_id, leg.order_id), []).append(leg)
    return legs


def expected_legs_by_metadata(
    conn: Connection, probes: Sequence[tuple[str, dict[str, str]]], lock: bool
) -> list[list[ExpectedLeg]]:
    """Open EXPECTED legs per (account, metadata the leg must contain), in the probes' order; each
    probe's legs in a fixed order (transaction id, entry id), with `lock` locked FOR UPDATE in it.
    One statement for a chunk: each probe is a look-up of entries_expected_metadata_idx."""
    if not probes:
        return []
    columns = _EXPECTED_LEG_COLUMNS.format(transaction_metadata=_NO_METADATA)
    rows = conn.exec_driver_sql(
        f"""
        SELECT k.i, {columns}
        FROM unnest(CAST(%(accounts)b AS text[]), CAST(%(probes)b AS text[])) WITH ORDINALITY
            AS k(account_id, probe, i)
        JOIN entries e ON e.account_id = k.account_id AND e.metadata @> CAST(k.probe AS jsonb)
        JOIN transactions t ON t.transaction_id = e.transaction_id
        WHERE {_OPEN}
        ORDER BY t.transaction_id, e.entry_id
        """ + (" FOR UPDATE OF t" if lock else ""),
        {"accounts": [p[0] for p in probes], "probes": [json.dumps(p[1], sort_keys=True) for p in probes]},
    )
    found: list[list[ExpectedLeg]] = [[] for _ in probes]
    for r in rows:
        found[r[0] - 1].append(_expected_leg(r[1:]))
    return found


def expected_legs_by_amount(
    conn: Connection, ranges: Sequence[tuple[str, str, Decimal, Decimal]], lock: bool
) -> list[list[ExpectedLeg]]:
    """Open EXPECTED legs per (account, side, lowest, highest amount), in the ranges' order, each
    range's legs in a fixed order; one statement for a chunk along entries_expected_amount_idx."""
    if not ranges:
        return []
    columns = _EXPECTED_LEG_COLUMNS.format(transaction_metadata=_NO_METADATA)
    rows = conn.exec_driver_sql(
        f"""
        SELECT k.i, {columns}
        FROM unnest(CAST(%(accounts)b AS text[]), CAST(%(sides)b AS text[]), CAST(%(lows)b AS numeric[]),
                    CAST(%(highs)b AS numeric[])) WITH ORDINALITY AS k(account_id, side, low, high, i)
        JOIN entries e ON e.account_id = k.account_id AND e.amount BETWEEN k.low AND k.high
                      AND e.entry_type = k.side
        JOIN transactions t ON t.transaction_id = e.transaction_id
        WHERE {_OPEN}
        ORDER BY t.transaction_id, e.entry_id
        """ + (" FOR UPDATE OF t" if lock else ""),
        {"accounts": [r[0] for r in ranges], "sides": [r[1] for r in ranges],
         "lows": [r[2] for r in ranges], "highs": [r[3] for r in ranges]},
    )
    found: list[list[ExpectedLeg]] = [[] for _ in ranges]
    for r in rows:
        found[r[0] - 1].append(_expected_leg(r[1:]))
    return found


def lock_open_legs(conn: Connection, entry_ids: Sequence[str]) -> tuple[dict[str, ExpectedLeg], set[str]]:
    """These EXPECTED legs, each still open, with their transactions locked FOR UPDATE; and the ids
    of open legs that another worker's uncommitted transaction holds (busy). A leg fulfilled or
    mismatched meanwhile by another worker is in neither.

    SKIP LOCKED: waiting here held a whole chunk, and its worker, until the other worker's chunk
    committed, over a few contended legs; the caller sets the busy legs' lines aside instead."""
    if not entry_ids:
        return {}, set()
    columns = _EXPECTED_LEG_COLUMNS.format(transaction_metadata="t.metadata")
    rows = conn.exec_driver_sql(
        f"""
        SELECT {columns}
        FROM entries e JOIN transactions t ON t.transaction_id = e.transaction_id
        WHERE e.entry_id = ANY(CAST(%(ids)b AS text[])) AND {_OPEN}
        ORDER BY t.transaction_id, e.entry_id
        FOR UPDATE OF t SKIP LOCKED
        """,
        {"ids": sorted(entry_ids)},
    )
    legs = {r[0]: _expected_leg(r) for r in rows}
    skipped = sorted(set(entry_ids) - set(legs))
    if not skipped:
        return legs, set()
    still_open = conn.exec_driver_sql(  # skipped because locked, or because no longer open?
        f"""
        SELECT e.entry_id FROM entries e JOIN transactions t ON t.transaction_id = e.transaction_id
        WHERE e.entry_id = ANY(CAST(%(ids)b AS text[])) AND {_OPEN}
        """,
        {"ids": skipped},
    ).scalars().all()
    return legs, set(still_open)


def held_legs(conn: Connection, entry_ids: Sequence[str], lock: bool) -> dict[str, tuple[ExpectedLeg, str | None]]:
    """These EXPECTED legs still held by a mismatch (their transaction MISMATCH), each with the recon
    rule that booked it: a reprocessed mismatch is judged again against its own leg, which no open-leg
    look-up finds. With `lock`, their transactions are locked FOR UPDATE in a fixed order."""
    if not entry_ids:
        return {}
    columns = _EXPECTED_LEG_COLUMNS.format(transaction_metadata="t.metadata")
    rows = conn.exec_driver_sql(
        f"""
        SELECT {columns}, e.metadata ->> 'recon_rule_id' AS recon_rule_id
        FROM entries e JOIN transactions t ON t.transaction_id = e.transaction_id
        WHERE e.entry_id = ANY(CAST(%(ids)b AS text[])) AND e.status = 'EXPECTED' AND t.status = 'MISMATCH'
        ORDER BY t.transaction_id, e.entry_id
        """ + (" FOR UPDATE OF t" if lock else ""),
        {"ids": sorted(entry_ids)},
    )
    return {r[0]: (_expected_leg(r[:13]), r[13]) for r in rows}


def posted_legs(conn: Connection, transaction_ids: Sequence[str]) -> dict[str, list[PostedLeg]]:
    """The POSTED legs of these transactions (carried over to a fulfilled version)."""
    if not transaction_ids:
        return {}
    rows = conn.exec_driver_sql(
        # in PostedLeg's field order: rows are unpacked positionally
        "SELECT entry_id, account_id, transaction_id, entry_type, amount, currency, effective_date,"
        " metadata FROM entries WHERE transaction_id = ANY(%(ids)b) AND status = 'POSTED'"
        " ORDER BY transaction_id, entry_id",
        {"ids": list(transaction_ids)},
    )
    legs: dict[str, list[PostedLeg]] = {}
    for r in rows:
        leg = PostedLeg(*r)
        legs.setdefault(leg.transaction_id, []).append(leg)
    return legs


def fulfilled_orders(conn: Connection, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """(account, order) keys whose expected leg was already fulfilled (a repeated confirmation)."""
    if not keys:
        return set()
    rows = conn.exec_driver_sql(
        """
        SELECT DISTINCT e.account_id, e.order_id
        FROM unnest(CAST(%(accounts)b AS text[]), CAST(%(orders)b AS text[])) AS k(account_id, order_id)
        JOIN entries e ON e.account_id = k.account_id AND e.order_id = k.order_id
        WHERE e.fulfilled_expected_entry_id IS NOT NULL
        """,
        _key_arrays(keys),
    )
    return {(r.account_id, r.order_id) for r in rows}


def rule_is_referenced(conn: Connection, rule_id: str) -> bool:
    """Does any entry, archived history included, name this rule in metadata.recon_rule_id (an
    expected leg the rule booked)? A sequential read of entries: rules are deleted rarely, and an
    index for it would cost every booking a write."""
    return bool(conn.execute(
        sa.text("SELECT EXISTS (SELECT 1 FROM entries WHERE metadata ->> 'recon_rule_id' = :rule_id)"),
        {"rule_id": rule_id},
    ).scalar())


# ---- fulfilment and reviewer operations -----------------------------------------------------------


def _carried(posted: PostedLeg, transaction_id: str, status: str = "POSTED") -> NewEntry:
    """A leg of an earlier version carried into `transaction_id` under a new id; its metadata names
    the leg it was derived from."""
    return leg_from(posted, transaction_id, status, {**posted.metadata, "derived_from_entry_id": posted.entry_id})


@dataclass(frozen=True)
class ReviewLeg:
    """An expected leg a reviewer may fulfil: open (EXPECTED) or held by a mismatch (MISMATCH)."""

    leg: ExpectedLeg
    transaction_status: str
    recon_rule_id: str | None


def lock_leg_for_review(conn: Connection, entry_id: str) -> ReviewLeg | None:
    """This EXPECTED leg with its transaction locked FOR UPDATE, if its transaction is still EXPECTED
    or MISMATCH (not fulfilled, archived or reopened meanwhile); else None."""
    columns = _EXPECTED_LEG_COLUMNS.format(transaction_metadata="t.metadata")
    row = conn.execute(sa.text(
        f"""
        SELECT {columns}, t.status AS transaction_status, e.metadata ->> 'recon_rule_id' AS recon_rule_id
        FROM entries e JOIN transactions t ON t.transaction_id = e.transaction_id
        WHERE e.entry_id = :id AND e.status = 'EXPECTED' AND t.status IN ('EXPECTED', 'MISMATCH')
        FOR UPDATE OF t
        """
    ), {"id": entry_id}).first()
    if row is None:
        return None
    return ReviewLeg(ExpectedLeg(*row[:12]), row.transaction_status, row.recon_rule_id)


def candidate_legs(conn: Connection, account_id: str, order_id: str | None,
                   also_entry_ids: Sequence[str] = ()) -> list[ReviewLeg]:
    """The expected legs a reviewer may match a line on `account_id` to: EXPECTED legs of its order
    whose transaction is still EXPECTED or MISMATCH, and these entries (e.g. the mismatched one)."""
    columns = _EXPECTED_LEG_COLUMNS.format(transaction_metadata="t.metadata")
    rows = conn.execute(sa.text(
        f"""
        SELECT {columns}, t.status AS transaction_status, e.metadata ->> 'recon_rule_id' AS recon_rule_id
        FROM entries e JOIN transactions t ON t.transaction_id = e.transaction_id
        WHERE e.status = 'EXPECTED' AND t.status IN ('EXPECTED', 'MISMATCH')
          AND ((e.account_id = :account AND e.order_id = :order_id) OR e.entry_id = ANY(:ids))
        ORDER BY t.transaction_id, e.entry_id
        """
    ), {"account": account_id, "order_id": order_id, "ids": list(also_entry_ids)}).all()
    return [ReviewLeg(ExpectedLeg(*r[:12]), r.transaction_status, r.recon_rule_id) for r in rows]


def reopen_confirmed(conn: Connection, staging_entry_id: str, mismatched_transaction_id: str | None,
                     batch: LedgerBatch) -> dict[str, str] | None:
    """The live version this confirmation fulfilled (or the MISMATCH transaction it was compared
    with) archived, and a new version restoring its expected leg
    to EXPECTED: the confirming leg and any variance leg are not carried over. Nothing is deleted.

    Returns the ids before and after, or None when the confirmation has no live version to reopen."""
    row = conn.execute(sa.text(
        """
        SELECT transaction_id, logical_transaction_id, version, amount, currency, merchant_id, status, metadata
        FROM transactions
        WHERE (source_staging_entry_id = :source AND status = 'POSTED')
           OR (transaction_id = :mismatched AND status = 'MISMATCH')
        ORDER BY transaction_id LIMIT 1
        FOR UPDATE
        """
    ), {"source": staging_entry_id, "mismatched": mismatched_transaction_id}).first()
    if row is None:
        return None
    live = TransactionHeader(*row)
    if "match_group_id" in live.metadata:
        # its legs came from several transactions: restoring them is not built yet (issue 15, item 3)
        raise ConflictError(f"staging entry {staging_entry_id} fulfilled match group {live.metadata['match_group_id']}"
                            f" (transaction {live.transaction_id}); reopening a match group is not supported")
    legs = conn.execute(sa.text(
        "SELECT entry_id, account_id, transaction_id, entry_type, amount, currency, effective_date, metadata,"
        " status, fulfilled_expected_entry_id FROM entries WHERE transaction_id = :id ORDER BY entry_id"
    ), {"id": live.transaction_id}).all()
    expected_id = live.metadata.get("fulfilled_expected_entry_id") if live.status == "POSTED" else None
    new_transaction_id = new_id("txn")
    reopened_metadata = {k: v for k, v in live.metadata.items()
                         if k not in ("fulfilled_expected_entry_id", "variance", "variance_account_id", "review")}
    batch.archive_transaction_ids.append(live.transaction_id)
    batch.transactions.append(NewTransaction(
        transaction_id=new_transaction_id,
        logical_transaction_id=live.logical_transaction_id,
        version=live.version + 1,
        amount=live.amount,
        currency=live.currency,
        merchant_id=live.merchant_id,
        status="EXPECTED",
        metadata={**reopened_metadata, "evolved_from_transaction_id": live.transaction_id, "reopened": True},
        source_staging_entry_id=None,
    ))
    for leg in legs:
        if (leg.fulfilled_expected_entry_id or "variance_of_expected_entry_id" in leg.metadata
                or "fee_of_staging_entry_id" in leg.metadata):
            continue  # the confirmation's own leg, its write-off and its PSP fee leave with it
        batch.entries.append(_carried(PostedLeg(*leg[:8]), new_transaction_id, status=leg.status))
    restored = None
    if expected_id is not None:
        original = conn.execute(sa.text(
            "SELECT entry_id, account_id, transaction_id, entry_type, amount, currency, effective_date, metadata"
            " FROM entries WHERE entry_id = :id"
        ), {"id": expected_id}).one()
        restored = _carried(PostedLeg(*original), new_transaction_id, status="EXPECTED")
        batch.entries.append(restored)
    return {"archived_transaction_id": live.transaction_id, "reopened_transaction_id": new_transaction_id,
            **({"restored_expected_entry_id": restored.entry_id} if restored else {})}


# ---- read models: the report and the Recon view ------------------------------------------------------


def transaction_status_counts(conn: Connection, accounts: Sequence[str] | None = None,
                              since: dt.datetime | None = None) -> dict[str, int]:
    """Transaction versions per status: all, or those with a leg on these accounts, created since then."""
    return dict(conn.execute(sa.text(
        """
        SELECT status, count(*) FROM transactions t
        WHERE (CAST(:accounts AS text[]) IS NULL OR EXISTS (
                   SELECT 1 FROM entries e WHERE e.transaction_id = t.transaction_id
                   AND e.account_id = ANY(CAST(:accounts AS text[]))))
          AND (CAST(:since AS timestamptz) IS NULL OR t.created_at >= :since)
        GROUP BY status
        """
    ), {"accounts": list(accounts) if accounts is not None else None, "since": since}).all())


def mismatch_transactions(conn: Connection, limit: int) -> tuple[int, list[Any]]:
    """How many transactions are in MISMATCH, and the most recent `limit` of them."""
    count = conn.execute(
        sa.text("SELECT count(*) FROM transactions WHERE status = 'MISMATCH' AND discarded_at IS NULL")
    ).scalar_one()
    rows = conn.execute(
        sa.text(
            """
            SELECT transaction_id, logical_transaction_id, version, amount, currency, merchant_id,
                   metadata ->> 'order_id' AS order_id, updated_at
            FROM transactions
            WHERE status = 'MISMATCH' AND discarded_at IS NULL
            ORDER BY updated_at DESC, transaction_id
            LIMIT :limit
            """
        ),
        {"limit": limit},
    ).all()
    return count, rows


def booking_statuses(conn: Connection, staging_entry_ids: Sequence[str]) -> dict[str, str]:
    """The live status of what each of these TRANSACTION lines booked (EXPECTED: not confirmed yet;
    POSTED: its expected leg fulfilled; MISMATCH), by staging entry id: a payout is confirmed by the
    bank when its booking is POSTED."""
    if not staging_entry_ids:
        return {}
    rows = conn.execute(sa.text(
        """
        SELECT DISTINCT ON (first.source_staging_entry_id) first.source_staging_entry_id, live.status
        FROM transactions first
        JOIN transactions live ON live.logical_transaction_id = first.logical_transaction_id
        WHERE first.source_staging_entry_id = ANY(:ids) AND first.version = 1 AND live.status <> 'ARCHIVED'
        ORDER BY first.source_staging_entry_id, live.version DESC
        """
    ), {"ids": list(staging_entry_ids)}).all()
    return {r.source_staging_entry_id: r.status for r in rows}


# ---- read models: the REST API (a page at a time, in key order) ---------------------------------------


# Ages of open expected legs (orders nobody confirmed yet), by effective date: the buckets a
# controller asks about; the last one is open-ended.
AGE_BUCKETS = ("0-1 days", "1-3 days", "3-7 days", "> 7 days")

_OPEN_EXPECTED = """
    FROM entries e JOIN transactions t ON t.transaction_id = e.transaction_id
    WHERE e.status = 'EXPECTED' AND t.status = 'EXPECTED'
      AND (CAST(:account AS text) IS NULL OR e.account_id = :account)
      AND (CAST(:accounts AS text[]) IS NULL OR e.account_id = ANY(CAST(:accounts AS text[])))
      AND (CAST(:since AS timestamptz) IS NULL OR e.created_at >= :since)
"""
_AGE_BUCKET = """
    CASE WHEN e.effective_date > now() - interval '1 day' THEN 0
         WHEN e.effective_date > now() - interval '3 days' THEN 1
         WHEN e.effective_date > now() - interval '7 days' THEN 2 ELSE 3 END
"""


def open_expected_ageing(conn: Connection, account_id: str | None = None, accounts: Sequence[str] | None = None,
                         since: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Open EXPECTED legs (their transaction still EXPECTED: not confirmed, not in MISMATCH) per
    account and currency, each with count and amount per age bucket (AGE_BUCKETS); `accounts` and
    `since` (booked since) narrow them for the report's filter."""
    rows = conn.execute(
        sa.text(f"SELECT e.account_id, e.currency, {_AGE_BUCKET} AS bucket, count(*) AS n, sum(e.amount) AS amount"
                f" {_OPEN_EXPECTED} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"),
        {"account": account_id, "accounts": list(accounts) if accounts is not None else None, "since": since},
    ).all()
    by_account: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        group = by_account.setdefault((r.account_id, r.currency), {
            "account_id": r.account_id, "currency": r.currency, "count": 0, "amount": Decimal(0),
            "buckets": {name: {"count": 0, "amount": Decimal(0)} for name in AGE_BUCKETS}})
        group["buckets"][AGE_BUCKETS[r.bucket]] = {"count": r.n, "amount": r.amount}
        group["count"] += r.n
        group["amount"] += r.amount
    return list(by_account.values())


def open_expected_totals(conn: Connection) -> dict[str, Decimal]:
    """Money still expected (open EXPECTED legs, not confirmed, not in MISMATCH) per currency."""
    rows = conn.execute(sa.text(f"SELECT e.currency, sum(e.amount) AS amount {_OPEN_EXPECTED} GROUP BY 1 ORDER BY 1"),
                        {"account": None, "accounts": None, "since": None}).all()
    return {r.currency: r.amount for r in rows}


def stream_open_expected(conn: Connection, account_id: str | None = None) -> Iterator[Any]:
    """Every open EXPECTED leg, oldest first, through a server-side cursor (exports have no cap)."""
    yield from conn.execution_options(stream_results=True, yield_per=2_000).execute(
        sa.text(f"SELECT e.entry_id, e.account_id, e.order_id, e.entry_type, e.amount, e.currency,"
                f" e.transaction_id, e.effective_date, floor(extract(epoch FROM now() - e.effective_date) / 86400)"
                f" AS age_days {_OPEN_EXPECTED} ORDER BY e.effective_date, e.entry_id"),
        {"account": account_id, "accounts": None, "since": None},
    )


@dataclass(frozen=True, slots=True)
class LedgerEntry(EntryLeg):
    """One leg of a transaction version, as the REST API shows it."""

    status: str
    effective_date: dt.datetime
    metadata: dict[str, Any]
    order_id: str | None
    fulfilled_expected_entry_id: str | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class TransactionVersion(TransactionHeader):
    """A version of a transaction with its legs, as the REST API shows it."""

    source_staging_entry_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    entries: list[LedgerEntry] = field(default_factory=list)


@dataclass(frozen=True)
class LogicalTransaction:
    """A transaction with every version it went through (ARCHIVED ones included), oldest first."""

    logical_transaction_id: str
    versions: list[TransactionVersion]


# in the dataclasses' field order: rows are unpacked positionally
_LEDGER_ENTRY_COLUMNS = (
    "entry_id, account_id, transaction_id, entry_type, amount, currency, status, effective_date, metadata,"
    " order_id, fulfilled_expected_entry_id, created_at"
)
_VERSION_COLUMNS = (
    "transaction_id, logical_transaction_id, version, amount, currency, merchant_id, status, metadata,"
    " source_staging_entry_id, created_at, updated_at"
)


def logical_transactions_page(
    conn: Connection, merchant_id: str | None, account_id: str | None, after: str | None, limit: int
) -> list[LogicalTransaction]:
    """Logical transactions (of a merchant, touching an account, or all) in id order after `after`,
    at most `limit`, each with all its versions and their entries: three statements per page
    (the page's ids along transactions' (logical_transaction_id, version) index, then their
    versions, then their entries)."""
    logical_ids = list(conn.execute(
        sa.text(
            """
            SELECT DISTINCT t.logical_transaction_id FROM transactions t
            WHERE (CAST(:merchant AS text) IS NULL OR t.merchant_id = :merchant)
              AND (CAST(:account AS text) IS NULL OR EXISTS (
                   SELECT 1 FROM entries e WHERE e.transaction_id = t.transaction_id AND e.account_id = :account))
              AND (CAST(:after AS text) IS NULL OR t.logical_transaction_id > :after)
            ORDER BY t.logical_transaction_id
            LIMIT :limit
            """
        ),
        {"merchant": merchant_id, "account": account_id, "after": after, "limit": limit},
    ).scalars())
    return _with_versions(conn, logical_ids)


def logical_transaction(conn: Connection, transaction_id: str) -> LogicalTransaction | None:
    """The logical transaction of a transaction id (any version's) or of a logical id, every
    version with its entries; None when neither exists."""
    logical_id = conn.execute(
        sa.text("SELECT logical_transaction_id FROM transactions WHERE transaction_id = :id"
                " OR logical_transaction_id = :id LIMIT 1"),
        {"id": transaction_id},
    ).scalar()
    return _with_versions(conn, [logical_id])[0] if logical_id is not None else None


def _with_versions(conn: Connection, logical_ids: list[str]) -> list[LogicalTransaction]:
    """These logical transactions with every version and its entries (two statements)."""
    if not logical_ids:
        return []
    versions = [TransactionVersion(*r) for r in conn.execute(
        sa.text(f"SELECT {_VERSION_COLUMNS} FROM transactions WHERE logical_transaction_id = ANY(:ids)"
                " ORDER BY logical_transaction_id, version"),
        {"ids": logical_ids},
    )]
    by_transaction = {v.transaction_id: v for v in versions}
    for row in conn.execute(
        sa.text(f"SELECT {_LEDGER_ENTRY_COLUMNS} FROM entries WHERE transaction_id = ANY(:ids)"
                " ORDER BY transaction_id, entry_id"),
        {"ids": list(by_transaction)},
    ):
        by_transaction[row.transaction_id].entries.append(LedgerEntry(*row))
    grouped: dict[str, list[TransactionVersion]] = {i: [] for i in logical_ids}
    for version in versions:
        grouped[version.logical_transaction_id].append(version)
    return [LogicalTransaction(i, grouped[i]) for i in logical_ids]


def entries_page(
    conn: Connection, account_id: str | None, status: str | None, order_id: str | None,
    after: str | None, limit: int,
) -> list[LedgerEntry]:
    """Entries (of an account, in a status, for an order) in id order after `after`, at most `limit`
    (entries_account_status_idx or entries_expected_order_idx find an account's; the primary key
    otherwise)."""
    rows = conn.execute(
        sa.text(
            f"""
            SELECT {_LEDGER_ENTRY_COLUMNS} FROM entries
            WHERE (CAST(:account AS text) IS NULL OR account_id = :account)
              AND (CAST(:status AS text) IS NULL OR status = :status)
              AND (CAST(:order_id AS text) IS NULL OR order_id = :order_id)
              AND (CAST(:after AS text) IS NULL OR entry_id > :after)
            ORDER BY entry_id
            LIMIT :limit
            """
        ),
        {"account": account_id, "status": status, "order_id": order_id, "after": after, "limit": limit},
    )
    return [LedgerEntry(*r) for r in rows]
