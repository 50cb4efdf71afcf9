"""Work starts the DAG under a real scheduler and triggerer, and an empty queue starts nothing.

One Airflow for the whole module (api-server, scheduler, dag-processor and triggerer started as
separate processes by the shared harness, so the test can kill the triggerer), with the DAG in
its default `event` mode and the safety-net schedule set to once a year: every run seen here was
started by the due-work watcher, never by a cron tick or by the test. The cases run in file order
on one recon database; each starts from an idle system (nothing due, no run active).

- an ingest into an idle system is processed by asset-triggered runs alone;
- a task put to RETRY with run_after 20 s ahead is processed when it comes due, not before;
- killing the triggerer (SIGKILL) while work arrives and starting it again loses nothing;
- a manual trigger (a dry run) works beside the event schedule;
- a few minutes of idleness create no DAG run.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from recon.db import Database
from recon import settings
from recon.staging import insert_staging_entries
from tests import databases
from tests.reliability.helpers import ENGINE_SETTINGS, assert_books_consistent, make_books, rows, scalar
from tests.ui.airflow_harness import AirflowServer, running_airflow

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

DAG_ID = "recon_process_tracker"
STARTUP_TIMEOUT_S = 240
PROCESS_TIMEOUT_S = 120
IDLE_S = 180  # "a few minutes" with nothing due
COMPONENTS = [["scheduler"], ["dag-processor"], ["triggerer"]]


@pytest.fixture(scope="module")
def recon_db(pg_admin_url: str, pg_template: str) -> Iterator[Database]:
    name = databases.create_test_database(pg_admin_url, pg_template)
    db = Database(databases.libpq_url(pg_admin_url, name), "event-driven test database")
    try:
        yield db
    finally:
        db.dispose()
        databases.drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
def airflow(recon_db: Database, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowServer]:
    recon_url = databases.libpq_url(recon_db.url)
    with running_airflow(
        ["api-server"], tmp_path_factory.mktemp("event-driven") / "airflow", pg_admin_url, recon_url,
        "event-driven-api-server.log", components=COMPONENTS,
        extra_env={
            **ENGINE_SETTINGS,
            "RECON_SCHEDULE": "event",
            "RECON_SAFETY_NET_SCHEDULE": "0 0 1 1 *",  # far away: no run here comes from a tick
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            # a killed triggerer's watcher moves to the new one after 10 s instead of 30
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
        },
    ) as server:
        dag = server.wait_for_dag(DAG_ID, STARTUP_TIMEOUT_S)
        assert dag["is_paused"] is False and dag["timetable_summary"] == "Asset or 0 0 1 1 *", dag
        server.wait_for_components()
        _wait_for_watcher(server, recon_db)
        yield server


def _wait_for_watcher(airflow: AirflowServer, db: Database) -> None:
    """Until the due-work watcher holds its LISTEN connection to the recon database."""
    airflow.wait_for("the due-work watcher to listen", lambda: scalar(
        db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = :name",
        name=settings.DUE_WORK_WATCHER_NAME), STARTUP_TIMEOUT_S)


def _runs(airflow: AirflowServer) -> list[dict[str, Any]]:
    return airflow.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=1000")["dag_runs"]


def _open_tasks(db: Database) -> int:
    return scalar(db, "SELECT count(*) FROM process_tracker WHERE status IN ('PENDING', 'RETRY', 'PROCESSING')")


def _wait_until_idle(airflow: AirflowServer, db: Database) -> list[dict[str, Any]]:
    """Until no task is open and no run queued or running; returns the runs so far."""
    def idle() -> Any:
        runs = _runs(airflow)
        return runs if not _open_tasks(db) and all(r["state"] in ("success", "failed") for r in runs) else None

    return airflow.wait_for("an idle system", idle, PROCESS_TIMEOUT_S)


def _wait_until_final(airflow: AirflowServer, db: Database, task_ids: list[str], what: str) -> None:
    airflow.wait_for(what, lambda: scalar(
        db, "SELECT count(*) = 0 FROM process_tracker WHERE task_id = ANY(:ids)"
            " AND status NOT IN ('COMPLETED', 'FAILED')", ids=task_ids), PROCESS_TIMEOUT_S)


def _assert_started_by_work(runs: list[dict[str, Any]]) -> None:
    assert runs, "no DAG run"
    assert {r["run_type"] for r in runs} == {"asset_triggered"}, [(r["dag_run_id"], r["run_type"]) for r in runs]
    assert {r["state"] for r in runs} == {"success"}, [(r["dag_run_id"], r["state"]) for r in runs]


def _new(runs: list[dict[str, Any]], before: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen = {r["dag_run_id"] for r in before}
    return [r for r in runs if r["dag_run_id"] not in seen]


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_an_ingest_into_an_idle_system_is_processed_with_no_trigger_and_no_tick(airflow, recon_db):
    before = _wait_until_idle(airflow, recon_db)
    books = make_books(recon_db, prefix="idle_")
    created = books.stage([books.transaction(f"ord-idle-{i}", "12.50") for i in range(20)])
    task_ids = [c.task_id for c in created]

    _wait_until_final(airflow, recon_db, task_ids, "the ingest to be processed")

    runs = _new(_wait_until_idle(airflow, recon_db), before)
    _assert_started_by_work(runs)
    delay = scalar(recon_db, "SELECT extract(epoch FROM min(processing_started_at) - min(created_at))"
                             " FROM process_tracker WHERE task_id = ANY(:ids)", ids=task_ids)
    assert delay < 30, f"first claim {delay:.1f}s after the ingest"
    assert dict(rows(recon_db, "SELECT status, count(*) FROM process_tracker WHERE task_id = ANY(:ids)"
                               " GROUP BY 1", ids=task_ids)) == {"COMPLETED": 20}
    assert_books_consistent(recon_db)
    print(f"\ningest -> first claim {delay:.1f}s; {len(runs)} asset-triggered run(s)")


def test_a_retry_is_processed_when_its_run_after_arrives(airflow, recon_db):
    before = _wait_until_idle(airflow, recon_db)
    books = make_books(recon_db, prefix="retry_")
    with recon_db.begin() as conn:  # one transaction: no run ever sees the task PENDING
        created = insert_staging_entries(conn, [books.transaction("ord-retry-1", "20.00")])
        run_after = conn.exec_driver_sql(
            "UPDATE process_tracker SET status = 'RETRY', attempts = 1, last_error = 'test: try again later',"
            " run_after = now() + interval '20 seconds' WHERE task_id = %(id)s RETURNING run_after",
            {"id": created[0].task_id}).scalar_one()

    _wait_until_final(airflow, recon_db, [created[0].task_id], "the retry to be processed")

    claimed_at = scalar(recon_db, "SELECT processing_started_at FROM process_tracker WHERE task_id = :id",
                        id=created[0].task_id)
    assert claimed_at >= run_after
    assert (claimed_at - run_after).total_seconds() < 15, f"claimed {claimed_at - run_after} after it came due"
    runs = _new(_wait_until_idle(airflow, recon_db), before)
    _assert_started_by_work(runs)
    assert all(_time(r["queued_at"]) >= run_after - dt.timedelta(seconds=1) for r in runs), (run_after, runs)
    status = scalar(recon_db, "SELECT status FROM process_tracker WHERE task_id = :id", id=created[0].task_id)
    assert status == "COMPLETED"
    print(f"\nretry due at {run_after:%H:%M:%S.%f}, claimed {(claimed_at - run_after).total_seconds():.1f}s later;"
          f" {len(runs)} run(s)")


def test_killing_and_restarting_the_triggerer_while_work_arrives_loses_nothing(airflow, recon_db):
    before = _wait_until_idle(airflow, recon_db)
    books = make_books(recon_db, prefix="restart_")
    batches = []

    def ingest(name: str) -> None:
        batches.extend(c.task_id for c in books.stage(
            [books.transaction(f"ord-{name}-{i}", "5.00") for i in range(10)]))

    ingest("before-kill")
    airflow.kill_component("triggerer", signal.SIGKILL)
    ingest("while-down")  # its notification reaches nobody
    assert scalar(recon_db, "SELECT count(*) FROM process_tracker WHERE task_id = ANY(:ids)"
                            " AND status = 'PENDING'", ids=batches[10:]) == 10
    airflow.start_component(["triggerer"])
    ingest("on-restart")  # before the new triggerer has taken the watcher over

    _wait_until_final(airflow, recon_db, batches, "the work that arrived around the restart")

    airflow.wait_for_components()
    runs = _new(_wait_until_idle(airflow, recon_db), before)
    _assert_started_by_work(runs)
    assert dict(rows(recon_db, "SELECT status || '/' || attempts, count(*) FROM process_tracker"
                               " WHERE task_id = ANY(:ids) GROUP BY 1", ids=batches)) == {"COMPLETED/1": 30}
    assert_books_consistent(recon_db)
    _wait_for_watcher(airflow, recon_db)


def test_manual_triggers_work_as_before(airflow, recon_db):
    """A dry run triggered by hand (the trigger form, the REST API) runs beside the event schedule."""
    before = _wait_until_idle(airflow, recon_db)
    run = airflow.call("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {"dry_run": True}})
    finished = airflow.wait_for_run(DAG_ID, run["dag_run_id"], PROCESS_TIMEOUT_S)
    assert finished["state"] == "success" and finished["run_type"] == "manual", finished
    assert [r["dag_run_id"] for r in _new(_wait_until_idle(airflow, recon_db), before)] == [run["dag_run_id"]]


def test_an_idle_period_creates_no_dag_run(airflow, recon_db):
    before = _wait_until_idle(airflow, recon_db)
    _wait_for_watcher(airflow, recon_db)
    deadline = time.monotonic() + IDLE_S
    while time.monotonic() < deadline:  # nothing to wait for: the absence of runs is the result
        assert _new(_runs(airflow), before) == [], "a run started while nothing was due"
        time.sleep(10)
    assert _new(_runs(airflow), before) == []
    _wait_for_watcher(airflow, recon_db)  # still listening: idle because nothing was due
