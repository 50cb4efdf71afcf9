"""The serial baseline: one task per loop with per-row queries, as the original consumer did.

    get_next_pending_task -> update to PROCESSING (commit) -> load the staging entry, the rule,
    the accounts, the expected entry one query at a time -> write rows one at a time ->
    staging status + task status -> commit

Same business outcomes as the engine (same statuses, error types and metadata keys), so the
benchmark can check its books exactly like the other modes'. It uses the tracker's seed API
(``get_next_pending_task``, ``update_task_status``) and plain SQLAlchemy ``text()`` queries.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from recon.db import Database
from recon.errors import ErrorType
from recon.tasks.transaction_creation import order_logical_id
from recon.tracker import ProcessTracker, TaskStatus, TaskType


class _Review(Exception):
    def __init__(self, error_type: ErrorType, message: str, **metadata: Any):
        super().__init__(message)
        self.error_type, self.message, self.metadata = error_type, message, metadata


def _one(conn: Connection, sql: str, **params: Any) -> Any:
    return conn.execute(sa.text(sql), params).first()


def _insert_transaction(conn: Connection, **values: Any) -> str:
    return conn.execute(sa.text(
        "INSERT INTO transactions (logical_transaction_id, version, amount, currency, merchant_id, status,"
        " metadata, source_staging_entry_id) VALUES (:logical, :version, :amount, :currency, :merchant,"
        " :status, CAST(:metadata AS jsonb), :source) RETURNING transaction_id"
    ), {**values, "metadata": json.dumps(values["metadata"])}).scalar_one()


def _insert_entry(conn: Connection, **values: Any) -> str:
    values.setdefault("fulfilled", None)
    return conn.execute(sa.text(
        "INSERT INTO entries (account_id, transaction_id, entry_type, amount, currency, status, effective_date,"
        " metadata, fulfilled_expected_entry_id) VALUES (:account, :txn, :side, :amount, :currency, :status,"
        " :date, CAST(:metadata AS jsonb), :fulfilled) RETURNING entry_id"
    ), {**values, "metadata": json.dumps(values["metadata"])}).scalar_one()


def _book(conn: Connection, entry: Any) -> dict[str, Any]:
    rule = _one(conn, "SELECT id, account_two_id FROM recon_rules WHERE account_one_id = :a"
                      " ORDER BY priority, id LIMIT 1", a=entry.account_id)
    if rule is None:
        raise _Review(ErrorType.NO_RECON_RULE, f"no recon rule has account {entry.account_id} as account_one")
    account = _one(conn, "SELECT account_id, merchant_id, currency FROM accounts WHERE account_id = :a",
                   a=entry.account_id)
    contra = _one(conn, "SELECT account_id, currency FROM accounts WHERE account_id = :a", a=rule.account_two_id)
    wrong = [a for a in (account, contra) if a.currency != entry.currency]
    if wrong:
        names = ", ".join(f"{a.account_id} is {a.currency}" for a in wrong)
        raise _Review(ErrorType.CURRENCY_MISMATCH,
                      f"entry currency {entry.currency} differs from the account currency ({names})")
    logical = order_logical_id(entry.account_id, entry.order_id) if entry.order_id else entry.staging_entry_id
    if _one(conn, "SELECT 1 FROM transactions WHERE logical_transaction_id = :l LIMIT 1", l=logical):
        raise _Review(ErrorType.DUPLICATE_ORDER, f"order {entry.order_id!r} is already booked for account"
                                                 f" {entry.account_id} (logical transaction {logical})")
    source = {"source_staging_entry_id": entry.staging_entry_id}
    order = {"order_id": entry.order_id} if entry.order_id else {}
    txn = _insert_transaction(conn, logical=logical, version=1, amount=entry.amount, currency=entry.currency,
                              merchant=account.merchant_id, status="EXPECTED",
                              metadata={**entry.metadata, **source}, source=entry.staging_entry_id)
    _insert_entry(conn, account=entry.account_id, txn=txn, side=entry.entry_type, amount=entry.amount,
                  currency=entry.currency, status="POSTED", date=entry.effective_date,
                  metadata={**entry.metadata, **order, **source})
    _insert_entry(conn, account=rule.account_two_id, txn=txn,
                  side="CREDIT" if entry.entry_type == "DEBIT" else "DEBIT", amount=entry.amount,
                  currency=entry.currency, status="EXPECTED", date=entry.effective_date,
                  metadata={**entry.metadata, **order, **source, "recon_rule_id": rule.id})
    return {"created_transaction_id": txn, "match_type": "NewTransactionGenerated"}


def _fulfil(conn: Connection, entry: Any) -> dict[str, Any]:
    """The benchmark's rules only: the first rule of the account, one key whose expected field is
    order_id (the line's order_id or a metadata field), an optional absolute tolerance."""
    rule = _one(conn, "SELECT id, match_keys -> 0 ->> 'line' AS line_field, amount_tolerance, variance_account_id,"
                      " fee_account_id,"
                      " match_keys = '[{\"line\": \"order_id\", \"expected\": \"order_id\"}]' AS by_order_id"
                      " FROM recon_rules WHERE account_two_id = :a ORDER BY priority, id LIMIT 1", a=entry.account_id)
    if rule is None:
        raise _Review(ErrorType.NO_RECON_RULE, f"no recon rule has account {entry.account_id} as account_two"
                                               " (confirmations arrive on a rule's contra account)")
    key = entry.order_id if rule.line_field == "order_id" else entry.metadata.get(rule.line_field[len("metadata."):])
    if not key:
        raise _Review(ErrorType.MISSING_ORDER_ID,
                      f"confirmation {entry.staging_entry_id} has no {rule.line_field} to match on")
    account = _one(conn, "SELECT merchant_id, currency FROM accounts WHERE account_id = :a", a=entry.account_id)
    if entry.currency != account.currency:
        raise _Review(ErrorType.CURRENCY_MISMATCH, f"confirmation currency {entry.currency} differs from account"
                                                   f" {entry.account_id} ({account.currency}); no expected entry was taken")
    merchant = account.merchant_id
    candidates = conn.execute(sa.text(
        "SELECT e.entry_id, e.entry_type, e.amount, e.currency, t.transaction_id, t.logical_transaction_id,"
        " t.version, t.amount AS transaction_amount, t.metadata AS transaction_metadata"
        " FROM entries e JOIN transactions t ON t.transaction_id = e.transaction_id"
        " WHERE e.account_id = :a AND e.order_id = :o AND e.status = 'EXPECTED'"
        " AND t.status NOT IN ('ARCHIVED', 'MISMATCH') AND t.merchant_id = :m"
        " ORDER BY t.transaction_id, e.entry_id FOR UPDATE OF t"
    ), {"a": entry.account_id, "o": key, "m": merchant}).all()
    if not candidates:
        if rule.by_order_id and _one(conn, "SELECT 1 FROM entries WHERE account_id = :a AND order_id = :o"
                      " AND fulfilled_expected_entry_id IS NOT NULL LIMIT 1", a=entry.account_id, o=entry.order_id):
            raise _Review(ErrorType.ALREADY_FULFILLED,
                          f"the expected entry for order {entry.order_id!r} on account {entry.account_id}"
                          " was already fulfilled or mismatched by another confirmation")
        raise _Review(ErrorType.NO_MATCH,
                      f"no open expected entry for order {entry.order_id!r} on account {entry.account_id}")
    if len(candidates) > 1:
        ids = ", ".join(c.entry_id for c in candidates)
        raise _Review(ErrorType.AMBIGUOUS_MATCH, f"{len(candidates)} expected entries match order"
                                                 f" {entry.order_id!r} on account {entry.account_id}: {ids}")
    leg = candidates[0]
    if entry.currency != leg.currency:
        raise _Review(ErrorType.CURRENCY_MISMATCH, f"confirmation currency {entry.currency} differs from expected"
                                                   f" entry {leg.entry_id} ({leg.currency}); no expected entry was taken")
    differences = []
    tolerated = entry.amount != leg.amount and abs(entry.amount - leg.amount) <= rule.amount_tolerance
    if entry.amount != leg.amount and not tolerated:
        differences.append(f"amount: expected {leg.amount}, got {entry.amount}")
    if entry.entry_type != leg.entry_type:
        differences.append(f"side: expected {leg.entry_type}, got {entry.entry_type}")
    if differences:
        raise _Review(ErrorType.MISMATCH, "; ".join(differences),
                      matched_transaction_id=leg.transaction_id, matched_entry_id=leg.entry_id)
    fee = Decimal(entry.metadata.get("fee_total") or 0)  # a PSP settled payment: the fee it kept
    if fee and rule.fee_account_id is None:
        raise _Review(ErrorType.NO_RECON_RULE, f"the settlement line's fee {fee} has no account to go to:"
                                               f" rule of account {entry.account_id} names no fee account")
    posted = conn.execute(sa.text(
        "SELECT entry_id, account_id, entry_type, amount, currency, effective_date, metadata FROM entries"
        " WHERE transaction_id = :t AND status = 'POSTED' ORDER BY entry_id"
    ), {"t": leg.transaction_id}).all()
    conn.execute(sa.text("UPDATE transactions SET status = 'ARCHIVED', discarded_at = now()"
                         " WHERE transaction_id = :t"), {"t": leg.transaction_id})
    conn.execute(sa.text("UPDATE entries SET status = 'ARCHIVED', discarded_at = now() WHERE transaction_id = :t"),
                 {"t": leg.transaction_id})
    new_txn = _insert_transaction(
        conn, logical=leg.logical_transaction_id, version=leg.version + 1, amount=leg.transaction_amount,
        currency=leg.currency, merchant=merchant, status="POSTED",
        metadata={**leg.transaction_metadata, "evolved_from_transaction_id": leg.transaction_id,
                  "fulfilled_expected_entry_id": leg.entry_id},
        source=entry.staging_entry_id)
    _insert_entry(conn, account=entry.account_id, txn=new_txn, side=entry.entry_type, amount=entry.amount,
                  currency=entry.currency, status="POSTED", date=entry.effective_date, fulfilled=leg.entry_id,
                  metadata={**entry.metadata, "source_staging_entry_id": entry.staging_entry_id,
                            "fulfilled_expected_entry_id": leg.entry_id})
    for p in posted:
        _insert_entry(conn, account=p.account_id, txn=new_txn, side=p.entry_type, amount=p.amount,
                      currency=p.currency, status="POSTED", date=p.effective_date,
                      metadata={**p.metadata, "derived_from_entry_id": p.entry_id})
    result = {"matched_transaction_id": leg.transaction_id, "matched_entry_id": leg.entry_id,
              "evolved_transaction_id": new_txn, "match_type": "Phase2_Fulfilled"}
    if tolerated:  # the difference to the variance account, on the side that balances
        variance = entry.amount - leg.amount
        side = entry.entry_type if variance < 0 else ("CREDIT" if entry.entry_type == "DEBIT" else "DEBIT")
        _insert_entry(conn, account=rule.variance_account_id, txn=new_txn, side=side, amount=abs(variance),
                      currency=leg.currency, status="POSTED", date=entry.effective_date,
                      metadata={"source_staging_entry_id": entry.staging_entry_id, "variance_of_expected_entry_id": leg.entry_id})
        result.update(match_type="FulfilledWithTolerance", variance=str(variance),
                      variance_account_id=rule.variance_account_id)
    if fee:  # in the same transaction: clearing -> fee account (recon.ledger.book_pair's sides)
        money_in, money_out = (rule.fee_account_id, entry.account_id) if fee > 0 else (entry.account_id,
                                                                                       rule.fee_account_id)
        metadata = {"source_staging_entry_id": entry.staging_entry_id,
                    "fee_of_staging_entry_id": entry.staging_entry_id,
                    "settlement_batch": entry.metadata.get("settlement_batch"),
                    **({"order_id": entry.order_id} if entry.order_id else {})}
        for account, side in ((money_in, "CREDIT"), (money_out, "DEBIT")):
            _insert_entry(conn, account=account, txn=new_txn, side=side, amount=abs(fee), currency=entry.currency,
                          status="POSTED", date=entry.effective_date, metadata=metadata)
        result.update(fee=str(fee), fee_account_id=rule.fee_account_id)
    return result


def process_one(db: Database, tracker: ProcessTracker, task_id: str, staging_entry_id: str | None) -> str:
    """Process one claimed task in its own transaction; returns the task's final status."""
    with db.begin() as conn:
        entry = None
        if staging_entry_id:
            entry = _one(conn, "SELECT staging_entry_id, account_id, entry_type, amount, currency, status,"
                               " processing_mode, effective_date, metadata, order_id FROM staging_entries"
                               " WHERE staging_entry_id = :s FOR UPDATE", s=staging_entry_id)
        if entry is None:
            tracker.update_task_status(task_id, TaskStatus.FAILED,
                                       f"{ErrorType.STAGING_ENTRY_NOT_FOUND}: no staging entry", conn=conn)
            return TaskStatus.FAILED
        if entry.status == "PROCESSED":
            tracker.update_task_status(task_id, TaskStatus.COMPLETED, conn=conn)
            return TaskStatus.COMPLETED
        handler: Callable[[Connection, Any], dict[str, Any]] = (
            _book if entry.processing_mode == "TRANSACTION" else _fulfil
        )
        try:
            patch = handler(conn, entry)  # a review is raised before the handler writes anything
        except _Review as review:
            patch = {**review.metadata, "error": review.message, "error_type": review.error_type.value}
            conn.execute(sa.text(
                "UPDATE staging_entries SET status = 'NEEDS_MANUAL_REVIEW',"
                " metadata = metadata || CAST(:patch AS jsonb) WHERE staging_entry_id = :s"
            ), {"patch": json.dumps(patch), "s": entry.staging_entry_id})
            if review.error_type == ErrorType.MISMATCH:
                conn.execute(sa.text("UPDATE transactions SET status = 'MISMATCH' WHERE transaction_id = :t"),
                             {"t": review.metadata["matched_transaction_id"]})
            tracker.update_task_status(task_id, TaskStatus.FAILED, f"{review.error_type}: {review.message}",
                                       conn=conn)
            return TaskStatus.FAILED
        conn.execute(sa.text(
            "UPDATE staging_entries SET status = 'PROCESSED', discarded_at = now(),"
            " metadata = (metadata - 'error' - 'error_type') || CAST(:patch AS jsonb) WHERE staging_entry_id = :s"
        ), {"patch": json.dumps(patch), "s": entry.staging_entry_id})
        tracker.update_task_status(task_id, TaskStatus.COMPLETED, conn=conn)
        return TaskStatus.COMPLETED


def drain(db: Database, limit: int | None = None) -> dict[str, Any]:
    """Process due tasks one per loop until none is due (or `limit` tasks were processed)."""
    tracker = ProcessTracker(db)
    processed = 0
    statuses: dict[str, int] = {}
    started = time.perf_counter()
    while limit is None or processed < limit:
        task = tracker.get_next_pending_task(TaskType.PROCESS_STAGING_ENTRY)
        if task is None:
            break
        tracker.update_task_status(task.task_id, TaskStatus.PROCESSING, increment_attempt=True)
        status = process_one(db, tracker, task.task_id, task.payload.get("staging_entry_id"))
        statuses[status] = statuses.get(status, 0) + 1
        processed += 1
    return {"processed": processed, "seconds": time.perf_counter() - started, "statuses": statuses}
