"""Every reviewer action changes a line's status through staging's own functions, so each leaves a
row in the line's outcome history naming the action, the reviewer and the reason (issue 18)."""

from __future__ import annotations

from recon import review, staging


def history(books, sid: str) -> list[tuple[str, str | None, str | None, str | None]]:
    with books.db.begin() as conn:
        return [(h.status, h.error_type, h.reason, h.run) for h in staging.outcome_history(conn, sid)]


def test_accept_and_ignore_leave_a_processed_row_with_the_decision(books):
    accepted = books.mismatch("o-1", "250.00", "240.00")
    ignored = books.mismatch("o-2", "90.00", "80.00")

    review.act(books.db, "accept", accepted, reason="BANK_FEE", note="PSP fee", actor="alice")
    review.act(books.db, "ignore", ignored, reason="NOT_OURS", actor="bob")

    assert history(books, accepted)[-1] == ("PROCESSED", None, "accept by alice: BANK_FEE (PSP fee)", "review:alice")
    assert history(books, accepted)[0][1] == "MismatchError"  # the engine's reason is kept
    assert history(books, ignored)[-1] == ("PROCESSED", None, "ignore by bob: NOT_OURS", "review:bob")
    assert "mismatched_fields" not in books.staging(accepted).metadata


def test_reopen_and_requeue_leave_a_row_and_drop_the_earlier_findings(books):
    sid = books.mismatch("o-1", "250.00", "240.00")
    assert "mismatched_fields" in books.staging(sid).metadata

    review.act(books.db, "reopen", sid, reason="CUSTOMER_DISPUTE", note="disputed", actor="erin")
    line = books.staging(sid).metadata
    assert history(books, sid)[-1] == ("NEEDS_MANUAL_REVIEW", "ReopenedByReviewer",
                                       "reopened by erin: CUSTOMER_DISPUTE", "review:erin")
    assert not {"mismatched_fields", "matched_transaction_id", "matched_entry_id"} & set(line)

    review.act(books.db, "requeue", sid, reason="DATA_CORRECTION", actor="fay")
    assert history(books, sid)[-1] == ("PENDING", None, "requeue by fay: DATA_CORRECTION", "review:fay")
    assert [h[0] for h in history(books, sid)] == ["NEEDS_MANUAL_REVIEW", "NEEDS_MANUAL_REVIEW", "PENDING"]
