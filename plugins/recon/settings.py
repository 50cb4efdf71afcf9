"""Every RECON_* setting and every default, read in one place.

The DAGs, the CLI, the pipeline, the web app and local Airflow all ask this module, so a
default cannot drift between them. Values are read from the environment on each call (tests
and DAG params vary them); a bad value is an error that names the variable. This module
imports nothing heavy: DAG files import it at parse time.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from recon.errors import ConfigurationError

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# ---- names ------------------------------------------------------------------------------------

DAG_ID = "recon_process_tracker"
MAINTENANCE_DAG_ID = "recon_maintenance"
AIRFLOW_CONNECTION_ID = "recon_db"  # the Airflow connection naming the recon database
WEB_URL_PREFIX = "/recon"  # where Airflow's API server mounts the Recon view and its JSON
EMBEDDED_DATABASE_NAME = "recon"
# sql/0006 notifies this channel on every statement that inserts or updates tracker rows, and the
# due-work watcher listens on it: a name fixed by the migration, so not a setting
DUE_WORK_CHANNEL = "recon_due_work"
DUE_WORK_ASSET = "recon_due_work"  # the Airflow asset whose watcher starts the tracker DAG
DUE_WORK_WATCHER_NAME = "recon due-work watcher"  # its connection's application_name (pg_stat_activity)
EVENT_SCHEDULE = "event"  # RECON_SCHEDULE value: due work wakes the DAG (plus a safety-net schedule)
DEFAULT_WAKE_DEBOUNCE_SECONDS = 0.2

# ---- batch shape --------------------------------------------------------------------------------

# Fewer, larger chunks: each chunk is three Airflow task instances, and a chunk's cost per entry
# is flat from about 2,000 up; a batch of two chunks lets two workers share the CPUs. A chunk is
# held in memory whole: a DAG worker's peak RSS was 421 MiB at 15,000 entries, 555 at 25,000,
# 759 at 40,000 and 988 at 100,000 (about 13.6 KiB per entry), so the largest chunk allowed is
# the largest measured to fit the ~450 MiB budget per worker (bench/RESULTS.md, issue 19).
DEFAULT_BATCH_SIZE = 25_000
DEFAULT_CHUNK_SIZE = 12_500
MAX_BATCH_SIZE = 1_000_000
MAX_CHUNK_SIZE = 15_000
MAX_CHUNKS = 1_024  # Airflow's [core] max_map_length
# a reprocess dry run's entries listed in its XCom and run summary (its claim log lists every one)
DRY_RUN_ENTRIES_SHOWN = 50


def int_env(name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer setting from the environment; a bad value is an error that names the variable."""
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{name} must be <= {maximum}, got {value}")
    return value


def float_env(name: str, default: float, minimum: float = 0.0, maximum: float | None = None) -> float:
    """A number setting from the environment; a bad value is an error that names the variable."""
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigurationError(f"{name} must be a finite number >= {minimum}, got {raw!r}")
    if maximum is not None and value > maximum:
        raise ConfigurationError(f"{name} must be <= {maximum}, got {raw}")
    return value


def _text_env(name: str, default: str | None = None) -> str | None:
    raw = os.environ.get(name, "").strip()
    return raw or default


def batch_size() -> int:
    """Most tasks one run claims (the DAG param's and `recon process`'s default)."""
    return int_env("RECON_BATCH_SIZE", DEFAULT_BATCH_SIZE, minimum=1, maximum=MAX_BATCH_SIZE)


def chunk_size() -> int:
    """Tasks per chunk (decide -> validate -> run)."""
    return int_env("RECON_CHUNK_SIZE", DEFAULT_CHUNK_SIZE, minimum=1, maximum=MAX_CHUNK_SIZE)


# ---- the Process Tracker ----------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed attempt is tried again: exponential backoff with jitter, up to max_attempts."""

    max_attempts: int = 5
    base_seconds: int = 10
    max_seconds: int = 3600

    @classmethod
    def from_env(cls) -> "RetryPolicy":
        return cls(
            max_attempts=int_env("RECON_MAX_ATTEMPTS", cls.max_attempts, minimum=1),
            base_seconds=int_env("RECON_RETRY_BASE_SECONDS", cls.base_seconds),
            max_seconds=int_env("RECON_RETRY_MAX_SECONDS", cls.max_seconds),
        )


