"""Scale check: cost per entry with a small and a large history already in the tables.

For each history size H (default 10,000 and 1,000,000 staging entries) a fresh database gets
the benchmark's books, H processed staging entries with their COMPLETED tasks and their ledger
effect (half the orders booked then fulfilled: an ARCHIVED and a POSTED version, four entries),
written with set-based SQL, then VACUUM ANALYZE. The same measured workload (--scale-entries) is
then drained in-process with the DAG's steps, and the cost per entry compared: CPU (client +
server backends, robust to other load on the machine) and wall time. During the large run the
hot statements (claim, chunk loads, finish, writes) are captured and EXPLAINed afterwards with
their real parameters; a sequential scan of a large table is flagged.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import psycopg

from bench import workload
from bench.databases import vacuum_analyze
from recon.db import Database

HISTORY_SQL = """
CREATE TEMP TABLE hist AS
SELECT i, p.bank, p.clearing, p.currency, p.merchant_id,
       'HIST-' || lpad(i::text, 9, '0') AS order_id,
       (10 + i %% 4990)::numeric(20, 4) AS amount,
       timestamptz '2026-01-01' + i * interval '1 second' AS at
FROM generate_series(1, %(orders)s) AS i
JOIN unnest(%(banks)s::text[], %(clearings)s::text[], %(currencies)s::text[], %(merchants)s::text[])
     WITH ORDINALITY AS p(bank, clearing, currency, merchant_id, n) ON p.n = i %% %(pairs)s + 1;

INSERT INTO staging_entries (staging_entry_id, account_id, entry_type, amount, currency, status, processing_mode,
                             effective_date, metadata, discarded_at, created_at, updated_at)
SELECT 'stg_h' || i || 't', bank, 'DEBIT', amount, currency, 'PROCESSED', 'TRANSACTION', at,
       jsonb_build_object('order_id', order_id, 'source_file', 'history.csv', 'created_transaction_id', 'txn_h' || i || 'a',
                          'match_type', 'NewTransactionGenerated'), at, at, at
FROM hist
UNION ALL
SELECT 'stg_h' || i || 'c', clearing, 'CREDIT', amount, currency, 'PROCESSED', 'CONFIRMATION', at,
       jsonb_build_object('order_id', order_id, 'source_file', 'history.csv', 'matched_transaction_id', 'txn_h' || i || 'a',
                          'evolved_transaction_id', 'txn_h' || i || 'b', 'match_type', 'Phase2_Fulfilled'), at, at, at
FROM hist;

INSERT INTO transactions (transaction_id, logical_transaction_id, version, amount, currency, merchant_id, status,
                          metadata, source_staging_entry_id, discarded_at, created_at, updated_at)
SELECT 'txn_h' || i || 'a', bank || '_' || order_id, 1, amount, currency, merchant_id, 'ARCHIVED',
       jsonb_build_object('order_id', order_id), 'stg_h' || i || 't', at, at, at
FROM hist
UNION ALL
SELECT 'txn_h' || i || 'b', bank || '_' || order_id, 2, amount, currency, merchant_id, 'POSTED',
       jsonb_build_object('order_id', order_id, 'evolved_from_transaction_id', 'txn_h' || i || 'a'),
       'stg_h' || i || 'c', NULL, at, at
FROM hist;

INSERT INTO entries (entry_id, account_id, transaction_id, entry_type, amount, currency, status, effective_date,
                     metadata, fulfilled_expected_entry_id, discarded_at, created_at, updated_at)
SELECT 'ent_h' || i || 'p', bank, 'txn_h' || i || 'a', 'DEBIT', amount, currency, 'ARCHIVED', at,
       jsonb_build_object('order_id', order_id), NULL, at, at, at FROM hist
UNION ALL
SELECT 'ent_h' || i || 'e', clearing, 'txn_h' || i || 'a', 'CREDIT', amount, currency, 'ARCHIVED', at,
       jsonb_build_object('order_id', order_id), NULL, at, at, at FROM hist
UNION ALL
SELECT 'ent_h' || i || 'f', clearing, 'txn_h' || i || 'b', 'CREDIT', amount, currency, 'POSTED', at,
       jsonb_build_object('order_id', order_id), 'ent_h' || i || 'e', NULL, at, at FROM hist
UNION ALL
SELECT 'ent_h' || i || 'd', bank, 'txn_h' || i || 'b', 'DEBIT', amount, currency, 'POSTED', at,
       jsonb_build_object('order_id', order_id), NULL, NULL, at, at FROM hist;

INSERT INTO process_tracker (task_id, task_type, payload, status, attempts, created_at, updated_at,
                             processing_started_at, completed_at, run_after)
SELECT 'task_h' || i || suffix, 'PROCESS_STAGING_ENTRY', jsonb_build_object('staging_entry_id', 'stg_h' || i || suffix),
       'COMPLETED', 1, at, at, at, at, at
