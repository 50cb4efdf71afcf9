"""recon_maintenance with dag.test(): tracker and Idempotency-Key pruning on PostgreSQL and `airflow db clean`
on the metadata DB."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.dags.conftest import task_instances
from tests.dags.seed import Seed

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


def test_structure(maintenance_dag):
    assert {t.task_id: set(t.upstream_task_ids) for t in maintenance_dag.tasks} == {
        "prune_tracker": set(),
        "clean_airflow_metadata": {"prune_tracker"},
        "forget_idempotency_keys": set(),
    }
    assert maintenance_dag.schedule == "@daily" and maintenance_dag.catchup is False
    assert maintenance_dag.params.get_param("tracker_retention_days").resolve(30) == 30
    for bad in (-1, "x"):
        with pytest.raises(Exception):
            maintenance_dag.params.get_param("tracker_retention_days").resolve(bad)


def test_prunes_old_completed_tasks_and_old_airflow_runs(airflow_metadata, tracker_dag, maintenance_dag, db_url):
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

    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=20)
    old_run = tracker_dag.test(logical_date=long_ago, run_after=long_ago, run_conf={"dry_run": True})
    maintenance = maintenance_dag.test(run_conf={"tracker_retention_days": 30, "airflow_retention_days": 7})

    assert maintenance.state == "success", task_instances(maintenance.run_id)
    remaining = {row[0] for row in seed.all("SELECT task_id FROM process_tracker")}
    assert remaining == {ids["recent"], ids["failed"]}
    assert [r[0] for r in seed.all("SELECT idempotency_key FROM api_idempotency_keys")] == ["recent"]
    with create_session() as session:
        run_ids = {r.run_id for r in session.query(DagRun).all()}
    assert old_run.run_id not in run_ids
    assert maintenance.run_id in run_ids
