"""
# Recon: maintenance

Daily housekeeping for the recon engine and for Airflow itself.

| task | what it does |
| --- | --- |
| `prune_tracker` | deletes COMPLETED Process Tracker rows finished more than `tracker_retention_days` ago (FAILED and open tasks are kept) |
| `forget_idempotency_keys` | forgets the REST API's `Idempotency-Key` answers stored more than `RECON_API_IDEMPOTENCY_RETENTION_HOURS` (24) ago: a replay after that is a new request |
| `clean_airflow_metadata` | `airflow db clean` of runs, task instances, XComs and logs older than `airflow_retention_days`: runs of `recon_process_tracker` (one per batch of new work, more while a backlog drains) pile up otherwise |

Airflow 3 does not let task code reach Airflow's own database, so `clean_airflow_metadata`
needs the metadata URL in the worker's environment as `RECON_AIRFLOW_METADATA_URL` (set by
`docker-compose.yaml` and `./recon ui`); without it the task is skipped and says so.
It keeps the newest scheduled run of every DAG (Airflow's rule) and archives nothing.

Environment (read when the file is parsed): `RECON_MAINTENANCE_SCHEDULE` (default `@daily`),
`RECON_TRACKER_RETENTION_DAYS` (default 30), `RECON_AIRFLOW_RETENTION_DAYS` (default 7).
"""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timedelta, timezone

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from recon import settings


@dag(
    dag_id=settings.MAINTENANCE_DAG_ID,
    schedule=settings.maintenance_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
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
        "airflow_retention_days": Param(
            settings.airflow_retention_days(),
            type="integer",
            minimum=1,
            title="Airflow metadata retention (days)",
            description="DAG runs, task instances, XComs and logs older than this are deleted from Airflow's database.",
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

    @task.bash
    def clean_airflow_metadata(params=None) -> str:
        """`airflow db clean` older than the retention, against RECON_AIRFLOW_METADATA_URL."""
        if not settings.airflow_metadata_url():
            raise AirflowSkipException(
                "RECON_AIRFLOW_METADATA_URL is not set in the worker's environment: "
                "Airflow's metadata was not cleaned (run `airflow db clean` elsewhere, or set it)"
            )
        before = datetime.now(timezone.utc) - timedelta(days=params["airflow_retention_days"])
        # the URL stays in the environment: it is never rendered into the command or the logs
        return (
            'AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="$RECON_AIRFLOW_METADATA_URL" '
            f"exec {shlex.quote(sys.executable)} -m airflow db clean "
            f"--clean-before-timestamp {shlex.quote(before.isoformat())} --skip-archive --yes"
        )

    @task(multiple_outputs=False, show_return_value_in_logs=False)
    def forget_idempotency_keys() -> int:
        """Forget old Idempotency-Key answers of the REST API (the table would grow forever)."""
        from recon.db import default_database
        from recon.web.api import idempotency

        age = timedelta(hours=settings.api_idempotency_retention_hours())
        return idempotency.forget_older_than(default_database(allow_embedded=False), age)

    prune_tracker() >> clean_airflow_metadata()
    forget_idempotency_keys()


recon_maintenance()
