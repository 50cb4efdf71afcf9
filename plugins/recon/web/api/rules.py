"""Recon rules: create (idempotent), list, get, change (PATCH), delete (refused with a 409 while the
ledger refers to the rule). A rule maps account_one (where TRANSACTION lines arrive) to its contra
account_two (where their confirmations arrive), with what confirmations are matched on and tolerated;
``accounts.RuleSettings`` checks every setting, as for the CLI."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from recon import accounts
from recon.db import Database
from recon.errors import NotFoundError
from recon.model import ReconRule
from recon.web.access import READERS, WRITERS, caller
from recon.web.api.fields import DECIMAL_PATTERN, NO_NUL, DecimalString, IdFilter, IdInPath, Text
from recon.web.api.idempotency import IdempotencyKey, answer_once
from recon.web.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, decode_id_cursor, page
from recon.web.api.problems import INVALID_INPUT, Problem, problem_responses
from recon.web.database import query_recon, write_recon

router = APIRouter(prefix="/rules", tags=["rules"])



class MatchKey(BaseModel):
    """A field of the confirmation line and the field of the expected leg it must equal."""

    model_config = ConfigDict(extra="forbid")

    line: Annotated[str, Field(min_length=1, max_length=120, pattern=NO_NUL, examples=["metadata.reference"])]
    expected: Annotated[str, Field(min_length=1, max_length=120, pattern=NO_NUL, examples=["order_id"])]


Days = Annotated[int, Field(ge=0, le=3660, strict=True)]
GroupBy = Annotated[str, Field(min_length=1, max_length=120, pattern=NO_NUL, examples=["metadata.invoice_batch"],
                               description="metadata.<name>: a confirmation fulfils every open expected leg"
                                           " carrying its value of this key (N:1); replaces match_keys")]
DecimalText = Annotated[str, Field(max_length=64, pattern=DECIMAL_PATTERN, examples=["0.05"])]


class RuleChange(BaseModel):
    """Rule settings; in a PATCH only those given change (null removes the variance account, the
    window, the ageing, the grouping or the fee account)."""

    model_config = ConfigDict(extra="forbid")

    priority: Annotated[int, Field(ge=0, le=1_000_000, strict=True)] | None = None
    match_keys: Annotated[list[MatchKey], Field(min_length=1, max_length=5)] | None = None
    amount_tolerance: DecimalText | None = None
    amount_tolerance_pct: DecimalText | None = None
    variance_account_id: Text | None = None
    date_window_days: Days | None = None
    aging_days: Days | None = None
    group_by: GroupBy | None = None
    fee_account_id: Text | None = None

    def settings(self) -> dict[str, Any]:
        """The given fields as accounts.RuleSettings takes them."""
        given = self.model_dump(exclude_unset=True)
        if "match_keys" in given:
            given["match_keys"] = tuple((k["line"], k["expected"]) for k in given["match_keys"] or ())
        return given


class NewRule(RuleChange):
    account_one_id: Text
    account_two_id: Text
    rule_id: Text | None = None  # None: the database draws one (rule_...)


class Rule(BaseModel):
    rule_id: str
    merchant_id: str
    account_one_id: str
    account_two_id: str
    priority: int
    match_keys: list[MatchKey]
    amount_tolerance: DecimalString
    amount_tolerance_pct: DecimalString
    variance_account_id: str | None
    date_window_days: int | None
    aging_days: int | None
    group_by: str | None
    fee_account_id: str | None


def _rule(rule: ReconRule) -> Rule:
    return Rule(rule_id=rule.id, merchant_id=rule.merchant_id, account_one_id=rule.account_one_id,
                account_two_id=rule.account_two_id, priority=rule.priority,
                match_keys=[MatchKey(line=line, expected=expected) for line, expected in rule.match_keys],
                amount_tolerance=Decimal(rule.amount_tolerance), amount_tolerance_pct=Decimal(rule.amount_tolerance_pct),
                variance_account_id=rule.variance_account_id, date_window_days=rule.date_window_days,
                aging_days=rule.aging_days, group_by=rule.group_by, fee_account_id=rule.fee_account_id)


@router.post("", status_code=201, response_model=Rule, dependencies=WRITERS, responses=problem_responses(409))
async def create_rule(
    request: Request, body: NewRule, principal: str = Depends(caller), key: IdempotencyKey = None
) -> JSONResponse:
    def create(db: Database) -> tuple[int, dict]:
        try:
            settings = {k: v for k, v in body.settings().items() if k not in ("account_one_id", "account_two_id", "rule_id")}
            rule_id = accounts.create_recon_rule(body.account_one_id, body.account_two_id, body.rule_id,
                                                 accounts.RuleSettings(**settings), db=db)
        except NotFoundError as exc:
            field = "account_one_id" if repr(body.account_one_id) in str(exc) else "account_two_id"
            raise Problem(INVALID_INPUT, str(exc), field=field) from None
        with db.begin() as conn:
            return 201, _rule(accounts.get_rule(rule_id, conn)).model_dump()

    return await answer_once(request, principal, key, body, create)


@router.get("", response_model=Page[Rule], dependencies=READERS)
async def list_rules(
    merchant_id: IdFilter = None,
    limit: Limit = DEFAULT_LIMIT, cursor: CursorParam = None,
) -> Page[Rule]:
    after = decode_id_cursor("rules", cursor)
    rows = await query_recon(lambda conn: accounts.rules_page(conn, merchant_id, after, limit + 1))
    items, next_cursor = page("rules", rows, limit, lambda r: (r.id,))
    return Page[Rule](items=[_rule(r) for r in items], next_cursor=next_cursor)


@router.get("/{rule_id}", response_model=Rule, dependencies=READERS, responses=problem_responses(404))
async def get_rule(rule_id: IdInPath) -> Rule:
    return _rule(await query_recon(lambda conn: accounts.get_rule(rule_id, conn)))


@router.patch("/{rule_id}", response_model=Rule, dependencies=WRITERS, responses=problem_responses(404, 409))
async def change_rule(rule_id: IdInPath, body: RuleChange) -> Rule:
    return _rule(await write_recon(lambda db: accounts.update_recon_rule(rule_id, body.settings(), db=db)))


@router.delete("/{rule_id}", status_code=204, response_class=Response, dependencies=WRITERS,
               responses=problem_responses(404, 409))
async def delete_rule(rule_id: IdInPath) -> Response:
    await write_recon(lambda db: accounts.delete_recon_rule(rule_id, db=db))
    return Response(status_code=204)
