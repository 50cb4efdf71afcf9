"""The REST API in-process on a real PostgreSQL: resources, conventions (problems, cursors,
Idempotency-Key, limits, request ids) and that refused requests change nothing.

Authentication is Airflow's and is tested against a real API server in test_api_live.py.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from recon import ledger, pipeline, staging
from recon.db import Database
from recon.settings import DatabaseTimeouts
from recon.web import database
from recon.web.api import idempotency
from recon.web.api.problems import PROBLEM_JSON, TYPE_PREFIX
from recon.web.api.staging_entries import NewEntry
from tests.api.conftest import PRINCIPAL
from tests.reliability.helpers import wait_until

DATA = Path(__file__).resolve().parents[1] / "data"


def count(db: Database, table: str) -> int:
    with db.begin() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()  # a fixed table name


def assert_problem(response: Any, status: int, slug: str, field: str | None = None) -> dict[str, Any]:
    """The RFC 9457 shape, with its stable type, the status and (when one is to blame) the field."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body = response.json()
    assert body["type"] == TYPE_PREFIX + slug and body["status"] == status, body
    assert body["title"] and body["detail"] and body["instance"].startswith("/recon/api/v1/"), body
    assert body["request_id"] == response.headers["x-request-id"]
    if field is not None:
        assert body["field"] == field, body
    return body


def books(api: TestClient, currency: str = "USD") -> dict[str, str]:
    merchant = api.post("/merchants", json={"merchant_name": "Acme"}).json()["merchant_id"]
    orders = api.post("/accounts", json={"merchant_id": merchant, "account_name": f"Orders {currency}",
                                         "account_type": "DEBIT_NORMAL", "currency": currency}).json()["account_id"]
    bank = api.post("/accounts", json={"merchant_id": merchant, "account_name": f"Bank {currency}",
                                       "account_type": "CREDIT_NORMAL", "currency": currency}).json()["account_id"]
    rule = api.post("/rules", json={"account_one_id": orders, "account_two_id": bank})
    assert rule.status_code == 201, rule.text
    return {"merchant": merchant, "orders": orders, "bank": bank, "rule": rule.json()["rule_id"]}


def entry(account: str, order: str, amount: str = "10.00", mode: str = "TRANSACTION", side: str = "DEBIT",
          **extra: Any) -> dict[str, Any]:
    return {"account_id": account, "entry_type": side, "amount": amount, "currency": "USD",
            "processing_mode": mode, "metadata": {"order_id": order}, **extra}


# ---- merchants, accounts, rules ---------------------------------------------------------------------


