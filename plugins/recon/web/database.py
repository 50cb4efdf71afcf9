"""The recon database of the API server's web app and the scheduler's run-note listener, and where
the view's database work runs.

Both run inside Airflow, where the resolver never falls back to an embedded server: the database
is RECON_DATABASE_URL or the Airflow connection ``recon_db`` (asked through Airflow's Connection
API, which reaches the metadata database in server processes), else an error naming ``recon_db``.

The view's queries are blocking calls. Run on the API server's shared thread pool, 45 requests
against a locked table held every thread, and Airflow's own endpoints (``/api/v2/version``)
stopped answering. So :func:`read_recon` runs them on a few threads of the view's own, with the
web timeouts on every connection and a deadline per request: a slow or gone database costs the
view a 503, never Airflow's API.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

import anyio
import anyio.to_thread

from recon import settings
from recon.db import Database, resolve_database

T = TypeVar("T")

_lock = threading.Lock()
_database: Database | None = None
_limiter: anyio.CapacityLimiter | None = None


class ReconViewTimeout(Exception):
    """A Recon view request did not get a thread and its answer within its deadline."""


def recon_database() -> Database:
    """The recon database of an Airflow server process, with the web timeouts and a pool as large
    as the view's threads (resolved on first use; a failed resolution is tried again next time)."""
    global _database
    with _lock:
        if _database is None:
            resolved = resolve_database(allow_embedded=False)
            threads = settings.web_threads()
            _database = Database(
                resolved.url, resolved.source, settings.web_database_timeouts(),
                pool_size=threads, max_overflow=0, pool_timeout=settings.web_request_timeout_seconds(),
            )
        return _database


async def read_recon(query: Callable[[Database], T]) -> T:
    """``query(recon_database())`` on the view's own threads, within the request deadline.

    Past the deadline it raises ReconViewTimeout (the app answers 503). A query already running is
    not abandoned: its thread stays counted until the database timeouts end it.
    """
    timeout = settings.web_request_timeout_seconds()
    try:
        with anyio.fail_after(timeout):
            return await anyio.to_thread.run_sync(lambda: query(recon_database()), limiter=_view_limiter())
    except TimeoutError:
        raise ReconViewTimeout(
            f"the recon database did not answer within {timeout} s (RECON_WEB_REQUEST_TIMEOUT_SECONDS)"
        ) from None


def _view_limiter() -> anyio.CapacityLimiter:
    global _limiter
    if _limiter is None:  # created in the event loop (anyio needs one); the loop is single-threaded
        _limiter = anyio.CapacityLimiter(settings.web_threads())
    return _limiter
