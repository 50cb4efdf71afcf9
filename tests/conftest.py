"""Shared fixtures: a real PostgreSQL database per test (see tests/databases.py)."""

from __future__ import annotations

from tests import airflow_env  # noqa: F401  (first: sets AIRFLOW_HOME before anything imports airflow)

from typing import Iterator

import pytest

from recon.db import Database, reset_default_database
from recon.settings import RetryPolicy
from recon.tracker import ProcessTracker
from tests import databases


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return databases.server_admin_url()


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> str:
    return databases.ensure_template(pg_admin_url)


@pytest.fixture
def db_url(pg_admin_url: str, pg_template: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh migrated database; also the process default (RECON_DATABASE_URL) for this test."""
    name = databases.create_test_database(pg_admin_url, pg_template)
    url = databases.libpq_url(pg_admin_url, name)
    monkeypatch.setenv("RECON_DATABASE_URL", url)
    reset_default_database()
    try:
        yield url
    finally:
        reset_default_database()
        databases.drop_database(pg_admin_url, name)


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A database with no schema at all (for migration tests)."""
    name = databases.create_empty_database(pg_admin_url)
    try:
        yield databases.libpq_url(pg_admin_url, name)
    finally:
        databases.drop_database(pg_admin_url, name)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url, "test")
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def retry_policy() -> RetryPolicy:
    return RetryPolicy(max_attempts=3, base_seconds=10, max_seconds=60)


@pytest.fixture
def tracker(db: Database, retry_policy: RetryPolicy) -> ProcessTracker:
    return ProcessTracker(db, retry_policy)
