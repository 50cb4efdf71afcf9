"""A real Airflow (`airflow standalone`: api-server, scheduler, dag-processor, triggerer) runs the DAG.

Metadata on PostgreSQL (a fresh database on the test server), LocalExecutor, a temporary
AIRFLOW_HOME configured by recon.local_airflow. The test drives it only through REST API v2:
authenticate, unpause, trigger with a conf, wait for the run, read the mapped task instances
and their labels; then it checks the recon database.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from recon import local_airflow
from tests import databases
from tests.dags.seed import Seed

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

DAG_ID = "recon_process_tracker"
STARTUP_TIMEOUT_S = 240
RUN_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AirflowAPI:
    def __init__(self, base_url: str, log_path: Path):
        self.base_url = base_url
        self.log_path = log_path
        self.token: str | None = None

    def request(self, method: str, path: str, body: Any = None, auth: bool = True) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth and self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.request(method, path, body)
        assert 200 <= status < 300, f"{method} {path} -> {status}: {payload}"
        return payload

    def wait_for(self, what: str, probe, timeout: float) -> Any:
        """Poll `probe` (an external process's state) until it returns a truthy value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = probe()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                value = None
            if value:
                return value
            time.sleep(1)
        tail = self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""
        pytest.fail(f"timed out after {timeout}s waiting for {what}; airflow output tail:\n{tail}")


@pytest.fixture
def airflow(tmp_path: Path, pg_admin_url: str, db_url: str) -> Iterator[AirflowAPI]:
    metadata_db = databases.create_empty_database(pg_admin_url)
    port = free_port()
    home = tmp_path / "airflow"
    home.mkdir()
    password = secrets.token_urlsafe(12)
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": password}))
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "RECON_DATABASE_URL"}
    base.update(
        {
            "RECON_SCHEDULE": "none",  # only the run this test triggers may claim tasks
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # Airflow's default: unpause through the API
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        }
    )
    env = local_airflow.airflow_environment(
        home=home,
        metadata_url=local_airflow.airflow_sqlalchemy_url(databases.libpq_url(pg_admin_url, metadata_db)),
        recon_url=db_url,  # the tasks find the recon database through the recon_db connection
        port=port,
        base=base,
    )
    assert "RECON_DATABASE_URL" not in env and env["AIRFLOW_CONN_RECON_DB"] == db_url
    local_airflow.ensure_metadata_migrated(env)

    log_path = tmp_path / "airflow-standalone.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", "standalone"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one below
        )
    api = AirflowAPI(f"http://127.0.0.1:{port}", log_path)
    try:
        api.wait_for("the api-server", lambda: api.request("GET", "/api/v2/monitor/health", auth=False)[0] == 200,
                     STARTUP_TIMEOUT_S)
        status, payload = api.request("POST", "/auth/token", {"username": "admin", "password": password}, auth=False)
        assert status == 201, payload
        api.token = payload["access_token"]
        yield api
    finally:
        _stop(process)
        artefacts = Path(os.environ.get("RECON_TEST_ARTIFACTS", databases.settings.PROJECT_ROOT / "test-artifacts"))
        artefacts.mkdir(parents=True, exist_ok=True)
        (artefacts / "airflow-standalone.log").write_bytes(log_path.read_bytes())
        databases.drop_database(pg_admin_url, metadata_db)


def _stop(process: subprocess.Popen) -> None:
    """Stop the standalone process group we started (SIGTERM, then SIGKILL after a bounded wait)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    # the group's stragglers (scheduler, workers) go with it
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_trigger_through_rest_api_and_read_labelled_chunks(airflow: AirflowAPI, db_url: str):
    seed = Seed(db_url)
    booked = [seed.stage("acc_bank", "DEBIT", "20.00", "TRANSACTION", f"e2e-{i}") for i in range(5)]
    review = seed.stage("acc_norule", "DEBIT", "1.00", "TRANSACTION", "e2e-x")

    anonymous = airflow.request("GET", f"/api/v2/dags/{DAG_ID}", auth=False)[0]
    assert anonymous in (401, 403)

    dag = airflow.wait_for(
        "the dag-processor to register the DAG",
        lambda: (lambda r: r[1] if r[0] == 200 else None)(airflow.request("GET", f"/api/v2/dags/{DAG_ID}")),
        STARTUP_TIMEOUT_S,
    )
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
    run_path = f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run['dag_run_id'], safe='')}"
    finished = airflow.wait_for(
        "the triggered run to finish",
        lambda: (lambda r: r if r["state"] in ("success", "failed") else None)(airflow.call("GET", run_path)),
        RUN_TIMEOUT_S,
    )
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
