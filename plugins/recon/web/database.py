"""Which recon database an Airflow server process (API server, scheduler) reads.

A server process may find the database in Airflow's connection store, which recon.db does not
ask outside a task; the scheduler must never start an embedded server for a run note.
"""

from __future__ import annotations

import os
import threading

from recon.db import Database, default_database

_db_lock = threading.Lock()
_db: Database | None = None


def recon_database(allow_embedded: bool = True) -> Database | None:
    """The recon database for an Airflow server process (API server, scheduler).

    RECON_DATABASE_URL or AIRFLOW_CONN_RECON_DB when set (what recon.db resolves), else the
    ``recon_db`` connection from Airflow's connection store, else recon.db's default (the
    embedded server on a developer machine), unless ``allow_embedded`` is False: then None.
    """
    global _db
    with _db_lock:
        if _db is None:
            if os.environ.get("RECON_DATABASE_URL") or os.environ.get("AIRFLOW_CONN_RECON_DB"):
                _db = default_database()
            elif uri := _connection_store_uri():
                _db = Database(uri, "Airflow connection recon_db")
            elif allow_embedded:
                _db = default_database()
        return _db


def _connection_store_uri() -> str | None:
    try:
        from airflow.models.connection import Connection

        return Connection.get_connection_from_secrets("recon_db").get_uri()
    except Exception:  # AirflowNotFoundException: no such connection
        return None
