"""The review workflow over the API: the open exceptions (lines in manual review), one item with its
candidates and its decisions, and the reviewer actions (accept, force-match, ignore, reopen, requeue;
requeue also for a filter).

Every action is ``recon.review.act``, as for the CLI and the Recon view: the same checks, one
database transaction, one row of the hash-chained audit log. The actor recorded is the Airflow user
who sent the request. A refused action writes nothing: 422 for a bad request (an unknown reason, a
``seen`` that is not a time), 404 for an unknown line, 409 when the item is not in a state the
action applies to (``review-not-allowed``) or changed since the reviewer read it (``review-stale``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from recon import review, staging
from recon.db import Database
from recon.web.access import READERS, WRITERS, caller, reviewer
from recon.web.api.fields import NO_NUL, DecimalString, IdFilter, IdInPath, Text, UtcTimestamp
from recon.web.api.idempotency import IdempotencyKey, answer_once
from recon.web.api.pagination import DEFAULT_LIMIT, CursorParam, Limit, Page, decode_cursor, page, timestamp
from recon.web.api.problems import problem_responses
from recon.web.database import query_recon, read_recon

router = APIRouter(prefix="/exceptions", tags=["review"])

AGE_PATTERN = r"^[0-9]{1,6}(\.[0-9]{1,6})?[dhm]?$"
OlderThan = Annotated[str | None, Query(pattern=AGE_PATTERN, max_length=16, examples=["3d"],
                                        description="created before this long ago: 3d, 12h, 90m (a bare number is days)")]
ReasonCode = Literal[review.REASON_CODES]  # type: ignore[valid-type]
# what the engine stored in a line's metadata, as text (plain SQL may have written another JSON type)
AsText = BeforeValidator(lambda v: v if v is None else str(v))


# ---- what is read ------------------------------------------------------------------------------------


class MismatchedField(BaseModel):
    field: Annotated[str | None, AsText] = None
    expected: Annotated[str | None, AsText] = None
    actual: Annotated[str | None, AsText] = None


class OpenException(BaseModel):
    """A line in manual review; `seen` is what an action's `seen` refers to."""

    staging_entry_id: str
    account_id: str
    order_id: str | None
    entry_type: str
    amount: DecimalString
    currency: str
    processing_mode: str
    error_type: str
    reason: str | None
    created_at: UtcTimestamp
    updated_at: UtcTimestamp
    seen: str


class Candidate(BaseModel):
    """An open expected entry the line could settle, and how the line differs from it."""

    entry_id: str
    transaction_id: str
    transaction_status: str
    order_id: str | None
    entry_type: str
    amount: DecimalString
    currency: str
    difference: DecimalString
    mismatched_fields: list[MismatchedField]
    recon_rule_id: str | None


class Decision(BaseModel):
    """A row of the audit log: who decided what, when and why, the item before and after, and the
    row's place in the hash chain."""

    seq: int
    staging_entry_id: str
    action: str
    reason_code: str
    note: str
    actor: str
    decided_at: UtcTimestamp
    before: dict[str, Any]
    after: dict[str, Any]
    decision_key: str | None
    prev_hash: str
    row_hash: str


class ExceptionDetail(BaseModel):
    """A line as a reviewer looks at it (in review or not: `reopen` applies to a processed one too)."""

    staging_entry_id: str
    account_id: str
    order_id: str | None
    entry_type: str
    amount: DecimalString
    currency: str
    status: str
    processing_mode: str
    effective_date: UtcTimestamp
    error_type: Annotated[str | None, AsText]
    reason: Annotated[str | None, AsText]
    match_type: Annotated[str | None, AsText]
    mismatched_fields: list[MismatchedField]
    candidates: list[Candidate]
    seen: str = Field(description="when the line last changed: send it as an action's `seen` to refuse the"
                                  " action if the line changes meanwhile")
    created_at: UtcTimestamp
    decisions: list[Decision] = Field(description="its decisions, newest first")


@router.get("", response_model=Page[OpenException], dependencies=READERS)
async def list_exceptions(
    error_type: IdFilter = None, account_id: IdFilter = None, older_than: OlderThan = None,
    limit: Limit = DEFAULT_LIMIT, cursor: CursorParam = None,
) -> Page[OpenException]:
    """Lines in manual review, oldest first (the filters of `./recon review list`)."""
    after = decode_cursor("exceptions", cursor, (timestamp, str))
    age = review.parse_age(older_than)
    rows = await query_recon(lambda conn: staging.open_items(conn, error_type, account_id, age, limit + 1, after))  # type: ignore[arg-type]
    items, next_cursor = page("exceptions", rows, limit, lambda i: (i.created_at, i.staging_entry_id))
    return Page[OpenException](items=[_open_exception(i) for i in items], next_cursor=next_cursor)


def _open_exception(item: staging.OpenItem) -> OpenException:
    fields = {k: v for k, v in vars(item).items() if k != "metadata"}
    return OpenException(**fields, seen=review.seen_token(item.updated_at))


@router.get("/{staging_entry_id}", response_model=ExceptionDetail, dependencies=READERS,
            responses=problem_responses(404))
