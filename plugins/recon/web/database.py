"""The recon database of the API server's web app and of the scheduler's run-note listener, and
where the view's database work runs.

Both run inside Airflow, where the resolver never falls back to an embedded server: the database
is RECON_DATABASE_URL or the Airflow connection ``recon_db`` (asked through Airflow's Connection
API, which reaches the metadata database in server processes), else an error naming ``recon_db``.

The view's queries are blocking calls. Run on the API server's shared thread pool, 45 requests
against a locked table held every thread, and Airflow's own endpoints (``/api/v2/version``)
stopped answering. So :func:`read_recon` runs them on a few threads of the view's own, with the
web timeouts on every connection and a deadline per request: a slow or gone database costs the
view a 503, never Airflow's API.

The REST API's writes go through :func:`write_recon`: threads of their own too (an upload may
take minutes and must not hold a reader's thread), the same timeouts on every statement, and the
request deadline for getting a thread. A write that has started is never abandoned: its caller
gets the answer of what was committed, never a 503 for a write that then commits anyway.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, TypeVar

import anyio
import anyio.to_thread
import psycopg
from sqlalchemy.engine import Connection

from recon import settings
from recon.db import Database, resolve_database
from recon.db.engine import describe_error

log = logging.getLogger(__name__)

T = TypeVar("T")

_lock = threading.Lock()
_database: Database | None = None
_limiter: anyio.CapacityLimiter | None = None
_write_slots: anyio.CapacityLimiter | None = None
_write_threads: anyio.CapacityLimiter | None = None


RETRY_AFTER_SECONDS = "10"  # what a 503 for an unusable database tells the client to wait


class ReconViewTimeout(Exception):
    """A Recon view request did not get a thread and its answer within its deadline."""


def describe_unusable_database(exc: Exception) -> str:
    """Why the recon database could not answer (not migrated, too slow, unreachable), for a 503:
    never the URL or the SQL. Logged too, for the operator."""
    reason = describe_error(exc, settings.web_database_timeouts())
    log.warning("recon web: database error: %s", reason[:300])
    if isinstance(getattr(exc, "orig", None), psycopg.errors.UndefinedTable):
        return "the recon database is not migrated: run `./recon db migrate` (python -m recon db migrate)"
    if isinstance(exc, ReconViewTimeout) or "timeout" in reason:
        return f"the recon database is too slow to answer now: {reason}; try again later"
    return "the recon database cannot be reached; see the API server log"


def recon_database() -> Database:
    """The recon database of an Airflow server process, with the web timeouts and a pool as large
    as the view's and the API's threads (resolved on first use; a failed resolution is tried again
    next time)."""
    global _database
    with _lock:
        if _database is None:
            resolved = resolve_database(allow_embedded=False)
            threads = settings.web_threads() + settings.api_write_threads()
            _database = Database(
                resolved.url, resolved.source, settings.web_database_timeouts(),
                pool_size=threads, max_overflow=0, pool_timeout=settings.web_request_timeout_seconds(),
            )
        return _database


_listener_database: Database | None = None


def listener_database() -> Database:
    """The recon database of the scheduler's run-note listener: one connection, the listener's short
    timeouts (it runs inside the scheduling loop), no wait for a pooled connection beyond them."""
    global _listener_database
    with _lock:
        if _listener_database is None:
            resolved = resolve_database(allow_embedded=False)
            timeouts = settings.listener_database_timeouts()
            _listener_database = Database(resolved.url, resolved.source, timeouts, pool_size=1, max_overflow=0,
                                          pool_timeout=max(timeouts.connect, 1))
        return _listener_database


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


async def query_recon(query: Callable[[Connection], T]) -> T:
    """:func:`read_recon` of `query` on one transaction's connection (reads that must agree, such as a
    page of accounts and their balances)."""

    def in_transaction(db: Database) -> T:
        with db.begin() as conn:
            return query(conn)

    return await read_recon(in_transaction)


def _view_limiter() -> anyio.CapacityLimiter:
    global _limiter
    if _limiter is None:  # created in the event loop (anyio needs one); the loop is single-threaded
        _limiter = anyio.CapacityLimiter(settings.web_threads())
    return _limiter


async def write_recon(work: Callable[[Database], T]) -> T:
    """``work(recon_database())`` on the API's write threads.

    Waiting for a thread is bounded by the request deadline (ReconViewTimeout: 503, nothing was
    written); once it runs, it runs to its end, bounded by the database's statement and lock
    timeouts, even if the client goes away: a write is committed and answered, or not done at all.
    """
    global _write_slots, _write_threads
    if _write_slots is None:  # created in the event loop, which is single-threaded
        _write_slots = anyio.CapacityLimiter(settings.api_write_threads())
        _write_threads = anyio.CapacityLimiter(settings.api_write_threads())
    timeout = settings.web_request_timeout_seconds()
    try:
        with anyio.fail_after(timeout):
            await _write_slots.acquire()
    except TimeoutError:
        raise ReconViewTimeout(
            f"no API write thread became free within {timeout} s (RECON_API_WRITE_THREADS,"
            " RECON_WEB_REQUEST_TIMEOUT_SECONDS)"
        ) from None
    try:
        with anyio.CancelScope(shield=True):
            return await anyio.to_thread.run_sync(lambda: work(recon_database()), limiter=_write_threads)
    finally:
        _write_slots.release()
