"""Airflow plugin: the "Recon" view in the Airflow UI and its JSON endpoints.

Registers, in the API server:
- a FastAPI app under ``/recon``: the view (``/recon/``), one run's summary
  (``/recon/runs/{dag_id}/{run_id}``) and the same data as JSON (``/recon/api/...``);
- a "Recon" entry in the navigation (an external view embedded in the UI at ``/plugin/recon``);
- a "Recon summary" tab on every DAG run page;
- a listener that, when a run of the DAG ends, writes its recon summary as the run's note.

Access follows Airflow's own authentication and authorization: every route depends on
Airflow's ``requires_access_dag`` for reading runs of ``recon_process_tracker``, so an anonymous
request gets 401 and no data (an anonymous browser is sent to the login page instead).

Airflow imports this file in every process (scheduler, workers, ...), so it stays light:
FastAPI, the templates and the recon library are imported only when the API server asks for
``fastapi_apps``. The queries live in ``recon.reporting.monitoring``.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime, and the
# names they use (Request, ...) are imported inside _build_app, not at module level.
import logging
import os
import threading
from typing import Any

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

log = logging.getLogger(__name__)

URL_PREFIX = "/recon"
DAG_ID = "recon_process_tracker"

_app_lock = threading.Lock()
_app: Any = None


def recon_app() -> Any:
    """The FastAPI app, built once per process on first use."""
    global _app
    with _app_lock:
        if _app is None:
            _app = _build_app()
        return _app


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


def write_run_note(dag_run: Any) -> None:
    try:
        if dag_run.dag_id != DAG_ID:
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
        from recon.reporting import monitoring

        db = recon_database(allow_embedded=False)
        row = monitoring.run_summary(dag_run.run_id, db) if db is not None else None
        if row is not None:
            # the first line is what the UI shows of a collapsed note: the counts, not a heading
            dag_run.note = monitoring.summary_markdown(row["summary"], heading=False)[:1000]  # column holds 1000
    except Exception:
        log.exception("recon plugin: could not write the summary note of run %s", getattr(dag_run, "run_id", "?"))


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
            app = recon_app()
        except Exception:  # a broken view must not take the whole API server down
            log.exception("recon plugin: the Recon view could not be built; it is not mounted")
            return []
        return [{"app": app, "url_prefix": URL_PREFIX, "name": "Recon"}]


# ---------------------------------------------------------------------------------------------
# The app (built lazily)
# ---------------------------------------------------------------------------------------------

_db_lock = threading.Lock()
_db: Any = None


def recon_database(allow_embedded: bool = True) -> Any:
    """The recon database for an Airflow server process (API server, scheduler).

    RECON_DATABASE_URL or AIRFLOW_CONN_RECON_DB when set (what recon.db resolves), else the
    ``recon_db`` connection from Airflow's connection store, else recon.db's default (the
    embedded server on a developer machine), unless ``allow_embedded`` is False: then None.
    """
    global _db
    with _db_lock:
        if _db is None:
            from recon.db import Database, default_database

            if os.environ.get("RECON_DATABASE_URL") or os.environ.get("AIRFLOW_CONN_RECON_DB"):
                _db = default_database()
            elif uri := _connection_store_uri():
                _db = Database(uri, "Airflow connection recon_db")
            elif allow_embedded:
                _db = default_database()
        return _db


def _connection_store_uri() -> str | None:
    try:
        from airflow.models.connection import Connection

        return Connection.get_connection_from_secrets("recon_db").get_uri()
    except Exception:  # AirflowNotFoundException: no such connection
        return None


def _build_app() -> Any:
    import json
    from pathlib import Path

    import jinja2
    import sqlalchemy.exc as sa_exc
    from fastapi import APIRouter, Depends, FastAPI, Query, Request
    from fastapi.exceptions import HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    import recon
    from recon.reporting import monitoring

    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(recon.__file__).parent / "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates.filters["ago"] = _ago
    templates.filters["when"] = _when
    templates.filters["tojson_pretty"] = lambda v: json.dumps(monitoring.jsonable(v), indent=2)

    app = FastAPI(
        title="Recon monitoring",
        description="The Process Tracker queue, throughput, exceptions and ledger of the recon engine.",
        docs_url=None,
        redoc_url=None,
    )
    # Reading the view is reading runs of the recon DAG, in Airflow's own terms.
    router = APIRouter(
        dependencies=[Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))]
    )

    @app.exception_handler(HTTPException)
    async def _login_for_browsers(request: Request, exc: HTTPException) -> Any:
        """A browser without a session is sent to Airflow's login; API clients get the status."""
        wants_html = "text/html" in request.headers.get("accept", "")
        if exc.status_code == 401 and wants_html and "/api/" not in request.url.path:
            login = get_auth_manager().get_url_login(next_url=str(request.url.path))
            return RedirectResponse(f"{_airflow_base(request)}{login}", status_code=303)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(sa_exc.ProgrammingError)
    @app.exception_handler(sa_exc.OperationalError)
    async def _database_unusable(request: Request, exc: Exception) -> Any:
        """Missing table (not migrated) or unreachable database: say so, without the URL or SQL."""
        log.warning("recon view: database error: %s", str(exc).splitlines()[0][:300])
        missing = "UndefinedTable" in type(getattr(exc, "orig", None)).__name__
        detail = (
            "the recon database is not migrated: run `./recon db migrate` (python -m recon db migrate)"
            if missing
            else "the recon database cannot be reached; see the API server log"
        )
        return JSONResponse({"detail": detail}, status_code=503)

    def filters(
        error_type: str | None = Query(None, max_length=200),
        account_id: str | None = Query(None, max_length=200),
        order_id: str | None = Query(None, max_length=200),
        q: str | None = Query(None, max_length=200),
        limit: int = Query(monitoring.DEFAULT_LIMIT, ge=1, le=monitoring.MAX_LIMIT),
    ) -> dict[str, Any]:
        return {"error_type": error_type, "account_id": account_id, "order_id": order_id, "q": q, "limit": limit}

    def as_json(data: Any) -> JSONResponse:
        return JSONResponse(monitoring.jsonable(data))

    # -- JSON ------------------------------------------------------------------------------

    @router.get("/api/queue")
    def api_queue(limit: int = Query(monitoring.DEFAULT_LIMIT, ge=1, le=monitoring.MAX_LIMIT)) -> JSONResponse:
        return as_json(monitoring.queue(recon_database(), limit))

    @router.get("/api/throughput")
    def api_throughput(limit: int = Query(30, ge=1, le=monitoring.MAX_LIMIT)) -> JSONResponse:
        return as_json(monitoring.throughput(recon_database(), limit))

    @router.get("/api/exceptions")
    def api_exceptions(f: dict = Depends(filters)) -> JSONResponse:
        limit = f.pop("limit")
        return as_json(monitoring.exceptions(recon_database(), limit=limit, **f))

    @router.get("/api/ledger")
    def api_ledger(limit: int = Query(monitoring.DEFAULT_LIMIT, ge=1, le=monitoring.MAX_LIMIT)) -> JSONResponse:
        return as_json(monitoring.ledger_overview(recon_database(), limit))

    @router.get("/api/overview")
    def api_overview(f: dict = Depends(filters)) -> JSONResponse:
        return as_json(monitoring.overview(recon_database(), **f))

    @router.get("/api/runs/{dag_id}/{run_id}")
    def api_run(dag_id: str, run_id: str) -> JSONResponse:
        row = monitoring.run_summary(run_id, recon_database(), dag_id=dag_id)
        if row is None:
            return JSONResponse({"detail": f"no recon summary for run {run_id!r} of {dag_id!r}"}, status_code=404)
        return as_json({**row, "markdown": monitoring.summary_markdown(row["summary"], run_id)})

    # -- HTML ------------------------------------------------------------------------------

    @router.get("/", response_class=HTMLResponse)
    def view(request: Request, f: dict = Depends(filters)) -> HTMLResponse:
        data = monitoring.overview(recon_database(), **f)
        review = data["exceptions"]["manual_review"]
        context = {
            **_links(request),
            "data": data,
            "filters": {k: v for k, v in f.items() if k != "limit" and v},
            "limit": f["limit"],
            "chart": throughput_chart(data["throughput"]["runs"]),
            "reprocess_conf": monitoring.reprocess_conf(review["reprocess_task_ids"]),
            "window_conf": monitoring.reprocess_window_conf(7),
        }
        return HTMLResponse(templates.get_template("recon_view.html").render(context))

    @router.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, dag_id: str, run_id: str) -> HTMLResponse:
        row = monitoring.run_summary(run_id, recon_database(), dag_id=dag_id)
        context = {**_links(request), "dag_id": dag_id, "run_id": run_id, "run": row, "is_recon_dag": dag_id == DAG_ID}
        if row is not None:
            context["summary_html"] = _markdown_html(monitoring.summary_markdown(row["summary"], run_id))
        return HTMLResponse(templates.get_template("recon_run.html").render(context))

    @app.get("/static/recon.svg", include_in_schema=False)
    def icon() -> Any:  # the navigation icon: no data, so no authentication
        return Response(ICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    app.include_router(router)
    return app


ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#017cee" '
    'stroke-width="2" stroke-linecap="round" stroke-linejoin="round">'
    '<path d="M4 5h10M4 10h7M4 15h5"/><path d="M4 20h16"/><path d="m13 15 3 3 5-7"/></svg>'
)


