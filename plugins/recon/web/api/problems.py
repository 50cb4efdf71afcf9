"""Every error of the API in one shape: RFC 9457 ``application/problem+json``.

A problem has a stable ``type`` (a tag URI per kind of error, listed in PROBLEM_TYPES and the
README), the HTTP ``title`` and ``status``, a ``detail`` naming what was wrong, the offending
``field`` when one is to blame, the request path as ``instance`` and the ``request_id``.
Validation errors also list every field in ``errors``.

The handlers here turn everything the API can raise into one: Airflow's own 401/403, FastAPI's
validation errors, the library's ``ReconError`` subclasses, database errors (503 with what to do,
never the URL or the SQL) and any bug (500, logged with the request id, nothing leaked).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import psycopg
import sqlalchemy.exc as sa_exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException

from recon.errors import (
    ConflictError,
    DatabaseConfigError,
    InvalidInputError,
    NotFoundError,
    ReconError,
    ReviewNotAllowedError,
    StaleReviewError,
)
from recon.web.database import RETRY_AFTER_SECONDS, ReconViewTimeout, describe_unusable_database

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "tag:recon-engine,2026:problem:"


@dataclass(frozen=True)
class ProblemType:
    slug: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return TYPE_PREFIX + self.slug


MALFORMED_JSON = ProblemType("malformed-json", 400, "The request body is not valid JSON")
UNAUTHENTICATED = ProblemType("unauthenticated", 401, "Authentication required")
FORBIDDEN = ProblemType("forbidden", 403, "Not permitted")
NOT_FOUND = ProblemType("not-found", 404, "Not found")
METHOD_NOT_ALLOWED = ProblemType("method-not-allowed", 405, "Method not allowed")
CONFLICT = ProblemType("conflict", 409, "Conflicts with the current state")
IDEMPOTENCY_KEY_REUSED = ProblemType(
    "idempotency-key-reused", 409, "The Idempotency-Key was already used for a different request")
IDEMPOTENCY_KEY_IN_PROGRESS = ProblemType(
    "idempotency-key-in-progress", 409, "A request with this Idempotency-Key is still being processed")
BODY_TOO_LARGE = ProblemType("body-too-large", 413, "The request body is too large")
UPLOAD_TOO_LARGE = ProblemType("upload-too-large", 413, "The uploaded file is too large")
UNSUPPORTED_MEDIA_TYPE = ProblemType("unsupported-media-type", 415, "Unsupported media type")
REVIEW_STALE = ProblemType("review-stale", 409, "The item changed since it was read")
REVIEW_NOT_ALLOWED = ProblemType("review-not-allowed", 409, "The action does not apply to the item as it is")
INVALID_INPUT = ProblemType("invalid-input", 422, "The request has invalid input")
INTERNAL_ERROR = ProblemType("internal-error", 500, "Internal error")
DATABASE_UNAVAILABLE = ProblemType("database-unavailable", 503, "The recon database cannot answer now")
DATABASE_NOT_CONFIGURED = ProblemType("database-not-configured", 503, "The recon database is not configured")

PROBLEM_TYPES = [
    MALFORMED_JSON, UNAUTHENTICATED, FORBIDDEN, NOT_FOUND, METHOD_NOT_ALLOWED, CONFLICT, IDEMPOTENCY_KEY_REUSED,
    IDEMPOTENCY_KEY_IN_PROGRESS, REVIEW_STALE, REVIEW_NOT_ALLOWED, BODY_TOO_LARGE, UPLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, INVALID_INPUT,
    INTERNAL_ERROR, DATABASE_UNAVAILABLE, DATABASE_NOT_CONFIGURED,
]


class Problem(HTTPException):
    """Raised by a route (or while a request body is read) to answer with a problem of `kind`.

    An HTTPException, so that FastAPI passes it through its body parsing untouched."""

    def __init__(self, kind: ProblemType, detail: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(kind.status, detail, headers)
        self.kind = kind
        self.field = field


class FieldError(BaseModel):
    field: str
    detail: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details (the OpenAPI schema of every error answer)."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    field: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each in the problem shape."""
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
        for status in statuses
    }


# what any route may answer: its caller unauthenticated or not permitted, bad input, a database down
COMMON_PROBLEMS = (400, 401, 403, 413, 422, 500, 503)


def problem_response(
    request: Request, kind: ProblemType, detail: str, *, field: str | None = None,
    errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": kind.uri,
        "title": kind.title,
        "status": kind.status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", None),
    }
    if field is not None:
        body["field"] = field
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=kind.status, media_type=PROBLEM_JSON, headers=headers)


# ---- handlers -------------------------------------------------------------------------------------


