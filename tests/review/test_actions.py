"""Each reviewer action on a real database: its ledger effect (books balanced), the line's new
state, the audit row, the chain verifying; and the refusals, which write nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest

from recon import accounts, ledger, review
from recon.errors import InvalidInputError, NotFoundError, StaleReviewError


def expected_entry(books, order_id: str) -> str:
    return books.scalar("SELECT entry_id FROM entries WHERE status = 'EXPECTED' AND order_id = :o", o=order_id)


def live_legs(books, transaction_id: str) -> list[tuple[str, str, Decimal, str]]:
    return sorted((r.account_id, r.entry_type, r.amount, r.status) for r in books.rows(
        "SELECT account_id, entry_type, amount, status FROM entries WHERE transaction_id = :t", t=transaction_id))


def assert_nothing_written(books, sid: str, status: str, decisions: int) -> None:
    assert books.staging(sid).status == status
    assert books.decision_count() == decisions


def test_accept_fulfils_the_mismatch_at_the_actual_amount_and_writes_off_the_difference(books):
    sid = books.mismatch("o-1", "250.00", "240.00")
    mismatched = books.staging(sid).metadata["matched_transaction_id"]

    outcome = review.act(books.db, "accept", sid, reason="BANK_FEE", note="PSP fee", actor="alice")

    line = books.staging(sid)
    assert line.status == "PROCESSED" and line.metadata["match_type"] == "Accepted"
    assert "error_type" not in line.metadata
    new = line.metadata["evolved_transaction_id"]
    assert books.scalar("SELECT status FROM transactions WHERE transaction_id = :t", t=mismatched) == "ARCHIVED"
    assert books.scalar("SELECT status FROM transactions WHERE transaction_id = :t", t=new) == "POSTED"
    assert live_legs(books, new) == sorted([
        (books.bank, "DEBIT", Decimal("250.0000"), "POSTED"),
        (books.clearing, "CREDIT", Decimal("240.0000"), "POSTED"),
        (books.variance, "CREDIT", Decimal("10.0000"), "POSTED"),
    ])
    assert ledger.check_invariants(books.db).ok
    d = outcome.decision
    assert (d.seq, d.action, d.reason_code, d.note, d.actor) == (1, "accept", "BANK_FEE", "PSP fee", "alice")
    assert d.before["status"] == "NEEDS_MANUAL_REVIEW" and d.before["matched_transaction_id"] == mismatched
    assert d.after["evolved_transaction_id"] == new and d.after["variance"]["amount"] == "10.0000"
    assert review.verify(books.db).ok


def test_accept_is_refused_when_the_rule_has_no_variance_account(books):
    accounts.update_recon_rule(books.rule_id, {"variance_account_id": None}, db=books.db)
    sid = books.mismatch("o-1", "250.00", "240.00")
    with pytest.raises(InvalidInputError, match=f"differ by 10.0000 USD and recon rule {books.rule_id} has no variance"):
        review.act(books.db, "accept", sid, reason="BANK_FEE", actor="alice")
    assert_nothing_written(books, sid, "NEEDS_MANUAL_REVIEW", 0)
    assert books.scalar("SELECT count(*) FROM transactions WHERE status = 'MISMATCH'") == 1


def test_accept_needs_a_mismatch(books):
    sid, _ = books.stage(books.clearing, "CREDIT", "10.00", "CONFIRMATION", order_id="nowhere")
    books.process()
    with pytest.raises(InvalidInputError, match="NoMatchFoundError: use force-match"):
        review.act(books.db, "accept", sid, reason="OTHER", note="x", actor="alice")
    assert_nothing_written(books, sid, "NEEDS_MANUAL_REVIEW", 0)


def test_force_match_resolves_a_no_match_line_and_books_an_overpayment_to_the_variance_account(books):
    books.stage(books.bank, "DEBIT", "100.00", "TRANSACTION", order_id="o-7")
    sid, _ = books.stage(books.clearing, "CREDIT", "100.05", "CONFIRMATION", order_id="o-7-typo")
    books.process()
    assert books.staging(sid).metadata["error_type"] == "NoMatchFoundError"
    target = expected_entry(books, "o-7")

    outcome = review.act(books.db, "force-match", sid, reason="ROUNDING", note="typo in the order id",
                         actor="bob", expected_entry_id=target)

    line = books.staging(sid)
    assert line.status == "PROCESSED" and line.metadata["match_type"] == "ForceMatched"
    assert live_legs(books, line.metadata["evolved_transaction_id"]) == sorted([
        (books.bank, "DEBIT", Decimal("100.0000"), "POSTED"),
        (books.clearing, "CREDIT", Decimal("100.0500"), "POSTED"),
        (books.variance, "DEBIT", Decimal("0.0500"), "POSTED"),  # over: the other side
    ])
    assert outcome.decision.after["matched_entry_id"] == target
    assert ledger.check_invariants(books.db).ok and review.verify(books.db).ok


def test_force_match_refuses_an_entry_of_another_account_or_currency_or_one_already_fulfilled(books):
    books.stage(books.bank, "DEBIT", "100.00", "TRANSACTION", order_id="o-1")
    books.stage(books.clearing, "CREDIT", "100.00", "CONFIRMATION", order_id="o-1")
    sid, _ = books.stage(books.clearing, "CREDIT", "100.00", "CONFIRMATION", order_id="o-2")
    books.process()
    fulfilled = books.scalar("SELECT fulfilled_expected_entry_id FROM entries WHERE fulfilled_expected_entry_id IS NOT NULL")
    with pytest.raises(StaleReviewError, match=f"expected entry {fulfilled} is not open"):
        review.act(books.db, "force-match", sid, reason="OTHER", note="x", actor="bob", expected_entry_id=fulfilled)
    posted = books.scalar("SELECT entry_id FROM entries WHERE status = 'POSTED' AND account_id = :a", a=books.bank)
    with pytest.raises(StaleReviewError, match="is not open"):
        review.act(books.db, "force-match", sid, reason="OTHER", note="x", actor="bob", expected_entry_id=posted)
    with pytest.raises(InvalidInputError, match="--expected"):
        review.act(books.db, "force-match", sid, reason="OTHER", note="x", actor="bob")
    assert_nothing_written(books, sid, "NEEDS_MANUAL_REVIEW", 0)


def test_ignore_marks_the_line_processed_without_ledger_effect_and_frees_a_mismatched_leg(books):
    sid = books.mismatch("o-1", "250.00", "240.00")
    transactions = books.scalar("SELECT count(*) FROM entries")

    outcome = review.act(books.db, "ignore", sid, reason="NOT_OURS", note="another merchant's payout", actor="carol")

    line = books.staging(sid)
    assert line.status == "PROCESSED" and line.metadata["match_type"] == "Ignored"
    # the expected leg is open again (a new version, EXPECTED) for the line that really pays it
    assert books.scalar("SELECT count(*) FROM transactions WHERE status = 'MISMATCH'") == 0
    reopened = outcome.decision.after["reopened_transaction_id"]
    assert live_legs(books, reopened) == sorted([
        (books.bank, "DEBIT", Decimal("250.0000"), "POSTED"), (books.clearing, "CREDIT", Decimal("250.0000"), "EXPECTED")])
    assert books.scalar("SELECT count(*) FROM entries") == transactions + 2  # nothing deleted
    assert not books.rows("SELECT 1 FROM entries WHERE account_id = :a", a=books.variance)
    assert ledger.check_invariants(books.db).ok and review.verify(books.db).ok


def test_reopen_a_match_restores_the_expected_leg_and_the_engine_can_match_again(books):
    books.stage(books.bank, "DEBIT", "80.00", "TRANSACTION", order_id="o-3")
    sid, _ = books.stage(books.clearing, "CREDIT", "80.00", "CONFIRMATION", order_id="o-3")
    books.process()
    matched = books.staging(sid).metadata["evolved_transaction_id"]
    history = books.scalar("SELECT count(*) FROM transactions")

    outcome = review.act(books.db, "reopen", sid, reason="DATA_CORRECTION", note="wrong order", actor="dave")

    line = books.staging(sid)
    assert line.status == "NEEDS_MANUAL_REVIEW" and line.metadata["error_type"] == "ReopenedByReviewer"
    assert line.discarded_at is None and "match_type" not in line.metadata
    assert books.scalar("SELECT status FROM transactions WHERE transaction_id = :t", t=matched) == "ARCHIVED"
    reopened = outcome.decision.after["reopened_transaction_id"]
    (version,) = books.rows("SELECT status, version FROM transactions WHERE transaction_id = :t", t=reopened)
    assert tuple(version) == ("EXPECTED", 3)
    assert live_legs(books, reopened) == sorted([
        (books.bank, "DEBIT", Decimal("80.0000"), "POSTED"), (books.clearing, "CREDIT", Decimal("80.0000"), "EXPECTED")])
    assert books.scalar("SELECT count(*) FROM transactions") == history + 1  # versions are never deleted
    assert ledger.check_invariants(books.db).ok

    # requeued, the same line matches the restored leg again: a fourth version, one live effect
    review.act(books.db, "requeue", sid, reason="DATA_CORRECTION", actor="dave")
    assert books.process()["matched"] == 1
    assert books.staging(sid).status == "PROCESSED"
    assert books.scalar("SELECT max(version) FROM transactions") == 4
    assert ledger.check_invariants(books.db).ok and review.verify(books.db).ok


def test_reopen_a_mismatch_then_force_match_it(books):
    sid = books.mismatch("o-1", "250.00", "240.00")
    review.act(books.db, "reopen", sid, reason="CUSTOMER_DISPUTE", note="customer disputes", actor="erin")
    assert books.scalar("SELECT count(*) FROM transactions WHERE status = 'MISMATCH'") == 0
    assert books.staging(sid).metadata["error_type"] == "ReopenedByReviewer"
    review.act(books.db, "force-match", sid, reason="BANK_FEE", actor="erin", expected_entry_id=expected_entry(books, "o-1"))
    assert books.staging(sid).status == "PROCESSED"
    assert ledger.check_invariants(books.db).ok and review.verify(books.db).ok
    with books.db.begin() as conn:
        assert [d.action for d in review.decisions(conn, sid)] == ["force-match", "reopen"]


def test_reopen_refuses_a_line_with_nothing_to_reopen(books):
    sid, _ = books.stage(books.clearing, "CREDIT", "10.00", "CONFIRMATION", order_id="nowhere")
    books.process()
    with pytest.raises(InvalidInputError, match="no match or mismatch to reopen"):
        review.act(books.db, "reopen", sid, reason="OTHER", note="x", actor="erin")
    assert_nothing_written(books, sid, "NEEDS_MANUAL_REVIEW", 0)


def test_requeue_one_item_or_a_filter_gives_each_a_fresh_task(books):
    first, _ = books.stage(books.clearing, "CREDIT", "10.00", "CONFIRMATION", order_id="n-1")
    second, _ = books.stage(books.clearing, "CREDIT", "11.00", "CONFIRMATION", order_id="n-2")
    books.process()
    review.act(books.db, "requeue", first, reason="DATA_CORRECTION", actor="fay")
    assert books.staging(first).status == "PENDING"
    assert books.scalar("SELECT count(*) FROM process_tracker WHERE status = 'PENDING'"
                        " AND payload ->> 'staging_entry_id' = :s", s=first) == 1
    outcomes = review.requeue_matching(books.db, reason="DATA_CORRECTION", actor="fay", error_type="NoMatchFoundError")
    assert [o.decision.staging_entry_id for o in outcomes] == [second]
    assert books.decision_count() == 2 and review.verify(books.db).ok
    with pytest.raises(InvalidInputError, match="needs a staging entry id or a filter"):
        review.requeue_matching(books.db, reason="OTHER", note="x", actor="fay")


def test_an_item_that_changed_since_the_reviewer_looked_is_refused(books):
    sid = books.mismatch("o-1", "250.00", "240.00")
    seen = review.show(books.db, sid)["seen"]
    review.act(books.db, "requeue", sid, reason="DATA_CORRECTION", actor="gus")  # someone else, meanwhile
    books.process()  # the engine finds the mismatch again: same status, a newer change
    assert books.staging(sid).status == "NEEDS_MANUAL_REVIEW"
    with pytest.raises(StaleReviewError, match=f"staging entry {sid} changed since you looked"):
        review.act(books.db, "accept", sid, reason="BANK_FEE", actor="hal", seen=seen)
    assert books.decision_count() == 1
    # without `seen`, a line no longer in review is refused too
    review.act(books.db, "ignore", sid, reason="NOT_OURS", actor="gus")
    with pytest.raises(StaleReviewError, match="PROCESSED, no longer in manual review"):
        review.act(books.db, "accept", sid, reason="BANK_FEE", actor="hal")


@pytest.mark.parametrize("kwargs, message", [
    ({"reason": "FEE"}, "reason 'FEE' must be one of BANK_FEE"),
    ({"reason": "OTHER", "note": " "}, "reason OTHER needs a note"),
    ({"reason": "BANK_FEE", "actor": " "}, "actor must be a non-empty name"),
    ({"reason": "BANK_FEE", "seen": "yesterday"}, "seen 'yesterday' must be the ISO timestamp"),
    ({"reason": "BANK_FEE", "note": "x" * 2001}, "note must be text of at most 2000"),
])
def test_bad_input_is_named_and_nothing_is_written(books, kwargs, message):
    sid = books.mismatch("o-1", "250.00", "240.00")
    with pytest.raises(InvalidInputError, match=message):
        review.act(books.db, "accept", sid, **{"actor": "ivy", **kwargs})
    assert_nothing_written(books, sid, "NEEDS_MANUAL_REVIEW", 0)


def test_unknown_items_and_actions_are_named(books):
    with pytest.raises(NotFoundError, match="no staging entry with id 'stg_nope'"):
        review.act(books.db, "ignore", "stg_nope", reason="NOT_OURS", actor="ivy")
    with pytest.raises(InvalidInputError, match="action 'delete' must be one of accept"):
        review.act(books.db, "delete", "stg_nope", reason="NOT_OURS", actor="ivy")


def test_show_lists_the_line_its_reason_mismatched_fields_and_candidates(books):
    sid = books.mismatch("o-1", "250.00", "240.00")
    books.stage(books.bank, "DEBIT", "249.00", "TRANSACTION", order_id="o-1-b")
    books.process()
    item = review.show(books.db, sid)
    assert (item["status"], item["error_type"], item["amount"]) == ("NEEDS_MANUAL_REVIEW", "MismatchError", Decimal("240.0000"))
    assert item["reason"] == "amount: expected 250.0000, got 240.0000"
    assert item["mismatched_fields"] == [{"field": "amount", "expected": "250.0000", "actual": "240.0000"}]
    (candidate,) = item["candidates"]  # only its order's legs on its account
    assert (candidate["transaction_status"], candidate["difference"]) == ("MISMATCH", Decimal("-10.0000"))
    assert item["decisions"] == []
