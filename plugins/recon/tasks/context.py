"""Load everything a chunk of tasks needs with a few set-based queries.

Statements whose parameters are arrays of a chunk's size run through ``exec_driver_sql`` with
psycopg's ``%(name)b`` placeholders: the list travels as a binary array, which psycopg builds
without the per-element escaping (a regex each) of the text format, about 1 us less per element.

With ``lock=True`` (the run step) the staging entries and the candidate expected
transactions are locked ``FOR UPDATE`` in a fixed order, and an order that another queued
TRANSACTION line also books is serialised with an advisory lock, so concurrent chunks cannot
book or fulfil twice.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recon.accounts import Account, ReconRule
from recon.errors import ErrorType
from recon.tasks.base import ManualReview
from recon.tracker import Task

_NO_METADATA = "NULL"  # decide and validate do not read metadata: an empty dict, not JSON to decode
_TASK_COLUMNS = (
    "task_id, task_type, payload, status, attempts, last_error, created_at, updated_at,"
    " processing_started_at, completed_at, run_after, lease_owner, lease_expires_at"
)


@dataclass(frozen=True, slots=True)
class StagingEntry:
    staging_entry_id: str
    account_id: str
    entry_type: str
    amount: Decimal
    currency: str
    status: str
    processing_mode: str
    effective_date: dt.datetime
    metadata: dict[str, Any]
    order_id: str | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class WorkItem:
    """A claimed tracker task and its staging entry (None when the payload is unusable)."""

    task: Task
    staging: StagingEntry | None
    problem: ManualReview | None = None  # why the payload cannot be processed

    @property
    def task_id(self) -> str:
        return self.task.task_id


@dataclass(frozen=True, slots=True)
class ExpectedLeg:
    """An EXPECTED entry waiting to be fulfilled, with its transaction's header."""

    entry_id: str
    account_id: str
    order_id: str
    entry_type: str
    amount: Decimal
    currency: str
    transaction_id: str
    logical_transaction_id: str
    version: int
    merchant_id: str
    transaction_amount: Decimal
    transaction_metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PostedLeg:
    entry_id: str
    account_id: str
    transaction_id: str
    entry_type: str
    amount: Decimal
    currency: str
    effective_date: dt.datetime
    metadata: dict[str, Any]


@dataclass
class ChunkContext:
    items: list[WorkItem]
    accounts: dict[str, Account]
    rules_by_account_one: dict[str, ReconRule]
    rules_by_account_two: dict[str, list[ReconRule]]
    booked_logical_ids: set[str]
    expected_by_order: dict[tuple[str, str], list[ExpectedLeg]]
    posted_legs: dict[str, list[PostedLeg]]  # by transaction id, for carrying over on fulfilment
    fulfilled_orders: set[tuple[str, str]]
    queued_orders: set[tuple[str, str]]  # (contra account, order) with a TRANSACTION line still PENDING
    now: dt.datetime
    consumed_expected: set[str] = field(default_factory=set)  # reserved by earlier items
    # (account, order) asked for by a CONFIRMATION line of this chunk: a booking of the chunk
    # needs to be visible to later items only when one of them confirms it
    confirmed_orders: set[tuple[str, str]] = field(default_factory=set)
    # this chunk's own PENDING TRANSACTION lines, as (contra account, order) keys per staging
    # entry: queued until evaluated, exactly as they would be one task at a time
    chunk_bookings: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    _unevaluated: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for keys in self.chunk_bookings.values():
            self._unevaluated.update(keys)

    def is_queued(self, key: tuple[str, str]) -> bool:
        """Is a TRANSACTION line for this (contra account, order) still waiting to be processed?"""
        return key in self.queued_orders or self._unevaluated[key] > 0

    def evaluated(self, item: WorkItem) -> None:
        """The item was processed: its TRANSACTION line no longer counts as queued for later items."""
        if item.staging is not None:
            self._unevaluated.subtract(self.chunk_bookings.pop(item.staging.staging_entry_id, ()))


