"""Deterministic cases the chunking/worker property (test_invariants.py) found or guards.

Each case runs the same lines one at a time and as one chunk, and the outcomes per staging entry
must be equal.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from recon import pipeline
from recon.db import Database, libpq_url
from tests.reliability import figures
from tests.reliability.helpers import Worker, assert_books_consistent, make_books, make_retries_due, rows


def _outcomes(db: Database, ids: list[str]) -> list[tuple[Any, ...]]:
    with db.begin() as conn:
        found = {r.staging_entry_id: (r.status, r.error_type) for r in conn.execute(sa.text(
            "SELECT staging_entry_id, status, metadata ->> 'error_type' AS error_type FROM staging_entries"))}
    return [found[i] for i in ids]


def _run(db: Database, lines: list[tuple[str, ...]], chunk_size: int) -> list[tuple[Any, ...]]:
    books = make_books(db)
    ids = []
    for mode, order, side, amount in lines:  # one line per transaction: claim order = line order
        entry = (books.transaction(order, amount) if mode == "T"
                 else books.confirmation(order, amount, side=side))
        ids.append(books.stage([entry])[0].staging_entry_id)
    for _ in range(10):
        summary = pipeline.process_queue(db=db, batch_size=chunk_size, chunk_size=chunk_size)
        if not make_retries_due(db) and not summary["claimed"]:
            break
    assert_books_consistent(db)
    return _outcomes(db, ids)


def _both_ways(db: Database, second_db: Database, lines: list[tuple[str, ...]]) -> list[tuple[Any, ...]]:
    one_at_a_time = _run(second_db, lines, chunk_size=1)
    chunked = _run(db, lines, chunk_size=100)
    assert chunked == one_at_a_time
    return chunked


def test_second_confirmation_after_an_in_chunk_mismatch_is_no_match(db, second_db):
    """The first confirmation mismatches (amount); an identical second one finds no open expected
    entry: NoMatchFoundError one at a time, and so in one chunk too (it used to say AlreadyFulfilled)."""
    lines = [("T", "o1", "DEBIT", "10.00"), ("C", "o1", "CREDIT", "99.99"), ("C", "o1", "CREDIT", "99.99")]
    assert _both_ways(db, second_db, lines) == [
        ("PROCESSED", None), ("NEEDS_MANUAL_REVIEW", "MismatchError"), ("NEEDS_MANUAL_REVIEW", "NoMatchFoundError")]


def test_second_confirmation_after_an_in_chunk_fulfilment_is_already_fulfilled(db, second_db):
    lines = [("T", "o1", "DEBIT", "10.00"), ("C", "o1", "CREDIT", "10"), ("C", "o1", "CREDIT", "10.0")]
    assert _both_ways(db, second_db, lines) == [
        ("PROCESSED", None), ("PROCESSED", None), ("NEEDS_MANUAL_REVIEW", "AlreadyFulfilledError")]


def test_confirmation_before_its_transaction_waits_for_it(db, second_db):
    lines = [("C", "o1", "CREDIT", "10.00"), ("T", "o1", "DEBIT", "10.00"), ("C", "o1", "CREDIT", "10.00")]
    outcomes = _both_ways(db, second_db, lines)
    assert sorted(outcomes[::2]) == [("NEEDS_MANUAL_REVIEW", "AlreadyFulfilledError"), ("PROCESSED", None)]


@pytest.mark.slow
def test_confirmation_racing_its_own_booking_in_another_worker_waits(books, db):
    """Worker 1 books order o1 and has not committed; worker 2 runs the confirmation of o1 and reads
    the open expected entries (none yet). Worker 1 commits; only then does worker 2 check whether
    o1 is still queued. Found by the property with two workers: the confirmation went to manual
    review (NoMatchFoundError) although one at a time it is fulfilled. It must wait, then fulfil."""
    (booking,) = books.stage([books.transaction("o1", "10.00")])
    (confirmation,) = books.stage([books.confirmation("o1", "10.00")])
    url = libpq_url(db.url)

    booker = Worker(url, fault="after_ledger_write:pause", batch_size=1, chunk_size=1)
    booker.wait_paused()  # o1 written, not committed
    confirmer = Worker(url, fault="after_expected_legs:pause", batch_size=1, chunk_size=1)
    confirmer.wait_paused()  # read the open expected entries of o1: none visible yet
    booker.resume()
    assert booker.wait() == 0, booker.stderr
    assert rows(db, "SELECT status FROM staging_entries WHERE staging_entry_id = :s",
                s=booking.staging_entry_id)[0].status == "PROCESSED"
    confirmer.resume()
    assert confirmer.wait() == 0, confirmer.stderr
    figures.record(faults_injected=1)

    (entry,) = rows(db, "SELECT status, metadata FROM staging_entries WHERE staging_entry_id = :s",
                    s=confirmation.staging_entry_id)
    assert entry.status == "PENDING", entry.metadata  # it waits for the booking it raced with
    make_retries_due(db)
    pipeline.process_queue(db=db)
    (entry,) = rows(db, "SELECT status, metadata FROM staging_entries WHERE staging_entry_id = :s",
                    s=confirmation.staging_entry_id)
    assert entry.status == "PROCESSED" and entry.metadata["match_type"] == "Phase2_Fulfilled"
    report = assert_books_consistent(db)
    assert report.processed == 2
    figures.record(tasks_processed_under_faults=2)
