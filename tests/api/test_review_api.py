"""The review workflow over the REST API, in-process on a real PostgreSQL: the open exceptions (filters,
cursor), one item with its candidates and decisions, each reviewer action (its effect, its audit row
with the authenticated user as actor, Idempotency-Key), and each refusal with its problem and
nothing written: unknown line 404, an action the item's state does not allow 409, a bad body 422,
no credentials 401, a user who may only read 403.

Airflow's real roles answer the same in the live tests (tests/api/test_api_live.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import HTTPException
from fastapi.testclient import TestClient

from recon import ledger, pipeline, review
from recon.db import Database
from recon.web import access
from tests.api.conftest import REVIEWER, acting_as
from tests.api.test_api import assert_problem, count

ACTIONS = ("accept", "force-match", "ignore", "reopen", "requeue")


def scalar(db: Database, sql: str, **params: Any) -> Any:
    with db.begin() as conn:
        return conn.execute(sa.text(sql), params).scalar()


class ReviewBooks:
    """Orders booked on a bank account, confirmed on a PSP clearing account, through the API; the
    rule writes differences off to a variance account."""

    def __init__(self, api: TestClient, db: Database):
        self.api, self.db = api, db
        merchant = api.post("/merchants", json={"merchant_name": "Acme"}).json()["merchant_id"]
        self.bank, self.clearing, self.variance = (
            api.post("/accounts", json={"merchant_id": merchant, "account_name": name, "account_type": kind,
                                        "currency": "USD"}).json()["account_id"]
            for name, kind in (("Bank", "DEBIT_NORMAL"), ("PSP clearing", "CREDIT_NORMAL"),
                               ("Write-offs", "DEBIT_NORMAL")))
        rule = api.post("/rules", json={"account_one_id": self.bank, "account_two_id": self.clearing,
                                        "variance_account_id": self.variance})
        assert rule.status_code == 201, rule.text

    def stage(self, account: str, side: str, amount: str, mode: str, order_id: str) -> str:
        created = self.api.post("/staging-entries", json={
            "account_id": account, "entry_type": side, "amount": amount, "currency": "USD",
            "processing_mode": mode, "metadata": {"order_id": order_id}})
        assert created.status_code == 201, created.text
        return created.json()["staging_entry_id"]

    def order(self, order_id: str, amount: str) -> None:
        self.stage(self.bank, "DEBIT", amount, "TRANSACTION", order_id)
        pipeline.process_queue(db=self.db)

    def confirmation(self, order_id: str, amount: str) -> str:
        """A PSP line for the order, processed: matched, or in review."""
        sid = self.stage(self.clearing, "CREDIT", amount, "CONFIRMATION", order_id)
        pipeline.process_queue(db=self.db)
        return sid

    def mismatch(self, order_id: str = "o-1", booked: str = "250.00", paid: str = "240.00") -> str:
        self.order(order_id, booked)
        return self.confirmation(order_id, paid)

    def expected_entry(self, order_id: str) -> str:
        return scalar(self.db, "SELECT entry_id FROM entries WHERE status = 'EXPECTED' AND order_id = :o", o=order_id)

    def status(self, sid: str) -> str:
        return scalar(self.db, "SELECT status FROM staging_entries WHERE staging_entry_id = :s", s=sid)


@pytest.fixture
def books(api: TestClient, db: Database, monkeypatch: pytest.MonkeyPatch) -> ReviewBooks:
    monkeypatch.setenv("RECON_MATCHING_WINDOW_SECONDS", "0")  # an unmatched line goes to review at once
    return ReviewBooks(api, db)


def act(api: TestClient, sid: str, action: str, **body: Any) -> Any:
    """POST an action (OTHER with a note unless told otherwise); expected_entry_id only to force-match."""
    if action != "force-match":
        body.pop("expected_entry_id", None)
    headers = {"Idempotency-Key": body.pop("key")} if "key" in body else None
    return api.post(f"/exceptions/{sid}/{action}", json={"reason": "OTHER", "note": "checked", **body}, headers=headers)


def decided(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    return response.json()


# ---- reading -----------------------------------------------------------------------------------------


def test_open_exceptions_are_listed_oldest_first_filtered_and_paged(books: ReviewBooks, api: TestClient) -> None:
    mismatch = books.mismatch()
    unmatched = [books.confirmation(f"nowhere-{i}", "5.00") for i in range(3)]
    ids, cursor = [], None
    while True:
        page = api.get("/exceptions", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        ids += [i["staging_entry_id"] for i in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert ids == [mismatch, *unmatched]  # creation order, nothing skipped or repeated

    [item] = api.get("/exceptions", params={"error_type": "MismatchError"}).json()["items"]
    assert (item["staging_entry_id"], item["amount"], item["account_id"]) == (mismatch, "240.0000", books.clearing)
    assert item["created_at"].endswith("Z") and item["seen"]
    assert len(api.get("/exceptions", params={"account_id": books.clearing}).json()["items"]) == 4
    assert api.get("/exceptions", params={"account_id": books.bank}).json()["items"] == []
    assert api.get("/exceptions", params={"older_than": "1d"}).json()["items"] == []
    assert len(api.get("/exceptions", params={"older_than": "0m"}).json()["items"]) == 4
    assert_problem(api.get("/exceptions", params={"older_than": "soon"}), 422, "invalid-input", field="older_than")
    cursor = api.get("/merchants").json()["next_cursor"] or "bm90LWEtY3Vyc29y"
    assert_problem(api.get("/exceptions", params={"cursor": cursor}), 422, "invalid-input", field="cursor")


def test_an_exception_is_read_with_its_candidates_and_its_decisions(books: ReviewBooks, api: TestClient) -> None:
    sid = books.mismatch()
    item = api.get(f"/exceptions/{sid}").json()
    assert (item["status"], item["error_type"], item["amount"]) == ("NEEDS_MANUAL_REVIEW", "MismatchError", "240.0000")
    assert item["mismatched_fields"] == [{"field": "amount", "expected": "250.0000", "actual": "240.0000"}]
    [candidate] = item["candidates"]
    assert (candidate["transaction_status"], candidate["amount"], candidate["difference"]) == (
        "MISMATCH", "250.0000", "-10.0000")  # exact decimal strings
    assert item["decisions"] == []

    decided(act(books.api, sid, "accept", reason="BANK_FEE", note="PSP fee", seen=item["seen"]))
    [decision] = api.get(f"/exceptions/{sid}").json()["decisions"]
    assert (decision["action"], decision["reason_code"], decision["actor"]) == ("accept", "BANK_FEE", REVIEWER)
    assert_problem(api.get("/exceptions/stg_nope"), 404, "not-found")


def test_review_keys_are_the_engines_and_odd_ones_written_by_sql_still_read(
    books: ReviewBooks, api: TestClient, db: Database
) -> None:
    line = {"account_id": books.clearing, "entry_type": "CREDIT", "amount": "1.00", "currency": "USD",
            "processing_mode": "CONFIRMATION"}
    for key in ("candidates", "mismatched_fields"):  # a producer may not pose as the matcher
        assert_problem(api.post("/staging-entries", json={**line, "metadata": {"order_id": "o", key: []}}),
                       422, "invalid-input", field="body")
    sid = books.confirmation("nowhere", "10.00")
    odd = {"candidates": 5, "mismatched_fields": [{"field": "amount", "expected": 1}, "x"], "error": 7}
    with db.begin() as conn:  # plain SQL is a producer too
        conn.execute(sa.text("UPDATE staging_entries SET metadata = metadata || CAST(:m AS jsonb)"
                             " WHERE staging_entry_id = :s"), {"m": json.dumps(odd), "s": sid})
    item = api.get(f"/exceptions/{sid}").json()
    assert (item["reason"], item["candidates"]) == ("7", [])
    assert item["mismatched_fields"] == [{"field": "amount", "expected": "1", "actual": None}]


# ---- the actions ---------------------------------------------------------------------------------------


def test_accept_writes_off_the_difference_records_the_user_and_replays_by_its_key(
    books: ReviewBooks, api: TestClient, db: Database
) -> None:
    sid = books.mismatch()
    first = act(api, sid, "accept", reason="BANK_FEE", note="PSP fee", key="accept-1")
    again = act(api, sid, "accept", reason="BANK_FEE", note="PSP fee", key="accept-1")
    decision = decided(first)
    assert again.status_code == 201 and again.json() == decision and again.headers["idempotent-replayed"] == "true"
    assert (decision["action"], decision["actor"], decision["staging_entry_id"]) == ("accept", REVIEWER, sid)
    assert decision["after"]["match_type"] == "Accepted"
    assert decision["after"]["variance"] == {"account_id": books.variance, "entry_type": "CREDIT", "amount": "10.0000"}
    assert decision["decided_at"].endswith("Z") and len(decision["row_hash"]) == 64
    assert books.status(sid) == "PROCESSED" and count(db, "review_decisions") == 1
    assert ledger.check_invariants(db).ok and review.verify(db).ok

    assert_problem(act(api, sid, "accept", reason="ROUNDING", key="accept-1"), 409, "idempotency-key-reused",
                   field="Idempotency-Key")
    assert count(db, "review_decisions") == 1


def test_force_match_fulfils_the_named_expected_entry(books: ReviewBooks, api: TestClient, db: Database) -> None:
    books.order("o-7", "100.00")
    sid = books.confirmation("o-7-typo", "100.05")
    decision = decided(act(api, sid, "force-match", reason="DATA_CORRECTION", note="typo in the order id",
                           expected_entry_id=books.expected_entry("o-7")))
    assert decision["after"]["match_type"] == "ForceMatched"
    assert decision["after"]["variance"]["amount"] == "0.0500"
    assert books.status(sid) == "PROCESSED" and ledger.check_invariants(db).ok


def test_ignore_processes_the_line_without_a_ledger_effect(books: ReviewBooks, api: TestClient, db: Database) -> None:
    sid = books.confirmation("not-ours", "12.00")
    entries = count(db, "entries")
    decision = decided(act(api, sid, "ignore", reason="NOT_OURS", note="another merchant's payout"))
    assert decision["after"] == {"status": "PROCESSED", "match_type": "Ignored"}
    assert count(db, "entries") == entries and books.status(sid) == "PROCESSED"


def test_reopen_puts_an_accepted_line_back_in_review(books: ReviewBooks, api: TestClient, db: Database) -> None:
    sid = books.mismatch()
    decided(act(api, sid, "accept", reason="BANK_FEE"))
    decision = decided(act(api, sid, "reopen", reason="CUSTOMER_DISPUTE", note="wrong order"))
    assert decision["after"]["status"] == "NEEDS_MANUAL_REVIEW" and decision["after"]["reopened_transaction_id"]
    assert books.status(sid) == "NEEDS_MANUAL_REVIEW" and books.expected_entry("o-1")
    assert [i["staging_entry_id"] for i in api.get("/exceptions").json()["items"]] == [sid]
    assert ledger.check_invariants(db).ok and review.verify(db).ok


def test_requeue_sends_one_line_or_every_line_of_a_filter_back_to_the_queue(
    books: ReviewBooks, api: TestClient, db: Database
) -> None:
    one = books.confirmation("late-1", "1.00")
    others = [books.confirmation(f"late-{i}", "1.00") for i in (2, 3)]
    decision = decided(act(api, one, "requeue", reason="DATA_CORRECTION"))
    assert decision["after"]["status"] == "PENDING" and books.status(one) == "PENDING"
    assert scalar(db, "SELECT count(*) FROM process_tracker WHERE status = 'PENDING'") == 1

    bulk = api.post("/exceptions/requeue", json={"reason": "DATA_CORRECTION", "error_type": "NoMatchFoundError"},
                    headers={"Idempotency-Key": "requeue-all"})
    assert bulk.status_code == 200, bulk.text
    assert bulk.json()["requeued"] == 2
    assert sorted(d["staging_entry_id"] for d in bulk.json()["decisions"]) == sorted(others)
    assert [books.status(s) for s in others] == ["PENDING", "PENDING"] and count(db, "review_decisions") == 3
    replay = api.post("/exceptions/requeue", json={"reason": "DATA_CORRECTION", "error_type": "NoMatchFoundError"},
                      headers={"Idempotency-Key": "requeue-all"})
    assert replay.json() == bulk.json() and count(db, "review_decisions") == 3
    assert_problem(api.post("/exceptions/requeue", json={"reason": "DATA_CORRECTION"}), 422, "invalid-input")
    assert_problem(api.post("/exceptions/requeue", json={"reason": "OTHER", "note": "x", "older_than": "-1d"}),
                   422, "invalid-input", field="older_than")


# ---- refusals: nothing written --------------------------------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
def test_an_action_on_an_unknown_line_is_a_404(books: ReviewBooks, api: TestClient, db: Database, action: str) -> None:
    assert_problem(act(api, "stg_nope", action, expected_entry_id="ent_nope"), 404, "not-found")
    assert count(db, "review_decisions") == 0


def test_an_action_the_items_state_does_not_allow_is_a_409_and_writes_nothing(
    books: ReviewBooks, api: TestClient, db: Database
) -> None:
    unmatched = books.confirmation("nowhere", "10.00")
    mismatch = books.mismatch()
    seen = api.get(f"/exceptions/{mismatch}").json()["seen"]
    cases = [
        (act(api, unmatched, "accept"), "review-not-allowed", None),  # no mismatch to accept: force-match it
        (act(api, unmatched, "reopen"), "review-not-allowed", None),  # nothing to reopen
        (act(api, unmatched, "force-match", expected_entry_id="ent_nope"), "review-stale", "expected_entry_id"),
        (act(api, unmatched, "force-match", expected_entry_id=books.expected_entry("o-1")), "review-not-allowed",
         "expected_entry_id"),  # held by the other line's mismatch
    ]
    for response, slug, field in cases:
        assert_problem(response, 409, slug, field)
    assert count(db, "review_decisions") == 0 and books.status(unmatched) == "NEEDS_MANUAL_REVIEW"

    decided(act(api, mismatch, "ignore", reason="NOT_OURS", seen=seen))
    for action in ("accept", "ignore", "requeue"):  # no longer in review
        assert "no longer in manual review" in assert_problem(act(api, mismatch, action), 409, "review-stale")["detail"]
    booked = scalar(db, "SELECT staging_entry_id FROM staging_entries WHERE processing_mode = 'TRANSACTION'")
    assert_problem(act(api, booked, "ignore"), 409, "review-stale")  # a booked order is not in review
    assert count(db, "review_decisions") == 1


def test_an_action_on_an_item_changed_since_it_was_read_is_a_409(books: ReviewBooks, api: TestClient, db: Database) -> None:
    sid = books.confirmation("nowhere", "10.00")
    seen = api.get(f"/exceptions/{sid}").json()["seen"]
    decided(act(api, sid, "requeue", reason="DATA_CORRECTION", seen=seen))
    pipeline.process_queue(db=db)  # back in review, changed since
    body = assert_problem(act(api, sid, "ignore", reason="NOT_OURS", seen=seen), 409, "review-stale")
    assert "changed since you looked" in body["detail"]
    assert books.status(sid) == "NEEDS_MANUAL_REVIEW" and count(db, "review_decisions") == 1


@pytest.mark.parametrize("body, field", [
    ({"reason": "BECAUSE"}, "reason"),
    ({}, "reason"),
    ({"reason": "OTHER", "note": "  "}, "note"),  # OTHER says why
    ({"reason": "ROUNDING", "note": "x" * 2001}, "note"),
    ({"reason": "ROUNDING", "note": "a\u0000b"}, "note"),
    ({"reason": "ROUNDING", "seen": "yesterday"}, "seen"),
    ({"reason": "ROUNDING", "seen": "2026-11-02T09:30:00"}, "seen"),  # no time zone
    ({"reason": "ROUNDING", "actor": "mallory"}, "actor"),  # the actor is the authenticated user
    ({"reason": "ROUNDING", "amount": "1.00"}, "amount"),
])
def test_a_bad_body_is_a_422_naming_the_field_and_writes_nothing(
    books: ReviewBooks, api: TestClient, db: Database, body: dict[str, Any], field: str
) -> None:
    sid = books.mismatch()
    assert_problem(api.post(f"/exceptions/{sid}/accept", json=body), 422, "invalid-input", field=field)
    assert count(db, "review_decisions") == 0 and books.status(sid) == "NEEDS_MANUAL_REVIEW"


def test_force_match_without_the_expected_entry_is_a_422(books: ReviewBooks, api: TestClient, db: Database) -> None:
    sid = books.confirmation("nowhere", "10.00")
    assert_problem(api.post(f"/exceptions/{sid}/force-match", json={"reason": "ROUNDING"}), 422, "invalid-input",
                   field="expected_entry_id")
    assert count(db, "review_decisions") == 0


# ---- who may read and act -------------------------------------------------------------------------------


def forbidden() -> None:
    raise HTTPException(403, "Forbidden")  # what Airflow's check answers a user who may not edit the DAG


VIEWER = {access.can_read_recon_runs: lambda: None, access.can_edit_recon_dag: forbidden,
          access.caller: lambda: "viewer", access.reviewer: lambda: "viewer"}


def test_without_credentials_every_review_endpoint_is_a_401(books: ReviewBooks, api: TestClient, db: Database) -> None:
    sid = books.mismatch()
    with acting_as(api, {}) as anonymous:  # Airflow's own authentication, no credentials sent
        responses = [anonymous.get("/exceptions"), anonymous.get(f"/exceptions/{sid}"),
                     anonymous.post("/exceptions/requeue", json={"reason": "OTHER", "note": "x", "account_id": "a"}),
                     *(act(anonymous, sid, action, expected_entry_id="e") for action in ACTIONS)]
    for response in responses:
        body = assert_problem(response, 401, "unauthenticated")
        assert set(body) <= {"type", "title", "status", "detail", "instance", "request_id"}  # nothing else
    assert count(db, "review_decisions") == 0 and books.status(sid) == "NEEDS_MANUAL_REVIEW"


def test_a_user_who_may_only_read_sees_the_exceptions_but_gets_a_403_on_every_action(
    books: ReviewBooks, api: TestClient, db: Database
) -> None:
    sid = books.mismatch()
    with acting_as(api, VIEWER) as viewer:
        assert [i["staging_entry_id"] for i in viewer.get("/exceptions").json()["items"]] == [sid]
        assert viewer.get(f"/exceptions/{sid}").status_code == 200
        refused = [act(viewer, sid, action, expected_entry_id="e") for action in ACTIONS]
        refused.append(viewer.post("/exceptions/requeue", json={"reason": "OTHER", "note": "x", "account_id": "a"}))
    for response in refused:
        assert_problem(response, 403, "forbidden")
    assert count(db, "review_decisions") == 0 and books.status(sid) == "NEEDS_MANUAL_REVIEW"