def load_items(conn: Connection, task_ids: Sequence[str], lock: bool, metadata: bool = True) -> list[WorkItem]:
    """The tasks in claim order with their staging entries (locked with `lock`).

    ``metadata=False`` leaves each entry's metadata empty: enough to route and validate,
    and the JSON of thousands of entries is not decoded for nothing.
    """
    tasks = Task.from_rows(
        conn.exec_driver_sql(
            (f"SELECT {_TASK_COLUMNS} FROM process_tracker WHERE task_id = ANY(%(ids)b)"),
            {"ids": list(task_ids)},
        )
    )
    position = {task_id: i for i, task_id in enumerate(task_ids)}
    tasks.sort(key=lambda t: position[t.task_id])  # keep the claim order: oldest first

    staging_ids = [_staging_id(t.payload) for t in tasks]
    staging = _load_staging(conn, sorted({sid for sid in staging_ids if sid is not None}), lock, metadata)
    items = []
    for task, sid in zip(tasks, staging_ids):
        if sid is None:
            message = f"payload has no string staging_entry_id: {_short(task.payload)}"
            items.append(WorkItem(task, None, ManualReview(ErrorType.INVALID_PAYLOAD, message)))
        elif sid not in staging:
            message = f"staging entry {sid!r} does not exist"
            items.append(WorkItem(task, None, ManualReview(ErrorType.STAGING_ENTRY_NOT_FOUND, message)))
        else:
            items.append(WorkItem(task, staging[sid]))
    return items


def load_chunk(conn: Connection, task_ids: Sequence[str], lock: bool, details: bool = True) -> ChunkContext:
    """Everything the chunk's tasks need, in a few set-based queries.

    The run step loads with ``lock=True``. ``details=False`` (the read-only validate step)
    skips what only ``run`` uses: metadata of entries and transactions, and the POSTED legs a
    fulfilment carries over.
    """
    items = load_items(conn, task_ids, lock, metadata=details)
    entries = [i.staging for i in items if i.staging is not None]
    rules = _load_rules(conn, sorted({e.account_id for e in entries}))
    account_ids = {e.account_id for e in entries}
    for rule in rules:
        account_ids.update((rule.account_one_id, rule.account_two_id))
    accounts = _load_accounts(conn, sorted(account_ids))

    rules_by_one: dict[str, ReconRule] = {}
    rules_by_two: dict[str, list[ReconRule]] = {}
    for rule in rules:  # ordered oldest first: the oldest rule of an account_one wins
        rules_by_one.setdefault(rule.account_one_id, rule)
        rules_by_two.setdefault(rule.account_two_id, []).append(rule)

    logical_ids = sorted(
        {logical_transaction_id(e) for e in entries if e.processing_mode == "TRANSACTION"}
    )
    if lock and logical_ids:
        _lock_contested_orders(conn, entries)
    booked = _existing_logical_ids(conn, logical_ids)

    order_keys = sorted(
        {(e.account_id, e.order_id) for e in entries if e.processing_mode == "CONFIRMATION" and e.order_id}
    )
    # Which orders are still queued as TRANSACTION lines is read *before* the expected entries:
    # a booking another worker commits in between is then seen by the second read (each
    # statement sees what was committed before it started). Read after, such a booking was in
    # neither, and its confirmation went to manual review instead of waiting for it.
    # This chunk's own lines are left out: they count as queued only until they are evaluated.
    chunk_bookings = _chunk_bookings(entries, rules, set(order_keys))
    queued = _queued_orders(conn, order_keys, sorted(chunk_bookings))
    expected = _load_expected_legs(conn, order_keys, lock, details)
    posted_legs = (
        _load_posted_legs(conn, sorted({leg.transaction_id for legs in expected.values() for leg in legs}))
        if details else {}
    )
    unmatched_keys = [k for k in order_keys if k not in expected]
    fulfilled = _fulfilled_orders(conn, unmatched_keys)
    now = conn.execute(sa.text("SELECT now()")).scalar_one()
    return ChunkContext(
        items=items,
        accounts=accounts,
        rules_by_account_one=rules_by_one,
        rules_by_account_two=rules_by_two,
        booked_logical_ids=booked,
        expected_by_order=expected,
        posted_legs=posted_legs,
        fulfilled_orders=fulfilled,
        queued_orders=queued,
        now=now,
        confirmed_orders=set(order_keys),
        chunk_bookings=chunk_bookings,
    )


def logical_transaction_id(entry: StagingEntry) -> str:
    """`<account_id>_<order_id>`, or the staging entry id when the line has no order id."""
    return f"{entry.account_id}_{entry.order_id}" if entry.order_id else entry.staging_entry_id


def _key_arrays(order_keys: list[tuple[str, str]]) -> dict[str, list[str]]:
    """(account, order) keys as the two parallel arrays the unnest() queries take."""
    return {"accounts": [k[0] for k in order_keys], "orders": [k[1] for k in order_keys]}


