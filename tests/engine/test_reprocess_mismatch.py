"""A reprocessed mismatch is judged again against the expected leg it holds (issue 18, problem 1):
a corrected tolerance fulfils it with the variance booked; an unchanged rule gives the same
mismatch, never a false NoMatchFoundError. Its history keeps the earlier reason."""

from __future__ import annotations

from decimal import Decimal

from recon import accounts, ledger, pipeline, staging
from tests.engine.test_matching_rules import Setup


def mismatched(books) -> tuple[Setup, str]:
    s = Setup(books, amount_tolerance="0.05")
    s.order("1200.00", order_id="ORD-9")
    s.process()
    line = s.bank_line("1150.00", order_id="ORD-9")
    s.process()
    assert s.outcome(line) == "MismatchError"
    return s, line


def reprocess(s: Setup, line: str) -> dict:
    result = pipeline.requeue_scope(db=s.db, review=staging.ReviewFilter(error_type="MismatchError"))
    assert result["reopened_entries"] == 1
    s.process()
    return s.meta(line)


def mismatch_panel(s: Setup) -> int:
    with s.db.begin() as conn:
        return ledger.mismatch_transactions(conn, 10)[0]


def history(s: Setup, line: str) -> list[tuple[str, str | None, str | None]]:
    with s.db.begin() as conn:
        return [(r.status, r.error_type, r.reason) for r in staging.outcome_history(conn, line)]


def test_a_raised_tolerance_fulfils_a_reprocessed_mismatch_and_books_the_variance(books):
    s, line = mismatched(books)
    held = s.meta(line)["matched_transaction_id"]
    assert mismatch_panel(s) == 1
    accounts.update_recon_rule(s.rule, {"amount_tolerance": "50.00"}, db=s.db)

    meta = reprocess(s, line)

    assert meta["match_type"] == "FulfilledWithTolerance", meta
    assert meta["variance"] == "-50.0000" and meta["variance_account_id"] == s.variance
    assert meta["matched_transaction_id"] == held
    assert "error" not in meta and "error_type" not in meta and "mismatched_fields" not in meta
    assert s.legs(meta["evolved_transaction_id"]) == {
        (s.orders, "DEBIT", Decimal("1200.0000")), (s.bank, "CREDIT", Decimal("1150.0000")),
        (s.variance, "CREDIT", Decimal("50.0000")),
    }
    assert s.books.rows("SELECT status FROM transactions WHERE transaction_id = :t", t=held)[0].status == "ARCHIVED"
    assert mismatch_panel(s) == 0  # the MISMATCH panel no longer names a transaction the line fulfilled
    assert s.books.staging(line).status == "PROCESSED"
    steps = history(s, line)
    assert steps[0] == ("NEEDS_MANUAL_REVIEW", "MismatchError", "amount: expected 1200.0000, got 1150.0000")
    assert steps[1][0] == "PENDING" and steps[2][0] == "PROCESSED"


def test_without_a_rule_change_a_reprocessed_mismatch_keeps_its_reason(books):
    s, line = mismatched(books)
    before = s.meta(line)

    meta = reprocess(s, line)

    assert meta["error_type"] == "MismatchError", meta  # not NoMatchFoundError
    assert meta["error"] == before["error"] == "amount: expected 1200.0000, got 1150.0000"
    assert meta["matched_transaction_id"] == before["matched_transaction_id"]
    assert meta["mismatched_fields"] == before["mismatched_fields"]
    assert mismatch_panel(s) == 1
    assert [h[1] for h in history(s, line)] == ["MismatchError", None, "MismatchError"]


def test_a_reviewer_requeue_of_a_mismatch_is_judged_again_too(books):
    from recon import review

    s, line = mismatched(books)
    accounts.update_recon_rule(s.rule, {"amount_tolerance_pct": "5"}, db=s.db)  # 50.00 is 4.2 % of 1,200.00
    review.act(s.db, "requeue", line, reason="DATA_CORRECTION", note="tolerance raised", actor="fay")
    s.process()
    meta = s.meta(line)
    assert meta["match_type"] == "FulfilledWithTolerance" and meta["variance"] == "-50.0000"
    assert [h[0] for h in history(s, line)] == ["NEEDS_MANUAL_REVIEW", "PENDING", "PROCESSED"]
    assert history(s, line)[1][2] == "requeue by fay: DATA_CORRECTION (tolerance raised)"