FROM hist CROSS JOIN (VALUES ('t'), ('c')) AS s(suffix);
"""

SIZES = """
SELECT relname, reltuples::bigint FROM pg_class
WHERE relname IN ('staging_entries', 'process_tracker', 'transactions', 'entries') ORDER BY relname
"""


def write_history(url: str, books: workload.Books, staging_rows: int) -> dict[str, int]:
    pairs = books.pairs
    params = {
        "orders": staging_rows // 2, "pairs": len(pairs),
        "banks": [p.bank for p in pairs], "clearings": [p.clearing for p in pairs],
        "currencies": [p.currency for p in pairs], "merchants": [p.merchant_id for p in pairs],
    }
    with psycopg.connect(url) as conn:
        conn.execute("SET LOCAL synchronous_commit = off")
        for statement in HISTORY_SQL.split(";\n\n"):
            conn.execute(statement, params if "%(" in statement else None)
        conn.commit()
    vacuum_analyze(url)
    with psycopg.connect(url) as conn:
        return dict(conn.execute(SIZES).fetchall())


def run(bench: Any) -> dict[str, Any]:
    from bench.cli import run_module

    args = bench.args
    histories = []
    plans: list[dict[str, Any]] = []
    for rows in args.scale_history:
        url = bench.migrated(f"scale_{rows}")
        db = Database(url, "bench")
        try:
            books = workload.create_books(db)
            started = time.perf_counter()
            sizes = write_history(url, books, rows)
            bench.log(f"scale: {rows:,} history rows written in {time.perf_counter() - started:.0f}s: {sizes}")
            load = workload.generate(db, args.scale_entries, seed=args.seed + 1, books=books)
            for outcome in ("PROCESSED:NewTransactionGenerated", "PROCESSED:Phase2_Fulfilled"):
                load.expected[outcome] += rows // 2  # the history's orders, booked and fulfilled
            # amount-only and metadata-keyed rules too (reference-keyed and tolerant rules are in the
            # workload), so their look-ups are measured and explained with the history in place
            keyed = max(10, args.scale_entries // 80)
            for outcome, n in workload.add_keyed_orders(db, books, keyed).items():
                load.expected[outcome] += n
            load.entries += 4 * keyed
        finally:
            db.dispose()
        vacuum_analyze(url)
        out = bench.work / f"scale-{rows}.json"
        explain = bench.work / f"scale-{rows}-plans.json"
        run_module("bench.modes", "inprocess", str(out), "--url", url, "--batch-size", str(args.batch_size),
                   "--chunk-size", str(args.chunk_size), "--explain", str(explain), log=bench.work / "scale.log")
        result = bench.checked(url, load, json.loads(out.read_text()))
        n = result["processed"]
        cpu = result["client_cpu_s"] + (result["server_cpu_s"] or 0.0)
        histories.append({
            "history_rows": rows, "table_rows": sizes, "entries": n, "seconds": result["seconds"],
            "entries_per_s": result["entries_per_s"], "us_per_entry": result["seconds"] / n * 1e6,
            "cpu_us_per_entry": cpu / n * 1e6, "problems": result["problems"],
        })
        bench.log(f"scale: {rows:,} rows -> {cpu / n * 1e6:,.0f} us CPU, {result['seconds'] / n * 1e6:,.0f} us wall per entry")
        if rows == max(args.scale_history):
            plans = json.loads(explain.read_text())
        bench.server.drop(bench.name(f"scale_{rows}"))
    small, large = histories[0], histories[-1]
    seq_scans = sorted({s for p in plans for s in p["seq_scans"]})
    return {
        "histories": histories,
        "ratio": large["cpu_us_per_entry"] / small["cpu_us_per_entry"],
        "wall_ratio": large["us_per_entry"] / small["us_per_entry"],
        "plans": plans,
        "seq_scans": seq_scans,
    }


# ---- capturing and explaining the hot statements (runs inside the `inprocess` mode process) ----

BIG_TABLES = ("staging_entries", "process_tracker", "transactions", "entries")


class StatementRecorder:
    """First execution of each distinct statement on the recon engine, with its parameters."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, Any]] = {}

    def install(self) -> None:
        import sqlalchemy as sa

        @sa.event.listens_for(sa.engine.Engine, "before_cursor_execute")
        def _record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
            key = re.sub(r"\s+", " ", statement).strip()[:120]
            if key not in self.seen and not key.upper().startswith(("SELECT NOW()", "SELECT 1")):
                self.seen[key] = (statement, parameters)

    def explain(self, url: str) -> list[dict[str, Any]]:
        """EXPLAIN each statement with its parameters (writes are planned, never executed)."""
        results = []
        with psycopg.connect(url) as conn:
            for key, (statement, parameters) in self.seen.items():
                try:
                    rows = conn.execute("EXPLAIN " + statement, parameters).fetchall()
                    plan = [r[0] for r in rows]
                except psycopg.Error as exc:
                    plan = [f"(not explained: {type(exc).__name__}: {str(exc).splitlines()[0]})"]
                conn.rollback()
                scans = sorted({m.group(1) for line in plan if (m := re.search(r"Seq Scan on (\w+)", line))
                                and m.group(1) in BIG_TABLES})
                results.append({"statement": key, "plan": plan, "seq_scans": scans})
        return results
