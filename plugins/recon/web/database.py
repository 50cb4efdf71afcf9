"""The recon database of the API server's web app and the scheduler's run-note listener.

Both run inside Airflow, where the resolver never falls back to an embedded server: the database
is RECON_DATABASE_URL or the Airflow connection ``recon_db`` (asked through Airflow's Connection
API, which reaches the metadata database in server processes), else an error naming ``recon_db``.
"""

from __future__ import annotations

from recon.db import Database, default_database


def recon_database() -> Database:
    """The recon database for an Airflow server process (resolved once, then cached)."""
    return default_database(allow_embedded=False)
