"""The Recon view's exception pages: the open items with their ageing, an item's detail page, and
the reviewer actions as forms.

Reading needs what the rest of the view needs (read runs of the recon DAG); acting needs the
permission to edit the DAG, checked by Airflow's auth manager on every POST (a viewer gets a 403,
and no forms). The session is a cookie, so each form carries a token bound to the user (an HMAC
with the API servers' shared JWT secret), and a POST from another origin is refused: a page elsewhere cannot
make a reviewer's browser act. The actor recorded is the Airflow user.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.core_api.security import get_user

from recon import review, staging
from recon.db import Database
from recon.errors import InvalidInputError, NotFoundError, StaleReviewError
from recon.web.access import actor_name, can_edit_recon_dag, can_read_recon_runs
from recon.web.database import read_recon, write_recon
from recon.web.rendering import render
from recon.web.urls import page_links

router = APIRouter(dependencies=[Depends(can_read_recon_runs)])

ENTRY_ID = Path(max_length=255, pattern=r"^[^\x00]*$")


def may_act(request: Request, user: BaseUser = Depends(get_user)) -> bool:
    """Whether Airflow lets this user edit the recon DAG: the detail page shows the forms only then."""
    try:
        can_edit_recon_dag(request, user)
    except HTTPException:
        return False
    return True


def _form_key() -> bytes:
    from airflow.configuration import conf

    # the JWT secret is shared by every API server worker (recon.local_airflow, docker compose)
    secret = conf.get("api_auth", "jwt_secret", fallback=None) or conf.get("api", "secret_key", fallback=None)
    if not secret:
        raise HTTPException(503, "the API server has no [api_auth] jwt_secret to protect the review forms with")
    return secret.encode()


def form_token(user: BaseUser) -> str:
    """The anti-forgery token of this user's forms (the same on every API server sharing the secret)."""
    return hmac.new(_form_key(), f"recon-review:{user.get_id()}".encode(), hashlib.sha256).hexdigest()


def _check_same_origin(request: Request, user: BaseUser, token: str) -> None:
    origin = request.headers.get("origin")
    if origin and origin not in ("null", f"{request.url.scheme}://{request.url.netloc}"):
        raise HTTPException(403, f"a review form must be sent from this site, not from {origin}")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise HTTPException(403, "a review form must be sent from this site")
    if not hmac.compare_digest(token, form_token(user)):
        raise HTTPException(403, "the form's token is missing or not yours: reload the page and try again")


@router.get("/exceptions", response_class=HTMLResponse)
async def exceptions_page(request: Request, decided: int | None = Query(None, ge=1)) -> HTMLResponse:
    """Open items oldest first, the ageing buckets per error type, the latest decisions."""
    links = page_links(request)

    def page(db: Database) -> str:
        with db.begin() as conn:
            items = staging.open_items(conn, limit=500)
            recent = review.decisions(conn, limit=50)
        return render("recon_exceptions.html", {
            **links, "items": items, "ageing": _ageing_table(review.ageing(db)), "decisions": recent,
            "decided": decided,
        })

    return HTMLResponse(await read_recon(page))


def _ageing_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{(error_type, currency): {bucket: (count, amount)}} as rows for the template."""
    buckets = ("<1d", "1-3d", "3-7d", ">7d")
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        table.setdefault((r["error_type"], r["currency"]), {})[r["bucket"]] = r
    return {"buckets": buckets, "rows": [
        {"error_type": et, "currency": cur, "cells": [cells.get(b) for b in buckets],
         "count": sum(c["count"] for c in cells.values()), "amount": sum(c["amount"] for c in cells.values())}
        for (et, cur), cells in sorted(table.items())]}


@router.get("/exceptions/{staging_entry_id}", response_class=HTMLResponse)
async def exception_page(request: Request, staging_entry_id: str = ENTRY_ID, can_act: bool = Depends(may_act),
                         user: BaseUser = Depends(get_user)) -> HTMLResponse:
    return await _detail(request, staging_entry_id, can_act, user)


async def _detail(request: Request, staging_entry_id: str, can_act: bool, user: BaseUser,
                  error: str | None = None, status_code: int = 200) -> HTMLResponse:
    try:
        item = await read_recon(lambda db: review.show(db, staging_entry_id))
    except NotFoundError as exc:
        return HTMLResponse(render("recon_exception.html", {**page_links(request), "missing": str(exc)}), 404)
    return HTMLResponse(render("recon_exception.html", {
        **page_links(request), "item": item, "can_act": can_act, "token": form_token(user) if can_act else "",
        "reasons": review.REASON_CODES, "error": error,
    }), status_code=status_code)


@router.post("/exceptions/{staging_entry_id}/{action}", dependencies=[Depends(can_edit_recon_dag)])
async def act(
    request: Request,
    staging_entry_id: str = ENTRY_ID,
    action: str = Path(pattern="^(accept|force-match|ignore|reopen|requeue)$"),
    reason: str = Form("", max_length=50),
    note: str = Form("", max_length=review.MAX_NOTE),
    seen: str = Form("", max_length=64),
    expected_entry_id: str = Form("", max_length=255),
    token: str = Form("", max_length=128),
    user: BaseUser = Depends(get_user),
) -> Response:
    """One reviewer action; afterwards the exception list (the item gone, the decision on top), or the
    detail page again with what was refused (409: it changed since the reviewer looked)."""
    _check_same_origin(request, user, token)
    actor = actor_name(user)
    try:
        outcome = await write_recon(lambda db: review.act(
            db, action, staging_entry_id, reason=reason, note=note, actor=actor, seen=seen or None,
            expected_entry_id=expected_entry_id or None))
    except StaleReviewError as exc:
        return await _detail(request, staging_entry_id, True, user, str(exc), 409)
    except (InvalidInputError, NotFoundError) as exc:
        return await _detail(request, staging_entry_id, True, user, str(exc), 422)
    base = page_links(request)["base"]
    return RedirectResponse(f"{base}/exceptions?decided={outcome.decision.seq}", status_code=303)
