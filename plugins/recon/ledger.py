"""The versioned double-entry ledger: transactions, entries, balances and invariants.

A transaction is never edited in place when it is fulfilled: version N is ARCHIVED and
version N+1 is written. Writes are collected in a ``LedgerBatch`` and flushed with one
statement per kind, so a chunk of thousands of entries costs a handful of round trips.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recon.db import Database, default_database, json_rows


class LedgerInvariantError(RuntimeError):
    """The books would not balance: the whole database transaction is rolled back."""


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
class NewTransaction:
    transaction_id: str
    logical_transaction_id: str
    version: int
    amount: Decimal
    currency: str
    merchant_id: str
    status: str
    metadata: dict[str, Any]
    source_staging_entry_id: str


@dataclass(frozen=True, slots=True)
class NewEntry:
    entry_id: str
    account_id: str
    transaction_id: str
    entry_type: str
    amount: Decimal
    currency: str
    status: str
    effective_date: dt.datetime
    metadata: dict[str, Any]
    fulfilled_expected_entry_id: str | None = None


@dataclass(slots=True)
class LedgerBatch:
    """Ledger writes of one chunk, flushed together inside the caller's transaction."""

    transactions: list[NewTransaction] = field(default_factory=list)
    entries: list[NewEntry] = field(default_factory=list)
    archive_transaction_ids: list[str] = field(default_factory=list)
    mismatch_transaction_ids: list[str] = field(default_factory=list)

    def extend(self, other: "LedgerBatch") -> None:
        """Add another batch's writes (one item's, collected apart so a failing item adds none)."""
        self.transactions.extend(other.transactions)
        self.entries.extend(other.entries)
        self.archive_transaction_ids.extend(other.archive_transaction_ids)
        self.mismatch_transaction_ids.extend(other.mismatch_transaction_ids)

    def flush(self, conn: Connection) -> None:
        # inserts first: a transaction booked earlier in the same chunk may be archived or
        # marked MISMATCH by a later confirmation of the chunk
        if self.transactions:
            conn.execute(_INSERT_TRANSACTIONS, {"rows": json_rows(self.transactions)})
        if self.entries:
            conn.execute(_INSERT_ENTRIES, {"rows": json_rows(self.entries)})
        if self.archive_transaction_ids:
            conn.exec_driver_sql(_ARCHIVE, {"ids": self.archive_transaction_ids})
        if self.mismatch_transaction_ids:
            conn.exec_driver_sql(_MISMATCH, {"ids": self.mismatch_transaction_ids})
        written = [t.transaction_id for t in self.transactions]
        if written:
            assert_balanced(conn, written)


_INSERT_TRANSACTIONS = sa.text(
    """
    INSERT INTO transactions (transaction_id, logical_transaction_id, version, amount, currency,
                              merchant_id, status, metadata, source_staging_entry_id)
    SELECT transaction_id, logical_transaction_id, version, amount, currency,
           merchant_id, status, metadata, source_staging_entry_id
    FROM json_to_recordset(CAST(:rows AS json)) AS r(
        transaction_id text, logical_transaction_id text, version integer, amount numeric,
        currency text, merchant_id text, status text, metadata jsonb, source_staging_entry_id text)
    """
)

_INSERT_ENTRIES = sa.text(
    """
    INSERT INTO entries (entry_id, account_id, transaction_id, entry_type, amount, currency, status,
                         effective_date, metadata, fulfilled_expected_entry_id)
    SELECT entry_id, account_id, transaction_id, entry_type, amount, currency, status,
           effective_date, metadata, fulfilled_expected_entry_id
    FROM json_to_recordset(CAST(:rows AS json)) AS r(
        entry_id text, account_id text, transaction_id text, entry_type text, amount numeric,
        currency text, status text, effective_date timestamptz, metadata jsonb,
        fulfilled_expected_entry_id text)
    """
)

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


@dataclass(frozen=True)
class InvariantReport:
    unbalanced_transactions: int
    non_positive_amounts: int
    expected_entries_fulfilled_twice: int
    entries_booked_twice: int

    @property
    def ok(self) -> bool:
        return not any(vars(self).values())


def check_invariants(db: Database | None = None) -> InvariantReport:
    """Whole-ledger check used by reports and tests: every number must be zero."""
    with (db or default_database()).begin() as conn:
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


_BALANCES = sa.text(
    """
    SELECT a.account_id, a.account_name, a.account_type, a.currency, a.initial_balance,
           coalesce(sum(e.amount) FILTER (WHERE e.status = 'POSTED' AND e.entry_type = 'DEBIT'), 0)
               AS posted_debits,
           coalesce(sum(e.amount) FILTER (WHERE e.status = 'POSTED' AND e.entry_type = 'CREDIT'), 0)
               AS posted_credits,
           coalesce(sum(e.amount) FILTER (WHERE e.status = 'EXPECTED' AND e.entry_type = 'DEBIT'), 0)
               AS expected_debits,
           coalesce(sum(e.amount) FILTER (WHERE e.status = 'EXPECTED' AND e.entry_type = 'CREDIT'), 0)
               AS expected_credits
    FROM accounts a
    LEFT JOIN entries e ON e.account_id = a.account_id AND e.status IN ('POSTED', 'EXPECTED')
                       AND e.currency = a.currency
    WHERE CAST(:ids AS text[]) IS NULL OR a.account_id = ANY(CAST(:ids AS text[]))
    GROUP BY a.account_id
    ORDER BY a.merchant_id, a.account_name, a.account_id
    """
)


def balances(account_ids: list[str] | None = None, db: Database | None = None) -> list[Balance]:
    """Posted, pending and available balance per account, in its currency (ARCHIVED excluded).

    Debit-normal accounts grow with debits, credit-normal ones with credits:
      posted    = initial + normal-side POSTED - other-side POSTED
      pending   = posted + normal-side EXPECTED - other-side EXPECTED
      available = posted - other-side EXPECTED (money promised away is not available,
                  money promised in is not yet available)
    """
    with (db or default_database()).begin() as conn:
        rows = conn.execute(_BALANCES, {"ids": account_ids}).all()
    result = []
    for r in rows:
        if r.account_type == "DEBIT_NORMAL":
            grow_posted, shrink_posted = r.posted_debits, r.posted_credits
            grow_expected, shrink_expected = r.expected_debits, r.expected_credits
        else:
            grow_posted, shrink_posted = r.posted_credits, r.posted_debits
            grow_expected, shrink_expected = r.expected_credits, r.expected_debits
        posted = r.initial_balance + grow_posted - shrink_posted
        result.append(
            Balance(
                account_id=r.account_id,
                account_name=r.account_name,
                account_type=r.account_type,
                currency=r.currency,
                initial_balance=r.initial_balance,
                posted=posted,
                pending=posted + grow_expected - shrink_expected,
                available=posted - shrink_expected,
            )
        )
    return result
