"""Shared helpers for the reliability tests: books, worker processes, and the final-state check."""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import sqlalchemy as sa

from recon import accounts, ledger, pipeline
from recon.db import Database
from recon.staging import Created, NewStagingEntry, create_staging_entries
from tests.reliability import figures

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_SCRIPT = Path(__file__).with_name("worker.py")
EFFECTIVE = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
PROCESS_TIMEOUT = 300  # seconds; a worker that takes longer is a hang, not a slow machine

# The engine's knobs as the assertions on backoff delays and attempts expect them; conftest sets
# them for every reliability test, and worker processes inherit them, whatever the shell exported.
ENGINE_SETTINGS = {
    "RECON_MAX_ATTEMPTS": "5",
    "RECON_RETRY_BASE_SECONDS": "10",
    "RECON_RETRY_MAX_SECONDS": "3600",
    "RECON_LEASE_SECONDS": "600",
    "RECON_MATCHING_WINDOW_SECONDS": "0",
}


# ---- books ---------------------------------------------------------------------------------------


@dataclass
class Books:
    """One merchant: bank account A (account_one, DEBIT_NORMAL) -> clearing account B (CREDIT_NORMAL)."""

    db: Database
    merchant_id: str
    bank: str
    clearing: str
    rule_id: str

    def entry(self, account: str, side: str, amount: str, mode: str, currency: str = "USD",
              **metadata: Any) -> NewStagingEntry:
        return NewStagingEntry(account, side, amount, currency, mode, EFFECTIVE, metadata)

    def transaction(self, order_id: str, amount: str = "10.00", **kw: Any) -> NewStagingEntry:
        return self.entry(self.bank, "DEBIT", amount, "TRANSACTION", order_id=order_id, **kw)

    def confirmation(self, order_id: str, amount: str = "10.00", side: str = "CREDIT", **kw: Any) -> NewStagingEntry:
        return self.entry(self.clearing, side, amount, "CONFIRMATION", order_id=order_id, **kw)

    def stage(self, entries: Sequence[NewStagingEntry]) -> list[Created]:
        return create_staging_entries(list(entries), db=self.db)


def make_books(db: Database, prefix: str = "") -> Books:
    merchant = accounts.create_merchant("Reliability Ltd", db=db)
    bank = accounts.create_account(merchant, "Bank USD", "DEBIT_NORMAL", "USD",
                                 account_id=f"{prefix}acc_bank" if prefix else None, db=db)
    clearing = accounts.create_account(merchant, "PSP clearing USD", "CREDIT_NORMAL", "USD",
                                     account_id=f"{prefix}acc_clearing" if prefix else None, db=db)
    rule = accounts.create_recon_rule(bank, clearing, db=db)
    return Books(db, merchant, bank, clearing, rule)


# ---- SQL conveniences ----------------------------------------------------------------------------


def rows(db: Database, statement: str, **params: Any) -> list[Any]:
    with db.begin() as conn:
        return conn.execute(sa.text(statement), params).all()


def scalar(db: Database, statement: str, **params: Any) -> Any:
    with db.begin() as conn:
        return conn.execute(sa.text(statement), params).scalar()


def task_statuses(db: Database) -> dict[str, int]:
    return dict(rows(db, "SELECT status, count(*) FROM process_tracker GROUP BY 1"))


def expire_leases(db: Database) -> int:
    """Make every lease look expired (as if lease_seconds had passed) without waiting."""
    with db.begin() as conn:
        return conn.execute(sa.text(
            "UPDATE process_tracker SET lease_expires_at = now() - interval '1 second'"
            " WHERE status = 'PROCESSING'")).rowcount


def make_retries_due(db: Database) -> int:
    """Let the backoff pass (RETRY tasks due now) without waiting."""
    with db.begin() as conn:
        return conn.execute(sa.text(
            "UPDATE process_tracker SET run_after = now() WHERE status = 'RETRY' AND run_after > now()")).rowcount


def retry_delays(db: Database, task_ids: Sequence[str] | None = None) -> dict[str, float]:
    """Seconds between a RETRY write (updated_at) and the time it is due again (run_after)."""
    result = rows(
        db,
        "SELECT task_id, extract(epoch FROM run_after - updated_at) AS delay FROM process_tracker"
        " WHERE status = 'RETRY' AND (CAST(:ids AS text[]) IS NULL OR task_id = ANY(CAST(:ids AS text[])))",
        ids=list(task_ids) if task_ids is not None else None,
    )
    return {r.task_id: float(r.delay) for r in result}


