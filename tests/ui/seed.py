"""A recon database in every state the Recon view shows, built with the library's own API.

After ``seed_monitoring_books``:
- COMPLETED tasks: bookings and one matched confirmation;
- FAILED tasks with entries in NEEDS_MANUAL_REVIEW: an amount mismatch (its transaction in
  MISMATCH), an unmatched confirmation, an entry on an account without a recon rule;
- PENDING tasks (the backlog), PROCESSING tasks under a held lease, a RETRY task due later;
- two recorded run summaries (throughput chart).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from recon import accounts, pipeline
from recon.reporting import monitoring, run_summaries
from recon.db import Database
from recon.staging import NewStagingEntry, create_staging_entries
from recon.settings import RetryPolicy
from recon.tracker import ProcessTracker

WHEN = dt.datetime(2026, 11, 2, 9, 30, tzinfo=dt.timezone.utc)
LEASE_OWNER = "manual__seeded-run:held"
RETRY_ERROR = "ConnectionError: PSP statement API timed out"
MISMATCH_ORDER = "ORD-1002"
UNMATCHED_ORDER = "ORD-9999"


@dataclass
class SeededBooks:
    db: Database
    merchant_id: str
    bank: str
    clearing: str
    orphan: str  # an account with no recon rule
    run_ids: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """A plain libpq URL, for other processes (Airflow) and psql."""
        return self.db.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.db.begin() as c:
            return c.execute(sa.text(sql), params).scalar()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.db.begin() as c:
            return c.execute(sa.text(sql), params).all()


def _entry(account: str, side: str, amount: str, mode: str, order_id: str, **extra: Any) -> NewStagingEntry:
    return NewStagingEntry(account, side, amount, "USD", mode, WHEN, {"order_id": order_id, **extra})


def seed_monitoring_books(db: Database) -> SeededBooks:
    merchant = accounts.create_merchant("Acme Payments", db=db)
    bank = accounts.create_account(merchant, "Bank USD", "DEBIT_NORMAL", "USD", "1000.00", db=db)
    clearing = accounts.create_account(merchant, "PSP clearing USD", "CREDIT_NORMAL", "USD", db=db)
    orphan = accounts.create_account(merchant, "Bank USD without rule", "DEBIT_NORMAL", "USD", db=db)
    accounts.create_recon_rule(bank, clearing, db=db)
    books = SeededBooks(db, merchant, bank, clearing, orphan)

    # run 1: bookings, plus one line on an account without a rule (manual review)
    create_staging_entries(
        [
            _entry(bank, "DEBIT", "100.00", "TRANSACTION", "ORD-1001"),
            _entry(bank, "DEBIT", "250.00", "TRANSACTION", MISMATCH_ORDER),
            _entry(bank, "DEBIT", "75.25", "TRANSACTION", "ORD-1003"),
            _entry(orphan, "DEBIT", "12.00", "TRANSACTION", "ORD-2001"),
        ],
        db=db,
    )
    books.run_ids.append("manual__seed-1")
    run_summaries.record_run_summary(books.run_ids[-1], pipeline.process_queue(db=db, run_id="seed-1"), db=db)

    # run 2: confirmations: one match, one amount mismatch, one unmatched order
    create_staging_entries(
        [
            _entry(clearing, "CREDIT", "100.00", "CONFIRMATION", "ORD-1001"),
            _entry(clearing, "CREDIT", "249.00", "CONFIRMATION", MISMATCH_ORDER),
            _entry(clearing, "CREDIT", "5.00", "CONFIRMATION", UNMATCHED_ORDER),
        ],
        db=db,
    )
    books.run_ids.append("manual__seed-2")
    run_summaries.record_run_summary(books.run_ids[-1], pipeline.process_queue(db=db, run_id="seed-2"), db=db)

    # the queue as it stands between runs: a backlog, leases held by a run, a task waiting to retry
    create_staging_entries(
        [_entry(bank, "DEBIT", f"{10 + i}.00", "TRANSACTION", f"ORD-30{i:02d}") for i in range(6)], db=db
    )
    tracker = ProcessTracker(db, RetryPolicy(max_attempts=5, base_seconds=600, max_seconds=3600))
    tracker.claim_batch("PROCESS_STAGING_ENTRY", 2, lease_seconds=900, owner=LEASE_OWNER)
    retrying = tracker.claim_batch("PROCESS_STAGING_ENTRY", 1, owner="manual__seeded-run:retry")
    tracker.retry({retrying[0].task_id: RETRY_ERROR}, owner="manual__seeded-run:retry")
    return books