async def _problem(request: Request, exc: Problem) -> JSONResponse:
    return problem_response(request, exc.kind, exc.detail, field=exc.field, headers=exc.headers)


_HTTP_KINDS = {401: UNAUTHENTICATED, 403: FORBIDDEN, 404: NOT_FOUND, 405: METHOD_NOT_ALLOWED,
               413: BODY_TOO_LARGE, 415: UNSUPPORTED_MEDIA_TYPE}


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Airflow's authentication (401 no or expired token, 403 invalid token or not permitted) and
    Starlette's routing errors."""
    kind = _HTTP_KINDS.get(exc.status_code)
    if kind is None:
        kind = ProblemType("http-" + str(exc.status_code), exc.status_code, HTTPStatus(exc.status_code).phrase)
    detail = exc.detail if isinstance(exc.detail, str) else kind.title
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such endpoint: {request.method} {request.url.path}"
    return problem_response(request, kind, detail, headers=getattr(exc, "headers", None))


def field_path(location: tuple[Any, ...]) -> str:
    """('body', 'entries', 3, 'amount') -> 'entries[3].amount'; ('query', 'limit') -> 'limit'."""
    parts = list(location[1:] if location and location[0] in ("body", "query", "path", "header", "cookie")
                 else location) or ["body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response(request, MALFORMED_JSON, "the request body is not valid JSON", field="body")
    listed = [{"field": field_path(tuple(e.get("loc", ()))), "detail": _message(e)} for e in errors[:50]]
    first = listed[0] if listed else {"field": "body", "detail": "invalid request"}
    more = f" (and {len(errors) - 1} more problem(s), see errors)" if len(errors) > 1 else ""
    return problem_response(request, INVALID_INPUT, f"{first['field']}: {first['detail']}{more}",
                            field=first["field"], errors=listed)


def _message(error: dict[str, Any]) -> str:
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")  # the library's own message, as it wrote it


# the library's input errors by the problem each is, most specific first (a StaleReviewError is a ConflictError)
_INPUT_PROBLEMS = ((StaleReviewError, REVIEW_STALE), (ReviewNotAllowedError, REVIEW_NOT_ALLOWED),
                   (ConflictError, CONFLICT), (InvalidInputError, INVALID_INPUT))


async def _recon_error(request: Request, exc: ReconError) -> JSONResponse:
    if isinstance(exc, InvalidInputError):
        kind = next(kind for error, kind in _INPUT_PROBLEMS if isinstance(exc, error))
        return problem_response(request, kind, str(exc), field=exc.field)
    if isinstance(exc, NotFoundError):
        return problem_response(request, NOT_FOUND, str(exc))
    if isinstance(exc, DatabaseConfigError):
        log.warning("recon api: %s", exc)
        return problem_response(request, DATABASE_NOT_CONFIGURED, str(exc))
    return await _unexpected(request, exc)


async def _database_unusable(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(request, DATABASE_UNAVAILABLE, describe_unusable_database(exc),
                            headers={"Retry-After": RETRY_AFTER_SECONDS})


async def _database_refused(request: Request, exc: sa_exc.IntegrityError | sa_exc.DataError) -> JSONResponse:
    """A value the library's checks let through but a constraint refused (a race on a unique key, or a
    check the library does not repeat): the request changed nothing."""
    first_line = (str(exc.orig).strip().splitlines() or ["refused"])[0]
    if isinstance(exc.orig, psycopg.errors.UniqueViolation):
        return problem_response(request, CONFLICT, f"the database refused a duplicate: {first_line}")
    return problem_response(request, INVALID_INPUT, f"the database refused a value: {first_line}")


async def _not_unicode(request: Request, exc: UnicodeError) -> JSONResponse:
    return problem_response(request, INVALID_INPUT, "a text value is not valid Unicode (a lone surrogate?)")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback and the request id; the client learns nothing else."""
    request_id = getattr(request.state, "request_id", None)
    log.error("recon api: unexpected error (request %s)", request_id, exc_info=exc)
    response = problem_response(request, INTERNAL_ERROR, f"an unexpected error; the API server log has it"
                                f" under request id {request_id}")
    if request_id:  # this handler runs outside the request-id middleware
        response.headers["X-Request-ID"] = request_id
    return response


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _problem)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ReconError, _recon_error)  # type: ignore[arg-type]
    for unusable in (sa_exc.ProgrammingError, sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError,
                     ReconViewTimeout):
        app.add_exception_handler(unusable, _database_unusable)
    app.add_exception_handler(sa_exc.IntegrityError, _database_refused)  # type: ignore[arg-type]
    app.add_exception_handler(sa_exc.DataError, _database_refused)  # type: ignore[arg-type]
    app.add_exception_handler(UnicodeError, _not_unicode)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
