"""
# Recon: maintenance

Daily housekeeping of the recon database.

| task | what it does |
| --- | --- |
| `prune_tracker` | deletes COMPLETED Process Tracker rows finished more than `tracker_retention_days` ago (FAILED and open tasks are kept) |
| `forget_idempotency_keys` | forgets the REST API's `Idempotency-Key` answers stored more than `RECON_API_IDEMPOTENCY_RETENTION_HOURS` (24) ago: a replay after that is a new request |

Airflow's own metadata (runs, task instances, XComs of the recon DAGs) is cleaned outside task
code, where Airflow's credentials already are: `docker/airflow-db-clean.sh` (the compose service
`airflow-db-clean`, or cron on the scheduler host; README, "Operations"). Tasks never get the
metadata database's password.

Environment (read when the file is parsed): `RECON_MAINTENANCE_SCHEDULE` (default `@daily`),
`RECON_TRACKER_RETENTION_DAYS` (default 30), `RECON_PRUNE_BATCH_SIZE` (default 5000: rows deleted per
transaction, oldest first).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, dag, task

from recon import alerts, settings


@dag(
    dag_id=settings.MAINTENANCE_DAG_ID,
    schedule=settings.maintenance_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    on_failure_callback=alerts.failure_notifiers(),
    doc_md=__doc__,
    tags=["recon", "maintenance"],
    default_args={"owner": "recon", "retries": 1, "retry_delay": timedelta(minutes=5)},
    params={
        "tracker_retention_days": Param(
            settings.tracker_retention_days(),
            type="integer",
            minimum=0,
            title="Tracker retention (days)",
            description="COMPLETED Process Tracker rows finished longer ago than this are deleted.",
        ),
    },
)
def recon_maintenance():
    # a dict return annotation would push every key as its own XCom; return values stay out of the logs
    @task(multiple_outputs=False, show_return_value_in_logs=False)
    def prune_tracker(params=None) -> dict:
        """Delete old COMPLETED tracker rows (the queue's hot table stays small)."""
        from recon import pipeline

        from recon.db import default_database

        return pipeline.prune(params["tracker_retention_days"], default_database(allow_embedded=False))

    @task(multiple_outputs=False, show_return_value_in_logs=False)
    def forget_idempotency_keys() -> int:
        """Forget old Idempotency-Key answers of the REST API (the table would grow forever)."""
        from recon.db import default_database
        from recon.web.api import idempotency

        age = timedelta(hours=settings.api_idempotency_retention_hours())
        return idempotency.forget_older_than(default_database(allow_embedded=False), age)

    prune_tracker()
    forget_idempotency_keys()


recon_maintenance()