def lease_seconds() -> int:
    """How long a claim stays valid before the reaper may rescue it."""
    return int_env("RECON_LEASE_SECONDS", 600, minimum=1)


def matching_window_seconds() -> int:
    """How long an unmatched confirmation waits (in RETRY) for the order it confirms."""
    return int_env("RECON_MATCHING_WINDOW_SECONDS", 0)


# ---- the DAGs -----------------------------------------------------------------------------------


def _schedule_env(name: str, default: str) -> str | None:
    raw = _text_env(name, default) or default
    return None if raw.lower() in ("none", "manual") else raw


def schedule() -> str | None:
    """How the tracker DAG starts: ``event`` (default: due work wakes it within seconds, plus the
    safety-net schedule), a cron expression (time only: a run per tick, found work or not), or
    ``none``/``manual`` for manual runs only."""
    return _schedule_env("RECON_SCHEDULE", EVENT_SCHEDULE)


def safety_net_schedule() -> str | None:
    """The cron that also starts the tracker DAG in ``event`` mode, for a triggerer that is down;
    ``none`` for none. A run on an empty queue is 7 task instances, so every two hours keeps an
    idle deployment under four task instances an hour."""
    return _schedule_env("RECON_SAFETY_NET_SCHEDULE", "0 */2 * * *")


def wake_debounce_seconds() -> float:
    """How long the due-work watcher gathers further notifications after the first one before it
    looks at the queue: one look for a burst of small inserts. It adds to the time to the first claim."""
    return float_env("RECON_WAKE_DEBOUNCE_SECONDS", DEFAULT_WAKE_DEBOUNCE_SECONDS, maximum=60.0)


def max_active_runs() -> int:
    """Concurrent runs of the tracker DAG (claims stay safe with more than one)."""
    return int_env("RECON_MAX_ACTIVE_RUNS", 2, minimum=1)


CHUNK_POOL = "recon_chunks"  # the Airflow pool of the chunk tasks (decide, validate, run)
CHUNK_SLOT_MEMORY_MIB = 420  # peak resident memory of one chunk task at the default chunk size (README)


def chunk_queue() -> str:
    """RECON_CHUNK_QUEUE (recon): the executor queue of the chunk tasks. The CeleryExecutor sends them
    to the workers that listen on it (`airflow celery worker --queues default,recon`); the
    LocalExecutor ignores queues."""
    return _text_env("RECON_CHUNK_QUEUE", "recon") or "recon"


def chunk_pool_slots() -> int:
    """RECON_CHUNK_POOL_SLOTS (4): chunk tasks running at once across every run and worker; each slot
    needs about CHUNK_SLOT_MEMORY_MIB on its worker. Set when the pool is created (init, ./recon ui)."""
    return int_env("RECON_CHUNK_POOL_SLOTS", 4, minimum=1)


def max_active_chunk_runs() -> int:
    """RECON_MAX_ACTIVE_CHUNK_RUNS (4): `chunk.run` instances at once over all runs of the DAG
    (max_active_tis_per_dag): the writers, which hold row locks."""
    return int_env("RECON_MAX_ACTIVE_CHUNK_RUNS", 4, minimum=1)


def dagrun_timeout_minutes() -> int:
    """RECON_DAGRUN_TIMEOUT_MINUTES (120): a tracker run still going after this is failed (alert)."""
    return int_env("RECON_DAGRUN_TIMEOUT_MINUTES", 120, minimum=1)


def deadline_minutes() -> int:
    """RECON_DEADLINE_MINUTES (60): a tracker run not finished this long after it was queued raises a
    deadline alert (it keeps running)."""
    return int_env("RECON_DEADLINE_MINUTES", 60, minimum=1)


def alert_email() -> str | None:
    """RECON_ALERT_EMAIL: comma-separated recipients of failure and deadline mails; unset: no mail."""
    return _text_env("RECON_ALERT_EMAIL")


