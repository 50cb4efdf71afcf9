"""Which database the engine uses: RECON_DATABASE_URL > Airflow connection recon_db > embedded server.

Resolving a configured URL never connects, so most of these tests need no server; the ones that
connect use the per-test database.
"""

from __future__ import annotations

import json
import os

import pytest
import sqlalchemy as sa

from recon import cli, settings
from recon.db import (
    Database,
    DatabaseConfigError,
    default_database,
    reset_default_database,
    resolve_database,
    stop_embedded_server,
    to_sqlalchemy_url,
)

pytestmark = pytest.mark.external_ok

SECRET = "s3cret-pw"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Each test states its own configuration; nothing leaks in from the shell or other tests."""
    monkeypatch.delenv("RECON_DATABASE_URL", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_RECON_DB", raising=False)
    reset_default_database()
    yield
    reset_default_database()


# ---- RECON_DATABASE_URL -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        f"postgresql://recon:{SECRET}@db.example:5433/ledger",
        f"postgres://recon:{SECRET}@db.example:5433/ledger",
        f"postgresql+psycopg://recon:{SECRET}@db.example:5433/ledger",
        f"postgresql+psycopg2://recon:{SECRET}@db.example:5433/ledger",
    ],
)
def test_recon_database_url_is_normalised_to_psycopg3(monkeypatch, raw):
    monkeypatch.setenv("RECON_DATABASE_URL", raw)
    resolved = resolve_database()
    assert resolved.source == "RECON_DATABASE_URL"
    url = resolved.url
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "recon", SECRET, "db.example", 5433, "ledger")


def test_recon_database_url_wins_over_the_airflow_connection(monkeypatch):
    monkeypatch.setenv("RECON_DATABASE_URL", "postgresql://chosen@h1/recon")
    monkeypatch.setenv("AIRFLOW_CONN_RECON_DB", "postgres://ignored@h2/recon")
    resolved = resolve_database()
    assert (resolved.url.username, resolved.url.host) == ("chosen", "h1")
    assert resolved.source == "RECON_DATABASE_URL"


def test_query_parameters_reach_the_driver(monkeypatch):
    monkeypatch.setenv("RECON_DATABASE_URL", "postgresql://u@h/db?sslmode=require&application_name=recon")
    assert dict(resolve_database().url.query) == {"sslmode": "require", "application_name": "recon"}


# ---- the Airflow connection recon_db -----------------------------------------------------------------


def test_airflow_connection_as_uri(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_RECON_DB", f"postgres://airflow:{SECRET}@pg.internal:5433/recon?sslmode=require")
    resolved = resolve_database()
    assert resolved.source == "Airflow connection recon_db"
    url = resolved.url
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "airflow", SECRET, "pg.internal", 5433, "recon")
    assert url.query == {"sslmode": "require"}


@pytest.mark.parametrize("extra", [{"sslmode": "require"}, json.dumps({"sslmode": "require"})])
def test_airflow_connection_as_json(monkeypatch, extra):
    """Airflow's JSON form: `schema` is the database name, `extra` a dict or a JSON string."""
    connection = {
        "conn_type": "postgres", "login": "airflow", "password": SECRET,
        "host": "pg.internal", "port": 5433, "schema": "recon", "extra": extra,
    }
    monkeypatch.setenv("AIRFLOW_CONN_RECON_DB", json.dumps(connection))
    resolved = resolve_database()
    assert resolved.source == "Airflow connection recon_db"
    url = resolved.url
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "airflow", SECRET, "pg.internal", 5433, "recon")
    assert url.query == {"sslmode": "require"}
    assert SECRET not in resolved.display


@pytest.mark.parametrize(
    "value, message",
    [
        ('{"conn_type": "postgres", "host": ', "neither a URI nor valid JSON"),
        ('{"conn_type": "postgres", "host": "h", "extra": "{not json"}', "extra"),
        (json.dumps({"conn_type": "mysql", "login": "u", "password": SECRET, "host": "h"}), "needs PostgreSQL"),
        (f"mysql://u:{SECRET}@h/db", "needs PostgreSQL"),
    ],
)
def test_unusable_airflow_connection_is_a_clear_error(monkeypatch, value, message):
    monkeypatch.setenv("AIRFLOW_CONN_RECON_DB", value)
    with pytest.raises(DatabaseConfigError, match=message) as caught:
        resolve_database()
    assert "AIRFLOW_CONN_RECON_DB" in str(caught.value) or "Airflow connection recon_db" in str(caught.value)
    assert SECRET not in str(caught.value)