def _airflow_base(request: Any) -> str:
    """Where Airflow is mounted ('' at the root): the plugin app's root_path minus its prefix."""
    root = request.scope.get("root_path", "")
    return root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else root


def _links(request: Any) -> dict[str, str]:
    airflow = _airflow_base(request)
    return {
        "airflow": airflow,
        "base": f"{airflow}{URL_PREFIX}",
        "dag_id": DAG_ID,
        "dag_url": f"{airflow}/dags/{DAG_ID}",
        "trigger_api": f"{airflow}/api/v2/dags/{DAG_ID}/dagRuns",
    }


def _markdown_html(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def throughput_chart(runs: list[dict[str, Any]], width: int = 720, height: int = 170) -> dict[str, Any]:
    """Geometry of the throughput chart: one bar per run (processed), a line for the backlog."""
    pad_top, pad_bottom, pad_left = 12, 22, 40
    plot_w, plot_h = width - pad_left - 8, height - pad_top - pad_bottom
    peak = max([1] + [r["processed"] for r in runs] + [r["backlog"] for r in runs])
    slot = plot_w / max(len(runs), 1)
    bars, points = [], []
    for i, r in enumerate(runs):
        x = pad_left + i * slot
        h = plot_h * r["processed"] / peak
        bars.append(
            {
                "x": round(x + slot * 0.15, 1),
                "y": round(pad_top + plot_h - h, 1),
                "w": round(max(slot * 0.7, 1), 1),
                "h": round(h, 1),
                "run": r,
            }
        )
        points.append(f"{x + slot / 2:.1f},{pad_top + plot_h - plot_h * r['backlog'] / peak:.1f}")
    return {
        "width": width,
        "height": height,
        "bars": bars,
        "backlog_points": " ".join(points),
        "peak": peak,
        "axis_y": pad_top + plot_h,
        "pad_left": pad_left,
        "pad_top": pad_top,
    }


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = float(seconds)
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 60:
        return f"{sign}{s:.0f} s"
    if s < 3600:
        return f"{sign}{s / 60:.0f} min"
    if s < 86400:
        return f"{sign}{s / 3600:.1f} h"
    return f"{sign}{s / 86400:.1f} d"


def _when(value: Any) -> str:
    if value is None:
        return "–"
    try:
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except AttributeError:
        return str(value)
