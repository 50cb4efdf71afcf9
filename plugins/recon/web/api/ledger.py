"""The ledger: transactions grouped by logical id with every version (ARCHIVED history included),
and entries."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from recon import ledger
from recon.web.access import READERS
from recon.web.api.fields import NO_NUL, DecimalString, IdFilter, UtcTimestamp
from recon.web.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, decode_id_cursor, page
from recon.web.database import query_recon

router = APIRouter(tags=["ledger"])



class Entry(BaseModel):
    entry_id: str
    account_id: str
    transaction_id: str
    entry_type: str
    amount: DecimalString
    currency: str
    status: str
    effective_date: UtcTimestamp
    metadata: dict[str, Any]
    order_id: str | None
    fulfilled_expected_entry_id: str | None
    created_at: UtcTimestamp


class TransactionVersion(BaseModel):
    transaction_id: str
    version: int
    status: str
    amount: DecimalString
    currency: str
    merchant_id: str
    metadata: dict[str, Any]
    source_staging_entry_id: str | None
    created_at: UtcTimestamp
    updated_at: UtcTimestamp
    entries: list[Entry]


class LogicalTransaction(BaseModel):
    """A transaction with every version, oldest first: the last is the current one."""

    logical_transaction_id: str
    versions: list[TransactionVersion]


@router.get("/transactions", response_model=Page[LogicalTransaction], dependencies=READERS)
async def list_transactions(
    merchant_id: IdFilter = None,
    account_id: Annotated[str | None, Query(max_length=255, pattern=NO_NUL,
                                            description="transactions with an entry on this account")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: CursorParam = None,
) -> Page[LogicalTransaction]:
    """Transactions grouped by logical id, in id order, each with all its versions and their entries."""
    after = decode_id_cursor("transactions", cursor)
    rows = await query_recon(lambda conn: ledger.logical_transactions_page(
        conn, merchant_id, account_id, after, limit + 1))
    items, next_cursor = page("transactions", rows, limit, lambda t: (t.logical_transaction_id,))
    return Page[LogicalTransaction](
        items=[LogicalTransaction.model_validate(t, from_attributes=True) for t in items], next_cursor=next_cursor)


@router.get("/entries", response_model=Page[Entry], dependencies=READERS)
async def list_entries(
    account_id: IdFilter = None,
    status: Literal["EXPECTED", "POSTED", "ARCHIVED"] | None = None,
    order_id: IdFilter = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: CursorParam = None,
) -> Page[Entry]:
    """Ledger entries in id order."""
    after = decode_id_cursor("entries", cursor)
    rows = await query_recon(lambda conn: ledger.entries_page(
        conn, account_id, status, order_id, after, limit + 1))
    items, next_cursor = page("entries", rows, limit, lambda e: (e.entry_id,))
    return Page[Entry](items=[Entry.model_validate(e, from_attributes=True) for e in items], next_cursor=next_cursor)
