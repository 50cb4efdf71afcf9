"""The REST API's rule settings: created with a rule, changed with PATCH, refused with the field."""

from __future__ import annotations

from fastapi.testclient import TestClient

from recon.db import Database
from tests.api.test_api import assert_problem, books, count


def test_rule_settings_are_created_changed_and_refused_with_the_field(api: TestClient, db: Database) -> None:
    b = books(api)
    variance = api.post("/accounts", json={"merchant_id": b["merchant"], "account_name": "Variance", "currency": "USD",
                                           "account_type": "DEBIT_NORMAL"}).json()["account_id"]
    shop = api.post("/accounts", json={"merchant_id": b["merchant"], "account_name": "Shop", "currency": "USD",
                                       "account_type": "DEBIT_NORMAL"}).json()["account_id"]
    created = api.post("/rules", json={
        "account_one_id": shop, "account_two_id": b["bank"], "priority": 5,
        "match_keys": [{"line": "metadata.reference", "expected": "order_id"}],
        "amount_tolerance": "0.05", "variance_account_id": variance, "date_window_days": 3})
    assert created.status_code == 201, created.text
    rule = created.json()
    assert (rule["priority"], rule["amount_tolerance"], rule["variance_account_id"], rule["date_window_days"]) == (
        5, "0.0500", variance, 3)

    changed = api.patch(f"/rules/{rule['rule_id']}", json={"amount_tolerance_pct": "0.5", "date_window_days": None,
                                                          "aging_days": 7})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["amount_tolerance_pct"], changed.json()["date_window_days"], changed.json()["aging_days"]) == (
        "0.5000", None, 7)
    assert api.get(f"/rules/{rule['rule_id']}").json() == changed.json()

    before = api.get(f"/rules/{rule['rule_id']}").json()
    assert_problem(api.patch(f"/rules/{rule['rule_id']}", json={"variance_account_id": None}),
                   422, "invalid-input", field="variance_account_id")
    assert_problem(api.patch(f"/rules/{rule['rule_id']}", json={"priority": 10}), 409, "conflict", field="priority")
    assert_problem(api.patch(f"/rules/{rule['rule_id']}", json={"match_keys": [{"line": "currency", "expected": "x"}]}),
                   422, "invalid-input", field="match_keys")
    assert_problem(api.patch("/rules/rule_nope", json={"priority": 3}), 404, "not-found")
    assert api.get(f"/rules/{rule['rule_id']}").json() == before
    assert_problem(api.post("/rules", json={"account_one_id": variance, "account_two_id": b["bank"],
                                            "amount_tolerance": "1"}), 422, "invalid-input", field="variance_account_id")
    assert count(db, "recon_rules") == 2


def test_group_by_is_set_through_the_api_and_refused_with_the_field(api: TestClient, db: Database) -> None:
    b = books(api)
    shop = api.post("/accounts", json={"merchant_id": b["merchant"], "account_name": "Shop", "currency": "USD",
                                       "account_type": "DEBIT_NORMAL"}).json()["account_id"]
    created = api.post("/rules", json={"account_one_id": shop, "account_two_id": b["bank"],
                                       "group_by": "metadata.payout_id"})
    assert created.status_code == 201, created.text
    rule = created.json()
    assert rule["group_by"] == "metadata.payout_id"
    assert_problem(api.patch(f"/rules/{rule['rule_id']}", json={"group_by": "payout_id"}),
                   422, "invalid-input", field="group_by")
    assert api.get(f"/rules/{rule['rule_id']}").json() == rule
    assert api.patch(f"/rules/{rule['rule_id']}", json={"group_by": None}).json()["group_by"] is None