def wait_until(predicate: Any, what: str, timeout: float = 60.0, interval: float = 0.05) -> None:
    """Bounded polling of an observable condition (a process or the database), never a bare sleep."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def backends_of(db: Database, app_name: str) -> int:
    return scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = :a", a=app_name)


def wait_backends_gone(db: Database, app_name: str) -> None:
    """After a kill -9 the server notices the closed socket and rolls back; wait until it has."""
    wait_until(lambda: backends_of(db, app_name) == 0, f"the backends of {app_name} to end")


# ---- worker processes ----------------------------------------------------------------------------


def worker_env(db_url: str, app_name: str, fault: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RECON_TEST_FAULT", None)
    env.update(
        RECON_DATABASE_URL=db_url,
        PYTHONPATH=f"{REPO_ROOT / 'plugins'}{os.pathsep}{REPO_ROOT}",
        PGAPPNAME=app_name,  # libpq: lets the test find this worker's backends in pg_stat_activity
    )
    if fault:
        env["RECON_TEST_FAULT"] = fault
    env.update(extra)
    return env


class Worker:
    """A worker OS process (tests/reliability/worker.py) whose stdout is read line by line."""

    def __init__(self, db_url: str, fault: str | None = None, batch_size: int = 1_000, chunk_size: int = 250,
                 app_name: str | None = None, **env: str):
        self.app_name = app_name or f"recon-test-{uuid.uuid4().hex[:8]}"
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT), "--batch-size", str(batch_size), "--chunk-size", str(chunk_size),
             "--run-id", self.app_name],
            env=worker_env(db_url, self.app_name, fault, **env),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr = ""
        threading.Thread(target=self._read_stdout, daemon=True).start()
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr = self.process.stderr.read()

    def wait_paused(self, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"worker did not pause within {timeout}s; stderr:\n{self.stderr}") from None
            if line is None:
                self.process.wait(timeout=10)
                self._stderr_thread.join(timeout=10)
                raise AssertionError(f"worker exited ({self.process.returncode}) before pausing:\n{self.stderr}")
            if line.startswith("PAUSED "):
                return json.loads(line[len("PAUSED "):])

    def resume(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def wait(self, timeout: float = PROCESS_TIMEOUT) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
        self._stderr_thread.join(timeout=10)
        return code

    def summary(self) -> dict[str, Any]:
        for line in reversed(self.stdout):
            if line.startswith("SUMMARY "):
                return json.loads(line[len("SUMMARY "):])
        raise AssertionError(f"worker printed no summary; stderr:\n{self.stderr}")


def run_worker(db_url: str, **kwargs: Any) -> dict[str, Any]:
    """Run a fault-free worker to the end; return its summary."""
    worker = Worker(db_url, **kwargs)
    code = worker.wait()
    assert code == 0, f"worker failed with {code}:\n{worker.stderr}"
    return worker.summary()


def drain(db: Database, rounds: int = 20, **kwargs: Any) -> list[dict[str, Any]]:
    """process_queue in-process until nothing is due, letting waits/backoffs pass between rounds."""
    summaries = []
    for _ in range(rounds):
        summaries.append(pipeline.process_queue(db=db, **kwargs))
        if not make_retries_due(db) and not summaries[-1]["claimed"]:
            return summaries
    raise AssertionError(f"queue not drained after {rounds} rounds: {task_statuses(db)}")


# ---- the final-state check -----------------------------------------------------------------------


@dataclass
class Consistency:
    entries: int = 0
    processed: int = 0
    manual_review: int = 0
    pending: int = 0
    lost: int = 0
    booked_twice: int = 0
    tasks: dict[str, int] = field(default_factory=dict)
    by_error_type: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)


_PER_ENTRY = sa.text(
    """
    WITH effects AS (
        SELECT source_staging_entry_id AS sid, count(*) AS n, min(transaction_id) AS transaction_id
        FROM transactions WHERE source_staging_entry_id IS NOT NULL GROUP BY 1
    ), tasks AS (
        SELECT payload ->> 'staging_entry_id' AS sid,
               count(*) FILTER (WHERE status IN ('PENDING', 'RETRY')) AS open,
               count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
               count(*) FILTER (WHERE status = 'FAILED') AS failed
        FROM process_tracker WHERE jsonb_typeof(payload -> 'staging_entry_id') = 'string' GROUP BY 1
    )
    SELECT s.staging_entry_id, s.status, s.metadata ->> 'error_type' AS error_type,
           coalesce(s.metadata ->> 'created_transaction_id', s.metadata ->> 'evolved_transaction_id')
               AS linked_transaction_id,
           coalesce(e.n, 0) AS effects, e.transaction_id,
           coalesce(t.open, 0) AS open, coalesce(t.completed, 0) AS completed, coalesce(t.failed, 0) AS failed
    FROM staging_entries s
    LEFT JOIN effects e ON e.sid = s.staging_entry_id
    LEFT JOIN tasks t ON t.sid = s.staging_entry_id
    """
)


def check_books(db: Database, expire_and_reap: bool = False) -> Consistency:
    """Count every way the books could be wrong (see assert_books_consistent)."""
    if expire_and_reap:
        expire_leases(db)
        pipeline.reap(db)
    report = Consistency()
    v = report.violations
    with db.begin() as conn:
        for r in conn.execute(_PER_ENTRY):
            report.entries += 1
            sid = r.staging_entry_id
            if r.effects > 1:
                report.booked_twice += 1
                v.append(f"{sid}: {r.effects} ledger effects (booked twice)")
            if r.status == "PROCESSED":
                report.processed += 1
                if r.effects == 0:
                    report.lost += 1
                    v.append(f"{sid}: PROCESSED without a ledger effect")
                elif r.effects == 1 and r.linked_transaction_id != r.transaction_id:
                    v.append(f"{sid}: metadata names {r.linked_transaction_id}, the ledger {r.transaction_id}")
                if r.completed == 0:
                    v.append(f"{sid}: PROCESSED but no COMPLETED task")
                if r.open:
                    v.append(f"{sid}: PROCESSED but still has an open task")
            elif r.status == "NEEDS_MANUAL_REVIEW":
                report.manual_review += 1
                report.by_error_type[r.error_type or "?"] = report.by_error_type.get(r.error_type or "?", 0) + 1
                if not r.error_type:
                    report.lost += 1
                    v.append(f"{sid}: NEEDS_MANUAL_REVIEW without metadata.error_type")
                if r.effects:
                    v.append(f"{sid}: NEEDS_MANUAL_REVIEW but has a ledger effect (partial effect)")
                if r.open or not r.failed:
                    v.append(f"{sid}: NEEDS_MANUAL_REVIEW but its task is not FAILED ({r.open} open)")
            else:  # PENDING: only legitimate with a task that is due or waiting for its retry
                report.pending += 1
                if r.open != 1:
                    report.lost += 1
                    v.append(f"{sid}: PENDING with {r.open} open task(s) (lost)")
                if r.effects:
                    v.append(f"{sid}: PENDING but has a ledger effect (partial effect)")
        report.tasks = dict(conn.execute(sa.text("SELECT status, count(*) FROM process_tracker GROUP BY 1")).all())
        if report.tasks.get("PROCESSING"):
            v.append(f"{report.tasks['PROCESSING']} task(s) PROCESSING after reaping")
        for r in conn.execute(sa.text(
            "SELECT task_id, status FROM process_tracker WHERE (status = 'FAILED' AND coalesce(last_error, '') = '')"
            " OR (status = 'COMPLETED' AND last_error IS NOT NULL) LIMIT 5"
        )):
            v.append(f"task {r.task_id}: {r.status} with an inconsistent last_error")
        for r in conn.execute(sa.text(
            "SELECT t.transaction_id, t.source_staging_entry_id, count(e.entry_id) AS legs FROM transactions t"
            " LEFT JOIN entries e USING (transaction_id) GROUP BY t.transaction_id"
            " HAVING count(e.entry_id) < 2 OR t.source_staging_entry_id IS NULL LIMIT 5"
        )):
            v.append(f"transaction {r.transaction_id}: {r.legs} leg(s), source {r.source_staging_entry_id}")
    invariants = ledger.check_invariants(db)
    if not invariants.ok:
        v.append(f"ledger invariants broken: {invariants}")
    report.booked_twice = max(report.booked_twice, invariants.entries_booked_twice)
    return report


def assert_books_consistent(db: Database, expire_and_reap: bool = False, final: bool = True) -> Consistency:
    """The end-of-test guarantee, asserted on the database:

    - every staging entry is PROCESSED, or NEEDS_MANUAL_REVIEW with metadata.error_type (and a
      FAILED task), or PENDING with exactly one task that is due or waiting for its retry;
    - exactly one ledger effect (transactions.source_staging_entry_id) per PROCESSED entry, the one
      its metadata names, and none for any other entry (no partial effect);
    - ledger.check_invariants is ok (balanced per transaction and currency, positive amounts, no
      expected entry fulfilled twice, no entry booked twice); every transaction has >= 2 legs;
    - no tracker task PROCESSING (with expire_and_reap: after expiring every lease and reaping).

    With final=True the counts go into the session's figures (entries checked, lost, booked twice).
    """
    report = check_books(db, expire_and_reap)
    if final:
        figures.record(entries_checked=report.entries, entries_lost=report.lost,
                       entries_booked_twice=report.booked_twice)
    assert not report.violations, "books inconsistent:\n  " + "\n  ".join(report.violations[:20])
    return report
