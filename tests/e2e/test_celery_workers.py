"""The engine on the CeleryExecutor: chunks run on two Celery workers at once (issue 12).

One deployment for both cases: api-server, scheduler, dag-processor, triggerer and two
`airflow celery worker` processes (each its own process group, 2 task slots, queues `default` and
`recon`), the CeleryExecutor with Redis on 127.0.0.1:6379 database 12 as the broker and the
metadata database as the result backend (Airflow's default for it). `airflow standalone` cannot
be used: it forces the LocalExecutor.

1. A mixed workload of 20,000 tasks drained with max_active_runs 2: every run succeeds, chunks ran
   on both workers, and the database is checked as the reliability tests check it.
2. `kill -9` of the worker (its whole process group) whose `chunk.run` is writing: the scheduler
   fails that attempt once its heartbeat stops, the task is retried on the other worker under the
   same lease, and nothing is lost or booked twice.

Redis is part of this machine and of CI; outside CI the module is skipped when it is not reachable.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from recon.db import Database
from tests import databases
from tests.reliability.helpers import ENGINE_SETTINGS, assert_books_consistent, make_books, rows, scalar
from tests.ui.airflow_harness import AirflowServer, dag_run_path, running_airflow

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

DAG_ID = "recon_process_tracker"
REDIS_URL = "redis://127.0.0.1:6379/12"  # this project's own Redis database number
WORKERS = {"worker-1": "w1@recon-test", "worker-2": "w2@recon-test"}
MAX_ACTIVE_RUNS = 2
BATCH_SIZE = 5_000
CHUNK_SIZE = 1_250  # four chunks per run: both workers busy
DRAIN_TIMEOUT_S = 900
STARTUP_TIMEOUT_S = 240

# the mixed workload: 20,000 tasks
ORDERS = 9_800  # TRANSACTION lines, one per order ...
DUPLICATE_TRANSACTIONS = 200  # ... plus a second line for some orders (DuplicateOrderError)
MATCHED = 8_700  # confirmations that fulfil their order's expected entry
RACING_PAIRS = 400  # orders confirmed twice by identical lines: one fulfils, the other AlreadyFulfilled
MISMATCHED = 400  # wrong amount (MismatchError)
UNKNOWN = 100  # no such order (NoMatchFoundError)
TOTAL = ORDERS + DUPLICATE_TRANSACTIONS + MATCHED + 2 * RACING_PAIRS + MISMATCHED + UNKNOWN
FULFILLED = MATCHED + RACING_PAIRS

KILL_TASKS = 10_000  # one chunk, long enough to be caught while it runs


def _redis():
    """Redis database 12, emptied; a skip (outside CI) or a failure (CI) when it is not reachable."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        message = f"Redis on 127.0.0.1:6379 is not reachable ({exc}): the Celery tests need it as their broker"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    client.flushdb()  # database 12 only: leftovers of an earlier run of this module
    return client


@pytest.fixture(scope="module")
def recon_db(pg_admin_url: str, pg_template: str) -> Iterator[Database]:
    name = databases.create_test_database(pg_admin_url, pg_template)
    db = Database(databases.libpq_url(pg_admin_url, name), "celery test database")
    try:
        yield db
    finally:
        db.dispose()
        databases.drop_database(pg_admin_url, name)


def _worker_command(name: str) -> list[str]:
    # --skip-serve-logs: two workers on one host would both bind the log server's port
    return ["celery", "worker", "--queues", "default,recon", "--concurrency", "2",
            "--celery-hostname", WORKERS[name], "--skip-serve-logs"]


