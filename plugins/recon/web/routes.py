"""The Recon view's routes: JSON under ``/api/``, and the HTML pages.

Every route here needs Airflow's permission to read runs of the recon DAG (the router's
dependency); the figures come from :mod:`recon.reporting.monitoring`, one query each.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from recon.json_encoding import jsonable
from recon.reporting import monitoring, run_summaries
from recon.web.access import can_read_recon_runs
from recon.web.chart import throughput_chart
from recon.web.database import recon_database
from recon.web.rendering import markdown_html, render
from recon.web.urls import page_links
from recon.settings import DAG_ID

router = APIRouter(dependencies=[Depends(can_read_recon_runs)])


def filters(
    error_type: str | None = Query(None, max_length=200),
    account_id: str | None = Query(None, max_length=200),
    order_id: str | None = Query(None, max_length=200),
    q: str | None = Query(None, max_length=200),
    limit: int = Query(monitoring.DEFAULT_LIMIT, ge=1, le=monitoring.MAX_LIMIT),
) -> dict[str, Any]:
    """The manual-review filters and the list limit, shared by the view and its JSON."""
    return {"error_type": error_type, "account_id": account_id, "order_id": order_id, "q": q, "limit": limit}


def as_json(data: Any) -> JSONResponse:
    return JSONResponse(jsonable(data))


# -- JSON ------------------------------------------------------------------------------------


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
    row = run_summaries.run_summary(run_id, recon_database(), dag_id=dag_id)
    if row is None:
        return JSONResponse({"detail": f"no recon summary for run {run_id!r} of {dag_id!r}"}, status_code=404)
    return as_json({**row, "markdown": run_summaries.summary_markdown(row["summary"], run_id)})


# -- HTML ------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def view(request: Request, f: dict = Depends(filters)) -> HTMLResponse:
    data = monitoring.overview(recon_database(), **f)
    review = data["exceptions"]["manual_review"]
    context = {
        **page_links(request),
        "data": data,
        "filters": {k: v for k, v in f.items() if k != "limit" and v},
        "limit": f["limit"],
        "chart": throughput_chart(data["throughput"]["runs"]),
        "reprocess_conf": monitoring.reprocess_conf(review["reprocess_task_ids"]),
        "window_conf": monitoring.reprocess_window_conf(7),
    }
    return HTMLResponse(render("recon_view.html", context))


@router.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, dag_id: str, run_id: str) -> HTMLResponse:
    row = run_summaries.run_summary(run_id, recon_database(), dag_id=dag_id)
    context = {**page_links(request), "dag_id": dag_id, "run_id": run_id, "run": row, "is_recon_dag": dag_id == DAG_ID}
    if row is not None:
        context["summary_html"] = markdown_html(run_summaries.summary_markdown(row["summary"], run_id))
    return HTMLResponse(render("recon_run.html", context))
