"""Producers: a staging entry and its PROCESS_STAGING_ENTRY task are written together.

One INSERT ... RETURNING feeds one INSERT into process_tracker inside the same statement,
so there is never an entry without its task, whatever fails.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recon.db import Database, default_database
from recon.errors import InvalidInputError
from recon.money import parse_amount, parse_currency

MAX_METADATA_BYTES = 16_384  # per entry; keeps a row small and a bad producer visible
MAX_ORDER_ID_LENGTH = 255


class EntryType(enum.StrEnum):
    DEBIT = "DEBIT"
    CREDIT = "CREDIT"

    @property
    def opposite(self) -> "EntryType":
        return EntryType.CREDIT if self is EntryType.DEBIT else EntryType.DEBIT


class ProcessingMode(enum.StrEnum):
    TRANSACTION = "TRANSACTION"
    CONFIRMATION = "CONFIRMATION"


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

    @property
    def order_id(self) -> str | None:
        return self.metadata.get("order_id")


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
    """
    WITH input AS MATERIALIZED (
        SELECT recon_new_id('stg') AS staging_entry_id, i.* FROM unnest(
            CAST(:account_ids AS text[]), CAST(:entry_types AS text[]), CAST(:amounts AS numeric[]),
            CAST(:currencies AS text[]), CAST(:modes AS text[]), CAST(:dates AS timestamptz[]),
            CAST(:metadata AS jsonb[])
        ) WITH ORDINALITY AS i(account_id, entry_type, amount, currency, processing_mode,
                                effective_date, metadata, n)
    ), new_entries AS (
        INSERT INTO staging_entries (staging_entry_id, account_id, entry_type, amount, currency,
                                     processing_mode, effective_date, metadata)
        SELECT staging_entry_id, account_id, entry_type, amount, currency, processing_mode,
               effective_date, metadata
        FROM input ORDER BY n
        RETURNING staging_entry_id
    ), new_tasks AS (
        INSERT INTO process_tracker (task_type, payload)
        SELECT 'PROCESS_STAGING_ENTRY', jsonb_build_object('staging_entry_id', staging_entry_id)
        FROM new_entries
        RETURNING task_id, payload ->> 'staging_entry_id' AS staging_entry_id
    )
    SELECT input.staging_entry_id, new_tasks.task_id
    FROM input JOIN new_tasks USING (staging_entry_id)
    ORDER BY input.n
    """
)


@dataclass(frozen=True)
class Created:
    staging_entry_id: str
    task_id: str


def insert_staging_entries(conn: Connection, entries: Sequence[NewStagingEntry]) -> list[Created]:
    """Insert entries and their tasks on `conn` (the caller's transaction), in input order."""
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
        },
    ).all()
    return [Created(r.staging_entry_id, r.task_id) for r in rows]


def create_staging_entries(
    entries: Sequence[NewStagingEntry], db: Database | None = None
) -> list[Created]:
    """Library producer: insert entries with their tasks in one transaction (all or none)."""
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
    if not account_ids:
        return
    found = set(
        conn.execute(
            sa.text("SELECT account_id FROM accounts WHERE account_id = ANY(:ids)"), {"ids": list(account_ids)}
        ).scalars()
    )
    missing = sorted(account_ids - found)
    if missing:
        raise InvalidInputError(f"unknown account_id(s): {', '.join(missing)}")