@pytest.fixture(scope="module")
def airflow(recon_db: Database, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowServer]:
    broker = _redis()
    try:
        with running_airflow(
            ["api-server"], tmp_path_factory.mktemp("celery") / "airflow", pg_admin_url,
            databases.libpq_url(recon_db.url), "celery-api-server.log",
            components=[["scheduler"], ["dag-processor"], ["triggerer"], *map(_worker_command, WORKERS)],
            extra_env={
                **ENGINE_SETTINGS,
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "RECON_MAINTENANCE_SCHEDULE": "none",  # only the tracker's runs in this deployment
                "AIRFLOW__CORE__PARALLELISM": "8",
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "7200",  # as in compose
                "RECON_MAX_ACTIVE_RUNS": str(MAX_ACTIVE_RUNS),
                "RECON_BATCH_SIZE": str(BATCH_SIZE),
                "RECON_CHUNK_SIZE": str(CHUNK_SIZE),
                # a killed worker's task is failed (and retried) 20 s after its last heartbeat, not 300
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
                "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
                "RECON_TASK_RETRY_DELAY_SECONDS": "1",
            },
        ) as server:
            dag = server.wait_for_dag(DAG_ID, STARTUP_TIMEOUT_S)
            assert dag["max_active_runs"] == MAX_ACTIVE_RUNS, dag
            server.wait_for_components()
            yield server
    finally:
        broker.flushdb()
        broker.close()


def _stage_mixed_workload(db: Database) -> None:
    books = make_books(db, prefix="mix-")
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
    books.stage(confirmations)


def _open_tasks(db: Database) -> dict[str, int]:
    return dict(rows(db, "SELECT status, count(*) FROM process_tracker"
                         " WHERE status IN ('PENDING', 'RETRY', 'PROCESSING') GROUP BY 1"))


def _trigger(airflow: AirflowServer, conf: dict[str, Any] | None = None) -> str:
    return airflow.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf or {}})["dag_run_id"]


def _drain(airflow: AirflowServer, db: Database) -> dict[str, dict[str, Any]]:
    """Keep MAX_ACTIVE_RUNS runs in flight while tasks are open; the runs once all have finished."""
    ours = [_trigger(airflow) for _ in range(MAX_ACTIVE_RUNS)]
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        listed = airflow.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=200")["dag_runs"]
        runs = {r["dag_run_id"]: r for r in listed if r["dag_run_id"] in ours}
        unfinished = [r for r in ours if runs.get(r, {}).get("state") not in ("success", "failed")]
        assert not [r for r in runs.values() if r["state"] == "failed"], runs
        open_tasks = _open_tasks(db)
        if not unfinished and not open_tasks:
            return runs
        if open_tasks.get("PENDING", 0) + open_tasks.get("RETRY", 0) and len(unfinished) < MAX_ACTIVE_RUNS:
            assert len(ours) < 60, f"{open_tasks} still open after {len(ours)} runs"
            ours.append(_trigger(airflow))
        if time.monotonic() > deadline:
            pytest.fail(f"not drained after {DRAIN_TIMEOUT_S}s: {open_tasks} open\n{airflow.log_tail()}")
        time.sleep(1)


def _chunk_runs(airflow: AirflowServer, run_ids: set[str]) -> list[dict[str, Any]]:
    found = airflow.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/~/taskInstances?task_id=chunk.run&limit=1000")
    return [ti for ti in found["task_instances"] if ti["dag_run_id"] in run_ids]


def test_two_celery_workers_drain_20000_mixed_tasks_exactly_once(airflow: AirflowServer, recon_db: Database):
    _stage_mixed_workload(recon_db)
    assert scalar(recon_db, "SELECT count(*) FROM process_tracker") == TOTAL
    started = time.monotonic()
    runs = _drain(airflow, recon_db)
    elapsed = time.monotonic() - started

    assert {r["state"] for r in runs.values()} == {"success"}, runs
    chunk_runs = _chunk_runs(airflow, set(runs))
    assert chunk_runs and {ti["state"] for ti in chunk_runs} == {"success"}
    # the chunks ran on Celery, on both workers (each logs the workloads it executes)
    assert {ti["queue"] for ti in chunk_runs} == {"recon"}
    for name in WORKERS:
        log = (airflow.home / f"{' '.join(_worker_command(name)).replace(' ', '-')}.log").read_text(errors="replace")
        executed = [line for line in log.splitlines() if "Executing workload in Celery" in line]
        assert any("chunk.run" in line for line in executed), f"{name} ran no chunk.run"

    assert dict(rows(recon_db, "SELECT status || '/' || attempts, count(*) FROM process_tracker GROUP BY 1")) == {
        "COMPLETED/1": ORDERS + MATCHED + RACING_PAIRS,
        "FAILED/1": DUPLICATE_TRANSACTIONS + RACING_PAIRS + MISMATCHED + UNKNOWN,
    }
    report = assert_books_consistent(recon_db)
    assert report.processed == ORDERS + FULFILLED
    assert report.by_error_type == {
        "DuplicateOrderError": DUPLICATE_TRANSACTIONS,
        "AlreadyFulfilledError": RACING_PAIRS,
        "MismatchError": MISMATCHED,
        "NoMatchFoundError": UNKNOWN,
    }
    assert dict(rows(recon_db, "SELECT status, count(*) FROM transactions GROUP BY 1")) == {
        "ARCHIVED": FULFILLED, "POSTED": FULFILLED, "EXPECTED": ORDERS - FULFILLED - MISMATCHED,
        "MISMATCH": MISMATCHED,
    }
    print(f"\n{TOTAL} tasks drained by two Celery workers in {elapsed:.0f}s, {len(runs)} runs")


