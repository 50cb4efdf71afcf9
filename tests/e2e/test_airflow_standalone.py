"""A real Airflow (`airflow standalone`: api-server, scheduler, dag-processor, triggerer) runs the DAG.

Metadata on PostgreSQL (a fresh database on the test server), LocalExecutor, a temporary
AIRFLOW_HOME configured by recon.local_airflow. The test drives it only through REST API v2:
authenticate, unpause, trigger with a conf, wait for the run, read the mapped task instances
and their labels; then it checks the recon database.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from tests.dags.seed import Seed
from tests.ui.airflow_harness import AirflowServer, dag_run_path, running_airflow

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

DAG_ID = "recon_process_tracker"
STARTUP_TIMEOUT_S = 240
RUN_TIMEOUT_S = 300


@pytest.fixture
def airflow(tmp_path: Path, pg_admin_url: str, db_url: str) -> Iterator[AirflowServer]:
    # the tasks find the recon database through the recon_db connection (AIRFLOW_CONN_RECON_DB)
    with running_airflow(["standalone"], tmp_path / "airflow", pg_admin_url, db_url, "airflow-standalone.log") as server:
        yield server


def test_trigger_through_rest_api_and_read_labelled_chunks(airflow: AirflowServer, db_url: str):
    seed = Seed(db_url)
    booked = [seed.stage("acc_bank", "DEBIT", "20.00", "TRANSACTION", f"e2e-{i}") for i in range(5)]
    review = seed.stage("acc_norule", "DEBIT", "1.00", "TRANSACTION", "e2e-x")

    anonymous = airflow.request("GET", f"/api/v2/dags/{DAG_ID}", token=None)[0]
    assert anonymous in (401, 403)

    dag = airflow.wait_for_dag(DAG_ID, STARTUP_TIMEOUT_S)
    assert dag["is_paused"] is True
    details = airflow.call("GET", f"/api/v2/dags/{DAG_ID}/details")
    params = details["params"]
    assert set(params) == {"batch_size", "chunk_size", "task_type", "reprocess", "dry_run"}
    assert all(p["description"] for p in params.values())
    assert params["chunk_size"]["schema"]["minimum"] == 1
    assert params["reprocess"]["schema"]["properties"]["task_ids"]["type"] == "array"
    rejected = airflow.request(
        "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {"chunk_size": 0}}
    )
    assert rejected[0] == 400, rejected
    assert airflow.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})["is_paused"] is False

    run = airflow.call(
        "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {"chunk_size": 2}}
    )
    run_path = dag_run_path(DAG_ID, run["dag_run_id"])
    finished = airflow.wait_for_run(DAG_ID, run["dag_run_id"], RUN_TIMEOUT_S)
    assert finished["state"] == "success", finished
    assert finished["conf"]["chunk_size"] == 2

    mapped = airflow.call("GET", f"{run_path}/taskInstances/chunk.run/listMapped")
    labels = sorted((ti["map_index"], ti["rendered_map_index"], ti["state"]) for ti in mapped["task_instances"])
    assert labels == [
        (0, "chunk 1 · 2 tasks", "success"),
        (1, "chunk 2 · 2 tasks", "success"),
        (2, "chunk 3 · 2 tasks", "success"),
    ]
    instances = airflow.call("GET", f"{run_path}/taskInstances?limit=100")["task_instances"]
    by_task = {}
    for ti in instances:
        by_task.setdefault(ti["task_id"], []).append(ti["state"])
    assert by_task["write_back"] == ["success"] and by_task["summary"] == ["success"]
    assert sorted(by_task["chunk.decide"]) == ["success"] * 3

    summary = airflow.call("GET", f"{run_path}/taskInstances/summary/xcomEntries/return_value")["value"]
    summary = json.loads(summary) if isinstance(summary, str) else summary
    assert summary["claimed"] == 6 and summary["booked"] == 5 and summary["manual_review"] == 1

    for staging_id, task_id in booked:
        assert seed.staging(staging_id)["status"] == "PROCESSED"
        assert seed.task(task_id)["status"] == "COMPLETED"
    assert seed.staging(review[0])["metadata"]["error_type"] == "NoReconRuleFoundError"
    assert seed.task_statuses() == {"COMPLETED": 5, "FAILED": 1}
