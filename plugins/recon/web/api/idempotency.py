"""``Idempotency-Key`` on creating POSTs, and the only module whose SQL reads or writes
``api_idempotency_keys``.

A producer that did not get an answer (timeout, dropped connection) sends the same request again
with the same key: the first answer comes back (``Idempotent-Replayed: true``) and nothing is
written twice. The same key with a different request (method, path or body) is a 409.

The answer is stored in the same database transaction as the effect it answers (through
``JoinedTransaction``), so there is never an effect without its stored answer or the other way
round. Only successful answers are stored: a refused request changed nothing, and may be sent
again (corrected) under the same key. Two requests racing with one key: the second waits for the
first's transaction (at most the lock timeout) and then replays its answer, or, if the first is
still running, gets a 409 saying so. Keys are per caller (the Airflow user) and are forgotten after
RECON_API_IDEMPOTENCY_RETENTION_HOURS by the maintenance DAG.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any, Callable

import psycopg
import sqlalchemy as sa
from fastapi import Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.engine import Connection

from recon.db import Database
from recon.db.engine import JoinedTransaction
from recon.web.api.problems import IDEMPOTENCY_KEY_IN_PROGRESS, IDEMPOTENCY_KEY_REUSED, Problem
from recon.web.database import write_recon

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

IdempotencyKey = Annotated[
    str | None,
    Header(alias=HEADER, min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
           description="any 1 to 255 visible ASCII characters, unique per request you mean (e.g. a UUID);"
                       " the same key and body again returns the first answer and writes nothing"),
]


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: Any
    replayed: bool = False


def request_hash(method: str, path: str, payload: Any) -> str:
    """What "the same request" means: method, path and the body's content (canonical JSON)."""
    canonical = json.dumps([method, path, payload], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class _AnsweredMeanwhile(Exception):
    """Another request with the key committed first: roll this one back and replay that answer."""


def run_once(
    db: Database, principal: str, key: str | None, fingerprint: str,
    effect: Callable[[Database], tuple[int, Any]],
) -> Answer:
    """`effect(db)` -> (status, JSON body), at most once per (principal, key)."""
    if key is None:
        return Answer(*effect(db))
    with db.begin() as conn:
        stored = _stored(conn, principal, key)
    if stored is not None:
        return _replay(stored, fingerprint, key)
    try:
        with db.begin() as conn:
            status, body = effect(JoinedTransaction(conn, db))
            _store(conn, principal, key, fingerprint, status, body)
    except _AnsweredMeanwhile:
        with db.begin() as conn:
            return _replay(_stored(conn, principal, key), fingerprint, key)
    return Answer(status, body)


def _stored(conn: Connection, principal: str, key: str) -> Any:
    return conn.execute(
        sa.text("SELECT request_hash, status_code, response FROM api_idempotency_keys"
                " WHERE principal = :principal AND idempotency_key = :key"),
        {"principal": principal, "key": key},
    ).first()


def _replay(stored: Any, fingerprint: str, key: str) -> Answer:
    if stored.request_hash != fingerprint:
        raise Problem(IDEMPOTENCY_KEY_REUSED, f"Idempotency-Key {key!r} was used for a different request"
                      " (another method, path or body); use a new key for a new request", field=HEADER)
    return Answer(stored.status_code, stored.response, replayed=True)


def _store(conn: Connection, principal: str, key: str, fingerprint: str, status: int, body: Any) -> None:
    try:
        with conn.begin_nested():
            stored = conn.execute(
                sa.text(
                    "INSERT INTO api_idempotency_keys (principal, idempotency_key, request_hash, status_code, response)"
                    " VALUES (:principal, :key, :hash, :status, CAST(:response AS json))"
                    " ON CONFLICT (principal, idempotency_key) DO NOTHING RETURNING 1"
                ),
                {"principal": principal, "key": key, "hash": fingerprint, "status": status,
                 "response": json.dumps(body)},
            ).first()
    except sa.exc.OperationalError as exc:
        if isinstance(exc.orig, psycopg.errors.LockNotAvailable):  # the other request is still running
            raise Problem(IDEMPOTENCY_KEY_IN_PROGRESS, f"a request with Idempotency-Key {key!r} is still being"
                          " processed; send it again later to get its answer", field=HEADER,
                          headers={"Retry-After": "5"}) from None
        raise
    if stored is None:
        raise _AnsweredMeanwhile


def forget_older_than(db: Database, age: dt.timedelta) -> int:
    """Delete keys stored longer ago than `age` (the maintenance DAG); returns how many."""
    with db.begin() as conn:
        return conn.execute(
            sa.text("DELETE FROM api_idempotency_keys WHERE created_at < now() - make_interval(secs => :secs)"),
            {"secs": age.total_seconds()},
        ).rowcount


async def answer_once(
    request: Request, principal: str, key: str | None, payload: BaseModel,
    effect: Callable[[Database], tuple[int, Any]],
) -> JSONResponse:
    """A creating POST: `effect` on the API's write threads, at most once per Idempotency-Key."""
    fingerprint = request_hash(request.method, request.url.path, payload.model_dump(mode="json"))
    answer = await write_recon(lambda db: run_once(db, principal, key, fingerprint, effect))
    return replayable(answer)


def replayable(answer: Answer) -> JSONResponse:
    headers = {REPLAYED_HEADER: "true"} if answer.replayed else None
    return JSONResponse(answer.body, status_code=answer.status_code, headers=headers)
