"""Staging entries: the producers' insert and every status change, the only module whose SQL reads
or writes ``staging_entries``.

- Producers: a staging entry and its PROCESS_STAGING_ENTRY task are written by one statement
  (the entry's INSERT ... RETURNING feeds the tracker's ``INSERT_TASKS_FOR_NEW_ENTRIES``), so there
  is never an entry without its task, whatever fails.
- The engine: chunk loads, the outcome of each processed line (PROCESSED, NEEDS_MANUAL_REVIEW),
  and the questions the matcher asks about lines still waiting to be booked.
- Reprocessing: entries in manual review reopened (PENDING) for a backfill.
- Read models for the report and the Recon view.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recon import accounts, tracker
from recon.db import Database, default_database, json_rows
from recon.errors import ErrorType, InvalidInputError
from recon.model import EntryType, ProcessingMode, StagingEntry
from recon.money import parse_amount, parse_currency

MAX_METADATA_BYTES = 16_384  # per entry; keeps a row small and a bad producer visible
MAX_ORDER_ID_LENGTH = 255
MAX_NATURAL_KEY_LENGTH = 1_000


@dataclass(frozen=True)
class NewStagingEntry:
    """A statement line to reconcile; validated on construction."""

    account_id: str
    entry_type: str
    amount: Decimal
    currency: str
    processing_mode: str
    effective_date: dt.datetime
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # a bank statement line's duplicate key, unique per account (None: no natural key, e.g. CSV)
    natural_key: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.account_id, str) or not self.account_id:
            raise InvalidInputError(f"account_id must be a non-empty string, got {self.account_id!r}")
        try:
            object.__setattr__(self, "entry_type", EntryType(self.entry_type).value)
        except ValueError:
            raise InvalidInputError(f"entry_type {self.entry_type!r} must be DEBIT or CREDIT") from None
        try:
            object.__setattr__(self, "processing_mode", ProcessingMode(self.processing_mode).value)
        except ValueError:
            raise InvalidInputError(
                f"processing_mode {self.processing_mode!r} must be TRANSACTION or CONFIRMATION"
            ) from None
        object.__setattr__(self, "amount", parse_amount(self.amount))
        object.__setattr__(self, "currency", parse_currency(self.currency))
        if not isinstance(self.effective_date, dt.datetime) or self.effective_date.tzinfo is None:
            raise InvalidInputError(
                f"effective_date must be a timezone-aware datetime, got {self.effective_date!r}"
            )
        object.__setattr__(self, "metadata", _check_metadata(self.metadata))
        if self.natural_key is not None and (
            not isinstance(self.natural_key, str) or not 1 <= len(self.natural_key) <= MAX_NATURAL_KEY_LENGTH
            or "\x00" in self.natural_key
        ):
            raise InvalidInputError(
                f"natural_key must be a string of 1 to {MAX_NATURAL_KEY_LENGTH} characters without NUL,"
                f" got {self.natural_key!r:.80}"
            )

    @property
    def order_id(self) -> str | None:
        return self.metadata.get("order_id")


def parse_processing_mode(mode: object) -> str:
    """A processing mode as the user wrote it (any case, spaces around) -> TRANSACTION or CONFIRMATION
    (SETTLEMENT lines are written by the settlement report ingest only)."""
    value = str(mode).strip().upper()
    if value not in (ProcessingMode.TRANSACTION, ProcessingMode.CONFIRMATION):
        raise InvalidInputError(f"mode {mode!r} must be TRANSACTION or CONFIRMATION")
    return value


def _check_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata must be a JSON object, got {type(metadata).__name__}")
    try:
        encoded = json.dumps(dict(metadata), allow_nan=False, default=_reject)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata is not JSON: {exc}") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidInputError(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    if _contains_nul(metadata):
        raise InvalidInputError("metadata contains a NUL character, which PostgreSQL text cannot store")
    order_id = metadata.get("order_id")
    if order_id is not None:
        if not isinstance(order_id, str) or not order_id.strip():
            raise InvalidInputError(f"metadata.order_id must be a non-empty string, got {order_id!r}")
        if len(order_id) > MAX_ORDER_ID_LENGTH:
            raise InvalidInputError(f"metadata.order_id is longer than {MAX_ORDER_ID_LENGTH} characters")
    return json.loads(encoded)


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_contains_nul(v) for v in value)
    return False


def _reject(value: object) -> None:
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# Ids are drawn in the input CTE (materialised: it is volatile and read twice) so the result
# can be returned in input order.
_INSERT_ENTRIES_AND_TASKS = sa.text(
    f"""
    WITH input AS MATERIALIZED (
        SELECT recon_new_id('stg') AS staging_entry_id, i.* FROM unnest(
            CAST(:account_ids AS text[]), CAST(:entry_types AS text[]), CAST(:amounts AS numeric[]),
            CAST(:currencies AS text[]), CAST(:modes AS text[]), CAST(:dates AS timestamptz[]),
            CAST(:metadata AS jsonb[]), CAST(:natural_keys AS text[])
        ) WITH ORDINALITY AS i(account_id, entry_type, amount, currency, processing_mode,
                                effective_date, metadata, natural_key, n)
    ), new_entries AS (
        INSERT INTO staging_entries (staging_entry_id, account_id, entry_type, amount, currency,
                                     processing_mode, effective_date, metadata, natural_key)
        SELECT staging_entry_id, account_id, entry_type, amount, currency, processing_mode,
               effective_date, metadata, natural_key
        FROM input ORDER BY n
        -- a line whose natural key the account already has is a duplicate: no entry, no task
        ON CONFLICT (account_id, natural_key) WHERE natural_key IS NOT NULL DO NOTHING
        RETURNING staging_entry_id
    ), new_tasks AS ({tracker.INSERT_TASKS_FOR_NEW_ENTRIES})
    SELECT input.staging_entry_id, new_tasks.task_id, input.natural_key
    FROM input JOIN new_tasks USING (staging_entry_id)
    ORDER BY input.n
    """
)


@dataclass(frozen=True)
class Created:
    staging_entry_id: str
    task_id: str
    natural_key: str | None = None


def insert_staging_entries(conn: Connection, entries: Sequence[NewStagingEntry]) -> list[Created]:
    """Insert entries and their tasks on `conn` (the caller's transaction), in input order; an
    entry whose natural key its account already has is left out (a duplicate bank line)."""
    if not entries:
        return []
    rows = conn.execute(
        _INSERT_ENTRIES_AND_TASKS,
        {
            "account_ids": [e.account_id for e in entries],
            "entry_types": [e.entry_type for e in entries],
            "amounts": [e.amount for e in entries],
            "currencies": [e.currency for e in entries],
            "modes": [e.processing_mode for e in entries],
            "dates": [e.effective_date for e in entries],
            "metadata": [json.dumps(e.metadata) for e in entries],
            "natural_keys": [e.natural_key for e in entries],
        },
    ).all()
    return [Created(r.staging_entry_id, r.task_id, r.natural_key) for r in rows]


def create_staging_entries(
    entries: Sequence[NewStagingEntry], db: Database | None = None
) -> list[Created]:
    """Library producer (an entry point: without `db`, the resolved default database): insert
    entries with their tasks in one transaction (all or none)."""
    for entry in entries:
        if not isinstance(entry, NewStagingEntry):
            raise InvalidInputError(f"expected NewStagingEntry, got {type(entry).__name__}")
    with (db or default_database()).begin() as conn:
        _require_accounts(conn, {e.account_id for e in entries})
        return insert_staging_entries(conn, entries)


def create_staging_entry(
    account_id: str,
    entry_type: str,
    amount: Decimal | str | int,
    currency: str,
    processing_mode: str,
    effective_date: dt.datetime | None = None,
    metadata: Mapping[str, Any] | None = None,
    db: Database | None = None,
) -> Created:
    entry = NewStagingEntry(
        account_id=account_id,
        entry_type=entry_type,
        amount=amount,  # type: ignore[arg-type]  # validated and converted in __post_init__
        currency=currency,
        processing_mode=processing_mode,
        effective_date=effective_date or dt.datetime.now(dt.timezone.utc),
        metadata=metadata or {},
    )
    return create_staging_entries([entry], db=db)[0]


def _require_accounts(conn: Connection, account_ids: set[str]) -> None:
    missing = sorted(account_ids - set(accounts.load_accounts(conn, sorted(account_ids))))
    if missing:
        raise InvalidInputError(f"unknown account_id(s): {', '.join(missing)}", field="account_id")


# ---- ingest: one file at a time per account and mode, duplicates by order id ------------------------

_LOCK_FOR_INGEST = sa.text(
    "SELECT pg_advisory_xact_lock(hashtextextended('recon.csv_ingest:' || :account_id || ':' || :mode, 0))"
)


def lock_for_ingest(conn: Connection, account_id: str, mode: str) -> None:
    """Wait for, then hold until the transaction ends, the ingest lock of (account, mode): two
    concurrent ingests of the same file cannot both insert its lines."""
    conn.execute(_LOCK_FOR_INGEST, {"account_id": account_id, "mode": mode})


# created_at defaults to now(), the transaction's start: rows of this file (earlier batches,
# same transaction) are told apart from entries that existed before. The wording is all it decides.
_STAGED_ORDER_IDS = sa.text(
    """
    SELECT order_id, bool_or(created_at = now()) AS from_this_file
    FROM staging_entries
    WHERE account_id = :account_id AND processing_mode = :mode AND order_id = ANY(:order_ids)
    GROUP BY order_id
    """
)


def staged_natural_keys(conn: Connection, account_id: str, natural_keys: Sequence[str]) -> dict[str, bool]:
    """Which of these natural keys the account already has: key -> staged by this transaction."""
    result = conn.execute(
        sa.text(
            "SELECT natural_key, created_at = now() AS from_this_file FROM staging_entries"
            " WHERE account_id = :account_id AND natural_key = ANY(:keys)"
        ),
        {"account_id": account_id, "keys": list(natural_keys)},
    )
    return {key: from_this_file for key, from_this_file in result}


def staged_order_ids(conn: Connection, account_id: str, mode: str, order_ids: Sequence[str]) -> dict[str, bool]:
    """Which of `order_ids` already have an entry on (account, mode): order id -> staged by this transaction."""
    result = conn.execute(_STAGED_ORDER_IDS, {"account_id": account_id, "mode": mode, "order_ids": list(order_ids)})
    return {order_id: from_this_file for order_id, from_this_file in result}


# ---- the engine: chunk loads --------------------------------------------------------------------

def load_entries(conn: Connection, ids: Sequence[str], lock: bool, metadata: bool = True) -> dict[str, StagingEntry]:
    """Entries by id, locked FOR UPDATE in id order with `lock`; `metadata=False` leaves it empty.

    Arrays of a chunk's size travel as binary arrays (``%(name)b`` with exec_driver_sql): psycopg
    builds them without the per-element escaping of the text format.
    """
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
        {"ids": sorted(ids)},
    )
    if not metadata:
        return {r[0]: StagingEntry(*r[:8], r[8] or {}, *r[9:]) for r in rows}
    return {r[0]: StagingEntry(*r) for r in rows}


# Routing and validation of most strategies read no metadata; only the expected leg a reprocessed
# mismatch held is kept (the matcher judges it again against that leg): one key read in the same
# statement, no extra query for the chunk.
_NO_METADATA = (
    "CASE WHEN status <> 'PROCESSED' AND metadata ? 'matched_entry_id'"
    " THEN jsonb_build_object('matched_entry_id', metadata -> 'matched_entry_id') END"
)


def _key_arrays(keys: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """(account, order) keys as the two parallel arrays the unnest() queries take."""
    return {"accounts": [k[0] for k in keys], "orders": [k[1] for k in keys]}


def contested_orders(conn: Connection, in_chunk: Counter[tuple[str, str]]) -> list[tuple[str, str]]:
    """(account, order) keys with more PENDING TRANSACTION lines than the chunk's own count of them:
    another chunk (or a line not yet claimed) books the same order too."""
    if not in_chunk:
        return []
    keys = sorted(in_chunk)
    rows = conn.exec_driver_sql(
        (
            """
            SELECT k.account_id, k.order_id
            FROM unnest(CAST(%(accounts)b AS text[]), CAST(%(orders)b AS text[]), CAST(%(counts)b AS integer[]))
                AS k(account_id, order_id, in_chunk)
            WHERE (SELECT count(*) FROM staging_entries s
                   WHERE s.account_id = k.account_id AND s.order_id = k.order_id
                     AND s.processing_mode = 'TRANSACTION' AND s.status = 'PENDING') > k.in_chunk
            """
        ),
        {**_key_arrays(keys), "counts": [in_chunk[k] for k in keys]},
    )
    return [(r.account_id, r.order_id) for r in rows]


def queued_transaction_orders(
    conn: Connection, keys: Sequence[tuple[str, str]], exclude: Sequence[str]
) -> dict[tuple[str, str], list[str]]:
    """The PENDING TRANSACTION lines of each (account, order) key that has any, leaving out the entries
    in `exclude` (a chunk's own lines, which count as queued only until they are evaluated)."""
    if not keys:
        return {}
    rows = conn.exec_driver_sql(
        (
            """
            SELECT k.account_id, k.order_id, queued.ids
            FROM unnest(CAST(%(accounts)b AS text[]), CAST(%(orders)b AS text[])) AS k(account_id, order_id)
            -- LATERAL: one probe of staging_entries_queued_transaction_idx per key
            CROSS JOIN LATERAL (
                SELECT array_agg(s.staging_entry_id ORDER BY s.staging_entry_id) AS ids FROM staging_entries s
                WHERE s.account_id = k.account_id AND s.order_id = k.order_id
                  AND s.processing_mode = 'TRANSACTION' AND s.status = 'PENDING'
                  AND s.staging_entry_id <> ALL(CAST(%(exclude)b AS text[]))) AS queued
            WHERE queued.ids IS NOT NULL
            """
        ),
        {**_key_arrays(sorted(set(keys))), "exclude": list(exclude)},
    )
    return {(r.account_id, r.order_id): r.ids for r in rows}


def queued_transaction_metadata(
    conn: Connection, probes: Sequence[tuple[str, dict[str, str]]], exclude: Sequence[str]
) -> dict[int, list[str]]:
    """By position of the (account, metadata) probes: the PENDING TRANSACTION lines of that account
    whose metadata contains the probe, leaving out `exclude`. The queued lines of an account are few
    once bookings run ahead of confirmations; each probe reads them along
    staging_entries_queued_transaction_idx."""
    if not probes:
        return {}
    rows = conn.exec_driver_sql(
        """
        SELECT k.i, queued.ids
        FROM unnest(CAST(%(accounts)b AS text[]), CAST(%(probes)b AS text[])) WITH ORDINALITY AS k(account_id, probe, i)
        CROSS JOIN LATERAL (
            SELECT array_agg(s.staging_entry_id ORDER BY s.staging_entry_id) AS ids FROM staging_entries s
            WHERE s.account_id = k.account_id AND s.processing_mode = 'TRANSACTION' AND s.status = 'PENDING'
              AND s.metadata @> CAST(k.probe AS jsonb)
              -- NOT IN (unnest): a hashed look-up per line; `<> ALL(array)` scans the chunk's ids per line
              AND s.staging_entry_id NOT IN (SELECT unnest(CAST(%(exclude)b AS text[])))) AS queued
        WHERE queued.ids IS NOT NULL
        """,
        {"accounts": [p[0] for p in probes], "probes": [json.dumps(p[1], sort_keys=True) for p in probes],
         "exclude": list(exclude)},
    )
    return {r.i - 1: r.ids for r in rows}


def queued_transaction_amounts(
    conn: Connection, ranges: Sequence[tuple[str, str, Decimal, Decimal]], exclude: Sequence[str]
) -> dict[int, list[str]]:
    """By position of the (account, side, lowest, highest amount) ranges: the PENDING TRANSACTION
    lines of that account and side in the range, leaving out `exclude`."""
    if not ranges:
        return {}
    rows = conn.exec_driver_sql(
        """
        SELECT k.i, queued.ids
        FROM unnest(CAST(%(accounts)b AS text[]), CAST(%(sides)b AS text[]),
                    CAST(%(lows)b AS numeric[]), CAST(%(highs)b AS numeric[])) WITH ORDINALITY
            AS k(account_id, side, low, high, i)
        CROSS JOIN LATERAL (
            SELECT array_agg(s.staging_entry_id ORDER BY s.staging_entry_id) AS ids FROM staging_entries s
            WHERE s.account_id = k.account_id AND s.processing_mode = 'TRANSACTION' AND s.status = 'PENDING'
              AND s.entry_type = k.side AND s.amount BETWEEN k.low AND k.high
              AND s.staging_entry_id NOT IN (SELECT unnest(CAST(%(exclude)b AS text[])))) AS queued
        WHERE queued.ids IS NOT NULL
        """,
        {"accounts": [r[0] for r in ranges], "sides": [r[1] for r in ranges], "lows": [r[2] for r in ranges],
         "highs": [r[3] for r in ranges], "exclude": list(exclude)},
    )
    return {r.i - 1: r.ids for r in rows}


# ---- the engine: outcomes -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StagingUpdate:
    """A staging entry's new status and the keys to merge into its metadata."""

    staging_entry_id: str
    status: str
    patch: dict[str, Any]
    task_id: str | None = None
    reason: str | None = None  # the history's reason when the patch carries no error (a reviewer's decision)


# the status change and its row in the entry's append-only history, in one statement
_UPDATE_STAGING = sa.text(
    """
    WITH changed AS (
        UPDATE staging_entries s SET
            status = u.status,
            -- the reasons of an earlier review (a reprocessed entry) go when it is processed
            metadata = CASE WHEN u.status = 'PROCESSED'
                            THEN (s.metadata - 'error' - 'error_type' - 'mismatched_fields' - 'candidates') || u.patch
                            ELSE s.metadata || u.patch END,
            discarded_at = CASE WHEN u.status = 'PROCESSED' THEN now() ELSE s.discarded_at END,
            updated_at = now()  -- set here, the touch trigger is skipped (sql/0002)
        FROM json_to_recordset(CAST(:rows AS json)) AS u(staging_entry_id text, status text, patch jsonb,
                                                          task_id text, reason text)
        WHERE s.staging_entry_id = u.staging_entry_id AND s.status <> 'PROCESSED'
        RETURNING s.staging_entry_id, u.status, u.patch, u.task_id, u.reason
    )
    INSERT INTO staging_entry_outcomes (staging_entry_id, status, error_type, reason, task_id, run)
    SELECT staging_entry_id, status, patch ->> 'error_type', coalesce(patch ->> 'error', reason), task_id, :run
    FROM changed
    """
)


def apply_updates(conn: Connection, updates: Sequence[StagingUpdate], run: str | None = None) -> None:
    """One statement for all staging status changes of a chunk, each kept in the entry's history
    (`run`: the lease owner that wrote them); PROCESSED is never undone."""
    if updates:
        conn.execute(_UPDATE_STAGING, {"rows": json_rows(updates), "run": run})


def mark_for_review(conn: Connection, staging_entry_ids: Sequence[str], error: str, error_type: ErrorType) -> None:
    """Entries that will not be processed (e.g. their task ran out of attempts) go to manual review."""
    if not staging_entry_ids:
        return
    conn.execute(
        sa.text(
            """
            WITH changed AS (
                UPDATE staging_entries SET status = 'NEEDS_MANUAL_REVIEW',
                       metadata = metadata || jsonb_build_object('error', CAST(:error AS text),
                                                                 'error_type', CAST(:error_type AS text))
                WHERE status <> 'PROCESSED' AND staging_entry_id = ANY(:ids)
                RETURNING staging_entry_id
            )
            INSERT INTO staging_entry_outcomes (staging_entry_id, status, error_type, reason, run)
            SELECT staging_entry_id, 'NEEDS_MANUAL_REVIEW', :error_type, :error, 'reaper' FROM changed
            """
        ),
        {"ids": list(staging_entry_ids), "error": error[:4000], "error_type": error_type.value},
    )


# ---- reprocessing --------------------------------------------------------------------------------


def reopen_for_review(conn: Connection, scope: ReprocessScope, reason: str = "reopened by a reprocess",
                      run: str = "reprocess") -> list[str]:
    """Entries in manual review within the scope back to PENDING, their error keys removed (the
    reason stays in their history, with a row saying why they were reopened); returns their ids."""
    return list(
        conn.execute(
            sa.text(
                f"""
                WITH in_scope AS (
                    SELECT s.staging_entry_id FROM staging_entries s WHERE {_SCOPE_FILTER}
                    FOR UPDATE OF s
                ), reopened AS (
                    UPDATE staging_entries s SET status = 'PENDING',
                        metadata = s.metadata - 'error' - 'error_type' - 'mismatched_fields' - 'candidates'
                    FROM in_scope WHERE s.staging_entry_id = in_scope.staging_entry_id
                    RETURNING s.staging_entry_id
                ), recorded AS (
                    INSERT INTO staging_entry_outcomes (staging_entry_id, status, reason, run)
                    SELECT staging_entry_id, 'PENDING', :reason, :run FROM reopened
                )
                SELECT staging_entry_id FROM reopened
                """
            ),
            {**scope.params(), "reason": reason, "run": run},
        ).scalars()
    )


# ---- reviewer actions (recon.review) -------------------------------------------------------------


@dataclass(frozen=True)
class ReviewItem:
    """A staging entry as a reviewer acts on it: the line, and when it last changed (what the
    reviewer saw is compared with it)."""

    entry: StagingEntry
    updated_at: dt.datetime


def lock_for_review(conn: Connection, staging_entry_id: str) -> ReviewItem | None:
    """The entry locked FOR UPDATE (the engine's chunk locks it too: one of them waits)."""
    row = conn.execute(
        sa.text(
            "SELECT staging_entry_id, account_id, entry_type, amount, currency, status, processing_mode,"
            " effective_date, metadata, order_id, created_at, updated_at"
            " FROM staging_entries WHERE staging_entry_id = :id FOR UPDATE"
        ),
        {"id": staging_entry_id},
    ).first()
    return ReviewItem(StagingEntry(*row[:11]), row.updated_at) if row is not None else None


_MATCH_KEYS = ("match_type", "matched_transaction_id", "matched_entry_id", "evolved_transaction_id",
               "variance", "variance_account_id")
_REVIEW_KEYS = ("mismatched_fields", "candidates")  # findings of an earlier review


def back_to_review(conn: Connection, staging_entry_id: str, error: str, error_type: str,
                   patch: dict[str, Any], run: str | None = None) -> None:
    """A reopened confirmation goes back to manual review (from PROCESSED too), its match keys and
    the findings of an earlier review removed; the change is kept in its history (`run`: who did it)."""
    conn.execute(
        sa.text(
            """
            WITH changed AS (
                UPDATE staging_entries SET status = 'NEEDS_MANUAL_REVIEW', discarded_at = NULL, updated_at = now(),
                       metadata = (metadata - CAST(:drop AS text[])) || CAST(:patch AS jsonb)
                                  || jsonb_build_object('error', CAST(:error AS text),
                                                        'error_type', CAST(:error_type AS text))
                WHERE staging_entry_id = :id
                RETURNING staging_entry_id
            )
            INSERT INTO staging_entry_outcomes (staging_entry_id, status, error_type, reason, run)
            SELECT staging_entry_id, 'NEEDS_MANUAL_REVIEW', :error_type, :error, :run FROM changed
            """
        ),
        {"id": staging_entry_id, "drop": list(_MATCH_KEYS + _REVIEW_KEYS), "patch": json.dumps(patch),
         "error": error, "error_type": error_type, "run": run},
    )


@dataclass(frozen=True)
class OpenItem:
    """A line in manual review, as the review list and its export show it."""

    staging_entry_id: str
    account_id: str
    order_id: str | None
    entry_type: str
    amount: Decimal
    currency: str
    processing_mode: str
    error_type: str
    reason: str | None
    metadata: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


def open_items(conn: Connection, error_type: str | None = None, account_id: str | None = None,
               older_than: dt.timedelta | None = None, limit: int = 10_000,
               after: tuple[dt.datetime, str] | None = None) -> list[OpenItem]:
    """Lines in manual review, oldest first; `older_than` compares with the line's created_at;
    `after` (created_at, staging_entry_id) of the previous page's last line (the API's cursor)."""
    rows = conn.execute(
        sa.text(
            """
            SELECT staging_entry_id, account_id, order_id, entry_type, amount, currency, processing_mode,
                   coalesce(metadata ->> 'error_type', '(none)'), metadata ->> 'error', metadata,
                   created_at, updated_at
            FROM staging_entries
            WHERE status = 'NEEDS_MANUAL_REVIEW'
              AND (CAST(:error_type AS text) IS NULL OR coalesce(metadata ->> 'error_type', '(none)') = :error_type)
              AND (CAST(:account_id AS text) IS NULL OR account_id = :account_id)
              AND (CAST(:older_than AS interval) IS NULL OR created_at < now() - CAST(:older_than AS interval))
              AND (CAST(:after_at AS timestamptz) IS NULL
                   OR (created_at, staging_entry_id) > (CAST(:after_at AS timestamptz), CAST(:after_id AS text)))
            ORDER BY created_at, staging_entry_id
            LIMIT :limit
            """
        ),
        {"error_type": error_type, "account_id": account_id, "older_than": older_than, "limit": limit,
         "after_at": after[0] if after else None, "after_id": after[1] if after else None},
    )
    return [OpenItem(*r) for r in rows]


def ageing_buckets(conn: Connection) -> list[Any]:
    """Lines in manual review per error type and age (since created_at): under 1 day, 1-3, 3-7,
    over 7 days; count and amount per currency."""
    return conn.execute(
        sa.text(
            """
            SELECT coalesce(metadata ->> 'error_type', '(none)') AS error_type,
                   CASE WHEN age < interval '1 day' THEN '<1d' WHEN age < interval '3 days' THEN '1-3d'
                        WHEN age < interval '7 days' THEN '3-7d' ELSE '>7d' END AS bucket,
                   currency, count(*) AS count, sum(amount) AS amount
            FROM (SELECT *, now() - created_at AS age FROM staging_entries
                  WHERE status = 'NEEDS_MANUAL_REVIEW') s
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
            """
        )
    ).all()


def review_scope_ids(conn: Connection, scope: ReprocessScope) -> list[str]:
    """The manual-review entries a reprocess of the scope would reopen (read-only)."""
    return list(conn.execute(sa.text(f"SELECT s.staging_entry_id FROM staging_entries s WHERE {_SCOPE_FILTER}"),
                             scope.params()).scalars())


def review_scope_types(conn: Connection, scope: ReprocessScope) -> dict[str, str]:
    """The manual-review entries a reprocess of the scope would reopen, each with its error type now
    (read-only; a dry run lists them one by one)."""
    rows = conn.execute(
        sa.text(f"SELECT s.staging_entry_id, coalesce(s.metadata ->> 'error_type', '(none)') AS error_type"
                f" FROM staging_entries s WHERE {_SCOPE_FILTER} ORDER BY s.staging_entry_id"),
        scope.params(),
    ).all()
    return {r.staging_entry_id: r.error_type for r in rows}


def review_scope_by_type(conn: Connection, scope: ReprocessScope) -> dict[str, int]:
    """What a reprocess of the scope would reopen: entries per error type (a dry run's answer)."""
    rows = conn.execute(
        sa.text(
            f"""
            SELECT coalesce(s.metadata ->> 'error_type', '(none)') AS error_type, count(*) AS n
            FROM staging_entries s WHERE {_SCOPE_FILTER}
            GROUP BY 1 ORDER BY n DESC, 1
            """
        ),
        scope.params(),
    ).all()
    return {r.error_type: r.n for r in rows}


# ---- look-ups: one entry and its history, the open exceptions in full -------------------------------


def outcome_history(conn: Connection, staging_entry_id: str) -> list[Any]:
    """Every outcome of an entry, oldest first (append-only: reasons a reprocess replaced included)."""
    return conn.execute(
        sa.text("SELECT status, error_type, reason, task_id, run, recorded_at FROM staging_entry_outcomes"
                " WHERE staging_entry_id = :id ORDER BY outcome_id"),
        {"id": staging_entry_id},
    ).all()


def entries_of_order(conn: Connection, order_id: str) -> list[StagingEntryRow]:
    """Every staging entry carrying this order id, on any account, oldest first."""
    rows = conn.execute(
        sa.text(f"SELECT {_ROW_COLUMNS} FROM staging_entries WHERE order_id = :order ORDER BY created_at, staging_entry_id"),
        {"order": order_id},
    )
    return [StagingEntryRow(*r) for r in rows]


def stream_review_entries(conn: Connection, where: ReviewFilter, since: dt.datetime | None = None) -> Iterator[Any]:
    """Every matching manual-review entry, no cap, read through a server-side cursor (an export of
    200,000 rows holds one batch in memory, not all)."""
    result = conn.execution_options(stream_results=True, yield_per=2_000).execute(
        sa.text(
            f"""
            SELECT s.staging_entry_id, s.account_id, s.order_id, s.entry_type, s.amount, s.currency,
                   s.processing_mode, coalesce(s.metadata ->> 'error_type', '(none)') AS error_type,
                   s.metadata ->> 'error' AS reason, s.created_at, s.updated_at
            FROM staging_entries s
            WHERE {_REVIEW_FILTER} AND (CAST(:since AS timestamptz) IS NULL OR s.created_at >= :since)
            ORDER BY s.staging_entry_id
            """
        ),
        {**where.params(), "since": since},
    )
    yield from result


def analyze(conn: Connection) -> None:
    """Fresh planner statistics after a bulk ingest: the view's plans must not wait for autovacuum."""
    conn.execute(sa.text("ANALYZE staging_entries"))


# ---- taking back a wrong ingest ------------------------------------------------------------------


def file_entries(conn: Connection, source_file: str, account_id: str | None) -> list[Any]:
    """The entries ingested from a file (metadata.source_file), locked: (staging_entry_id, status)."""
    return conn.execute(
        sa.text(
            "SELECT staging_entry_id, status FROM staging_entries"
            " WHERE metadata ->> 'source_file' = :file AND (CAST(:account AS text) IS NULL OR account_id = :account)"
            " ORDER BY created_at, staging_entry_id FOR UPDATE"
        ),
        {"file": source_file, "account": account_id},
    ).all()


def source_of(conn: Connection, staging_entry_id: str) -> tuple[str, str] | None:
    """(source_file, account_id) of an entry, None when it has no file or does not exist."""
    row = conn.execute(
        sa.text("SELECT metadata ->> 'source_file', account_id FROM staging_entries"
                " WHERE staging_entry_id = :id AND metadata ? 'source_file'"),
        {"id": staging_entry_id},
    ).first()
    return (row[0], row[1]) if row else None


def delete_unprocessed(conn: Connection, staging_entry_ids: Sequence[str]) -> list[str]:
    """Delete PENDING entries that never had an effect (a voided ingest); returns those deleted."""
    return list(conn.execute(
        sa.text("DELETE FROM staging_entries WHERE staging_entry_id = ANY(CAST(:ids AS text[]))"
                " AND status = 'PENDING' RETURNING staging_entry_id"),
        {"ids": list(staging_entry_ids)},
    ).scalars())


# ---- read models: the report and the Recon view ------------------------------------------------------


# The report's filter (`recon report --merchant/--account/--since`): entries of these accounts (None:
# all), created since then (None: ever).
_REPORT_SCOPE = """
    (CAST(:accounts AS text[]) IS NULL OR account_id = ANY(CAST(:accounts AS text[])))
    AND (CAST(:since AS timestamptz) IS NULL OR created_at >= :since)
"""


def _report_scope(accounts: Sequence[str] | None, since: dt.datetime | None) -> dict[str, Any]:
    return {"accounts": list(accounts) if accounts is not None else None, "since": since}


def status_counts(conn: Connection, accounts: Sequence[str] | None = None,
                  since: dt.datetime | None = None) -> dict[str, int]:
    return dict(conn.execute(sa.text(f"SELECT status, count(*) FROM staging_entries WHERE {_REPORT_SCOPE}"
                                     " GROUP BY status"), _report_scope(accounts, since)).all())


def review_amounts(conn: Connection, accounts: Sequence[str] | None = None,
                   since: dt.datetime | None = None) -> list[Any]:
    """Money waiting for manual review, per currency: (currency, count, amount)."""
    return conn.execute(sa.text(
        "SELECT currency, count(*) AS count, sum(amount) AS amount FROM staging_entries"
        f" WHERE status = 'NEEDS_MANUAL_REVIEW' AND {_REPORT_SCOPE} GROUP BY currency ORDER BY currency"),
        _report_scope(accounts, since)).all()


def review_reasons(conn: Connection, sample: int, accounts: Sequence[str] | None = None,
                   since: dt.datetime | None = None) -> list[Any]:
    """Manual-review entries per error_type: the count and the first `sample` entries."""
    return conn.execute(
        sa.text(
            f"""
            SELECT metadata ->> 'error_type' AS error_type, count(*) AS n,
                   (array_agg(jsonb_build_object(
                        'staging_entry_id', staging_entry_id, 'account_id', account_id,
                        'order_id', order_id, 'amount', CAST(amount AS text), 'currency', currency,
                        'error', metadata ->> 'error', 'mismatched_fields', metadata -> 'mismatched_fields',
                        'candidates', metadata -> 'candidates') ORDER BY created_at, staging_entry_id)
                   )[1:CAST(:sample AS int)] AS sample
            FROM staging_entries WHERE status = 'NEEDS_MANUAL_REVIEW' AND {_REPORT_SCOPE}
            GROUP BY 1 ORDER BY n DESC, error_type
            """
        ),
        {"sample": sample, **_report_scope(accounts, since)},
    ).all()


def tolerance_matches(conn: Connection, sample: int, accounts: Sequence[str] | None = None,
                      since: dt.datetime | None = None) -> tuple[int, list[Any]]:
    """Confirmations fulfilled (one leg or a match group) within their rule's tolerance: how many,
    and the first `sample`."""
    rows = conn.execute(
        sa.text(
            f"""
            SELECT count(*) OVER () AS n, staging_entry_id, order_id, CAST(amount AS text) AS amount, currency,
                   metadata ->> 'variance' AS variance, metadata ->> 'variance_account_id' AS variance_account_id
            FROM staging_entries
            WHERE status = 'PROCESSED'
              AND metadata ->> 'match_type' IN ('FulfilledWithTolerance', 'GroupFulfilledWithTolerance')
              AND {_REPORT_SCOPE}
            ORDER BY created_at, staging_entry_id
            LIMIT :sample
            """
        ),
        {"sample": sample, **_report_scope(accounts, since)},
    ).all()
    return (rows[0].n if rows else 0), rows


def settlement_batches(conn: Connection, limit: int) -> list[Any]:
    """The latest `limit` PSP settlement batches (per clearing account), with what their lines add
    up to (lines by kind, refunds, chargebacks, fees, net), the payout line (its staging entry, amount
    and reference) and how many of the batch's lines wait in review or in the queue."""
    return conn.execute(sa.text(
        """
        SELECT s.account_id, s.metadata ->> 'settlement_batch' AS batch_id, min(s.currency) AS currency,
               min(s.metadata ->> 'psp_format') AS psp_format,
               count(*) FILTER (WHERE s.metadata ->> 'settlement_kind' = 'payment') AS payments,
               count(*) FILTER (WHERE s.metadata ->> 'settlement_kind' = 'refund') AS refunds,
               count(*) FILTER (WHERE s.metadata ->> 'settlement_kind' = 'chargeback') AS chargebacks,
               coalesce(sum(CAST(s.metadata ->> 'gross' AS numeric))
                        FILTER (WHERE s.metadata ->> 'settlement_kind' = 'payment'), 0) AS settled_gross,
               coalesce(-sum(CAST(s.metadata ->> 'gross' AS numeric))
                        FILTER (WHERE s.metadata ->> 'settlement_kind' = 'refund'), 0) AS refunded,
               coalesce(-sum(CAST(s.metadata ->> 'gross' AS numeric))
                        FILTER (WHERE s.metadata ->> 'settlement_kind' = 'chargeback'), 0) AS charged_back,
               coalesce(sum(CAST(s.metadata ->> 'fee_total' AS numeric)), 0) AS fees,
               coalesce(sum(CAST(s.metadata ->> 'net' AS numeric)) FILTER (WHERE s.metadata ->> 'settlement_kind'
                        NOT IN ('payout', 'balance_to_next_batch')), 0) AS net,
               min(s.staging_entry_id) FILTER (WHERE s.metadata ->> 'settlement_kind' = 'payout') AS payout_entry_id,
               sum(s.amount) FILTER (WHERE s.metadata ->> 'settlement_kind' = 'payout') AS payout,
               min(s.metadata ->> 'payout_reference') AS payout_reference,
               -sum(CAST(s.metadata ->> 'net' AS numeric))
                   FILTER (WHERE s.metadata ->> 'settlement_kind' = 'balance_to_next_batch') AS carried,
               count(*) FILTER (WHERE s.status = 'NEEDS_MANUAL_REVIEW') AS in_review,
               count(*) FILTER (WHERE s.status = 'PENDING') AS queued,
               max(s.created_at) AS ingested_at
        FROM staging_entries s
        WHERE s.metadata ? 'settlement_batch'
        GROUP BY s.account_id, s.metadata ->> 'settlement_batch'
        ORDER BY max(s.created_at) DESC, s.account_id, 2 DESC
        LIMIT :limit
        """
    ), {"limit": limit}).all()


@dataclass(frozen=True)
class ReviewFilter:
    """The Recon view's filters of the manual-review list; None means "any"."""

    error_type: str | None = None
    account_id: str | None = None
    order_id: str | None = None
    q: str | None = None  # free text: entry id, order id or the reason

    def params(self) -> dict[str, Any]:
        return {
            "error_type": self.error_type or None,
            "account_id": self.account_id or None,
            "order_id": self.order_id or None,
            "q": self.q or None,
            "q_like": f"%{_escape_like(self.q)}%" if self.q else None,
        }


_REVIEW_FILTER = """
    s.status = 'NEEDS_MANUAL_REVIEW' AND s.discarded_at IS NULL
    AND (CAST(:error_type AS text) IS NULL OR coalesce(s.metadata ->> 'error_type', '(none)') = :error_type)
    AND (CAST(:account_id AS text) IS NULL OR s.account_id = :account_id)
    AND (CAST(:order_id AS text) IS NULL OR s.order_id = :order_id)
    AND (CAST(:q AS text) IS NULL OR s.staging_entry_id ILIKE :q_like OR s.order_id ILIKE :q_like
         OR s.metadata ->> 'error' ILIKE :q_like)
"""


@dataclass(frozen=True)
class ReprocessScope:
    """Which manual-review entries a reprocess reopens: a created_at window, explicit entries, the
    Recon view's filter, and error types left out (a mismatch must not be requeued blindly)."""

    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None
    staging_entry_ids: Sequence[str] | None = None
    review: ReviewFilter = ReviewFilter()
    exclude_error_types: Sequence[str] = ()

    def params(self) -> dict[str, Any]:
        return {
            **self.review.params(),
            "created_from": self.created_from,
            "created_to": self.created_to,
            "ids": list(self.staging_entry_ids) if self.staging_entry_ids is not None else None,
            "excluded": list(self.exclude_error_types),
        }


_SCOPE_FILTER = _REVIEW_FILTER + """
    AND (CAST(:created_from AS timestamptz) IS NULL OR s.created_at >= :created_from)
    AND (CAST(:created_to AS timestamptz) IS NULL OR s.created_at < :created_to)
    AND (CAST(:ids AS text[]) IS NULL OR s.staging_entry_id = ANY(CAST(:ids AS text[])))
    AND coalesce(s.metadata ->> 'error_type', '(none)') <> ALL(CAST(:excluded AS text[]))
"""


def review_groups(conn: Connection, where: ReviewFilter) -> list[Any]:
    """Matching manual-review entries grouped by error_type: count, oldest, newest."""
    return conn.execute(
        sa.text(
            f"""
            SELECT coalesce(s.metadata ->> 'error_type', '(none)') AS error_type, count(*) AS count,
                   min(s.updated_at) AS oldest, max(s.updated_at) AS newest
            FROM staging_entries s
            WHERE {_REVIEW_FILTER}
            GROUP BY 1
            ORDER BY count(*) DESC, 1
            """
        ),
        where.params(),
    ).all()


def review_entries(conn: Connection, where: ReviewFilter, limit: int) -> list[Any]:
    """Matching manual-review entries, by error_type then newest first."""
    return conn.execute(
        sa.text(
            f"""
            SELECT s.staging_entry_id, s.account_id, s.order_id, s.entry_type, s.amount,
                   s.currency, s.processing_mode, coalesce(s.metadata ->> 'error_type', '(none)') AS error_type,
                   s.metadata ->> 'error' AS reason, s.metadata -> 'mismatched_fields' AS mismatched_fields,
                   s.metadata -> 'candidates' AS candidates, s.created_at, s.updated_at
            FROM staging_entries s
            WHERE {_REVIEW_FILTER}
            ORDER BY error_type, s.updated_at DESC, s.staging_entry_id
            LIMIT :limit
            """
        ),
        {**where.params(), "limit": limit},
    ).all()


def reviews_of_transactions(conn: Connection, transaction_ids: Sequence[str]) -> dict[str, Any]:
    """For MISMATCH transactions: the latest manual-review entry that matched each (its reason)."""
    if not transaction_ids:
        return {}
    rows = conn.execute(
        sa.text(
            """
            SELECT DISTINCT ON (metadata ->> 'matched_transaction_id')
                   metadata ->> 'matched_transaction_id' AS transaction_id,
                   staging_entry_id AS confirmation_entry_id, metadata ->> 'error' AS reason
            FROM staging_entries
            WHERE status = 'NEEDS_MANUAL_REVIEW' AND metadata ->> 'matched_transaction_id' = ANY(:ids)
            ORDER BY metadata ->> 'matched_transaction_id', updated_at DESC
            """
        ),
        {"ids": list(transaction_ids)},
    ).all()
    return {r.transaction_id: r for r in rows}


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")


# ---- read models: the REST API -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StagingEntryRow(StagingEntry):
    """A staging entry as the REST API and `entry show` show it: the engine's columns and the two
    it does not read."""

    natural_key: str | None
    updated_at: dt.datetime


_ROW_COLUMNS = (  # in StagingEntryRow's field order: rows are unpacked positionally
    "staging_entry_id, account_id, entry_type, amount, currency, status, processing_mode, effective_date,"
    " metadata, order_id, created_at, natural_key, updated_at"
)


@dataclass(frozen=True)
class EntryFilter:
    """The REST API's staging-entry filters; None means "any". The created window is [from, to)."""

    account_id: str | None = None
    status: str | None = None
    processing_mode: str | None = None
    order_id: str | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None


def get_staging_entry(conn: Connection, staging_entry_id: str) -> StagingEntryRow | None:
    row = conn.execute(
        sa.text(f"SELECT {_ROW_COLUMNS} FROM staging_entries WHERE staging_entry_id = :id"), {"id": staging_entry_id}
    ).first()
    return StagingEntryRow(*row) if row is not None else None


def staging_entries_page(
    conn: Connection, where: EntryFilter, after: tuple[dt.datetime, str] | None, limit: int
) -> list[StagingEntryRow]:
    """Matching entries in creation order (created_at, then id) after the key `after`, at most `limit`,
    along staging_entries_created_at_idx. No index of its own by account: the engine's status change
    of every entry would pay for it (a (account_id, created_at, id) index made PENDING -> PROCESSED of
    50,000 entries 70% slower), so a page of a rare account walks further along created_at."""
    rows = conn.execute(
        sa.text(
            f"""
            SELECT {_ROW_COLUMNS} FROM staging_entries
            WHERE (CAST(:account_id AS text) IS NULL OR account_id = :account_id)
              AND (CAST(:status AS text) IS NULL OR status = :status)
              AND (CAST(:mode AS text) IS NULL OR processing_mode = :mode)
              AND (CAST(:order_id AS text) IS NULL OR order_id = :order_id)
              AND (CAST(:created_from AS timestamptz) IS NULL OR created_at >= :created_from)
              AND (CAST(:created_to AS timestamptz) IS NULL OR created_at < :created_to)
              AND (CAST(:after_created AS timestamptz) IS NULL
                   OR (created_at, staging_entry_id) > (:after_created, CAST(:after_id AS text)))
            ORDER BY created_at, staging_entry_id
            LIMIT :limit
            """
        ),
        {
            "account_id": where.account_id, "status": where.status, "mode": where.processing_mode,
            "order_id": where.order_id, "created_from": where.created_from, "created_to": where.created_to,
            "after_created": after[0] if after else None, "after_id": after[1] if after else None,
            "limit": limit,
        },
    )
    return [StagingEntryRow(*r) for r in rows]
