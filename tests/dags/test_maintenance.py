"""recon_maintenance with dag.test(): tracker and Idempotency-Key pruning on PostgreSQL; and
docker/airflow-db-clean.sh, which cleans Airflow's metadata of the recon DAGs outside task code."""

from __future__ import annotations

import datetime as dt
import os
import subprocess

import pytest

from recon import settings

from tests.dags.conftest import task_instances
from tests.dags.seed import Seed

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


def test_structure(maintenance_dag):
    assert {t.task_id: set(t.upstream_task_ids) for t in maintenance_dag.tasks} == {
        "prune_tracker": set(),
        "forget_idempotency_keys": set(),
    }
    assert maintenance_dag.schedule == "@daily" and maintenance_dag.catchup is False
    assert maintenance_dag.params.get_param("tracker_retention_days").resolve(30) == 30
    for bad in (-1, "x"):
        with pytest.raises(Exception):
            maintenance_dag.params.get_param("tracker_retention_days").resolve(bad)


def test_prunes_old_completed_tasks(airflow_metadata, tracker_dag, maintenance_dag, db_url):
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    seed = Seed(db_url)
    ids = {name: seed.stage("acc_bank", "DEBIT", "1.00", "TRANSACTION", name)[1] for name in ("old", "recent", "failed")}
    with seed.connect() as c:
        c.execute("UPDATE process_tracker SET status = 'COMPLETED', completed_at = now() - interval '40 days'"
                  " WHERE task_id = %s", (ids["old"],))
        c.execute("UPDATE process_tracker SET status = 'COMPLETED', completed_at = now() - interval '1 day'"
                  " WHERE task_id = %s", (ids["recent"],))
        c.execute("UPDATE process_tracker SET status = 'FAILED', completed_at = now() - interval '90 days'"
                  " WHERE task_id = %s", (ids["failed"],))

        c.execute("INSERT INTO api_idempotency_keys (principal, idempotency_key, request_hash, status_code, response,"
                  " created_at) VALUES ('u', 'old', 'h', 201, '{}', now() - interval '25 hours'),"
                  " ('u', 'recent', 'h', 201, '{}', now() - interval '23 hours')")

    maintenance = maintenance_dag.test(run_conf={"tracker_retention_days": 30})

    assert maintenance.state == "success", task_instances(maintenance.run_id)
    remaining = {row[0] for row in seed.all("SELECT task_id FROM process_tracker")}
    assert remaining == {ids["recent"], ids["failed"]}
    assert [r[0] for r in seed.all("SELECT idempotency_key FROM api_idempotency_keys")] == ["recent"]


CLEAN = settings.PROJECT_ROOT / "docker" / "airflow-db-clean.sh"


def test_airflow_db_clean_removes_old_runs_of_the_recon_dags_only(airflow_metadata, tracker_dag, db_url):
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=20)
    old_runs = [tracker_dag.test(logical_date=day, run_after=day, run_conf={"dry_run": True})
                for day in (long_ago - dt.timedelta(days=1), long_ago)]

    def clean(**env: str) -> set[str]:
        result = subprocess.run(["bash", str(CLEAN), "--once"], capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, RECON_AIRFLOW_RETENTION_DAYS="7",
                                         RECON_AIRFLOW_CLEAN_BATCH_SIZE="1", **env))
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        with create_session() as session:
            return {r.run_id for r in session.query(DagRun).filter(DagRun.dag_id == "recon_process_tracker")}

    # scoped: the runs of a DAG not named (here the tracker itself) are kept
    assert {r.run_id for r in old_runs} <= clean(RECON_AIRFLOW_CLEAN_DAG_IDS="recon_maintenance")
    assert not {r.run_id for r in old_runs} & clean()  # the default names both recon DAGs


def test_airflow_db_clean_refuses_a_bad_setting():
    result = subprocess.run(["bash", str(CLEAN), "--once"], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, RECON_AIRFLOW_CLEAN_BATCH_SIZE="lots"))
    assert result.returncode == 2
    assert "batch_size must be a positive integer, got 'lots'" in result.stderr
