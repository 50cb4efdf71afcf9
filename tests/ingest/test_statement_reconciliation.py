"""End to end, as the README's "Reconciling a bank statement" example: orders and invoices booked
from CSV files, then the bank's camt.053 and MT940 for the same account confirm them, through a
reference-keyed rule (the order id found in the remittance text) and an amount + date-window rule
(bank lines with no reference), all through the command line on a real database.
"""

from __future__ import annotations

import json
from decimal import Decimal

from tests.test_cli import recon

from recon.settings import PROJECT_ROOT

FILES = PROJECT_ROOT / "tests" / "data" / "statements" / "reconcile"


def test_orders_and_invoices_reconciled_by_a_camt053_and_an_mt940(db_url):
    def run(*args: str) -> str:
        return recon(db_url, *args).stdout.strip()

    merchant = run("merchant", "create", "Shop")
    account = ("account", "create", "--merchant", merchant, "--currency", "EUR")
    # statement sides are the bank's (money in is a credit): orders are receivables (a Payment line
    # is a DEBIT there, its expected leg on the bank a CREDIT) and the bank account reads as the
    # bank reports it, opening at the camt.053's opening balance
    orders = run(*account, "--name", "Web orders", "--type", "DEBIT_NORMAL")
    invoices = run(*account, "--name", "Invoices", "--type", "DEBIT_NORMAL")
    bank = run(*account, "--name", "Bank EUR", "--type", "CREDIT_NORMAL", "--initial-balance", "1000.00")
    # first: the order id the bank line's remittance text carries; then, for lines with none, the amount
    run("rule", "create", "--account-one", orders, "--account-two", bank, "--priority", "10", "--aging-days", "3")
    run("rule", "create", "--account-one", invoices, "--account-two", bank, "--priority", "20",
        "--match-key", "amount", "--date-window-days", "3", "--aging-days", "3")

    run("ingest", str(FILES / "orders.csv"), "--account", orders, "--mode", "TRANSACTION")
    run("ingest", str(FILES / "invoices.csv"), "--account", invoices, "--mode", "TRANSACTION")
    run("process")
    pattern = ("--order-id-pattern", r"ORD-\d{4}")
    run("ingest", str(FILES / "camt053.xml"), "--account", bank, "--mode", "CONFIRMATION", *pattern)
    run("ingest", str(FILES / "mt940.sta"), "--account", bank, "--mode", "CONFIRMATION", *pattern)
    # the MT940 starts where the camt.053 closed: sent again, neither statement books a line twice
    again = recon(db_url, "ingest", str(FILES / "camt053.xml"), "--account", bank, "--mode", "CONFIRMATION",
                  *pattern, check=False)
    assert "3 duplicate" in again.stdout + again.stderr
    run("process")

    report = json.loads(run("report", "--json"))
    staging = report["staging_entries"]
    assert staging.get("PENDING", 0) == 0
    # 6 bookings; 5 of the 6 bank lines fulfil one each (3 by order id, 2 by amount); one is explained
    assert staging["PROCESSED"] == 11 and staging["NEEDS_MANUAL_REVIEW"] == 1
    review = report["manual_review"]
    assert [group["error_type"] for group in review] == ["NoMatchFoundError"]
    assert [e["amount"] for e in review[0]["entries"]] == ["55.0000"]
    balances = {b["account_id"]: b for b in report["balances"]}
    # the bank's posted balance is what the statements booked; the one unpaid invoice stays expected
    # the statements' closing balance (2,582.75) less the 55.00 line still in review
    assert Decimal(balances[bank]["posted"]) == Decimal("2527.75")
    assert Decimal(balances[bank]["pending"]) - Decimal(balances[bank]["posted"]) == Decimal("64.00")
    assert report["invariants"]["ok"]
