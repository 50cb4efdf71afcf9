"""`recon rule create | list | show | update | delete` in a subprocess, as a user runs them."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
import sqlalchemy as sa

from recon import accounts, pipeline
from recon.db import Database
from recon.staging import NewStagingEntry, create_staging_entries
from tests.test_cli import recon


@pytest.fixture
def setup(db: Database) -> dict[str, str]:
    merchant = accounts.create_merchant("Shop", merchant_id="mer_shop", db=db)
    other = accounts.create_merchant("Other", merchant_id="mer_other", db=db)
    made = {"merchant": merchant}
    for name, kind, currency, owner in (("orders", "DEBIT_NORMAL", "EUR", merchant),
                                        ("bank", "CREDIT_NORMAL", "EUR", merchant),
                                        ("shop", "DEBIT_NORMAL", "EUR", merchant),
                                        ("variance", "DEBIT_NORMAL", "EUR", merchant),
                                        ("variance_usd", "DEBIT_NORMAL", "USD", merchant),
                                        ("foreign", "DEBIT_NORMAL", "EUR", other)):
        made[name] = accounts.create_account(owner, name, kind, currency, account_id=f"acc_{name}", db=db)
    return made


def rules(db: Database) -> list[Any]:
    with db.begin() as conn:
        return conn.execute(sa.text("SELECT * FROM recon_rules ORDER BY id")).all()


def test_create_list_show_update_delete(db, db_url, setup):
    rule_id = recon(db_url, "rule", "create", "--account-one", "acc_orders", "--account-two", "acc_bank",
                    "--priority", "5", "--match-key", "metadata.reference=order_id",
                    "--match-key", "metadata.customer", "--amount-tolerance", "0.05", "--amount-tolerance-pct", "0.5",
                    "--variance-account", "acc_variance", "--date-window-days", "3", "--aging-days", "7",
                    "--id", "rule_ref").stdout.strip()
    assert rule_id == "rule_ref"
    second = recon(db_url, "rule", "create", "--account-one", "acc_shop", "--account-two", "acc_bank").stdout.strip()

    listed = json.loads(recon(db_url, "rule", "list", "--json").stdout)
    assert [r["id"] for r in listed] == ["rule_ref", second]  # by priority on the shared contra account
    assert listed[0]["match_keys"] == [{"line": "metadata.reference", "expected": "order_id"},
                                       {"line": "metadata.customer", "expected": "metadata.customer"}]
    assert (listed[0]["amount_tolerance"], listed[0]["amount_tolerance_pct"]) == ("0.0500", "0.5000")
    assert (listed[0]["variance_account_id"], listed[0]["date_window_days"], listed[0]["aging_days"]) == (
        "acc_variance", 3, 7)
    assert listed[1]["priority"] == 15 and listed[1]["match_keys"] == [{"line": "order_id", "expected": "order_id"}]
    text = recon(db_url, "rule", "list").stdout
    assert "rule_ref  acc_orders -> acc_bank  priority 5  keys metadata.reference=order_id, metadata.customer" in text

    shown = recon(db_url, "rule", "show", "rule_ref").stdout
    assert "±3 days" in shown and "7 days after effective_date" in shown

    updated = recon(db_url, "rule", "update", "rule_ref", "--amount-tolerance", "0", "--amount-tolerance-pct", "0",
                    "--no-variance-account", "--no-date-window", "--default-aging", "--match-key", "amount").stdout
    assert "match keys         amount" in updated
    rule = json.loads(recon(db_url, "rule", "show", "rule_ref", "--json").stdout)
    assert (rule["amount_tolerance"], rule["variance_account_id"], rule["date_window_days"], rule["aging_days"]) == (
        "0.0000", None, None, None)

    assert recon(db_url, "rule", "delete", second).stdout.strip() == f"deleted recon rule {second}"
    assert [r.id for r in rules(db)] == ["rule_ref"]


def test_delete_is_refused_while_ledger_entries_refer_to_the_rule(db, db_url, setup):
    rule_id = recon(db_url, "rule", "create", "--account-one", "acc_orders", "--account-two", "acc_bank").stdout.strip()
    create_staging_entries([NewStagingEntry("acc_orders", "DEBIT", "10.00", "EUR", "TRANSACTION",
                                            dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
                                            {"order_id": "ORD-1"})], db=db)
    assert pipeline.process_queue(db=db)["booked"] == 1
    result = recon(db_url, "rule", "delete", rule_id, check=False)
    assert result.returncode == 2
    assert f"recon rule {rule_id} is referenced by ledger entries" in result.stderr
    assert [r.id for r in rules(db)] == [rule_id]


CREATE = ["rule", "create", "--account-one", "acc_orders", "--account-two", "acc_bank"]


@pytest.mark.parametrize("extra, message", [
    (["--amount-tolerance", "0.05"], "an amount tolerance needs a variance account"),
    (["--amount-tolerance-pct", "1"], "an amount tolerance needs a variance account"),
    (["--amount-tolerance", "-0.01", "--variance-account", "acc_variance"], "amount_tolerance must be at least 0"),
    (["--amount-tolerance", "0.00001", "--variance-account", "acc_variance"], "amount_tolerance"),
    (["--amount-tolerance", "lots", "--variance-account", "acc_variance"], "amount_tolerance"),
    (["--amount-tolerance-pct", "-1", "--variance-account", "acc_variance"], "amount_tolerance_pct must be at least 0"),
    (["--amount-tolerance", "1", "--variance-account", "acc_variance_usd"], "variance account acc_variance_usd is in USD"),
    (["--amount-tolerance", "1", "--variance-account", "acc_foreign"], "variance account acc_foreign belongs to merchant"),
    (["--amount-tolerance", "1", "--variance-account", "acc_nope"], "no account with account_id 'acc_nope'"),
    (["--amount-tolerance", "1", "--variance-account", "acc_bank"], "must differ from the rule's accounts"),
    (["--priority", "-1"], "priority must be a whole number"),
    (["--priority", "ten"], "priority must be a whole number"),
    (["--date-window-days", "-2"], "date_window_days must be a whole number"),
    (["--aging-days", "1.5"], "aging_days must be a whole number"),
    (["--match-key", "currency"], "unknown line field 'currency'"),
    (["--match-key", "metadata."], "unknown line field 'metadata.'"),
    (["--match-key", "order_id=metadata.a b"], "unknown expected field 'metadata.a b'"),
    (["--match-key", "amount=order_id"], "amount can only be matched with amount"),
    (["--match-key", "amount", "--match-key", "order_id"], "the amount key stands alone"),
    (["--match-key", "order_id", "--match-key", "metadata.ref=order_id"], "expected field order_id appears in more"),
    (["--group-by", "invoice_batch"], "group_by must be metadata.<name>"),
    (["--group-by", "metadata.invoice batch"], "group_by must be metadata.<name>"),
    (["--group-by", "metadata.invoice_batch", "--match-key", "metadata.reference=order_id"],
     "group_by metadata.invoice_batch replaces the match keys"),
])
def test_bad_rule_input_exits_2_naming_the_problem_and_writes_nothing(db, db_url, setup, extra, message):
    result = recon(db_url, *CREATE, *extra, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert rules(db) == []


def test_a_priority_tie_and_bad_updates_are_refused(db, db_url, setup):
    recon(db_url, *CREATE, "--priority", "10", "--id", "rule_a")
    before = rules(db)
    tie = recon(db_url, "rule", "create", "--account-one", "acc_shop", "--account-two", "acc_bank",
                "--priority", "10", check=False)
    assert tie.returncode == 2 and "priority 10 is taken by rule rule_a" in tie.stderr
    for args, message in ((["rule", "update", "rule_a", "--amount-tolerance", "1"], "needs a variance account"),
                          (["rule", "update", "rule_a"], "nothing to change"),
                          (["rule", "update", "rule_nope", "--priority", "3"], "no recon rule with id 'rule_nope'"),
                          (["rule", "show", "rule_nope"], "no recon rule with id 'rule_nope'"),
                          (["rule", "delete", "rule_nope"], "no recon rule with id 'rule_nope'")):
        result = recon(db_url, *args, check=False)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    assert rules(db) == before


def test_group_by_is_set_shown_and_removed(db, db_url, setup):
    recon(db_url, *CREATE, "--group-by", "metadata.invoice_batch", "--id", "rule_batch")
    assert json.loads(recon(db_url, "rule", "show", "rule_batch", "--json").stdout)["group_by"] == "metadata.invoice_batch"
    assert "group by           metadata.invoice_batch" in recon(db_url, "rule", "show", "rule_batch").stdout
    assert "rule_batch  acc_orders -> acc_bank  priority 10  group by metadata.invoice_batch" in recon(
        db_url, "rule", "list").stdout
    before = rules(db)
    bad = recon(db_url, "rule", "update", "rule_batch", "--group-by", "batch", check=False)
    assert bad.returncode == 2 and "group_by must be metadata.<name>" in bad.stderr and "got 'batch'" in bad.stderr
    assert rules(db) == before
    recon(db_url, "rule", "update", "rule_batch", "--no-group-by")
    assert [r.group_by for r in rules(db)] == [None]