async def get_exception(staging_entry_id: IdInPath) -> ExceptionDetail:
    """The line, its reason, mismatched fields, candidate expected entries and its decisions."""
    return ExceptionDetail(**await read_recon(lambda db: review.show(db, staging_entry_id)))


# ---- the actions -----------------------------------------------------------------------------------


class Action(BaseModel):
    """A reviewer's decision: why (a reason code; OTHER needs a note) and, optionally, the `seen` of
    the item as read (the action is refused with a 409 if the item changed since)."""

    model_config = ConfigDict(extra="forbid")

    reason: ReasonCode
    note: Annotated[str, Field(max_length=review.MAX_NOTE, pattern=NO_NUL)] = ""
    seen: Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL, examples=["2026-11-02T09:30:00.123456+00:00"])] | None = None


class ForceMatch(Action):
    expected_entry_id: Text = Field(description="the open expected entry this line fulfils")


class Requeue(BaseModel):
    """Requeue every open item matching the filter (at least one filter), each its own decision."""

    model_config = ConfigDict(extra="forbid")

    reason: ReasonCode
    note: Annotated[str, Field(max_length=review.MAX_NOTE, pattern=NO_NUL)] = ""
    error_type: Text | None = None
    account_id: Text | None = None
    older_than: Annotated[str, Field(pattern=AGE_PATTERN, max_length=16, examples=["3d"])] | None = None


class Requeued(BaseModel):
    requeued: int
    decisions: list[Decision]


def _decision(d: review.Decision) -> dict[str, Any]:
    return Decision.model_validate(d, from_attributes=True).model_dump(mode="json")


async def _act(request: Request, action: str, staging_entry_id: str, body: Action, actor: str, principal: str,
               key: str | None) -> JSONResponse:
    def decide(db: Database) -> tuple[int, dict[str, Any]]:
        outcome = review.act(db, action, staging_entry_id, reason=body.reason, note=body.note, actor=actor,
                             seen=body.seen, expected_entry_id=getattr(body, "expected_entry_id", None))
        return 201, _decision(outcome.decision)

    return await answer_once(request, principal, key, body, decide)


ACTED = {"status_code": 201, "response_model": Decision, "dependencies": WRITERS,
         "responses": problem_responses(404, 409)}


@router.post("/{staging_entry_id}/accept", **ACTED)
async def accept(request: Request, staging_entry_id: IdInPath, body: Action, actor: str = Depends(reviewer),
                 principal: str = Depends(caller), key: IdempotencyKey = None) -> JSONResponse:
    """A mismatch: fulfil its expected entry at the line's amount, the difference to the rule's
    variance account."""
    return await _act(request, "accept", staging_entry_id, body, actor, principal, key)


@router.post("/{staging_entry_id}/force-match", **ACTED)
async def force_match(request: Request, staging_entry_id: IdInPath, body: ForceMatch, actor: str = Depends(reviewer),
                      principal: str = Depends(caller), key: IdempotencyKey = None) -> JSONResponse:
    """Fulfil the named open expected entry with this line; an amount difference as in accept."""
    return await _act(request, "force-match", staging_entry_id, body, actor, principal, key)


@router.post("/{staging_entry_id}/ignore", **ACTED)
async def ignore(request: Request, staging_entry_id: IdInPath, body: Action, actor: str = Depends(reviewer),
                 principal: str = Depends(caller), key: IdempotencyKey = None) -> JSONResponse:
    """PROCESSED with no ledger effect (match_type Ignored); a mismatched expected entry opens again."""
    return await _act(request, "ignore", staging_entry_id, body, actor, principal, key)


@router.post("/{staging_entry_id}/reopen", **ACTED)
async def reopen(request: Request, staging_entry_id: IdInPath, body: Action, actor: str = Depends(reviewer),
                 principal: str = Depends(caller), key: IdempotencyKey = None) -> JSONResponse:
    """Undo a match or mismatch: the expected entry EXPECTED again, the line back in review."""
    return await _act(request, "reopen", staging_entry_id, body, actor, principal, key)


@router.post("/{staging_entry_id}/requeue", **ACTED)
async def requeue(request: Request, staging_entry_id: IdInPath, body: Action, actor: str = Depends(reviewer),
                  principal: str = Depends(caller), key: IdempotencyKey = None) -> JSONResponse:
    """Back to the queue (PENDING with a fresh task), as a reprocess of this one line."""
    return await _act(request, "requeue", staging_entry_id, body, actor, principal, key)


@router.post("/requeue", response_model=Requeued, dependencies=WRITERS, responses=problem_responses(409))
async def requeue_matching(request: Request, body: Requeue, actor: str = Depends(reviewer),
                           principal: str = Depends(caller), key: IdempotencyKey = None) -> JSONResponse:
    """Every open item matching the filter back to the queue, each its own decision (items taken by
    the engine or another reviewer meanwhile are left out)."""
    age = review.parse_age(body.older_than)

    def decide(db: Database) -> tuple[int, dict[str, Any]]:
        outcomes = review.requeue_matching(db, reason=body.reason, note=body.note, actor=actor,
                                           error_type=body.error_type, account_id=body.account_id, older_than=age)
        return 200, {"requeued": len(outcomes), "decisions": [_decision(o.decision) for o in outcomes]}

    return await answer_once(request, principal, key, body, decide)