def _staging_id(payload: Any) -> str | None:
    value = payload.get("staging_entry_id") if isinstance(payload, dict) else None
    return value if isinstance(value, str) and value else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _load_staging(conn: Connection, ids: list[str], lock: bool, metadata: bool) -> dict[str, StagingEntry]:
    if not ids:
        return {}
    rows = conn.exec_driver_sql(
        (
            # in StagingEntry's field order: rows are unpacked positionally
            "SELECT staging_entry_id, account_id, entry_type, amount, currency, status, processing_mode,"
            f" effective_date, {'metadata' if metadata else _NO_METADATA}, order_id, created_at"
            " FROM staging_entries WHERE staging_entry_id = ANY(%(ids)b) ORDER BY staging_entry_id"
            + (" FOR UPDATE" if lock else "")
        ),
        {"ids": ids},
    )
    if not metadata:
        return {r[0]: StagingEntry(*r[:8], {}, *r[9:]) for r in rows}
    return {r[0]: StagingEntry(*r) for r in rows}


def _load_rules(conn: Connection, account_ids: list[str]) -> list[ReconRule]:
    if not account_ids:
        return []
    rows = conn.execute(
        sa.text(
            "SELECT id, merchant_id, account_one_id, account_two_id FROM recon_rules"
            " WHERE account_one_id = ANY(:ids) OR account_two_id = ANY(:ids) ORDER BY created_at, id"
        ),
        {"ids": account_ids},
    )
    return [ReconRule(*r) for r in rows]  # selected in field order


def _load_accounts(conn: Connection, account_ids: list[str]) -> dict[str, Account]:
    if not account_ids:
        return {}
    rows = conn.execute(
        sa.text(
            "SELECT account_id, merchant_id, account_name, account_type, currency, initial_balance"
            " FROM accounts WHERE account_id = ANY(:ids)"
        ),
        {"ids": account_ids},
    )
    return {r[0]: Account(*r) for r in rows}  # selected in field order


def _lock_contested_orders(conn: Connection, entries: list[StagingEntry]) -> None:
    """Serialise bookings of an order that another queued TRANSACTION line books too.

    Only such an order can be booked twice by concurrent chunks: the lines of this chunk are
    counted against all PENDING lines for the same (account, order), and where there are more
    (another chunk's, or one not yet claimed) the order's logical id is locked, in a fixed order;
    the chunk that gets the lock second then sees the first one's booking. Orders queued once,
    the usual case, take no lock, so concurrent chunks do not wait for each other (one lock per
    order of a 20,000-line chunk would overflow PostgreSQL's lock table; one per account made
    concurrent chunks take turns). A line ingested after this check and booked concurrently
    still cannot be booked twice: the unique (logical_transaction_id, version) makes the later
    chunk fail and retry its tasks one by one.
    """
    in_chunk = Counter(
        (e.account_id, e.order_id) for e in entries
        if e.processing_mode == "TRANSACTION" and e.status == "PENDING" and e.order_id
    )
    if not in_chunk:
        return
    keys = sorted(in_chunk)
    contested = conn.exec_driver_sql(
        (
            """
            SELECT k.account_id || '_' || k.order_id
            FROM unnest(CAST(%(accounts)b AS text[]), CAST(%(orders)b AS text[]), CAST(%(counts)b AS integer[]))
                AS k(account_id, order_id, in_chunk)
            WHERE (SELECT count(*) FROM staging_entries s
                   WHERE s.account_id = k.account_id AND s.order_id = k.order_id
                     AND s.processing_mode = 'TRANSACTION' AND s.status = 'PENDING') > k.in_chunk
            """
        ),
        {**_key_arrays(keys), "counts": [in_chunk[k] for k in keys]},
    ).scalars().all()
    if contested:
        conn.exec_driver_sql(
            (
                "SELECT pg_advisory_xact_lock(k) FROM ("
                " SELECT DISTINCT hashtextextended(x, 0) AS k FROM unnest(CAST(%(ids)b AS text[])) AS x"
                " ORDER BY k) AS keys"
            ),
            {"ids": contested},
        )

def _existing_logical_ids(conn: Connection, logical_ids: list[str]) -> set[str]:
    if not logical_ids:
        return set()
    rows = conn.exec_driver_sql(
        (
            "SELECT DISTINCT logical_transaction_id FROM transactions"
            " WHERE logical_transaction_id = ANY(CAST(%(ids)b AS text[]))"
        ),
        {"ids": logical_ids},
    )
    return set(rows.scalars())


