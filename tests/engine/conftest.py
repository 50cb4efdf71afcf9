"""A small books set-up for engine tests: one merchant, a bank account (A) and its contra (B)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from recon import accounts, pipeline
from recon.db import Database
from recon.staging import NewStagingEntry, create_staging_entries


@dataclass
class Books:
    db: Database
    merchant_id: str
    bank: str  # account_one (DEBIT_NORMAL)
    clearing: str  # account_two, the contra (CREDIT_NORMAL)
    rule_id: str

    def stage(self, account: str, side: str, amount: str, mode: str, currency: str = "USD",
              **metadata: Any) -> tuple[str, str]:
        entry = NewStagingEntry(account, side, amount, currency, mode,
                                dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc), metadata)
        created = create_staging_entries([entry], db=self.db)[0]
        return created.staging_entry_id, created.task_id

    def process(self, **kwargs: Any) -> dict[str, Any]:
        return pipeline.process_queue(db=self.db, **kwargs)

    def staging(self, staging_entry_id: str) -> Any:
        with self.db.begin() as c:
            return c.execute(sa.text("SELECT * FROM staging_entries WHERE staging_entry_id = :i"),
                             {"i": staging_entry_id}).one()

    def task(self, task_id: str) -> Any:
        with self.db.begin() as c:
            return c.execute(sa.text("SELECT * FROM process_tracker WHERE task_id = :i"), {"i": task_id}).one()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.db.begin() as c:
            return c.execute(sa.text(sql), params).all()


@pytest.fixture
def books(db: Database) -> Books:
    merchant = accounts.create_merchant("Acme Payments", db=db)
    bank = accounts.create_account(merchant, "Bank USD", "DEBIT_NORMAL", "USD", db=db)
    clearing = accounts.create_account(merchant, "PSP clearing USD", "CREDIT_NORMAL", "USD", db=db)
    rule = accounts.create_recon_rule(bank, clearing, db=db)
    return Books(db, merchant, bank, clearing, rule)
