"""A confirmation in the wrong currency is a CurrencyMismatchError and takes no expected leg
(issue 19, item 7): a EUR line on a USD account used to be a MismatchError that consumed the leg,
so the right USD line then found nothing (NoMatchFoundError)."""

from __future__ import annotations

import pytest

from recon import ledger


def _order(books, order_id: str = "o-1") -> str:
    books.stage(books.bank, "DEBIT", "25.00", "TRANSACTION", order_id=order_id)
    books.process()
    (leg,) = books.rows("SELECT entry_id FROM entries WHERE account_id = :a AND status = 'EXPECTED'", a=books.clearing)
    return leg.entry_id


def _confirm(books, currency: str, order_id: str = "o-1") -> str:
    return books.stage(books.clearing, "CREDIT", "25.00", "CONFIRMATION", currency, order_id=order_id)[0]


def _assert_currency_mismatch(books, staging_entry_id: str, expected: str = "USD", actual: str = "EUR") -> None:
    line = books.staging(staging_entry_id)
    assert (line.status, line.metadata["error_type"]) == ("NEEDS_MANUAL_REVIEW", "CurrencyMismatchError")
    assert line.metadata["mismatched_fields"] == [{"field": "currency", "expected": expected, "actual": actual}]
    assert "matched_transaction_id" not in line.metadata


def _assert_fulfilled(books, staging_entry_id: str, leg_id: str) -> None:
    line = books.staging(staging_entry_id)
    assert (line.status, line.metadata["match_type"], line.metadata["matched_entry_id"]) == (
        "PROCESSED", "Phase2_Fulfilled", leg_id)
    assert not books.rows("SELECT 1 FROM transactions WHERE status = 'MISMATCH'")
    assert ledger.check_invariants(books.db).ok


@pytest.mark.parametrize("one_run", [True, False], ids=["one chunk", "separate runs"])
def test_wrong_currency_first_leaves_the_leg_for_the_right_one(books, one_run):
    leg = _order(books)
    wrong = _confirm(books, "EUR")
    if not one_run:
        books.process()
    right = _confirm(books, "USD")
    summary = books.process()

    _assert_currency_mismatch(books, wrong)
    _assert_fulfilled(books, right, leg)
    assert summary["manual_review_by_type"] == ({"CurrencyMismatchError": 1} if one_run else {})


@pytest.mark.parametrize("one_run", [True, False], ids=["one chunk", "separate runs"])
def test_right_currency_first_then_the_wrong_one_is_a_currency_mismatch(books, one_run):
    leg = _order(books)
    right = _confirm(books, "USD")
    if not one_run:
        books.process()
    wrong = _confirm(books, "EUR")
    books.process()

    _assert_fulfilled(books, right, leg)
    _assert_currency_mismatch(books, wrong)  # not AlreadyFulfilledError: it could never have matched


def test_wrong_currency_with_the_order_in_the_same_chunk(books):
    """The booking, the wrong line and the right line all in one chunk."""
    books.stage(books.bank, "DEBIT", "25.00", "TRANSACTION", order_id="o-1")
    wrong, right = _confirm(books, "EUR"), _confirm(books, "USD")
    books.process()

    _assert_currency_mismatch(books, wrong)
    (leg,) = books.rows("SELECT entry_id FROM entries WHERE account_id = :a AND status = 'ARCHIVED'", a=books.clearing)
    _assert_fulfilled(books, right, leg.entry_id)


def test_a_leg_in_another_currency_than_the_line_is_left_open(books):
    """A leg written by plain SQL in another currency than its account: the line takes it neither."""
    leg = _order(books)
    with books.db.begin() as conn:
        conn.exec_driver_sql(f"UPDATE entries SET currency = 'EUR' WHERE entry_id = '{leg}'")
    line = _confirm(books, "USD")
    books.process()

    _assert_currency_mismatch(books, line, expected="EUR", actual="USD")
    assert leg in books.staging(line).metadata["error"]
    (still,) = books.rows("SELECT e.status, t.status AS txn FROM entries e JOIN transactions t USING (transaction_id)"
                          " WHERE e.entry_id = :e", e=leg)
    assert tuple(still) == ("EXPECTED", "EXPECTED")
