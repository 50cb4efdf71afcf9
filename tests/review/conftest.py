"""Books for reviewer-action tests: the engine's books plus a variance account on the rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa

from recon import accounts
from recon.db import Database
from tests.engine.conftest import Books


@dataclass
class ReviewBooks(Books):
    variance: str = ""

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.db.begin() as c:
            return c.execute(sa.text(sql), params).scalar()

    def mismatch(self, order_id: str, booked: str, confirmed: str) -> str:
        """A TRANSACTION line booked at `booked` and its confirmation at `confirmed`: the confirmation's id."""
        self.stage(self.bank, "DEBIT", booked, "TRANSACTION", order_id=order_id)
        self.process()
        sid, _ = self.stage(self.clearing, "CREDIT", confirmed, "CONFIRMATION", order_id=order_id)
        self.process()
        return sid

    def decision_count(self) -> int:
        return self.scalar("SELECT count(*) FROM review_decisions")


@pytest.fixture
def books(db: Database, monkeypatch: pytest.MonkeyPatch) -> ReviewBooks:
    monkeypatch.setenv("RECON_MATCHING_WINDOW_SECONDS", "0")  # an unmatched line goes to review at once
    merchant = accounts.create_merchant("Acme Payments", db=db)
    bank = accounts.create_account(merchant, "Bank USD", "DEBIT_NORMAL", "USD", db=db)
    clearing = accounts.create_account(merchant, "PSP clearing USD", "CREDIT_NORMAL", "USD", db=db)
    variance = accounts.create_account(merchant, "Write-offs USD", "DEBIT_NORMAL", "USD", db=db)
    rule = accounts.create_recon_rule(bank, clearing, db=db)
    accounts.update_recon_rule(rule, {"variance_account_id": variance}, db=db)
    return ReviewBooks(db, merchant, bank, clearing, rule, variance)
