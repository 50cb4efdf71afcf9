"""An order's logical id names exactly one (account, order) pair (issue 19, item 6).

`<account>_<order>` joined plainly made account `bank` + order `eu_123` and account `bank_eu` +
order `123` one logical transaction: the second line went to review as a DuplicateOrderError.
"""

from __future__ import annotations

import shutil

import pytest
import sqlalchemy as sa

from recon import accounts, ledger
from recon.db import Database
from recon.db.migrations import SQL_DIR, migrate
from tests.engine.conftest import Books


def _books_with(db: Database, *account_ids: str) -> tuple[Books, dict[str, str]]:
    """One merchant; each account_one in `account_ids` with a rule to its own clearing account."""
    merchant = accounts.create_merchant("Acme", db=db)
    clearing = {}
    for account_id in account_ids:
        accounts.create_account(merchant, account_id, "DEBIT_NORMAL", "USD", account_id=account_id, db=db)
        clearing[account_id] = accounts.create_account(merchant, f"{account_id} clearing", "CREDIT_NORMAL", "USD",
                                                       db=db)
        accounts.create_recon_rule(account_id, clearing[account_id], db=db)
    return Books(db, merchant, account_ids[0], clearing[account_ids[0]], ""), clearing


def _book(books: Books, lines: list[tuple[str, str]], one_run: bool) -> list[str]:
    """Stage a TRANSACTION line per (account, order), in one run or a run each; their staging ids."""
    staged = []
    for account, order in lines:
        staged.append(books.stage(account, "DEBIT", "10.00", "TRANSACTION", order_id=order)[0])
        if not one_run:
            books.process()
    books.process()
    return staged


@pytest.mark.parametrize("one_run", [True, False], ids=["one chunk", "separate runs"])
def test_pairs_whose_joined_ids_read_alike_are_two_orders(db, one_run):
    books, clearing = _books_with(db, "bank", "bank_eu")
    first, second = _book(books, [("bank", "eu_123"), ("bank_eu", "123")], one_run)

    assert [books.staging(s).status for s in (first, second)] == ["PROCESSED", "PROCESSED"]
    ids = {r.logical_transaction_id for r in books.rows("SELECT logical_transaction_id FROM transactions")}
    assert ids == {"bank_eu%5F123", "bank_eu_123"}
    # and each confirmation fulfils its own order
    confirmations = [books.stage(clearing["bank"], "CREDIT", "10.00", "CONFIRMATION", order_id="eu_123")[0],
                     books.stage(clearing["bank_eu"], "CREDIT", "10.00", "CONFIRMATION", order_id="123")[0]]
    assert books.process()["matched"] == 2
    assert [books.staging(s).status for s in confirmations] == ["PROCESSED", "PROCESSED"]
    assert ledger.check_invariants(db).ok


@pytest.mark.parametrize("one_run", [True, False], ids=["one chunk", "separate runs"])
def test_the_same_order_twice_on_one_account_is_still_a_duplicate(db, one_run):
    books, _ = _books_with(db, "bank_eu")
    first, second = _book(books, [("bank_eu", "eu_1%2"), ("bank_eu", "eu_1%2")], one_run)

    assert books.staging(first).status == "PROCESSED"
    review = books.staging(second)
    assert (review.status, review.metadata["error_type"]) == ("NEEDS_MANUAL_REVIEW", "DuplicateOrderError")
    assert "bank_eu_eu%5F1%252" in review.metadata["error"]
    assert len(books.rows("SELECT 1 FROM transactions")) == 1


def test_migration_rewrites_ids_booked_before_and_keeps_duplicates_caught(empty_db_url, tmp_path):
    """Rows booked under `<account>_<order>` get the new form in every version (0050); orders
    without '_' or '%' keep theirs; afterwards the colliding pair books and a repeat is refused."""
    before = tmp_path / "sql"
    before.mkdir()
    for path in sorted(SQL_DIR.glob("*.sql")):
        if path.name < "0050":
            shutil.copy(path, before)
    db = Database(empty_db_url, "test")
    try:
        migrate(db, before)
        books, clearing = _books_with(db, "bank", "bank_eu")
        _book(books, [("bank", "eu_123"), ("bank", "plain-1")], one_run=True)
        books.stage(clearing["bank"], "CREDIT", "10.00", "CONFIRMATION", order_id="eu_123")
        books.process()  # version 2 of the order, version 1 archived
        with db.begin() as conn:  # as booked before 0050
            conn.execute(sa.text("UPDATE transactions SET logical_transaction_id = 'bank_eu_123'"
                                 " WHERE logical_transaction_id = :new"), {"new": "bank_eu%5F123"})
        assert migrate(db) == ["0050_order_logical_ids.sql"]

        versions = books.rows("SELECT logical_transaction_id, version, status FROM transactions ORDER BY 1, 2")
        assert [tuple(v) for v in versions] == [
            ("bank_eu%5F123", 1, "ARCHIVED"), ("bank_eu%5F123", 2, "POSTED"), ("bank_plain-1", 1, "EXPECTED")]
        repeat, pair = _book(books, [("bank", "eu_123"), ("bank_eu", "123")], one_run=False)
        assert books.staging(repeat).metadata["error_type"] == "DuplicateOrderError"
        assert books.staging(pair).status == "PROCESSED"
        assert ledger.check_invariants(db).ok
    finally:
        db.dispose()
