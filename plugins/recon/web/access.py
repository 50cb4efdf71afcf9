"""Who may read the Recon view and the REST API, and who may write through the API: whoever Airflow
lets read runs of the recon DAG reads, whoever it lets edit the DAG writes.

The view and the API add no users or roles of their own. An anonymous browser is sent to Airflow's
login page; an API client gets the status (401/403) and no data.
"""

from __future__ import annotations

from fastapi import Depends
from fastapi.exceptions import HTTPException
from fastapi.requests import Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.core_api.security import get_user, requires_access_dag

from recon.web.urls import airflow_base
from recon.settings import DAG_ID

# Reading the view is reading runs of the recon DAG, in Airflow's own terms.
can_read_recon_runs = requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID)
# Writing through the API (staging entries, files, books) is editing what the DAG works on: the
# permission to edit the DAG (simple auth manager: USER and up; FAB: can_edit on the DAG).
can_edit_recon_dag = requires_access_dag("PUT", param_dag_id=DAG_ID)

READERS = [Depends(can_read_recon_runs)]
WRITERS = [Depends(can_edit_recon_dag)]


async def caller(user: BaseUser = Depends(get_user)) -> str:
    """Who sent the request (Idempotency-Keys are kept per caller)."""
    return str(user.get_id() or user.get_name())


def actor_name(user: BaseUser) -> str:
    """Who decided, as the review audit log records it: the Airflow user's name (view and API alike)."""
    return str(user.get_name() or user.get_id())


async def reviewer(user: BaseUser = Depends(get_user)) -> str:
    """The actor of a review action sent through the API: the authenticated user, never the body."""
    return actor_name(user)


async def login_for_browsers(request: Request, exc: HTTPException) -> Response:
    """A browser without a session is sent to Airflow's login; API clients get the status."""
    wants_html = "text/html" in request.headers.get("accept", "")
    if exc.status_code == 401 and wants_html and "/api/" not in request.url.path:
        login = get_auth_manager().get_url_login(next_url=str(request.url.path))
        return RedirectResponse(f"{airflow_base(request)}{login}", status_code=303)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
