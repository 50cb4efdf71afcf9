"""Inside Airflow the recon database is the connection recon_db or RECON_DATABASE_URL, nothing else.

A task that fell back to a private embedded server reported an empty queue (claimed=0, success)
while the real queue waited (issue 19 item 2). Each case runs the DAG with dag.test(), which runs
the task bodies as Airflow does; the run must fail, its log must name recon_db, and no embedded
server may be started. Refused params are checked here too: nothing is claimed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from recon.db import reset_default_database
from tests.dags.conftest import load_dags, task_instances
from tests.dags.seed import Seed

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


def states(run: Any) -> dict[str, str]:
    return {task_id: state for task_id, _, state, _ in task_instances(run.run_id)}


@pytest.mark.parametrize("connection, message", [
    (None, "no recon database configured: define the Airflow connection 'recon_db'"),
    ('{"conn_type": "postgres", "host": ', "the Airflow connection 'recon_db' (AIRFLOW_CONN_RECON_DB) is neither a URI"),
    ("mysql://someone:pw-never-shown@localhost/recon", "Airflow connection recon_db: the recon engine needs PostgreSQL"),
    ("postgres://someone:pw-never-shown@127.0.0.1:1/recon",
     "recon database: postgresql+psycopg://someone:***@127.0.0.1:1/recon (from Airflow connection recon_db)"),
], ids=["missing", "malformed", "not-postgres", "unreachable"])
def test_a_missing_or_broken_recon_db_fails_the_run_naming_it(
    airflow_metadata: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd: pytest.CaptureFixture[str],
    connection: str | None, message: str,
) -> None:
    monkeypatch.delenv("RECON_DATABASE_URL", raising=False)
    if connection is None:
        monkeypatch.delenv("AIRFLOW_CONN_RECON_DB", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW_CONN_RECON_DB", connection)
    embedded = tmp_path / "embedded-pgdata"
    monkeypatch.setenv("RECON_EMBEDDED_DIR", str(embedded))  # where a fallback server would appear
    monkeypatch.setenv("RECON_TASK_RETRIES", "0")  # an unreachable server is retryable: fail at once here
    reset_default_database()
    dag = load_dags().dags["recon_process_tracker"]  # parsed after the settings above

    run = dag.test()
    log = "".join(capfd.readouterr())

    assert run.state == "failed"
    tasks = states(run)
    # reap and claim both open the recon database first (they run side by side): both fail, nothing runs after
    assert tasks["reap"] == "failed" and tasks["claim"] == "failed", tasks
    assert {tasks[t] for t in ("chunk.decide", "chunk.validate", "chunk.run")} == {"upstream_failed"}, tasks
    assert message in log, log[-3000:]
    assert "pw-never-shown" not in log
    assert not embedded.exists(), "an embedded server was started inside Airflow"


@pytest.mark.parametrize("conf", [
    {"chunk_size": 0}, {"chunk_size": 100_000}, {"batch_size": 10**20}, {"task_type": "OTHER"},
    {"reprocess": {"task_ids": []}}, {"reprocess": {"created_from": "yesterday"}}, {"dry_run": "no"},
])
def test_a_refused_param_claims_nothing(airflow_metadata: Path, tracker_dag: Any, db_url: str, conf: dict) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    seed = Seed(db_url)
    seed.stage("acc_bank", "DEBIT", "1.00", "TRANSACTION", "o-1")
    before = seed.all("SELECT task_id, status, attempts, updated_at FROM process_tracker")
    with pytest.raises(ParamValidationError):
        tracker_dag.test(run_conf=conf)
    assert seed.all("SELECT task_id, status, attempts, updated_at FROM process_tracker") == before
