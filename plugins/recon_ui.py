"""Airflow plugin: the "Recon" view in the Airflow UI and its JSON endpoints.

Registers, in the API server:
- a FastAPI app under ``/recon`` (``recon.web``): the view (``/recon/``), one run's summary
  (``/recon/runs/{dag_id}/{run_id}``), the same data as JSON (``/recon/api/...``) and the REST API
  for producers and tools (``/recon/api/v1``, ``recon.web.api``);
- a "Recon" entry in the navigation (an external view embedded in the UI at ``/plugin/recon``);
- a "Recon summary" tab on every DAG run page;
- a listener that, when a run of the DAG ends, writes its recon summary as the run's note.

Access follows Airflow's own authentication and authorization (``recon.web.access``): reading
the view is reading runs of the recon DAG; writing through the REST API is editing the DAG.

Airflow imports this file in every process (scheduler, workers, ...), so it holds only the
plugin class and the listener: FastAPI, the templates and the recon library are imported when
the API server asks for ``fastapi_apps``, and by the listener when a run ends.
"""

import logging
import time
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)

# recon.settings holds names only (no I/O, nothing heavy): fine in every Airflow process
from recon.settings import DAG_ID, WEB_URL_PREFIX as URL_PREFIX  # noqa: E402


class RunNoteListener:
    """When a run of the DAG ends (in the scheduler), its recon summary becomes the run's note.

    The summary task recorded the summary in run_summaries just before; a note a user already
    wrote is never overwritten. Any failure is logged and changes nothing.
    """

    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        write_run_note(dag_run)

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        write_run_note(dag_run)


# After a failed attempt the listener leaves the recon database alone this long: runs ending
# during an outage cost the scheduler nothing, not one timeout each.
PAUSE_AFTER_FAILURE_S = 60.0
_paused_until = 0.0


def write_run_note(dag_run: Any) -> None:
    """Write the summary note; bounded by the listener's database timeouts, and never raises: it runs
    inside the scheduler's loop."""
    global _paused_until
    try:
        if dag_run.dag_id != DAG_ID:
            return
        if time.monotonic() < _paused_until:
            log.warning("recon plugin: no summary note for run %s: the recon database failed less than"
                        " %.0f s ago", dag_run.run_id, PAUSE_AFTER_FAILURE_S)
            return
        from sqlalchemy.orm import object_session

        if object_session(dag_run) is None:
            # dag.test() hands listeners a DagRun no session tracks any more (its in-process task
            # runner closes the thread's scoped session): its note can neither be read (lazy load)
            # nor saved. The scheduler's run is attached, and that is where the note is written.
            log.debug("recon plugin: run %s is detached from its session; no summary note", dag_run.run_id)
            return
        if dag_run.note:
            return
        from recon.reporting import run_summaries
        from recon.web.database import listener_database

        row = run_summaries.run_summary(dag_run.run_id, listener_database())
        if row is not None:
            # the first line is what the UI shows of a collapsed note: the counts, not a heading
            dag_run.note = run_summaries.summary_markdown(row["summary"], heading=False)[:1000]  # column holds 1000
    except Exception as exc:
        _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_S
        log.warning("recon plugin: could not write the summary note of run %s (%s: %s); the next %.0f s of"
                    " runs get none", getattr(dag_run, "run_id", "?"), type(exc).__name__, str(exc)[:300],
                    PAUSE_AFTER_FAILURE_S)


class ReconPlugin(AirflowPlugin):
    name = "recon"
    listeners = [RunNoteListener()]
    external_views = [
        {
            "name": "Recon",
            "href": f"{URL_PREFIX}/",
            "url_route": "recon",
            "destination": "nav",
            "nav_top_level": True,
            "icon": f"{URL_PREFIX}/static/recon.svg",
        },
        {
            "name": "Recon summary",
            "href": f"{URL_PREFIX}/runs/{{DAG_ID}}/{{RUN_ID}}",
            "url_route": "recon-run-summary",
            "destination": "dag_run",
        },
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        # Only the API server (and `airflow plugins`) read this: build the app here, not at import.
        try:
            from recon.web.app import recon_app

            app = recon_app()
        except Exception:  # a broken view must not take the whole API server down
            log.exception("recon plugin: the Recon view could not be built; it is not mounted")
            return []
        return [{"app": app, "url_prefix": URL_PREFIX, "name": "Recon"}]