def _load_expected_legs(
    conn: Connection, order_keys: list[tuple[str, str]], lock: bool, metadata: bool = True
) -> dict[tuple[str, str], list[ExpectedLeg]]:
    if not order_keys:
        return {}
    rows = conn.exec_driver_sql(
        (
            # in ExpectedLeg's field order: rows are unpacked positionally
            f"""
            SELECT e.entry_id, e.account_id, e.order_id, e.entry_type, e.amount, e.currency,
                   t.transaction_id, t.logical_transaction_id, t.version, t.merchant_id,
                   t.amount AS transaction_amount, {'t.metadata' if metadata else _NO_METADATA}
            FROM unnest(CAST(%(accounts)b AS text[]), CAST(%(orders)b AS text[])) AS k(account_id, order_id)
            JOIN entries e ON e.account_id = k.account_id AND e.order_id = k.order_id
            JOIN transactions t ON t.transaction_id = e.transaction_id
            WHERE e.status = 'EXPECTED' AND t.status NOT IN ('ARCHIVED', 'MISMATCH')
            ORDER BY t.transaction_id, e.entry_id
            """
            + (" FOR UPDATE OF t" if lock else "")
        ),
        _key_arrays(order_keys),
    )
    legs: dict[tuple[str, str], list[ExpectedLeg]] = {}
    for r in rows:
        leg = ExpectedLeg(*r) if metadata else ExpectedLeg(*r[:-1], {})
        legs.setdefault((leg.account_id, leg.order_id), []).append(leg)
    return legs


def _load_posted_legs(conn: Connection, transaction_ids: list[str]) -> dict[str, list[PostedLeg]]:
    if not transaction_ids:
        return {}
    rows = conn.exec_driver_sql(
        (  # in PostedLeg's field order: rows are unpacked positionally
            "SELECT entry_id, account_id, transaction_id, entry_type, amount, currency, effective_date,"
            " metadata FROM entries WHERE transaction_id = ANY(%(ids)b) AND status = 'POSTED'"
            " ORDER BY transaction_id, entry_id"
        ),
        {"ids": transaction_ids},
    )
    legs: dict[str, list[PostedLeg]] = {}
    for r in rows:
        leg = PostedLeg(*r)
        legs.setdefault(leg.transaction_id, []).append(leg)
    return legs


def _fulfilled_orders(conn: Connection, order_keys: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Orders on an account whose expected leg was already fulfilled (a repeated confirmation)."""
    if not order_keys:
        return set()
    rows = conn.exec_driver_sql(
        (
            """
            SELECT DISTINCT e.account_id, e.order_id
            FROM unnest(CAST(%(accounts)b AS text[]), CAST(%(orders)b AS text[])) AS k(account_id, order_id)
            JOIN entries e ON e.account_id = k.account_id AND e.order_id = k.order_id
            WHERE e.fulfilled_expected_entry_id IS NOT NULL
            """
        ),
        _key_arrays(order_keys),
    )
    return {(r.account_id, r.order_id) for r in rows}


def _chunk_bookings(
    entries: list[StagingEntry], rules: list[ReconRule], confirmed: set[tuple[str, str]]
) -> dict[str, list[tuple[str, str]]]:
    """PENDING TRANSACTION lines of the chunk that a confirmation of the chunk asks about."""
    contras: dict[str, list[str]] = {}
    for rule in rules:
        contras.setdefault(rule.account_one_id, []).append(rule.account_two_id)
    bookings = {}
    for e in entries:
        if e.processing_mode == "TRANSACTION" and e.status == "PENDING" and e.order_id:
            keys = [(two, e.order_id) for two in contras.get(e.account_id, ()) if (two, e.order_id) in confirmed]
            if keys:
                bookings[e.staging_entry_id] = keys
    return bookings


def _queued_orders(
    conn: Connection, order_keys: list[tuple[str, str]], exclude: list[str]
) -> set[tuple[str, str]]:
    """Confirmations whose order is itself still waiting in the queue as a TRANSACTION line.

    Such a confirmation waits instead of failing, so the outcome does not depend on which
    chunk or worker happened to run first.
    """
    if not order_keys:
        return set()
    rows = conn.exec_driver_sql(
        (
            """
            SELECT DISTINCT k.account_id, k.order_id
            FROM unnest(CAST(%(accounts)b AS text[]), CAST(%(orders)b AS text[])) AS k(account_id, order_id)
            JOIN recon_rules r ON r.account_two_id = k.account_id
            -- LATERAL ... LIMIT 1: one probe of staging_entries_queued_transaction_idx on (account,
            -- order) per rule; as a plain join the planner probed by order alone, across accounts
            CROSS JOIN LATERAL (
                SELECT 1 FROM staging_entries s
                WHERE s.account_id = r.account_one_id AND s.order_id = k.order_id
                  AND s.processing_mode = 'TRANSACTION' AND s.status = 'PENDING'
                  AND s.staging_entry_id <> ALL(CAST(%(exclude)b AS text[]))
                LIMIT 1) AS queued
            """
        ),
        {**_key_arrays(order_keys), "exclude": exclude},
    )
    return {(r.account_id, r.order_id) for r in rows}
