"""Which database the engine uses: one resolver for the CLI, the DAGs, local Airflow and the UI.

In this order:
1. ``RECON_DATABASE_URL`` (``postgres://``, ``postgresql://`` and ``postgresql+psycopg://`` URLs);
2. the Airflow connection ``recon_db``, asked through Airflow's own Connection API (its secrets
   backends: ``AIRFLOW_CONN_RECON_DB``, the metadata database, a vault...);
3. an embedded PostgreSQL server (``recon.db.embedded``), except for DAG tasks and the UI plugin
   (``allow_embedded=False``): a task that silently used a private embedded database would
   report an empty queue while the real one waits, so there a missing connection is an error
   naming ``recon_db``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url

from recon import settings
from recon.errors import DatabaseConfigError


@dataclass(frozen=True)
class ResolvedDatabase:
    url: URL
    source: str  # where the URL came from, for humans

    @property
    def display(self) -> str:
        return f"{self.url.render_as_string(hide_password=True)} (from {self.source})"


def to_sqlalchemy_url(raw: str) -> URL:
    """Accept postgres://, postgresql:// and postgresql+psycopg:// URLs; always use psycopg 3."""
    try:
        url = make_url(raw.strip())
    except Exception as exc:  # sqlalchemy raises ArgumentError with the URL in it
        raise DatabaseConfigError(f"not a database URL: {_scrub(raw)!r}") from exc
    backend = url.drivername.split("+", 1)[0]
    if backend not in ("postgres", "postgresql"):
        raise DatabaseConfigError(
            f"the recon engine needs PostgreSQL, got a {backend!r} URL: "
            f"{url.render_as_string(hide_password=True)}"
        )
    return url.set(drivername="postgresql+psycopg")


def libpq_url(url: str | URL, database: str | None = None) -> str:
    """`url` as a plain postgresql:// URL with its password, for psycopg and other tools;
    with `database`, the URL of that database on the same server."""
    url = to_sqlalchemy_url(url) if isinstance(url, str) else url
    if database is not None:
        url = url.set(database=database)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _scrub(raw: str) -> str:
    """Hide a password in a string that failed to parse as a URL."""
    if "@" in raw and "://" in raw:
        scheme, rest = raw.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return raw


def airflow_connection_uri() -> str | None:
    """The ``recon_db`` connection as a URI, or None when Airflow does not define it.

    Asked through Airflow's Connection API when this process has Airflow loaded (a task, the API
    server, the scheduler) or ``AIRFLOW_CONN_RECON_DB`` is set. Airflow logs and skips a
    connection it cannot parse as if it did not exist; a malformed ``AIRFLOW_CONN_RECON_DB`` or a
    secrets backend that fails is an error naming the connection here, never a silent fall-back.
    """
    env_name = f"AIRFLOW_CONN_{settings.AIRFLOW_CONNECTION_ID.upper()}"
    env_value = os.environ.get(env_name, "").strip()
    if env_value:
        _check_connection_json(env_name, env_value)
    elif "airflow" not in sys.modules:
        return None  # no Airflow in this process to ask, and no connection in the environment
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = Connection.get(settings.AIRFLOW_CONNECTION_ID)
    except AirflowNotFoundException:
        return None
    except Exception as exc:
        raise DatabaseConfigError(
            f"the Airflow connection {settings.AIRFLOW_CONNECTION_ID!r} cannot be read:"
            f" {type(exc).__name__}: {exc}"
        ) from exc
    return connection.get_uri() if connection is not None else None


def connection_value_uri(value: str, name: str = "AIRFLOW_CONN_RECON_DB") -> str:
    """An ``AIRFLOW_CONN_*`` value (a URI or Airflow's JSON form) as a URI, read by Airflow's own
    Connection class (for callers that hold the value, not the connection store)."""
    value = value.strip()
    _check_connection_json(name, value)
    if not value.startswith("{"):
        return value
    from airflow.sdk import Connection

    return Connection.from_json(value, conn_id=settings.AIRFLOW_CONNECTION_ID).get_uri()


def _check_connection_json(env_name: str, value: str) -> None:
    """Refuse a JSON-form connection that Airflow would silently ignore or half-read."""
    if not value.startswith("{"):
        return  # a URI: its scheme and parts are checked once it is a URL
    name = f"the Airflow connection {settings.AIRFLOW_CONNECTION_ID!r} ({env_name})"
    try:
        fields = json.loads(value)
    except json.JSONDecodeError:
        raise DatabaseConfigError(f"{name} is neither a URI nor valid JSON") from None
    extra = fields.get("extra") if isinstance(fields, dict) else None
    if isinstance(extra, str) and extra.strip():
        try:
            json.loads(extra)
        except json.JSONDecodeError:
            raise DatabaseConfigError(f"{name}: 'extra' is not valid JSON") from None


def resolve_database(allow_embedded: bool = True) -> ResolvedDatabase:
    """Where the recon database is (see the module docstring); DAG tasks and the UI plugin pass
    ``allow_embedded=False``."""
    raw = settings.database_url()
    if raw:
        return _resolved(raw, "RECON_DATABASE_URL")
    raw = airflow_connection_uri()
    if raw:
        return _resolved(raw, f"Airflow connection {settings.AIRFLOW_CONNECTION_ID}")
    if not allow_embedded:
        raise DatabaseConfigError(
            f"no recon database configured: define the Airflow connection {settings.AIRFLOW_CONNECTION_ID!r}"
            " (a Postgres connection) or set RECON_DATABASE_URL for every Airflow component"
        )
    from recon.db.embedded import start_embedded_server

    return _resolved(start_embedded_server(), "embedded PostgreSQL")


def _resolved(raw: str, source: str) -> ResolvedDatabase:
    """A bad URL error names where the URL came from, so the user knows what to fix."""
    try:
        return ResolvedDatabase(to_sqlalchemy_url(raw), source)
    except DatabaseConfigError as exc:
        raise DatabaseConfigError(f"{source}: {exc}") from exc
