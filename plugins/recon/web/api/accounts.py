"""Accounts with their balances: create (idempotent), list, get, rename, delete (refused with a 409
while ledger entries, staging entries or rules refer to the account)."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.engine import Connection

from recon import accounts, ledger
from recon.db import Database
from recon.errors import NotFoundError
from recon.web.access import READERS, WRITERS, caller
from recon.web.api.fields import Balance, Currency, DecimalString, IdFilter, IdInPath, Name, Text
from recon.web.api.idempotency import IdempotencyKey, answer_once
from recon.web.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, decode_id_cursor, page
from recon.web.api.problems import INVALID_INPUT, Problem, problem_responses
from recon.web.database import query_recon, write_recon

router = APIRouter(prefix="/accounts", tags=["accounts"])



class NewAccount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    merchant_id: Text
    account_name: Name
    account_type: Literal["DEBIT_NORMAL", "CREDIT_NORMAL"]
    currency: Currency
    initial_balance: Balance = Decimal(0)
    account_id: Text | None = None  # None: the database draws one (acc_...)


class AccountChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_name: Name


class Account(BaseModel):
    """An account and its balances (posted, pending, available: README "Balances")."""

    account_id: str
    merchant_id: str
    account_name: str
    account_type: str
    currency: str
    initial_balance: DecimalString
    posted: DecimalString
    pending: DecimalString
    available: DecimalString


def with_balances(conn: Connection, listed: list) -> list[Account]:
    balances = {b.account_id: b for b in ledger.balances_of(conn, listed)}
    return [Account(**{**vars(balances[a.account_id]), "merchant_id": a.merchant_id}) for a in listed]


def _account(conn: Connection, account_id: str) -> Account:
    return with_balances(conn, [accounts.get_account(account_id, conn)])[0]


@router.post("", status_code=201, response_model=Account, dependencies=WRITERS, responses=problem_responses(409))
async def create_account(
    request: Request, body: NewAccount, principal: str = Depends(caller), key: IdempotencyKey = None
) -> JSONResponse:
    def create(db: Database) -> tuple[int, dict]:
        try:
            account_id = accounts.create_account(
                body.merchant_id, body.account_name, body.account_type, body.currency, body.initial_balance,
                body.account_id, db=db)
        except NotFoundError as exc:
            raise Problem(INVALID_INPUT, str(exc), field="merchant_id") from None
        with db.begin() as conn:
            return 201, _account(conn, account_id).model_dump(mode="json")

    return await answer_once(request, principal, key, body, create)


@router.get("", response_model=Page[Account], dependencies=READERS)
async def list_accounts(
    merchant_id: IdFilter = None,
    limit: Limit = DEFAULT_LIMIT, cursor: CursorParam = None,
) -> Page[Account]:
    after = decode_id_cursor("accounts", cursor)

    def read(conn: Connection) -> tuple[list[Account], str | None]:
        rows = accounts.accounts_page(conn, merchant_id, after, limit + 1)
        shown, next_cursor = page("accounts", rows, limit, lambda a: (a.account_id,))
        return with_balances(conn, shown), next_cursor

    items, next_cursor = await query_recon(read)
    return Page[Account](items=items, next_cursor=next_cursor)


@router.get("/{account_id}", response_model=Account, dependencies=READERS, responses=problem_responses(404))
async def get_account(account_id: IdInPath) -> Account:
    return await query_recon(lambda conn: _account(conn, account_id))


@router.patch("/{account_id}", response_model=Account, dependencies=WRITERS, responses=problem_responses(404))
async def rename_account(account_id: IdInPath, body: AccountChange) -> Account:
    def rename(db: Database) -> Account:
        accounts.rename_account(account_id, body.account_name, db=db)
        with db.begin() as conn:
            return _account(conn, account_id)

    return await write_recon(rename)


@router.delete("/{account_id}", status_code=204, response_class=Response, dependencies=WRITERS,
               responses=problem_responses(404, 409))
async def delete_account(account_id: IdInPath) -> Response:
    await write_recon(lambda db: accounts.delete_account(account_id, db=db))
    return Response(status_code=204)
