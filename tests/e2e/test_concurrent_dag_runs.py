"""Concurrent DAG runs of one real Airflow drain one queue exactly once (issue 5, "Concurrency").

One `airflow standalone` (LocalExecutor, metadata on the test PostgreSQL server) parses the DAG
with RECON_MAX_ACTIVE_RUNS=3, no schedule and small batches (300 tasks, chunks of 150), so
draining 2,400 mixed tasks takes many claims by runs that are active at the same time.
The test drives Airflow only through REST API v2: it triggers three runs at once, then keeps
three runs in flight (at most MAX_RUNS in all) while the recon database still has due tasks.

The queue: TRANSACTION lines for a set of orders (some duplicated), then CONFIRMATION lines for
those orders: most match, some mismatch, some are sent twice (identical confirmations racing for
one expected entry), some name an order that does not exist. Task ids are random, so each racing
pair and each duplicated order is usually split across chunks and batches, i.e. across runs that
claim at the same time. Confirmations whose order a concurrent run is still booking wait (a RETRY
that gives the attempt back) and a later run picks them up.

Asserted through the API: every run succeeded, at least two runs that each claimed tasks were
running at the same time (and `chunk.run` instances of different runs too), and the runs'
summaries add up to one claim per task plus one per wait.
Asserted on the recon database: every task final after exactly one attempt, the outcome of each
kind of line, each racing pair fulfilled once with the loser reported and not booked, and
assert_books_consistent (one ledger effect per PROCESSED entry, nothing PROCESSING, books balanced).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from recon.db import Database
from tests.reliability.helpers import ENGINE_SETTINGS, assert_books_consistent, make_books, rows, scalar
from tests.ui.airflow_harness import AirflowServer, dag_run_path, running_airflow

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

DAG_ID = "recon_process_tracker"
MAX_ACTIVE_RUNS = 3
BATCH_SIZE = 300
CHUNK_SIZE = 150  # two mapped chunks per run: fewer task processes on a 2-core machine
MAX_RUNS = 40  # a bound on triggering, far above the ~15 runs the queue needs
DRAIN_TIMEOUT_S = 240
REGISTER_TIMEOUT_S = 180

# the workload: 2,400 tasks
ORDERS = 1_176  # TRANSACTION lines, one per order ...
DUPLICATE_TRANSACTIONS = 24  # ... plus a second line for some orders (DuplicateOrderError)
MATCHED = 1_044  # CONFIRMATION lines that fulfil their order's expected entry
RACING_PAIRS = 48  # orders confirmed twice by identical lines: one fulfils, the other AlreadyFulfilled
MISMATCHED = 48  # confirmations with the wrong amount (MismatchError)
UNKNOWN = 12  # confirmations of orders that do not exist (NoMatchFoundError)
TOTAL = ORDERS + DUPLICATE_TRANSACTIONS + MATCHED + 2 * RACING_PAIRS + MISMATCHED + UNKNOWN
FULFILLED = MATCHED + RACING_PAIRS


@pytest.fixture
def airflow(db_url: str, pg_admin_url: str, tmp_path: Path) -> Iterator[AirflowServer]:
    with running_airflow(
        ["standalone"], tmp_path / "airflow", pg_admin_url, db_url, "concurrent-dag-runs-standalone.log",
        extra_env={
            "RECON_MAX_ACTIVE_RUNS": str(MAX_ACTIVE_RUNS),
            "RECON_SCHEDULE": "none",  # only the runs this test triggers claim tasks
            "RECON_BATCH_SIZE": str(BATCH_SIZE),
            "RECON_CHUNK_SIZE": str(CHUNK_SIZE),
            **ENGINE_SETTINGS,  # attempts, backoff, lease and matching window as the assertions expect
        },
    ) as server:
        yield server


def _stage_workload(db: Database) -> None:
    books = make_books(db)
    amount = lambda i: f"{1 + i % 997}.{i % 100:02d}"  # noqa: E731 - varied, always positive
    order = lambda i: f"ord-{i}"  # noqa: E731
    transactions = [books.transaction(order(i), amount(i)) for i in range(ORDERS)]
    transactions += [books.transaction(order(i), amount(i)) for i in range(DUPLICATE_TRANSACTIONS)]
    n = itertools.count()
    confirmations = [books.confirmation(order(i), amount(i)) for i in itertools.islice(n, MATCHED)]
    for i in itertools.islice(n, RACING_PAIRS):
        confirmations += [books.confirmation(order(i), amount(i))] * 2
    confirmations += [books.confirmation(order(i), "100000.00") for i in itertools.islice(n, MISMATCHED)]
    confirmations += [books.confirmation(f"nope-{j}", "5.00") for j in range(UNKNOWN)]
    books.stage(transactions)
    books.stage(confirmations)  # queued behind the bookings, not after them
    assert scalar(db, "SELECT count(*) FROM process_tracker") == TOTAL


def _open_tasks(db: Database) -> dict[str, int]:
    return dict(rows(db, "SELECT status, count(*) FROM process_tracker"
                         " WHERE status IN ('PENDING', 'RETRY', 'PROCESSING') GROUP BY 1"))


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _drain(airflow: AirflowServer, db: Database) -> dict[str, dict[str, Any]]:
    """Trigger MAX_ACTIVE_RUNS runs at once, then keep that many in flight while tasks are due
    (PENDING, or RETRY: a confirmation waiting for its order); return once no task is open.

    Bounded: at most MAX_RUNS triggers and DRAIN_TIMEOUT_S seconds, polling once a second.
    Returns the test's runs by run id, as the API reports them once all have finished.
    """
    trigger = lambda: airflow.call(  # noqa: E731
        "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None})["dag_run_id"]
    ours = [trigger() for _ in range(MAX_ACTIVE_RUNS)]
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        listed = airflow.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]
        runs = {r["dag_run_id"]: r for r in listed if r["dag_run_id"] in ours}
        unfinished = [r for r in ours if runs.get(r, {}).get("state") not in ("success", "failed")]
        failed = [r for r in runs.values() if r["state"] == "failed"]
        assert not failed, f"run(s) failed: {failed}"
        open_tasks = _open_tasks(db)
        if not unfinished and not open_tasks:
            return runs
        due = open_tasks.get("PENDING", 0) + open_tasks.get("RETRY", 0)
        if due and len(unfinished) < MAX_ACTIVE_RUNS:
            assert len(ours) < MAX_RUNS, f"{open_tasks} task(s) still open after {len(ours)} runs"
            ours.append(trigger())
        if time.monotonic() > deadline:
            pytest.fail(f"queue not drained after {DRAIN_TIMEOUT_S}s and {len(ours)} runs: "
                        f"{open_tasks} open; runs {[(r, runs.get(r, {}).get('state')) for r in ours]}\n"
                        f"{airflow.log_tail()}")
        time.sleep(1)


def _overlapping(spans: dict[str, tuple[dt.datetime, dt.datetime]]) -> list[tuple[str, str]]:
    return [(a, b) for a, b in itertools.combinations(sorted(spans), 2)
            if spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]]


def test_concurrent_dag_runs_drain_mixed_tasks_exactly_once(airflow: AirflowServer, db: Database) -> None:
    _stage_workload(db)

    dag = airflow.wait_for_dag(DAG_ID, REGISTER_TIMEOUT_S)
    assert dag["max_active_runs"] == MAX_ACTIVE_RUNS and dag["timetable_summary"] in (None, "None"), dag
    assert airflow.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})["is_paused"] is False

    started = time.monotonic()
    runs = _drain(airflow, db)
    elapsed = time.monotonic() - started

    # every run succeeded; its summary (the `summary` task's XCom) says what it claimed
    assert {r["state"] for r in runs.values()} == {"success"}, runs
    summaries = {}
    for run_id in runs:
        xcom = f"{dag_run_path(DAG_ID, run_id)}/taskInstances/summary/xcomEntries/return_value"
        value = airflow.call("GET", xcom)["value"]
        summaries[run_id] = json.loads(value) if isinstance(value, str) else value
    claiming = {r for r, s in summaries.items() if s["claimed"]}
    assert all(s["claimed"] <= BATCH_SIZE for s in summaries.values()), summaries

    # runs that claimed tasks were running at the same time (their start/end dates overlap)
    spans = {r: (_time(runs[r]["start_date"]), _time(runs[r]["end_date"])) for r in claiming}
    overlaps = _overlapping(spans)
    assert overlaps, f"no two claiming runs overlapped: {spans}"
    # and so were their chunks: a chunk (from its `chunk.decide` start to its `chunk.run` end, since
    # run writes what validate decided) of one run overlapped a chunk of another run
    def chunk_instances(task_id: str) -> dict[tuple[str, int], Any]:
        found = airflow.call(
            "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/~/taskInstances?task_id={task_id}&limit=1000")["task_instances"]
        return {(ti["dag_run_id"], ti["map_index"]): ti for ti in found if ti["dag_run_id"] in claiming}

    decided, instances = chunk_instances("chunk.decide"), chunk_instances("chunk.run")
    chunk_spans = {key: (_time(decided[key]["start_date"]), _time(ti["end_date"])) for key, ti in instances.items()}
    assert {ti["state"] for ti in instances.values()} == {"success"}
    chunk_overlaps = [(a, b) for a, b in _overlapping(chunk_spans) if a[0] != b[0]]
    assert chunk_overlaps, f"no chunks of different runs were processed at the same time: {chunk_spans}"

    # one claim per task, plus one per wait (a confirmation whose order was still being booked)
    waits = sum(s["waiting"] for s in summaries.values())
    assert sum(s["claimed"] for s in summaries.values()) == TOTAL + waits, summaries
    # every task final after exactly one attempt (a wait gives its attempt back)
    assert dict(rows(db, "SELECT status || '/' || attempts, count(*) FROM process_tracker GROUP BY 1")) == {
        "COMPLETED/1": ORDERS + MATCHED + RACING_PAIRS,
        "FAILED/1": DUPLICATE_TRANSACTIONS + RACING_PAIRS + MISMATCHED + UNKNOWN,
    }
    report = assert_books_consistent(db)
    assert report.processed == ORDERS + FULFILLED
    assert report.by_error_type == {
        "DuplicateOrderError": DUPLICATE_TRANSACTIONS,
        "AlreadyFulfilledError": RACING_PAIRS,
        "MismatchError": MISMATCHED,
        "NoMatchFoundError": UNKNOWN,
    }
    # each racing pair: exactly one fulfilment, the loser reported and not booked
    racing = rows(db, """
        SELECT s.order_id, count(*) FILTER (WHERE s.status = 'PROCESSED') AS won,
               count(*) FILTER (WHERE s.metadata ->> 'error_type' = 'AlreadyFulfilledError') AS lost,
               count(t.transaction_id) AS effects
        FROM staging_entries s LEFT JOIN transactions t ON t.source_staging_entry_id = s.staging_entry_id
        WHERE s.processing_mode = 'CONFIRMATION' GROUP BY s.order_id HAVING count(*) = 2""")
    assert len(racing) == RACING_PAIRS
    assert {(r.won, r.lost, r.effects) for r in racing} == {(1, 1, 1)}
    assert dict(rows(db, "SELECT status, count(*) FROM transactions GROUP BY 1")) == {
        "ARCHIVED": FULFILLED, "POSTED": FULFILLED, "EXPECTED": ORDERS - FULFILLED - MISMATCHED,
        "MISMATCH": MISMATCHED,
    }
    assert scalar(db, "SELECT count(*) FROM entries WHERE fulfilled_expected_entry_id IS NOT NULL") == FULFILLED

    print(f"\n{TOTAL} tasks drained in {elapsed:.0f}s by {len(runs)} runs ({len(claiming)} claimed tasks);"
          f" {len(overlaps)} overlapping pairs of claiming runs, {len(chunk_overlaps)} overlapping pairs of"
          f" chunk.run instances of different runs; {waits} waits")
