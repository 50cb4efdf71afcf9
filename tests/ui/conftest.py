"""Fixtures for the Recon view: a seeded recon database shared by a module's read-only tests."""

from __future__ import annotations

from typing import Iterator

import pytest

from recon.db import Database
from tests import databases
from tests.ui.seed import SeededBooks, seed_monitoring_books


@pytest.fixture(scope="module")
def seeded(pg_admin_url: str, pg_template: str) -> Iterator[SeededBooks]:
    """A database seeded with every state the view shows, shared by the module: do not write to it."""
    name = databases.create_test_database(pg_admin_url, pg_template)
    db = Database(databases.libpq_url(pg_admin_url, name), "seeded test database")
    try:
        yield seed_monitoring_books(db)
    finally:
        db.dispose()
        databases.drop_database(pg_admin_url, name)


@pytest.fixture
def books(db: Database) -> SeededBooks:
    """A freshly seeded database of this test's own (for tests that write)."""
    return seed_monitoring_books(db)