def alert_smtp_conn_id() -> str:
    """RECON_ALERT_SMTP_CONN_ID (smtp_default): the Airflow SMTP connection the mails go through."""
    return _text_env("RECON_ALERT_SMTP_CONN_ID", "smtp_default") or "smtp_default"


def statsd_address() -> tuple[str, int] | None:
    """RECON_STATSD_HOST:RECON_STATSD_PORT (8125) for the engine's own metrics; unset host: none."""
    host = _text_env("RECON_STATSD_HOST")
    return (host, int_env("RECON_STATSD_PORT", 8125, minimum=1, maximum=65535)) if host else None


def statsd_prefix() -> str:
    """RECON_STATSD_PREFIX (recon): the engine's metric names start with it."""
    return _text_env("RECON_STATSD_PREFIX", "recon") or "recon"


def task_retries() -> int:
    """Airflow retries of a task that hit an infrastructure error (see errors.RETRYABLE_ERRORS)."""
    return int_env("RECON_TASK_RETRIES", 2)


def task_retry_delay_seconds() -> int:
    return int_env("RECON_TASK_RETRY_DELAY_SECONDS", 30)


def maintenance_schedule() -> str | None:
    """RECON_MAINTENANCE_SCHEDULE (@daily); `none` for manual runs only."""
    return _schedule_env("RECON_MAINTENANCE_SCHEDULE", "@daily")


def tracker_retention_days() -> int:
    """COMPLETED tracker rows older than this are pruned by the maintenance DAG."""
    return int_env("RECON_TRACKER_RETENTION_DAYS", 30)


def prune_batch_size() -> int:
    """RECON_PRUNE_BATCH_SIZE (5000): tracker rows deleted per transaction by the prune."""
    return int_env("RECON_PRUNE_BATCH_SIZE", 5_000, minimum=1)


# ---- databases ----------------------------------------------------------------------------------


def database_url() -> str | None:
    """RECON_DATABASE_URL: the recon database; wins over the Airflow connection and the embedded server."""
    return _text_env("RECON_DATABASE_URL")


def airflow_metadata_url() -> str | None:
    """RECON_AIRFLOW_METADATA_URL: Airflow's own database for `./recon ui` (default: the embedded server)."""
    return _text_env("RECON_AIRFLOW_METADATA_URL")


def order_id_pattern() -> str | None:
    """RECON_ORDER_ID_PATTERN: a regular expression that finds an order id in a bank line's
    remittance text (the group named `order_id`, else group 1, else the whole match); unset: none."""
    return _text_env("RECON_ORDER_ID_PATTERN")


