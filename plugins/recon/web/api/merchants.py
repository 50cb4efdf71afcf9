"""Merchants: create (idempotent), list, get."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from recon import accounts
from recon.db import Database
from recon.web.access import READERS, WRITERS, caller
from recon.web.api.fields import IdInPath, Name, Text, UtcTimestamp
from recon.web.api.idempotency import IdempotencyKey, answer_once
from recon.web.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, decode_id_cursor, page
from recon.web.api.problems import problem_responses
from recon.web.database import query_recon

router = APIRouter(prefix="/merchants", tags=["merchants"])



class NewMerchant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    merchant_name: Name
    merchant_id: Text | None = None  # None: the database draws one (mer_...)


class Merchant(BaseModel):
    merchant_id: str
    merchant_name: str
    created_at: UtcTimestamp


@router.post("", status_code=201, response_model=Merchant, dependencies=WRITERS, responses=problem_responses(409))
async def create_merchant(
    request: Request, body: NewMerchant, principal: str = Depends(caller), key: IdempotencyKey = None
) -> JSONResponse:
    def create(db: Database) -> tuple[int, dict]:
        merchant_id = accounts.create_merchant(body.merchant_name, body.merchant_id, db=db)
        with db.begin() as conn:
            return 201, Merchant.model_validate(accounts.get_merchant(merchant_id, conn), from_attributes=True).model_dump(mode="json")

    return await answer_once(request, principal, key, body, create)


@router.get("", response_model=Page[Merchant], dependencies=READERS)
async def list_merchants(limit: Limit = DEFAULT_LIMIT, cursor: CursorParam = None) -> Page[Merchant]:
    after = decode_id_cursor("merchants", cursor)
    rows = await query_recon(lambda conn: accounts.merchants_page(conn, after, limit + 1))
    items, next_cursor = page("merchants", rows, limit, lambda m: (m.merchant_id,))
    return Page[Merchant](items=[Merchant.model_validate(m, from_attributes=True) for m in items], next_cursor=next_cursor)


@router.get("/{merchant_id}", response_model=Merchant, dependencies=READERS, responses=problem_responses(404))
async def get_merchant(merchant_id: IdInPath) -> Merchant:
    found = await query_recon(lambda conn: accounts.get_merchant(merchant_id, conn))
    return Merchant.model_validate(found, from_attributes=True)
