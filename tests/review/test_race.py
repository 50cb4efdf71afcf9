"""A reviewer racing the engine on one line: the line is requeued through the reprocess path and
processed while the reviewer acts on what they saw. Exactly one wins; the other gets a clear
"changed since you looked" and writes nothing."""

from __future__ import annotations

import threading

import pytest

from recon import ledger, pipeline, review
from recon.errors import StaleReviewError


def unmatched_line(books, order_id: str) -> tuple[str, str]:
    """A confirmation that arrived before its booking (manual review), then the booking: requeued,
    the engine matches the line; the reviewer meanwhile decides to ignore it."""
    sid, tid = books.stage(books.clearing, "CREDIT", "42.00", "CONFIRMATION", order_id=order_id)
    books.process()
    assert books.staging(sid).metadata["error_type"] == "NoMatchFoundError"
    books.stage(books.bank, "DEBIT", "42.00", "TRANSACTION", order_id=order_id)
    books.process()
    return sid, tid


def engine_reprocesses(books, tid: str) -> dict:
    requeued = pipeline.requeue_scope(task_ids=[tid], db=books.db)
    return {**requeued, **books.process()}


def assert_one_winner(books, sid: str, reviewer_won: bool) -> None:
    line = books.staging(sid)
    assert line.status == "PROCESSED"
    assert line.metadata["match_type"] == ("Ignored" if reviewer_won else "Phase2_Fulfilled")
    assert books.decision_count() == (1 if reviewer_won else 0)
    # the expected leg is fulfilled by the engine, or still open after the reviewer ignored the line
    open_legs = books.scalar("SELECT count(*) FROM entries WHERE status = 'EXPECTED'")
    assert open_legs == (1 if reviewer_won else 0)
    assert ledger.check_invariants(books.db).ok and review.verify(books.db).ok


def test_the_engine_first_then_the_reviewer_is_told_it_changed(books):
    sid, tid = unmatched_line(books, "o-race")
    seen = review.show(books.db, sid)["seen"]
    result = engine_reprocesses(books, tid)
    assert (result["reopened_entries"], result["matched"]) == (1, 1)
    with pytest.raises(StaleReviewError, match=f"staging entry {sid} changed since you looked"):
        review.act(books.db, "ignore", sid, reason="NOT_OURS", actor="reviewer", seen=seen)
    assert_one_winner(books, sid, reviewer_won=False)


def test_the_reviewer_first_then_the_requeue_finds_nothing_to_do(books):
    sid, tid = unmatched_line(books, "o-race")
    seen = review.show(books.db, sid)["seen"]
    review.act(books.db, "ignore", sid, reason="NOT_OURS", actor="reviewer", seen=seen)
    result = engine_reprocesses(books, tid)
    assert (result["reopened_entries"], result["matched"]) == (0, 0)
    assert_one_winner(books, sid, reviewer_won=True)


@pytest.mark.parametrize("attempt", range(4))
def test_at_the_same_time_exactly_one_wins(books, attempt):
    sid, tid = unmatched_line(books, f"o-race-{attempt}")
    seen = review.show(books.db, sid)["seen"]
    start = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def reviewer() -> None:
        start.wait()
        try:
            outcome["decision"] = review.act(books.db, "ignore", sid, reason="NOT_OURS", actor="reviewer", seen=seen)
        except StaleReviewError as exc:
            outcome["refused"] = exc

    thread = threading.Thread(target=reviewer)
    thread.start()
    start.wait()
    engine_reprocesses(books, tid)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert ("decision" in outcome) != ("refused" in outcome)
    if "refused" in outcome:
        assert "changed since you looked" in str(outcome["refused"])
    assert_one_winner(books, sid, reviewer_won="decision" in outcome)
