"""The Recon view's routes: JSON under ``/api/``, and the HTML pages.

Every route here needs Airflow's permission to read runs of the recon DAG (the router's
dependency); the figures come from :mod:`recon.reporting.monitoring`, one query each.

The view's page is a shell that paints at once (no database work); each of its sections loads on
its own from its JSON endpoint with ``html=1``, which adds the section rendered (money formatted
in Python, exactly) next to the data. A filter change reloads only the exceptions.
"""

from __future__ import annotations

from typing import Any, Callable

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from recon.db import Database
from recon.json_encoding import jsonable
from recon.reporting import monitoring, run_summaries
from recon.web.access import can_read_recon_runs
from recon.web.chart import throughput_chart
from recon.web.database import read_recon
from recon.web.rendering import markdown_html, render
from recon.web.urls import page_links
from recon.settings import DAG_ID

router = APIRouter(dependencies=[Depends(can_read_recon_runs)])

# PostgreSQL text cannot hold a NUL: a filter with one is bad input (422), not a database error (500)
NO_NUL = r"^[^\x00]*$"


def filters(
    error_type: str | None = Query(None, max_length=200, pattern=NO_NUL),
    account_id: str | None = Query(None, max_length=200, pattern=NO_NUL),
    order_id: str | None = Query(None, max_length=200, pattern=NO_NUL),
    q: str | None = Query(None, max_length=200, pattern=NO_NUL),
    limit: int = Query(monitoring.DEFAULT_LIMIT, ge=1, le=monitoring.MAX_LIMIT),
) -> dict[str, Any]:
    """The manual-review filters and the list limit, shared by the view and its JSON."""
    return {"error_type": error_type, "account_id": account_id, "order_id": order_id, "q": q, "limit": limit}


def run_ids(
    dag_id: str = Path(max_length=250, pattern=NO_NUL), run_id: str = Path(max_length=250, pattern=NO_NUL)
) -> tuple[str, str]:
    """A run's ids from the path (Airflow's own limit is 250 characters)."""
    return dag_id, run_id


def as_json(data: Any) -> JSONResponse:
    return JSONResponse(jsonable(data))


# Every route reads through recon.web.database.read_recon: the queries run on the view's own
# threads within a deadline, never on the API server's shared thread pool.

# -- JSON ------------------------------------------------------------------------------------


# the view's sections, in page order: (name = its JSON endpoint and template, title while loading)
SECTIONS = (("queue", "Tracker queue"), ("throughput", "Throughput"), ("exceptions", "Exceptions"),
            ("ledger", "Ledger"), ("settlements", "Settlements"))

HTML = Query(False, description="add the section rendered for the Recon view (key `html`)")


async def read_section(request: Request, name: str, html: bool, load: Callable[[Database], dict[str, Any]],
                       context: Callable[[dict[str, Any]], dict[str, Any]]) -> JSONResponse:
    """A section's data, and with `html` its rendering for the Recon view: `context` names the data
    for its template (the rendering is CPU work: it runs on the view's threads, with the read)."""
    links = page_links(request)

    def read(db: Database) -> dict[str, Any]:
        data = load(db)
        if not html:
            return data
        return {**data, "html": render(f"_section_{name}.html", {**links, **context(data)})}

    return as_json(await read_recon(read))


@router.get("/api/queue")
async def api_queue(request: Request, limit: int = Query(monitoring.DEFAULT_LIMIT, ge=1, le=monitoring.MAX_LIMIT),
                    html: bool = HTML) -> JSONResponse:
    return await read_section(request, "queue", html, lambda db: monitoring.queue(db, limit), lambda q: {"q": q})


@router.get("/api/throughput")
async def api_throughput(request: Request, limit: int = Query(30, ge=1, le=monitoring.MAX_LIMIT),
                         html: bool = HTML) -> JSONResponse:
    return await read_section(request, "throughput", html, lambda db: monitoring.throughput(db, limit),
                              lambda tp: {"tp": tp, "chart": throughput_chart(tp["runs"])})


@router.get("/api/exceptions")
async def api_exceptions(request: Request, f: dict = Depends(filters), html: bool = HTML) -> JSONResponse:
    limit = f.pop("limit")
    return await read_section(request, "exceptions", html, lambda db: monitoring.exceptions(db, limit=limit, **f),
                              lambda ex: {"ex": ex, "filters": {k: v for k, v in f.items() if v}, "limit": limit,
                                          "reprocess_conf": monitoring.reprocess_conf(f),
                                          "window_conf": monitoring.reprocess_window_conf(7)})


@router.get("/api/ledger")
async def api_ledger(request: Request, limit: int = Query(monitoring.DEFAULT_LIMIT, ge=1, le=monitoring.MAX_LIMIT),
                     html: bool = HTML) -> JSONResponse:
    return await read_section(request, "ledger", html, lambda db: monitoring.ledger_overview(db, limit),
                              lambda lg: {"lg": lg})


@router.get("/api/settlements")
async def api_settlements(request: Request,
                          limit: int = Query(monitoring.DEFAULT_LIMIT, ge=1, le=monitoring.MAX_LIMIT),
                          html: bool = HTML) -> JSONResponse:
    return await read_section(request, "settlements", html, lambda db: monitoring.settlements(db, limit),
                              lambda st: {"st": st})


@router.get("/api/overview")
async def api_overview(f: dict = Depends(filters)) -> JSONResponse:
    return as_json(await read_recon(lambda db: monitoring.overview(db, **f)))


@router.get("/api/runs/{dag_id}/{run_id}")
async def api_run(ids: tuple[str, str] = Depends(run_ids)) -> JSONResponse:
    dag_id, run_id = ids
    row = await read_recon(lambda db: run_summaries.run_summary(run_id, db, dag_id=dag_id))
    if row is None:
        return JSONResponse({"detail": f"no recon summary for run {run_id!r} of {dag_id!r}"}, status_code=404)
    return as_json({**row, "markdown": run_summaries.summary_markdown(row["summary"], run_id)})


# -- HTML (queried and rendered on the view's threads: a large page is CPU work too) -------------


@router.get("/", response_class=HTMLResponse)
async def view(request: Request, f: dict = Depends(filters)) -> HTMLResponse:
    """The shell, at once: its sections fetch their data themselves (the filters, checked here,
    travel in the page's query string to the exceptions section)."""
    return HTMLResponse(render("recon_view.html", {**page_links(request), "sections": SECTIONS}))


@router.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse)
async def run_page(request: Request, ids: tuple[str, str] = Depends(run_ids)) -> HTMLResponse:
    dag_id, run_id = ids
    context = {**page_links(request), "dag_id": dag_id, "run_id": run_id, "is_recon_dag": dag_id == DAG_ID}

    def page(db: Database) -> str:
        row = run_summaries.run_summary(run_id, db, dag_id=dag_id)
        if row is not None:
            context["summary_html"] = markdown_html(run_summaries.summary_markdown(row["summary"], run_id))
        return render("recon_run.html", {**context, "run": row})

    return HTMLResponse(await read_recon(page))