def test_merchants_are_created_listed_a_page_at_a_time_and_read(api: TestClient) -> None:
    created = [api.post("/merchants", json={"merchant_name": f"M{i}", "merchant_id": f"mer-{i}"}) for i in range(5)]
    assert [r.status_code for r in created] == [201] * 5
    assert created[0].json()["created_at"].endswith("Z")  # RFC 3339 in UTC

    seen, cursor = [], None
    for _ in range(5):
        page = api.get("/merchants", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [m["merchant_id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"mer-{i}" for i in range(5)]  # id order, nothing skipped or repeated
    assert api.get("/merchants/mer-3").json()["merchant_name"] == "M3"
    assert_problem(api.get("/merchants/nope"), 404, "not-found")
    assert_problem(api.post("/merchants", json={"merchant_name": "again", "merchant_id": "mer-1"}),
                   409, "conflict", field="merchant_id")


def test_accounts_show_their_balances_and_are_renamed_and_deleted(api: TestClient, db: Database) -> None:
    merchant = api.post("/merchants", json={"merchant_name": "Acme"}).json()["merchant_id"]
    created = api.post("/accounts", json={"merchant_id": merchant, "account_name": "Bank", "account_type": "DEBIT_NORMAL",
                                          "currency": "EUR", "initial_balance": "-12.3400"})
    assert created.status_code == 201, created.text
    account = created.json()
    assert (account["initial_balance"], account["posted"], account["pending"], account["available"]) == (
        "-12.3400", "-12.3400", "-12.3400", "-12.3400")  # exact decimal strings

    renamed = api.patch(f"/accounts/{account['account_id']}", json={"account_name": "Bank EUR"})
    assert renamed.status_code == 200 and renamed.json()["account_name"] == "Bank EUR"
    assert api.get("/accounts", params={"merchant_id": merchant}).json()["items"] == [renamed.json()]
    assert api.delete(f"/accounts/{account['account_id']}").status_code == 204
    assert_problem(api.get(f"/accounts/{account['account_id']}"), 404, "not-found")
    assert_problem(api.delete(f"/accounts/{account['account_id']}"), 404, "not-found")


@pytest.mark.parametrize("change, field", [
    ({"merchant_id": "mer_nope"}, "merchant_id"),
    ({"currency": "eur"}, "currency"),
    ({"currency": "USD\n"}, "currency"),
    ({"account_type": "ASSET"}, "account_type"),
    ({"initial_balance": 1.5}, "initial_balance"),  # a JSON number with a fraction is a float: inexact
    ({"initial_balance": "1.00001"}, "initial_balance"),
    ({"account_name": ""}, "account_name"),
    ({"account_name": "a\u0000b"}, "account_name"),
    ({"colour": "blue"}, "colour"),
])
def test_a_bad_account_is_refused_naming_the_field_and_nothing_is_written(
    api: TestClient, db: Database, change: dict[str, Any], field: str
) -> None:
    merchant = api.post("/merchants", json={"merchant_name": "Acme"}).json()["merchant_id"]
    body = {"merchant_id": merchant, "account_name": "Bank", "account_type": "DEBIT_NORMAL", "currency": "EUR", **change}
    assert_problem(api.post("/accounts", json=body), 422, "invalid-input", field=field)
    assert count(db, "accounts") == 0


def test_an_account_the_ledger_or_a_rule_refers_to_is_not_deleted(api: TestClient, db: Database) -> None:
    b = books(api)
    assert "recon rules refer to it" in assert_problem(api.delete(f"/accounts/{b['bank']}"), 409, "conflict")["detail"]
    spare = api.post("/accounts", json={"merchant_id": b["merchant"], "account_name": "Spare", "currency": "USD",
                                        "account_type": "DEBIT_NORMAL"}).json()["account_id"]
    assert api.post("/staging-entries", json=entry(spare, "ORD-0")).status_code == 201
    assert "staging entries refer to it" in assert_problem(api.delete(f"/accounts/{spare}"), 409, "conflict")["detail"]
    assert api.post("/staging-entries", json=entry(b["orders"], "ORD-1")).status_code == 201
    pipeline.process_queue(db=db)
    with db.begin() as conn:  # the staging entry goes; its ledger rows stay
        conn.execute(sa.text("DELETE FROM process_tracker"))
        conn.execute(sa.text("UPDATE transactions SET source_staging_entry_id = NULL"))
        # the outcome history is append-only: only its owner, on purpose, can take it away
        conn.execute(sa.text("ALTER TABLE staging_entry_outcomes DISABLE TRIGGER staging_entry_outcomes_append_only"))
        conn.execute(sa.text("DELETE FROM staging_entry_outcomes"))
        conn.execute(sa.text("DELETE FROM staging_entries"))
        conn.execute(sa.text("DELETE FROM recon_rules"))
    assert "ledger entries refer to it" in assert_problem(api.delete(f"/accounts/{b['orders']}"), 409, "conflict")["detail"]
    assert api.delete(f"/accounts/{spare}").status_code == 204  # nothing refers to it any more
    assert count(db, "accounts") == 2


def test_rules_are_created_listed_and_refused_with_the_field(api: TestClient, db: Database) -> None:
    b = books(api)
    assert api.get(f"/rules/{b['rule']}").json() == {
        "rule_id": b["rule"], "merchant_id": b["merchant"], "account_one_id": b["orders"], "account_two_id": b["bank"],
        "priority": 10, "match_keys": [{"line": "order_id", "expected": "order_id"}], "amount_tolerance": "0.0000",
        "amount_tolerance_pct": "0.0000", "variance_account_id": None, "date_window_days": None, "aging_days": None,
        "fee_account_id": None, "group_by": None}
    fees = api.post("/accounts", json={"merchant_id": b["merchant"], "account_name": "PSP fees", "currency": "USD",
                                       "account_type": "CREDIT_NORMAL"}).json()["account_id"]
    assert api.patch(f"/rules/{b['rule']}", json={"fee_account_id": fees}).json()["fee_account_id"] == fees
    assert_problem(api.patch(f"/rules/{b['rule']}", json={"fee_account_id": b["orders"]}), 422, "invalid-input",
                   field="fee_account_id")
    assert api.patch(f"/rules/{b['rule']}", json={"fee_account_id": None}).json()["fee_account_id"] is None
    assert [r["rule_id"] for r in api.get("/rules", params={"merchant_id": b["merchant"]}).json()["items"]] == [b["rule"]]
    assert_problem(api.post("/rules", json={"account_one_id": b["orders"], "account_two_id": b["bank"]}), 409, "conflict")
    assert_problem(api.post("/rules", json={"account_one_id": b["orders"], "account_two_id": "acc_nope"}),
                   422, "invalid-input", field="account_two_id")
    assert_problem(api.get("/rules/rule_nope"), 404, "not-found")
    assert count(db, "recon_rules") == 1


def test_a_rule_the_ledger_refers_to_is_not_deleted(api: TestClient, db: Database) -> None:
    b = books(api)
    assert api.post("/staging-entries", json=entry(b["orders"], "ORD-1")).status_code == 201
    pipeline.process_queue(db=db)  # booked under the rule
    assert "referenced by ledger entries" in assert_problem(api.delete(f"/rules/{b['rule']}"), 409, "conflict")["detail"]
    unused = api.post("/accounts", json={"merchant_id": b["merchant"], "account_name": "Spare", "currency": "USD",
                                         "account_type": "CREDIT_NORMAL"}).json()["account_id"]
    spare = api.post("/rules", json={"account_one_id": b["bank"], "account_two_id": unused}).json()["rule_id"]
    assert api.delete(f"/rules/{spare}").status_code == 204
    assert_problem(api.delete(f"/rules/{spare}"), 404, "not-found")
    assert count(db, "recon_rules") == 1


# ---- staging entries ----------------------------------------------------------------------------------


def test_an_entry_is_staged_with_its_task_and_read_back_with_its_outcome(api: TestClient, db: Database) -> None:
    b = books(api)
    created = api.post("/staging-entries", json=entry(b["orders"], "ORD-1", "120.50", effective_date="2026-11-02T10:30:00+01:00"))
    assert created.status_code == 201, created.text
    staged = created.json()
    detail = api.get(f"/staging-entries/{staged['staging_entry_id']}").json()
    assert (detail["amount"], detail["effective_date"], detail["status"]) == ("120.5000", "2026-11-02T09:30:00Z", "PENDING")
    assert [(t["task_id"], t["status"]) for t in detail["tasks"]] == [(staged["task_id"], "PENDING")]

    pipeline.process_queue(db=db)
    detail = api.get(f"/staging-entries/{staged['staging_entry_id']}").json()
    assert detail["outcome"]["status"] == "PROCESSED" and detail["outcome"]["match_type"] == "NewTransactionGenerated"
    assert detail["outcome"]["created_transaction_id"].startswith("txn_")
    assert [t["status"] for t in detail["tasks"]] == ["COMPLETED"]
    assert_problem(api.get("/staging-entries/stg_nope"), 404, "not-found")


def test_a_batch_is_staged_whole_in_input_order_with_duplicates_reported(api: TestClient, db: Database) -> None:
    b = books(api)
    lines = [entry(b["orders"], f"ORD-{i}", natural_key=f"line-{i % 3}") for i in range(4)]  # line-0 twice
    created = api.post("/staging-entries/batch", json={"entries": lines})
    assert created.status_code == 201, created.text
    body = created.json()
    assert len(body["created"]) == 3 and body["duplicates"] == [{"index": 3, "natural_key": "line-0"}]
    listed = api.get("/staging-entries", params={"account_id": b["orders"]}).json()["items"]
    assert {e["staging_entry_id"] for e in listed} == {c["staging_entry_id"] for c in body["created"]}
    by_id = {e["staging_entry_id"]: e["metadata"]["order_id"] for e in listed}
    assert [by_id[c["staging_entry_id"]] for c in body["created"]] == ["ORD-0", "ORD-1", "ORD-2"]  # input order
    assert count(db, "process_tracker") == 3


def test_a_batch_with_one_bad_line_is_refused_whole_naming_the_line_and_field(api: TestClient, db: Database) -> None:
    b = books(api)
    lines = [entry(b["orders"], "ORD-1"), entry(b["orders"], "ORD-2"), entry(b["orders"], "ORD-3", amount="12.34567")]
    body = assert_problem(api.post("/staging-entries/batch", json={"entries": lines}), 422, "invalid-input",
                          field="entries[2].amount")
    assert "more than 4 decimal places" in body["detail"]
    unknown = [entry(b["orders"], "ORD-1"), entry("acc_nope", "ORD-2")]
    assert_problem(api.post("/staging-entries/batch", json={"entries": unknown}), 422, "invalid-input", field="account_id")
    assert (count(db, "staging_entries"), count(db, "process_tracker")) == (0, 0)


@pytest.mark.parametrize("change, field", [
    ({"amount": 10.5}, "amount"),
    ({"amount": "0"}, "amount"),
    ({"amount": "NaN"}, "amount"),
    ({"amount": "1e400"}, "amount"),
    ({"entry_type": "debit"}, "entry_type"),
    ({"processing_mode": "BOTH"}, "processing_mode"),
    ({"effective_date": "2026-11-02T10:30:00"}, "effective_date"),  # no time zone
    ({"metadata": {"order_id": 7}}, "body"),
    ({"metadata": {"note": "a\u0000b"}}, "body"),
    ({"metadata": {"order_id": "ORD-1", "match_type": "Phase2_Fulfilled"}}, "body"),  # the engine's own key
])
def test_a_bad_entry_is_refused_naming_the_field(api: TestClient, db: Database, change: dict[str, Any], field: str) -> None:
    b = books(api)
    assert_problem(api.post("/staging-entries", json={**entry(b["orders"], "ORD-1"), **change}), 422, "invalid-input",
                   field=field)
    assert count(db, "staging_entries") == 0


def test_a_batch_larger_than_10000_is_refused(api: TestClient, db: Database) -> None:
    b = books(api)
    line = entry(b["orders"], "ORD-1")
    assert_problem(api.post("/staging-entries/batch", json={"entries": [line] * 10_001}), 422, "invalid-input",
                   field="entries")
    assert count(db, "staging_entries") == 0


def test_staging_entries_are_filtered_and_paged_in_creation_order(api: TestClient) -> None:
    b = books(api)
    first = api.post("/staging-entries/batch", json={"entries": [entry(b["orders"], f"T-{i}") for i in range(5)]}).json()
    api.post("/staging-entries", json=entry(b["bank"], "T-1", mode="CONFIRMATION", side="CREDIT"))
    ids, cursor = [], None
    while True:
        page = api.get("/staging-entries", params={"processing_mode": "TRANSACTION", "limit": 2,
                                                   **({"cursor": cursor} if cursor else {})}).json()
        ids += [e["staging_entry_id"] for e in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert ids == sorted(c["staging_entry_id"] for c in first["created"])  # one transaction: same created_at, then id
    by_order = api.get("/staging-entries", params={"order_id": "T-1"}).json()["items"]
    assert sorted(e["processing_mode"] for e in by_order) == ["CONFIRMATION", "TRANSACTION"]
    assert api.get("/staging-entries", params={"created_to": "2000-01-01T00:00:00Z"}).json()["items"] == []
    assert len(api.get("/staging-entries", params={"created_from": "2000-01-01T00:00:00Z", "status": "PENDING"})
               .json()["items"]) == 6
    assert_problem(api.get("/staging-entries", params={"status": "DONE"}), 422, "invalid-input", field="status")


# ---- conventions -----------------------------------------------------------------------------------------


def test_the_same_idempotency_key_and_body_return_the_first_answer_and_write_once(api: TestClient, db: Database) -> None:
    b = books(api)
    batch = {"entries": [entry(b["orders"], "ORD-1"), entry(b["orders"], "ORD-2")]}
    first = api.post("/staging-entries/batch", json=batch, headers={"Idempotency-Key": "batch-7"})
    again = api.post("/staging-entries/batch", json=batch, headers={"Idempotency-Key": "batch-7"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert count(db, "staging_entries") == 2

    other = {"entries": [entry(b["orders"], "ORD-3")]}
    assert_problem(api.post("/staging-entries/batch", json=other, headers={"Idempotency-Key": "batch-7"}),
                   409, "idempotency-key-reused", field="Idempotency-Key")
    assert_problem(api.post("/staging-entries", json=batch["entries"][0], headers={"Idempotency-Key": "batch-7"}),
                   409, "idempotency-key-reused")  # another endpoint is another request
    assert_problem(api.post("/merchants", json={"merchant_name": "x"}, headers={"Idempotency-Key": "with space"}),
                   422, "invalid-input", field="Idempotency-Key")
    assert count(db, "staging_entries") == 2


def test_a_refused_request_stores_no_answer_so_its_key_can_be_used_again(api: TestClient, db: Database) -> None:
    b = books(api)
    bad = api.post("/staging-entries", json=entry("acc_nope", "ORD-1"), headers={"Idempotency-Key": "k1"})
    assert_problem(bad, 422, "invalid-input", field="account_id")
    good = api.post("/staging-entries", json=entry(b["orders"], "ORD-1"), headers={"Idempotency-Key": "k1"})
    assert good.status_code == 201 and count(db, "staging_entries") == 1
    assert count(db, "api_idempotency_keys") == 1


def test_a_key_whose_first_request_is_still_running_is_a_409_then_its_answer_is_replayed(
    api: TestClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests with one key at once: the second waits for the first's transaction (here the
    test's, holding the key uncommitted), gets a 409 while it runs past the lock timeout, and the
    first's answer once it has committed; nothing is written twice."""
    b = books(api)
    body = entry(b["orders"], "ORD-1")
    fingerprint = idempotency.request_hash("POST", "/recon/api/v1/staging-entries",
                                           NewEntry.model_validate(body).model_dump(mode="json"))
    first_answer = {"staging_entry_id": "stg_first", "task_id": "task_first"}
    holder = db.engine.connect()
    patient = Database(db.url, "patient", DatabaseTimeouts(connect=3, statement=30, lock=30, prefix="RECON_WEB_DB"))
    try:
        with holder.begin():
            holder.execute(sa.text(
                "INSERT INTO api_idempotency_keys (principal, idempotency_key, request_hash, status_code, response)"
                " VALUES (:p, 'racing', :h, 201, CAST(:r AS json))"), {"p": PRINCIPAL, "h": fingerprint, "r": json.dumps(first_answer)})
            busy = api.post("/staging-entries", json=body, headers={"Idempotency-Key": "racing"})
            assert_problem(busy, 409, "idempotency-key-in-progress", field="Idempotency-Key")
            assert busy.headers["retry-after"]

            monkeypatch.setattr(database, "_database", patient)  # waits for the key as long as the test needs
            with ThreadPoolExecutor(1) as pool:  # sent while the first still runs, answered once it commits
                waiting = pool.submit(api.post, "/staging-entries", json=body, headers={"Idempotency-Key": "racing"})
                wait_until(lambda: waiting_for_a_lock(db), "the second request to wait for the key")
                holder.commit()
                replayed = waiting.result(timeout=30)
    finally:
        holder.close()
        patient.dispose()
    assert replayed.status_code == 201 and replayed.json() == first_answer, replayed.text
    assert replayed.headers["idempotent-replayed"] == "true"
    assert count(db, "staging_entries") == 0  # the waiting request's own effect was rolled back


def waiting_for_a_lock(db: Database) -> bool:
    with db.begin() as conn:
        return bool(conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )).scalar())


def test_cursors_are_checked(api: TestClient) -> None:
    for n in range(3):
        api.post("/merchants", json={"merchant_name": f"M{n}"})
    cursor = api.get("/merchants", params={"limit": 1}).json()["next_cursor"]
    assert cursor
    assert_problem(api.get("/accounts", params={"cursor": cursor}), 422, "invalid-input", field="cursor")
    assert_problem(api.get("/merchants", params={"cursor": cursor[:-3] + "xyz"}), 422, "invalid-input", field="cursor")
    assert_problem(api.get("/staging-entries", params={"cursor": "%%%"}), 422, "invalid-input", field="cursor")
    assert_problem(api.get("/merchants", params={"limit": 0}), 422, "invalid-input", field="limit")


def test_request_ids_are_echoed_or_made(api: TestClient) -> None:
    assert api.get("/merchants", headers={"X-Request-ID": "producer-42"}).headers["x-request-id"] == "producer-42"
    made = api.get("/merchants", headers={"X-Request-ID": "bad id"}).headers["x-request-id"]
    assert len(made) == 32 and made != "bad id"  # a space is not allowed: replaced


def test_malformed_json_unknown_routes_and_methods_answer_problems(api: TestClient) -> None:
    assert_problem(api.post("/merchants", content=b'{"merchant_name": ', headers={"Content-Type": "application/json"}),
                   400, "malformed-json")
    assert_problem(api.get("/nothing-here"), 404, "not-found")
    assert_problem(api.put("/merchants"), 405, "method-not-allowed")


def test_body_and_upload_limits_are_named_in_their_errors(
    api: TestClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = books(api)
    monkeypatch.setenv("RECON_API_MAX_BODY_BYTES", "1024")
    monkeypatch.setenv("RECON_API_MAX_UPLOAD_BYTES", "1024")
    big = {"entries": [entry(b["orders"], f"ORD-{i}") for i in range(50)]}
    body = assert_problem(api.post("/staging-entries/batch", json=big), 413, "body-too-large")
    assert "1,024 bytes (RECON_API_MAX_BODY_BYTES)" in body["detail"]
    chunked = api.post("/staging-entries/batch", content=(json.dumps(big).encode()[i:i + 100] for i in range(0, 5000, 100)),
                       headers={"Content-Type": "application/json"})  # no Content-Length: counted as it arrives
    assert_problem(chunked, 413, "body-too-large")
    upload = api.post("/uploads", data={"account_id": b["orders"], "processing_mode": "TRANSACTION"},
                      files={"file": ("big.csv", b"order_id,amount,currency,transaction_date,type\n" * 100)})
    assert "(RECON_API_MAX_UPLOAD_BYTES)" in assert_problem(upload, 413, "upload-too-large", field="file")["detail"]
    assert count(db, "staging_entries") == 0


def test_an_unreachable_database_is_a_503_problem_with_retry_after(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = Database("postgresql://nobody@127.0.0.1:9/none", "a database that is not there",
                    database.settings.web_database_timeouts())
    monkeypatch.setattr(database, "_database", gone)
    response = api.get("/merchants")
    body = assert_problem(response, 503, "database-unavailable")
    assert response.headers["retry-after"] and "postgresql://" not in body["detail"]
    assert_problem(api.post("/merchants", json={"merchant_name": "x"}), 503, "database-unavailable")


# ---- uploads ----------------------------------------------------------------------------------------------


def test_an_upload_with_every_row_ingested_is_200_and_with_rejected_rows_207(api: TestClient, db: Database) -> None:
    b = books(api)
    form = {"account_id": b["orders"], "processing_mode": "TRANSACTION"}
    ok = api.post("/uploads", data=form, files={"file": ("valid.csv", (DATA / "valid.csv").read_bytes())})
    assert ok.status_code == 200, ok.text
    assert (ok.json()["ingested"], ok.json()["rejected_count"], ok.json()["source_file"]) == (4, 0, "valid.csv")

    mixed = api.post("/uploads", data={**form, "format": "csv"}, files={"file": ("mixed.csv", (DATA / "mixed.csv").read_bytes())})
    assert mixed.status_code == 207, mixed.text
    report = mixed.json()
    assert report["rejected_count"] > 0 and report["ingested"] > 0
    assert all(r["row_number"] >= 1 and r["errors"] for r in report["rejected"])
    assert count(db, "staging_entries") == 4 + report["ingested"]


def test_a_bank_statement_upload_is_detected_and_replayed_by_its_key(api: TestClient, db: Database) -> None:
    merchant = api.post("/merchants", json={"merchant_name": "Acme"}).json()["merchant_id"]
    bank = api.post("/accounts", json={"merchant_id": merchant, "account_name": "Bank", "account_type": "DEBIT_NORMAL",
                                       "currency": "EUR"}).json()["account_id"]
    orders = api.post("/accounts", json={"merchant_id": merchant, "account_name": "Orders", "account_type": "DEBIT_NORMAL",
                                         "currency": "EUR"}).json()["account_id"]
    assert api.post("/rules", json={"account_one_id": orders, "account_two_id": bank}).status_code == 201
    statement = (DATA / "statements" / "camt053_v2.xml").read_bytes()
    send = lambda key: api.post("/uploads", data={"account_id": bank, "processing_mode": "CONFIRMATION"},  # noqa: E731
                                files={"file": ("day.xml", statement)}, headers={"Idempotency-Key": key})
    first, replay = send("camt-1"), send("camt-1")
    assert first.status_code == replay.status_code == 200, first.text
    assert first.json()["file_format"] == "camt053" and first.json()["ingested"] > 0
    assert replay.json() == first.json() and replay.headers["idempotent-replayed"] == "true"
    again = send("camt-2")  # a new key: ingested again, every line a duplicate by its natural key
    assert again.json()["ingested"] == 0 and again.json()["duplicate_count"] == first.json()["ingested"]
    assert count(db, "staging_entries") == first.json()["ingested"]


def test_a_second_upload_to_the_same_account_and_mode_at_once_is_a_503_naming_the_wait(
    api: TestClient, db: Database
) -> None:
    b = books(api)
    with db.begin() as holder:  # another ingest of this account and mode is running
        staging.lock_for_ingest(holder, b["orders"], "TRANSACTION")
        response = api.post("/uploads", data={"account_id": b["orders"], "processing_mode": "TRANSACTION"},
                            files={"file": ("valid.csv", (DATA / "valid.csv").read_bytes())})
    body = assert_problem(response, 503, "database-unavailable")
    assert "RECON_WEB_DB_LOCK_TIMEOUT_SECONDS" in body["detail"] and response.headers["retry-after"]
    assert count(db, "staging_entries") == 0


@pytest.mark.parametrize("form, file, field", [
    ({"account_id": "acc_nope", "processing_mode": "TRANSACTION"}, ("valid.csv", None), "account_id"),
    ({"processing_mode": "TRANSACTION"}, ("valid.csv", None), "account_id"),
    ({"account_id": "ACCOUNT", "processing_mode": "SOMETIMES"}, ("valid.csv", None), "processing_mode"),
    ({"account_id": "ACCOUNT", "processing_mode": "TRANSACTION", "format": "pdf"}, ("valid.csv", None), "format"),
    ({"account_id": "ACCOUNT", "processing_mode": "TRANSACTION"}, None, "file"),
    ({"account_id": "ACCOUNT", "processing_mode": "CONFIRMATION"}, ("x.xml", b"<?xml version='1.0'?><Document/>"), None),
])
def test_a_refused_upload_names_what_was_wrong_and_writes_nothing(
    api: TestClient, db: Database, form: dict[str, str], file: tuple | None, field: str | None
) -> None:
    b = books(api)
    form = {k: (b["orders"] if v == "ACCOUNT" else v) for k, v in form.items()}
    files = None if file is None else {"file": (file[0], file[1] if file[1] is not None else (DATA / file[0]).read_bytes())}
    assert_problem(api.post("/uploads", data=form, files=files), 422, "invalid-input", field=field)
    assert count(db, "staging_entries") == 0


# ---- ledger and tracker ----------------------------------------------------------------------------------


def test_transactions_are_grouped_by_logical_id_with_every_version(api: TestClient, db: Database) -> None:
    b = books(api)
    api.post("/staging-entries/batch", json={"entries": [entry(b["orders"], "ORD-1", "99.90"), entry(b["orders"], "ORD-2")]})
    pipeline.process_queue(db=db)
    api.post("/staging-entries", json=entry(b["bank"], "ORD-1", "99.90", mode="CONFIRMATION", side="CREDIT"))
    pipeline.process_queue(db=db)

    page = api.get("/transactions", params={"account_id": b["bank"], "limit": 1}).json()
    [first] = page["items"]
    assert [(v["version"], v["status"]) for v in first["versions"]] == [(1, "ARCHIVED"), (2, "POSTED")]
    assert {(e["account_id"], e["entry_type"], e["amount"], e["status"]) for e in first["versions"][1]["entries"]} == {
        (b["orders"], "DEBIT", "99.9000", "POSTED"), (b["bank"], "CREDIT", "99.9000", "POSTED")}
    [second] = api.get("/transactions", params={"account_id": b["bank"], "cursor": page["next_cursor"]}).json()["items"]
    assert [v["status"] for v in second["versions"]] == ["EXPECTED"]

    expected = api.get("/entries", params={"account_id": b["bank"], "status": "EXPECTED"}).json()["items"]
    assert [e["order_id"] for e in expected] == ["ORD-2"]
    balances = {a["account_id"]: (a["posted"], a["pending"], a["available"])
                for a in api.get("/accounts", params={"merchant_id": b["merchant"]}).json()["items"]}
    assert balances == {x.account_id: (format(x.posted, "f"), format(x.pending, "f"), format(x.available, "f"))
                        for x in ledger.balances(db=db)}
    assert any(Decimal(p) != 0 for p, _, _ in balances.values())


def test_tracker_stats_count_the_queue(api: TestClient) -> None:
    b = books(api)
    api.post("/staging-entries/batch", json={"entries": [entry(b["orders"], f"ORD-{i}") for i in range(3)]})
    stats = api.get("/tracker/stats").json()
    assert stats["by_status"]["PENDING"] == 3 and stats["total"] == 3 and stats["leases_held"] == 0