def _worker_of(pid: int | None, workers: dict[int, str]) -> str | None:
    """Which of our workers a task process belongs to: its ancestors, from /proc, up to a worker's
    main process (the task process has a process group of its own)."""
    for _ in range(8):
        if not pid or pid in workers:
            return workers.get(pid) if pid else None
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            return None
    return None


def test_a_worker_killed_while_its_chunk_writes_loses_nothing(airflow: AirflowServer, recon_db: Database):
    books = make_books(recon_db, prefix="kill-")
    books.stage([books.transaction(f"kill-{i}", f"{1 + i % 500}.25") for i in range(KILL_TASKS)])
    run_id = _trigger(airflow, {"batch_size": KILL_TASKS, "chunk_size": KILL_TASKS})
    workers = {airflow.components[" ".join(_worker_command(w))].pid: w for w in WORKERS}

    def writing() -> Any:  # chunk.run running on one of our workers, its tasks leased
        for ti in _chunk_runs(airflow, {run_id}):
            if ti["state"] == "running" and _worker_of(ti.get("pid"), workers):
                leased = scalar(recon_db, "SELECT count(*) FROM process_tracker WHERE status = 'PROCESSING'")
                return ti if leased == KILL_TASKS else None
        return None

    ti = airflow.wait_for("chunk.run writing on a Celery worker", writing, 300)
    victim = _worker_of(ti["pid"], workers)
    # the host is lost: the worker's process group and the task's own (the task process has one)
    for group in (ti["pid"], next(p for p, w in workers.items() if w == victim)):
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    airflow.kill_component(" ".join(_worker_command(victim)), signal.SIGKILL)

    run = airflow.wait_for_run(DAG_ID, run_id, 600)
    assert run["state"] == "success", run
    tries = airflow.call("GET", f"{dag_run_path(DAG_ID, run_id)}/taskInstances/chunk.run/{ti['map_index']}/tries")
    states = [t["state"] for t in sorted(tries["task_instances"], key=lambda t: t["try_number"])]
    assert states[0] == "failed" and states[-1] == "success", states  # killed, then retried elsewhere
    survivor_log = next(airflow.home / f"{' '.join(_worker_command(w)).replace(' ', '-')}.log"
                        for w in WORKERS if w != victim)
    assert run_id in survivor_log.read_text(errors="replace")  # the worker left ran the rest of the run

    # nothing lost, nothing booked twice: every kill- task booked once, the books consistent
    assert dict(rows(recon_db, "SELECT t.status, count(*) FROM process_tracker t JOIN staging_entries s"
                               " ON s.staging_entry_id = (t.payload ->> 'staging_entry_id')"
                               " WHERE s.order_id LIKE 'kill-%' GROUP BY 1")) == {"COMPLETED": KILL_TASKS}
    legs = rows(recon_db, "SELECT count(*), count(DISTINCT order_id) FROM entries WHERE order_id LIKE 'kill-%'")
    assert tuple(legs[0]) == (2 * KILL_TASKS, KILL_TASKS)  # a POSTED and an EXPECTED leg per order, once
    assert_books_consistent(recon_db)
