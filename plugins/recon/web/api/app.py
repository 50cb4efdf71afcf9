"""The REST API's FastAPI app, mounted by the Recon app at ``/api/v1`` (so ``/recon/api/v1`` in
Airflow's API server, behind Airflow's own authentication).

Its own app, not routes of the view, because its conventions differ: every error is a problem
(RFC 9457), every request has an id and a body limit, and it has an OpenAPI document of its own
(``/recon/api/v1/openapi.json``, committed as ``docs/openapi.json``: ``./recon api-spec``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from recon.web.api import accounts, ledger, merchants, reviews, rules, staging_entries, tracker, uploads
from recon.web.api.limits import BodyLimitMiddleware
from recon.web.api.problems import COMMON_PROBLEMS, ProblemDetails, install_problem_handlers, problem_responses
from recon.web.api.request_ids import RequestIdMiddleware

MOUNT_PATH = "/api/v1"  # inside the Recon app, itself at settings.WEB_URL_PREFIX
TITLE = "Recon Engine REST API"
DESCRIPTION = """\
Merchants, accounts with balances, recon rules, staging entries and statement uploads, the ledger,
the Process Tracker and the review of exceptions (reviewer actions, audited) of the recon engine.

**Authentication**: Airflow's own. Get a token from Airflow's `POST /auth/token` and send it as
`Authorization: Bearer <token>`. Reads need permission to read runs of the DAG
`recon_process_tracker`; writes, review actions included, need permission to edit it (the
reviewer recorded in the audit log is the authenticated user).

**Conventions**: errors are `application/problem+json` (RFC 9457) with a stable `type`; lists are
pages with an opaque `next_cursor`; creating POSTs take an `Idempotency-Key`; amounts are decimal
strings; times are RFC 3339 in UTC; every answer has an `X-Request-ID`.
"""


def build_api_app() -> FastAPI:
    app = FastAPI(
        title=TITLE, description=DESCRIPTION, version="1",
        docs_url="/docs", redoc_url=None, openapi_url="/openapi.json",
        responses=problem_responses(*COMMON_PROBLEMS),
    )
    install_problem_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(RequestIdMiddleware)  # added last: outermost, so every answer has the id
    for module in (merchants, accounts, rules, staging_entries, uploads, ledger, tracker, reviews):
        app.include_router(module.router)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the problem schema and the API's address in Airflow."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        from recon.settings import WEB_URL_PREFIX

        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                               servers=[{"url": WEB_URL_PREFIX + MOUNT_PATH}])
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        problem = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(problem.pop("$defs", {}))
        schemas["ProblemDetails"] = problem
        app.openapi_schema = document
    return app.openapi_schema


def openapi_text() -> str:
    """The OpenAPI document as committed in docs/openapi.json (`./recon api-spec` writes it)."""
    import json

    return json.dumps(build_api_app().openapi(), indent=2, ensure_ascii=False) + "\n"
