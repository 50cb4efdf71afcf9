"""The demo data set: one merchant, a bank account, its PSP clearing account and a variance
account, a rule with a 0.05 tolerance, and two statement files (demo/transactions.csv,
demo/confirmations.csv) that include a duplicate line, an invalid line, a settlement 0.02 short
(booked to the variance account), amount and side mismatches and an unmatched confirmation. A
reviewer's write-off (`review accept`) of the amount mismatch ORD-1007 goes to the same variance
account, as the README shows.

The demo runs in its own database (``recon_demo`` on the same server as the resolved
database), recreated on every run, so it is repeatable and never touches real data.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from recon import accounts
from recon.ingest.csv import ingest_csv
from recon.db import Database, libpq_url, resolve_database
from recon.db.migrations import migrate
from recon.errors import NotFoundError
from recon.settings import PROJECT_ROOT

DEMO_DATABASE = "recon_demo"
DEMO_DIR = PROJECT_ROOT / "demo"


def fresh_demo_database() -> str:
    """Drop and recreate recon_demo next to the resolved database; return its libpq URL."""
    admin, url = _server_urls()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DEMO_DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DATABASE)))
    return url


def existing_demo_database() -> str:
    """The URL of recon_demo as the last `./recon demo` left it (for `./recon ui --demo`)."""
    admin, url = _server_urls()
    with psycopg.connect(admin, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DATABASE,)).fetchone()
    if not found:
        raise NotFoundError(f"no {DEMO_DATABASE} database yet: run ./recon demo first")
    return url


def _server_urls() -> tuple[str, str]:
    """(maintenance database URL, recon_demo URL) on the server the resolver chooses."""
    server = resolve_database().url
    return libpq_url(server, "postgres"), libpq_url(server, DEMO_DATABASE)


def load_demo_data(db: Database) -> dict[str, Any]:
    """Migrate, create the set-up and ingest both demo files; return the ingest reports."""
    migrate(db)
    merchant = accounts.create_merchant("Demo Shop", merchant_id="mer_demo", db=db)
    bank = accounts.create_account(merchant, "Bank USD", "DEBIT_NORMAL", "USD", "1000.00",
                                 account_id="acc_demo_bank", db=db)
    psp = accounts.create_account(merchant, "PSP clearing USD", "CREDIT_NORMAL", "USD",
                                account_id="acc_demo_psp", db=db)
    variance = accounts.create_account(merchant, "Settlement differences USD", "CREDIT_NORMAL", "USD",
                                       account_id="acc_demo_variance", db=db)
    # the PSP settles within 5 cents of the order (fees, rounding): the difference goes to `variance`
    accounts.create_recon_rule(bank, psp, rule_id="rule_demo_bank_psp", db=db, settings=accounts.RuleSettings(
        amount_tolerance=Decimal("0.05"), variance_account_id=variance))
    transactions = ingest_csv(DEMO_DIR / "transactions.csv", bank, "TRANSACTION", db=db)
    confirmations = ingest_csv(DEMO_DIR / "confirmations.csv", psp, "CONFIRMATION", db=db)
    return {"transactions": transactions, "confirmations": confirmations}