# ---- bad URLs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, backend",
    [
        (f"mysql://recon:{SECRET}@db.example/ledger", "mysql"),
        (f"mysql+pymysql://recon:{SECRET}@db.example/ledger", "mysql"),
        ("sqlite:///recon.db", "sqlite"),
        (f"mssql+pyodbc://recon:{SECRET}@db.example/ledger", "mssql"),
    ],
)
def test_a_non_postgresql_url_is_rejected_with_a_clear_message(monkeypatch, raw, backend):
    monkeypatch.setenv("RECON_DATABASE_URL", raw)
    with pytest.raises(DatabaseConfigError) as caught:
        resolve_database()
    message = str(caught.value)
    assert "RECON_DATABASE_URL" in message  # says what to fix
    assert "needs PostgreSQL" in message and repr(backend) in message
    assert SECRET not in message


@pytest.mark.parametrize("raw", ["not a url", f"postgresql://recon:{SECRET}@db.example:notaport/ledger"])
def test_an_unparseable_url_is_rejected_without_echoing_its_password(raw):
    with pytest.raises(DatabaseConfigError, match="not a database URL") as caught:
        to_sqlalchemy_url(raw)
    assert SECRET not in str(caught.value)


def test_the_cli_reports_a_bad_url_as_an_error_without_a_traceback_or_password(monkeypatch, capsys):
    monkeypatch.setenv("RECON_DATABASE_URL", f"mysql://recon:{SECRET}@db.example/ledger")
    assert cli.main(["db", "migrate"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("recon: error: RECON_DATABASE_URL: the recon engine needs PostgreSQL")
    assert "Traceback" not in err
    assert SECRET not in out + err


# ---- display never shows the password ---------------------------------------------------------------------


def test_display_names_the_database_and_its_source_but_never_the_password(monkeypatch):
    monkeypatch.setenv("RECON_DATABASE_URL", f"postgresql://recon:{SECRET}@db.example:5433/ledger")
    resolved = resolve_database()
    database = Database(resolved.url, resolved.source)
    for display in (resolved.display, database.display):
        assert SECRET not in display
        assert "recon:***@db.example:5433/ledger" in display
        assert display.endswith("(from RECON_DATABASE_URL)")
    database.dispose()


def test_cli_announces_the_database_without_its_password(monkeypatch, capsys):
    """`db url` (without --show-password) and every command's announcement hide the password."""
    monkeypatch.setenv("RECON_DATABASE_URL", f"postgresql://recon:{SECRET}@db.example:5433/ledger")
    cli._announce_database()  # announcing only renders the URL; it does not log in
    assert cli.main(["db", "url"]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert "recon: database " in err and "(from RECON_DATABASE_URL)" in err


# ---- connecting --------------------------------------------------------------------------------------------


def test_database_begin_commits_on_success_and_rolls_back_on_error(db):
    with db.begin() as conn:
        conn.execute(sa.text("CREATE TABLE scratch (n int)"))
        conn.execute(sa.text("INSERT INTO scratch VALUES (1)"))
    with pytest.raises(RuntimeError):
        with db.begin() as conn:
            conn.execute(sa.text("INSERT INTO scratch VALUES (2)"))
            raise RuntimeError("effect failed")
    with db.begin() as conn:
        assert conn.execute(sa.text("SELECT array_agg(n) FROM scratch")).scalar() == [1]


def test_default_database_is_resolved_once_and_reset_on_demand(db_url, monkeypatch):
    first = default_database()
    assert default_database() is first
    assert first.source == "RECON_DATABASE_URL"
    with first.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM process_tracker")).scalar() == 0
    monkeypatch.setenv("RECON_DATABASE_URL", "postgresql://other@elsewhere/db")
    assert default_database() is first  # cached until reset
    reset_default_database()
    assert default_database().url.host == "elsewhere"


@pytest.mark.skipif(
    bool(os.environ.get("RECON_TEST_DATABASE_URL")),
    reason="this run proves the external server; the embedded fallback is covered by the default run",
)
def test_with_nothing_configured_an_embedded_server_is_started(tmp_path, monkeypatch):
    """A fresh machine with only Python: the resolver starts PostgreSQL from the wheel."""
    monkeypatch.setenv("RECON_EMBEDDED_DIR", str(tmp_path / "pgdata"))
    try:
        resolved = resolve_database()
        assert resolved.source == "embedded PostgreSQL"
        assert resolved.url.drivername == "postgresql+psycopg"
        assert settings.embedded_data_dir() == tmp_path / "pgdata"
        database = Database(resolved.url, resolved.source)
        with database.begin() as conn:
            assert conn.execute(sa.text("SELECT current_database()")).scalar() == "recon"
        database.dispose()
        assert resolve_database().url == resolved.url  # a second call reuses the running server
    finally:
        assert stop_embedded_server() is True
    assert stop_embedded_server() is False
