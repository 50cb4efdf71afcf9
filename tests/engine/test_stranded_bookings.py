"""A confirmation does not wait forever for a booking line that nothing will run (issue 19, item 8).

Its order's TRANSACTION line is PENDING with no task to run: an operator failed the task, or a
plain-SQL producer inserted the line without one. The confirmation used to wait 5 s at a time, at
attempt 0, for ever. Now it waits only until its rule's ageing is over, then goes to review naming
the order and that line; a line given a task meanwhile is waited for and booked as usual.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from recon import ledger
from recon.tracker import ProcessTracker


def _failed_by_operator(books, order_id: str = "o-1") -> str:
    line, task = books.stage(books.bank, "DEBIT", "40.00", "TRANSACTION", order_id=order_id)
    ProcessTracker(books.db).update_task_status(task, "FAILED", error_message="stopped by an operator")
    return line


def _inserted_without_task(books, order_id: str = "o-1") -> str:
    with books.db.begin() as conn:
        return conn.execute(sa.text(
            "INSERT INTO staging_entries (account_id, entry_type, amount, currency, processing_mode, metadata)"
            " VALUES (:a, 'DEBIT', 40.00, 'USD', 'TRANSACTION', jsonb_build_object('order_id', CAST(:o AS text)))"
            " RETURNING staging_entry_id"), {"a": books.bank, "o": order_id}).scalar_one()


def _assert_reviewed_naming(books, confirmation: str, task: str, line: str, described: str = "order 'o-1'") -> None:
    review = books.staging(confirmation)
    assert (review.status, review.metadata["error_type"]) == ("NEEDS_MANUAL_REVIEW", "NoMatchFoundError")
    assert review.metadata["pending_line_without_task"] == line
    assert described in review.metadata["error"] and line in review.metadata["error"]
    assert "no task to run" in review.metadata["error"]
    assert books.task(task).status == "FAILED"


@pytest.mark.parametrize("match_keys, described", [
    (None, "order 'o-1'"),
    ('[{"line": "metadata.reference", "expected": "order_id"}]', "metadata.reference 'o-1'"),
    ('[{"line": "amount", "expected": "amount"}]', "CREDIT amount between 40.0000 and 40.0000"),
], ids=["order id", "metadata", "amount"])
def test_a_line_whose_task_an_operator_failed_sends_its_confirmation_to_review(books, match_keys, described):
    if match_keys:
        with books.db.begin() as conn:
            conn.execute(sa.text("UPDATE recon_rules SET match_keys = CAST(:k AS jsonb) WHERE id = :r"),
                         {"k": match_keys, "r": books.rule_id})
    line = _failed_by_operator(books)
    confirmation, task = books.stage(books.clearing, "CREDIT", "40.00", "CONFIRMATION", order_id="o-1",
                                     reference="o-1")
    summary = books.process()

    _assert_reviewed_naming(books, confirmation, task, line, described)
    assert summary["waiting"] == 0
    assert books.staging(line).status == "PENDING"  # left as it is, for the operator


def test_a_line_inserted_without_a_task_sends_its_confirmation_to_review(books):
    line = _inserted_without_task(books)
    confirmation, task = books.stage(books.clearing, "CREDIT", "40.00", "CONFIRMATION", order_id="o-1")
    books.process()

    _assert_reviewed_naming(books, confirmation, task, line)


def test_the_wait_lasts_the_rules_ageing_and_a_task_given_meanwhile_is_waited_for(books):
    with books.db.begin() as conn:
        conn.execute(sa.text("UPDATE recon_rules SET aging_days = 1 WHERE id = :r"), {"r": books.rule_id})
    first = _failed_by_operator(books, "o-1")
    waiting, waiting_task = books.stage(books.clearing, "CREDIT", "40.00", "CONFIRMATION", order_id="o-1")
    second = _failed_by_operator(books, "o-2")
    aged, aged_task = books.stage(books.clearing, "CREDIT", "40.00", "CONFIRMATION", order_id="o-2")
    with books.db.begin() as conn:  # both confirmations age until a day from now
        conn.execute(sa.text("UPDATE staging_entries SET effective_date = now() WHERE processing_mode = 'CONFIRMATION'"))
    assert books.process()["waiting"] == 2
    task = books.task(waiting_task)
    assert (task.status, task.attempts) == ("RETRY", 0) and first in task.last_error

    # o-1's line gets its task back and is booked; o-2's confirmation has aged meanwhile
    ProcessTracker(books.db).requeue([t for t, in books.rows(
        "SELECT task_id FROM process_tracker WHERE status = 'FAILED' AND payload ->> 'staging_entry_id' = :s",
        s=first)])
    assert books.process()["booked"] == 1
    with books.db.begin() as conn:
        conn.execute(sa.text("UPDATE staging_entries SET effective_date = now() - interval '2 days'"
                             " WHERE staging_entry_id = :s"), {"s": aged})
        conn.execute(sa.text("UPDATE process_tracker SET run_after = now() WHERE status = 'RETRY'"))
    books.process()

    _assert_reviewed_naming(books, aged, aged_task, second, "order 'o-2'")
    assert books.staging(waiting).metadata["match_type"] == "Phase2_Fulfilled"
    assert ledger.check_invariants(books.db).ok
