"""Staging entries: create one or a batch of up to 10,000 (each with its Process Tracker task, all in
one transaction, idempotent), list with filters, get one with its tasks and its outcome."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.engine import Connection

from recon import staging, tracker
from recon.db import Database
from recon.errors import ConflictError, NotFoundError
from recon.ingest.csv import RESERVED_COLUMNS  # the metadata keys the engine writes
from recon.staging import NewStagingEntry
from recon.web.access import READERS, WRITERS, caller
from recon.web.api.fields import NO_NUL, Amount, Currency, DecimalString, IdFilter, IdInPath, Text, Timestamp, UtcTimestamp
from recon.web.api.idempotency import IdempotencyKey, answer_once
from recon.web.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, decode_cursor, page, timestamp
from recon.web.api.problems import problem_responses
from recon.web.database import query_recon

router = APIRouter(prefix="/staging-entries", tags=["staging entries"])

MAX_BATCH = 10_000
EntryType = Literal["DEBIT", "CREDIT"]
Mode = Literal["TRANSACTION", "CONFIRMATION"]
Status = Literal["PENDING", "NEEDS_MANUAL_REVIEW", "PROCESSED"]


class NewEntry(BaseModel):
    """A statement line to reconcile. ``metadata.order_id`` is the order it books or confirms."""

    model_config = ConfigDict(extra="forbid")

    account_id: Text
    entry_type: EntryType
    amount: Amount
    currency: Currency
    processing_mode: Mode
    effective_date: Timestamp | None = Field(None, description="when the money moved (default: now)")
    metadata: dict[str, Any] = Field(default_factory=dict, examples=[{"order_id": "ORD-1"}])
    natural_key: Annotated[str, Field(min_length=1, max_length=1_000, pattern=NO_NUL)] | None = Field(
        None, description="the line's duplicate key, unique per account: a line whose key the account"
                          " already has is not staged again (reported in `duplicates`)")

    @model_validator(mode="after")
    def _valid_for_the_library(self) -> "NewEntry":
        reserved = sorted(RESERVED_COLUMNS & set(self.metadata))
        if reserved:  # the engine writes these (an outcome, a transaction id): a producer may not
            raise ValueError(f"metadata keys {', '.join(reserved)} are the engine's own")
        self.as_new_staging_entry()  # metadata size and order_id, NUL, ...: the library's own checks
        return self

    def as_new_staging_entry(self) -> NewStagingEntry:
        return NewStagingEntry(
            account_id=self.account_id, entry_type=self.entry_type, amount=self.amount, currency=self.currency,
            processing_mode=self.processing_mode,
            effective_date=self.effective_date or dt.datetime.now(dt.timezone.utc),
            metadata=self.metadata, natural_key=self.natural_key,
        )


class NewEntries(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entries: list[NewEntry] = Field(min_length=1, max_length=MAX_BATCH)


class Created(BaseModel):
    staging_entry_id: str
    task_id: str


class Duplicate(BaseModel):
    index: int = Field(description="position of the line in `entries` (0-based)")
    natural_key: str


class CreatedBatch(BaseModel):
    created: list[Created]
    duplicates: list[Duplicate] = Field(description="lines whose natural key their account already had: not staged")


class Task(BaseModel):
    task_id: str
    task_type: str
    status: str
    attempts: int
    last_error: str | None
    run_after: UtcTimestamp
    created_at: UtcTimestamp
    updated_at: UtcTimestamp
    completed_at: UtcTimestamp | None


class Outcome(BaseModel):
    """What the engine did with the entry (README "What the engine does with an entry")."""

    status: str
    match_type: str | None = None
    created_transaction_id: str | None = None
    matched_transaction_id: str | None = None
    evolved_transaction_id: str | None = None
    error_type: str | None = None
    error: str | None = None


class StagingEntry(BaseModel):
    staging_entry_id: str
    account_id: str
    entry_type: str
    amount: DecimalString
    currency: str
    status: str
    processing_mode: str
    effective_date: UtcTimestamp
    metadata: dict[str, Any]
    order_id: str | None
    natural_key: str | None
    created_at: UtcTimestamp
    updated_at: UtcTimestamp


class StagingEntryDetail(StagingEntry):
    tasks: list[Task]
    outcome: Outcome


def _stage(db: Database, entries: list[NewEntry]) -> tuple[list[staging.Created], list[Duplicate]]:
    created = staging.create_staging_entries([e.as_new_staging_entry() for e in entries], db=db)
    staged_keys = {c.natural_key for c in created if c.natural_key is not None}
    duplicates, seen = [], set()
    for index, entry in enumerate(entries):
        if entry.natural_key is not None:
            if entry.natural_key not in staged_keys or entry.natural_key in seen:
                duplicates.append(Duplicate(index=index, natural_key=entry.natural_key))
            seen.add(entry.natural_key)
    return created, duplicates


@router.post("", status_code=201, response_model=Created, dependencies=WRITERS,
             responses=problem_responses(409))
async def create_staging_entry(
    request: Request, body: NewEntry, principal: str = Depends(caller), key: IdempotencyKey = None
) -> JSONResponse:
    """One entry and its task. A line whose natural key its account already has is a 409."""

    def create(db: Database) -> tuple[int, dict]:
        created, duplicates = _stage(db, [body])
        if duplicates:
            raise ConflictError(f"account {body.account_id} already has a line with natural_key"
                                f" {body.natural_key!r}", field="natural_key")
        return 201, Created(staging_entry_id=created[0].staging_entry_id, task_id=created[0].task_id).model_dump()

    return await answer_once(request, principal, key, body, create)


@router.post("/batch", status_code=201, response_model=CreatedBatch, dependencies=WRITERS)
async def create_staging_entries(
    request: Request, body: NewEntries, principal: str = Depends(caller), key: IdempotencyKey = None
) -> JSONResponse:
    """Up to 10,000 entries (MAX_BATCH), each with its task, in one transaction: all are staged or none.
    `created` is in input order, without the duplicates."""

    def create(db: Database) -> tuple[int, dict]:
        created, duplicates = _stage(db, body.entries)
        batch = CreatedBatch(created=[Created(staging_entry_id=c.staging_entry_id, task_id=c.task_id) for c in created],
                             duplicates=duplicates)
        return 201, batch.model_dump()

    return await answer_once(request, principal, key, body, create)


@router.get("", response_model=Page[StagingEntry], dependencies=READERS)
async def list_staging_entries(
    account_id: IdFilter = None,
    status: Status | None = None,
    processing_mode: Mode | None = None,
    order_id: IdFilter = None,
    created_from: Annotated[Timestamp | None, Query(description="created at or after (RFC 3339)")] = None,
    created_to: Annotated[Timestamp | None, Query(description="created before (RFC 3339)")] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> Page[StagingEntry]:
    """Entries in creation order (oldest first)."""
    after = decode_cursor("staging-entries", cursor, (timestamp, str))
    where = staging.EntryFilter(account_id, status, processing_mode, order_id, created_from, created_to)
    rows = await query_recon(lambda conn: staging.staging_entries_page(conn, where, after, limit + 1))  # type: ignore[arg-type]
    items, next_cursor = page("staging-entries", rows, limit, lambda e: (e.created_at, e.staging_entry_id))
    return Page[StagingEntry](items=[StagingEntry.model_validate(e, from_attributes=True) for e in items],
                              next_cursor=next_cursor)


@router.get("/{staging_entry_id}", response_model=StagingEntryDetail, dependencies=READERS,
            responses=problem_responses(404))
async def get_staging_entry(
    staging_entry_id: IdInPath,
) -> StagingEntryDetail:
    def read(conn: Connection) -> StagingEntryDetail:
        entry = staging.get_staging_entry(conn, staging_entry_id)
        if entry is None:
            raise NotFoundError(f"no staging entry with staging_entry_id {staging_entry_id!r}")
        tasks = tracker.tasks_of_entry(conn, staging_entry_id)
        written = {k: v for k in Outcome.model_fields if k != "status" and isinstance(v := entry.metadata.get(k), str)}
        outcome = Outcome(status=entry.status, **written)
        return StagingEntryDetail(**asdict(entry), tasks=[Task.model_validate(t, from_attributes=True) for t in tasks],
                                  outcome=outcome)

    return await query_recon(read)
