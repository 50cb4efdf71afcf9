"""``python -m bench.requeue``: reprocess (requeue) of many FAILED tasks, alone and twice at once.

The workload: N staging entries in manual review, each with its FAILED task, all in one
created_at window. Measured on a database of its own (``<prefix>_requeue``):

- one ``pipeline.requeue_scope`` over the window (what ``recon reprocess`` and the DAG's
  ``requeue`` task run);
- the same state again, and two ``requeue_scope`` calls started together from two threads (two
  operators, or a DAG run and the CLI): the wall time of each, and the final state checked: every
  entry PENDING with exactly one open task, and the two calls together requeued N tasks.

No ANALYZE: the tables have the statistics of a backlog that has just failed (none yet), which
is when the old statement planned its row re-check as a join and went quadratic; with fresh
statistics it happened to plan a cheap one, so the requeue lock, not a plan, is the guarantee.

Prints a table; ``--json PATH`` also writes the figures. Issue 19 item 5 (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.databases import Server, default_server_url
from recon import pipeline
from recon.db import Database

WINDOW_START = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
WINDOW_END = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)

ACCOUNT = """
INSERT INTO merchant_accounts (merchant_id, merchant_name) VALUES ('mer_rq', 'Requeue bench');
INSERT INTO accounts (account_id, merchant_id, account_name, account_type, currency)
VALUES ('acc_rq', 'mer_rq', 'Bank', 'DEBIT_NORMAL', 'USD');
"""

POPULATE = """
WITH entries AS (
    INSERT INTO staging_entries (staging_entry_id, account_id, entry_type, amount, currency, processing_mode,
                                 status, metadata, created_at)
    SELECT 'stg_rq_' || i, 'acc_rq', 'DEBIT', 10, 'USD', 'TRANSACTION', 'NEEDS_MANUAL_REVIEW',
           jsonb_build_object('order_id', 'o-' || i, 'error', 'no rule', 'error_type', 'NoReconRuleFoundError'),
           %(created_at)s
    FROM generate_series(1, %(tasks)s) AS i
    RETURNING staging_entry_id, created_at
)
INSERT INTO process_tracker (task_type, payload, status, attempts, last_error, created_at, completed_at)
SELECT 'PROCESS_STAGING_ENTRY', jsonb_build_object('staging_entry_id', staging_entry_id), 'FAILED', 1,
       'NoReconRuleFoundError: no rule', created_at, created_at
FROM entries;
"""

# back to the workload's state after a requeue (the bench's own database: plain SQL is fine here)
RESET = """
UPDATE process_tracker SET status = 'FAILED', attempts = 1, completed_at = created_at WHERE status <> 'FAILED';
UPDATE staging_entries SET status = 'NEEDS_MANUAL_REVIEW' WHERE status <> 'NEEDS_MANUAL_REVIEW';
"""

FINAL_STATE = """
SELECT (SELECT count(*) FROM staging_entries WHERE status = 'PENDING') AS pending_entries,
       (SELECT count(*) FROM process_tracker WHERE status IN ('PENDING', 'PROCESSING', 'RETRY')) AS open_tasks,
       (SELECT count(*) FROM (SELECT payload ->> 'staging_entry_id' FROM process_tracker
                              WHERE status IN ('PENDING', 'PROCESSING', 'RETRY') GROUP BY 1) AS e) AS entries_with_open_task
"""


def requeue_once(url: str) -> tuple[dict[str, int] | str, float]:
    """One requeue_scope over the window on a connection of its own: (result or error, seconds)."""
    db = Database(url, "bench requeue")
    started = time.perf_counter()
    try:
        result: dict[str, int] | str = pipeline.requeue_scope(WINDOW_START, WINDOW_END, db=db)
    except Exception as exc:  # noqa: BLE001 - a figure to print (e.g. a statement timeout)
        result = f"{type(exc).__name__}: {str(getattr(exc, 'orig', exc)).splitlines()[0]}"
    finally:
        db.dispose()
    return result, time.perf_counter() - started


def final_state(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(FINAL_STATE).fetchone()
    return {"pending_entries": row[0], "open_tasks": row[1], "entries_with_open_task": row[2]}


def run(tasks: int, server_url: str, prefix: str) -> dict[str, Any]:
    server = Server(server_url)
    name = f"{prefix}_requeue"
    url = server.create_migrated(name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(ACCOUNT)
            conn.execute(POPULATE, {"tasks": tasks, "created_at": WINDOW_START + dt.timedelta(hours=1)})

        alone, alone_s = requeue_once(url)
        alone_state = final_state(url)

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(RESET)
        results: list[tuple[dict[str, int] | str, float]] = [("not run", 0.0)] * 2
        start = threading.Barrier(2)

        def racer(i: int) -> None:
            start.wait()
            results[i] = requeue_once(url)

        threads = [threading.Thread(target=racer, args=(i,)) for i in range(2)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        both_s = time.perf_counter() - started
        race_state = final_state(url)
        requeued = sum(r["requeued_tasks"] for r, _ in results if isinstance(r, dict))
        correct = race_state == {"pending_entries": tasks, "open_tasks": tasks, "entries_with_open_task": tasks}
        return {
            "tasks": tasks,
            "alone": {"result": alone, "seconds": round(alone_s, 3), "state": alone_state},
            "concurrent": {
                "results": [{"result": r, "seconds": round(s, 3)} for r, s in results],
                "wall_seconds": round(both_s, 3),
                "state": race_state,
                "requeued_total": requeued,
                "correct": correct and requeued == tasks,
            },
        }
    finally:
        server.drop(name)


def print_figures(figures: dict[str, Any]) -> None:
    alone, race = figures["alone"], figures["concurrent"]
    print(f"requeue of {figures['tasks']:,} FAILED tasks (entries in manual review, one window)")
    print(f"  alone:              {alone['seconds']:>9.3f} s  {alone['result']}")
    for i, r in enumerate(race["results"], 1):
        print(f"  concurrent call {i}:  {r['seconds']:>9.3f} s  {r['result']}")
    print(f"  both, wall time:    {race['wall_seconds']:>9.3f} s")
    print(f"  final state:        {race['state']}, requeued in total {race['requeued_total']:,}"
          f" -> {'correct' if race['correct'] else 'WRONG'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.requeue", description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=20_000, help="FAILED tasks in the window (default 20,000)")
    p.add_argument("--server-url", help="PostgreSQL server (default: the resolved recon database's server)")
    p.add_argument("--prefix", default="recon_bench", help="name prefix of the benchmark database")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    figures = run(args.tasks, args.server_url or default_server_url(), args.prefix)
    print_figures(figures)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0 if figures["concurrent"]["correct"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
