"""Who may read the Recon view: whoever Airflow lets read runs of the recon DAG.

The view adds no users or roles of its own. An anonymous browser is sent to Airflow's login
page; an API client gets the status (401/403) and no data.
"""

from __future__ import annotations

from fastapi.exceptions import HTTPException
from fastapi.requests import Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.core_api.security import requires_access_dag

from recon.web.urls import airflow_base
from recon.settings import DAG_ID

# Reading the view is reading runs of the recon DAG, in Airflow's own terms.
can_read_recon_runs = requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID)


async def login_for_browsers(request: Request, exc: HTTPException) -> Response:
    """A browser without a session is sent to Airflow's login; API clients get the status."""
    wants_html = "text/html" in request.headers.get("accept", "")
    if exc.status_code == 401 and wants_html and "/api/" not in request.url.path:
        login = get_auth_manager().get_url_login(next_url=str(request.url.path))
        return RedirectResponse(f"{airflow_base(request)}{login}", status_code=303)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