def embedded_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data (git-ignored)."""
    return Path(_text_env("RECON_EMBEDDED_DIR") or PROJECT_ROOT / ".recon" / "pgdata")


# ---- database timeouts --------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseTimeouts:
    """How long a recon database connection may wait, in seconds (0: no limit).

    ``connect``: to open a connection (libpq connect_timeout; psycopg's own default is 130 s);
    ``statement``: for one statement (PostgreSQL statement_timeout, which also ends a query whose
    client went away); ``lock``: for one lock (lock_timeout: a statement queued behind a locked
    table fails instead of hanging). Each comes from ``<prefix>_<KIND>_TIMEOUT_SECONDS``.
    """

    connect: int
    statement: int
    lock: int
    prefix: str = "RECON_DB"

    def setting(self, kind: str) -> str:
        """The environment variable of one timeout (kind: connect, statement or lock)."""
        return f"{self.prefix}_{kind.upper()}_TIMEOUT_SECONDS"

    @classmethod
    def from_env(cls, prefix: str, connect: int, statement: int, lock: int) -> "DatabaseTimeouts":
        defaults = cls(connect, statement, lock, prefix)
        return cls(*(int_env(defaults.setting(k), getattr(defaults, k)) for k in ("connect", "statement", "lock")),
                   prefix=prefix)


def database_timeouts() -> DatabaseTimeouts:
    """The engine's timeouts (CLI, DAG tasks, library): RECON_DB_CONNECT_TIMEOUT_SECONDS (10),
    RECON_DB_STATEMENT_TIMEOUT_SECONDS (300), RECON_DB_LOCK_TIMEOUT_SECONDS (60).

    The largest single statement measured is a maximum-size chunk's write on tables of a million
    rows: seconds, not minutes (bench/RESULTS.md), so 300 s leaves room for a loaded machine yet
    ends a runaway query. 60 s for a lock outlasts another worker's chunk transaction holding a
    row this chunk needs (seconds each). Migrations lift both for their own session.
    """
    return DatabaseTimeouts.from_env("RECON_DB", connect=10, statement=300, lock=60)


def web_database_timeouts() -> DatabaseTimeouts:
    """The Recon view's timeouts (API server, run-note listener): RECON_WEB_DB_CONNECT_TIMEOUT_SECONDS
    (3), RECON_WEB_DB_STATEMENT_TIMEOUT_SECONDS (10), RECON_WEB_DB_LOCK_TIMEOUT_SECONDS (2).

    Every query of the view is one indexed read or aggregate (well under a second on a million
    rows); a view that waits longer only holds a thread of Airflow's API server.
    """
    return DatabaseTimeouts.from_env("RECON_WEB_DB", connect=3, statement=10, lock=2)


def listener_database_timeouts() -> DatabaseTimeouts:
    """The run-note listener's timeouts: RECON_LISTENER_DB_CONNECT_TIMEOUT_SECONDS (2),
    RECON_LISTENER_DB_STATEMENT_TIMEOUT_SECONDS (2), RECON_LISTENER_DB_LOCK_TIMEOUT_SECONDS (1).

    The listener runs inside the scheduler's loop: every second it waits, no DAG is scheduled.
    Its one query reads a row by primary key."""
    return DatabaseTimeouts.from_env("RECON_LISTENER_DB", connect=2, statement=2, lock=1)


# ---- the Recon view -----------------------------------------------------------------------------


def web_threads() -> int:
    """RECON_WEB_THREADS (4): Recon view requests whose database work runs at once, on threads of
    the view's own; never on the API server's shared thread pool, which Airflow's endpoints need."""
    return int_env("RECON_WEB_THREADS", 4, minimum=1, maximum=64)


def web_request_timeout_seconds() -> int:
    """RECON_WEB_REQUEST_TIMEOUT_SECONDS (15): longest a Recon view request waits for a thread and its
    queries; past it the answer is 503 (a slow or overloaded recon database), not a hung request."""
    return int_env("RECON_WEB_REQUEST_TIMEOUT_SECONDS", 15, minimum=1)


# ---- the REST API (/recon/api/v1) -----------------------------------------------------------------

MAX_API_UPLOAD_BYTES = 2 * 1024**3  # the CLI's own limit on a statement file (recon.ingest.csv.MAX_FILE_BYTES)


def api_write_threads() -> int:
    """RECON_API_WRITE_THREADS (2): REST API writes (creations, uploads) running at once, on threads of
    their own beside the view's readers, so a long upload never takes a reader's thread. A write
    that waits longer than RECON_WEB_REQUEST_TIMEOUT_SECONDS for one gets a 503."""
    return int_env("RECON_API_WRITE_THREADS", 2, minimum=1, maximum=64)


def api_max_body_bytes() -> int:
    """RECON_API_MAX_BODY_BYTES (32 MiB): largest JSON request body. A batch of 10,000 staging entries
    with a little metadata each is about 3 MiB; a larger body is refused (413) before it is parsed."""
    return int_env("RECON_API_MAX_BODY_BYTES", 32 * 1024**2, minimum=1024)


def api_max_upload_bytes() -> int:
    """RECON_API_MAX_UPLOAD_BYTES (256 MiB, at most the CLI's 2 GiB): largest statement upload. The file
    streams to a temporary file as it arrives and is refused (413) once it passes the limit."""
    return int_env("RECON_API_MAX_UPLOAD_BYTES", 256 * 1024**2, minimum=1024, maximum=MAX_API_UPLOAD_BYTES)


def api_idempotency_retention_hours() -> int:
    """RECON_API_IDEMPOTENCY_RETENTION_HOURS (24): how long an Idempotency-Key's answer is kept for
    replays; the maintenance DAG forgets older ones."""
    return int_env("RECON_API_IDEMPOTENCY_RETENTION_HOURS", 24, minimum=1)
