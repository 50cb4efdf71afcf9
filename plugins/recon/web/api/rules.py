"""Recon rules: create (idempotent), list, get, delete (refused with a 409 while the ledger refers to
the rule). A rule maps account_one (where TRANSACTION lines
arrive) to its contra account_two (where their confirmations arrive)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from recon import accounts
from recon.db import Database
from recon.errors import NotFoundError
from recon.model import ReconRule
from recon.web.access import READERS, WRITERS, caller
from recon.web.api.fields import ID_IN_PATH, NO_NUL, Text
from recon.web.api.idempotency import IdempotencyKey, answer_once
from recon.web.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, decode_cursor, page
from recon.web.api.problems import INVALID_INPUT, Problem, problem_responses
from recon.web.database import query_recon, write_recon

router = APIRouter(prefix="/rules", tags=["rules"])

RuleId = Annotated[str, Path(min_length=1, max_length=255, pattern=ID_IN_PATH)]


class NewRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account_one_id: Text
    account_two_id: Text
    rule_id: Text | None = None  # None: the database draws one (rule_...)


class Rule(BaseModel):
    rule_id: str
    merchant_id: str
    account_one_id: str
    account_two_id: str


def _rule(rule: ReconRule) -> Rule:
    return Rule(rule_id=rule.id, merchant_id=rule.merchant_id, account_one_id=rule.account_one_id,
                account_two_id=rule.account_two_id)


@router.post("", status_code=201, response_model=Rule, dependencies=WRITERS, responses=problem_responses(409))
async def create_rule(
    request: Request, body: NewRule, principal: str = Depends(caller), key: IdempotencyKey = None
) -> JSONResponse:
    def create(db: Database) -> tuple[int, dict]:
        try:
            rule_id = accounts.create_recon_rule(body.account_one_id, body.account_two_id, body.rule_id, db=db)
        except NotFoundError as exc:
            field = "account_one_id" if repr(body.account_one_id) in str(exc) else "account_two_id"
            raise Problem(INVALID_INPUT, str(exc), field=field) from None
        with db.begin() as conn:
            return 201, _rule(accounts.get_rule(rule_id, conn)).model_dump()

    return await answer_once(request, principal, key, body, create)


@router.get("", response_model=Page[Rule], dependencies=READERS)
async def list_rules(
    merchant_id: Annotated[str | None, Query(max_length=255, pattern=NO_NUL)] = None,
    limit: Limit = DEFAULT_LIMIT, cursor: CursorParam = None,
) -> Page[Rule]:
    after = decode_cursor("rules", cursor, (str,))
    rows = await query_recon(lambda conn: accounts.rules_page(conn, merchant_id, after[0] if after else None, limit + 1))
    items, next_cursor = page("rules", rows, limit, lambda r: (r.id,))
    return Page[Rule](items=[_rule(r) for r in items], next_cursor=next_cursor)


@router.get("/{rule_id}", response_model=Rule, dependencies=READERS, responses=problem_responses(404))
async def get_rule(rule_id: RuleId) -> Rule:
    return _rule(await query_recon(lambda conn: accounts.get_rule(rule_id, conn)))


@router.delete("/{rule_id}", status_code=204, response_class=Response, dependencies=WRITERS,
               responses=problem_responses(404, 409))
async def delete_rule(rule_id: RuleId) -> Response:
    await write_recon(lambda db: accounts.delete_recon_rule(rule_id, db=db))
    return Response(status_code=204)
