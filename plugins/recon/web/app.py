"""The Recon view's FastAPI app: built once per process, in the API server only. It mounts the REST
API (``recon.web.api``, its own app with its own error shape) at ``/api/v1``.

The view answers these failures itself: a browser without a session goes to Airflow's login
(:mod:`recon.web.access`); a database that is not migrated, not reachable, too slow (a
timeout) or not configured gets a 503 that says so, without the URL or the SQL.
"""

from __future__ import annotations

import logging
import threading

import sqlalchemy.exc as sa_exc
from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse, Response

from recon.errors import DatabaseConfigError
from recon.web.access import login_for_browsers
from recon.web.api.app import MOUNT_PATH as API_MOUNT_PATH, build_api_app
from recon.web.database import RETRY_AFTER_SECONDS, ReconViewTimeout, describe_unusable_database
from recon.web.exceptions import router as exceptions_router
from recon.web.routes import router

log = logging.getLogger(__name__)

ICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#017cee" '
    'stroke-width="2" stroke-linecap="round" stroke-linejoin="round">'
    '<path d="M4 5h10M4 10h7M4 15h5"/><path d="M4 20h16"/><path d="m13 15 3 3 5-7"/></svg>'
)

_app_lock = threading.Lock()
_app: FastAPI | None = None


def recon_app() -> FastAPI:
    """The FastAPI app, built once per process on first use."""
    global _app
    with _app_lock:
        if _app is None:
            _app = build_app()
        return _app


def build_app() -> FastAPI:
    app = FastAPI(
        title="Recon monitoring",
        description="The Process Tracker queue, throughput, exceptions and ledger of the recon engine.",
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(HTTPException, login_for_browsers)
    app.add_exception_handler(sa_exc.ProgrammingError, database_unusable)
    app.add_exception_handler(sa_exc.OperationalError, database_unusable)  # unreachable, timeouts
    app.add_exception_handler(sa_exc.InterfaceError, database_unusable)  # a connection that broke
    app.add_exception_handler(sa_exc.TimeoutError, database_unusable)  # no connection free in the pool
    app.add_exception_handler(ReconViewTimeout, database_unusable)  # no answer within the request deadline
    app.add_exception_handler(DatabaseConfigError, database_not_configured)
    app.add_api_route("/static/recon.svg", navigation_icon, methods=["GET"], include_in_schema=False)
    app.mount(API_MOUNT_PATH, build_api_app())  # the REST API: its own app, errors and OpenAPI document
    app.include_router(router)
    app.include_router(exceptions_router)
    return app


async def database_unusable(request: Request, exc: Exception) -> JSONResponse:
    """Missing table (not migrated), unreachable or too slow database: 503 that says which, without
    the URL or the SQL; the client may try again later."""
    detail = describe_unusable_database(exc)
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": RETRY_AFTER_SECONDS})


async def database_not_configured(request: Request, exc: Exception) -> JSONResponse:
    """No recon_db connection and no RECON_DATABASE_URL in the API server: say which to set."""
    log.warning("recon view: %s", exc)
    return JSONResponse({"detail": str(exc)}, status_code=503)


def navigation_icon() -> Response:
    """The icon of the navigation entry: no data, so no authentication."""
    return Response(ICON_SVG, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})
