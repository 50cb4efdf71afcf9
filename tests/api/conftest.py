"""The REST API in-process on a real PostgreSQL: the app as the API server builds it, with Airflow's
authentication replaced by a fixed user (the live tests, tests/api/test_api_live.py, use the real one).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.routing import Mount

from recon.db import Database
from recon.web import access, database
from recon import settings
from recon.settings import WEB_URL_PREFIX
from recon.web.api.app import MOUNT_PATH, build_api_app

PRINCIPAL = "producer-1"
REVIEWER = "alice"  # the authenticated user's name: the actor of review decisions


@pytest.fixture
def api(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """A client of the API app on this test's database, as a user who may read and write."""
    # the API server's own connections: the web timeouts (a lock is waited for 2 s, not a minute)
    served = Database(db.url, "the test database", settings.web_database_timeouts())
    monkeypatch.setattr(database, "_database", served)
    for limiter in ("_limiter", "_write_slots", "_write_threads"):  # bound to the client's event loop
        monkeypatch.setattr(database, limiter, None)
    app = build_api_app()
    app.dependency_overrides[access.can_read_recon_runs] = lambda: None
    app.dependency_overrides[access.can_edit_recon_dag] = lambda: None
    app.dependency_overrides[access.caller] = lambda: PRINCIPAL
    app.dependency_overrides[access.reviewer] = lambda: REVIEWER
    server = FastAPI()  # mounted where Airflow's API server has it
    server.mount(WEB_URL_PREFIX + MOUNT_PATH, app)
    with TestClient(server, base_url=f"http://testserver{WEB_URL_PREFIX}{MOUNT_PATH}",
                    raise_server_exceptions=False) as client:
        yield client
    served.dispose()


@contextmanager
def acting_as(client: TestClient, overrides: dict[Any, Any]) -> Iterator[TestClient]:
    """The same client as another user for a while: the API app's dependencies replaced by these
    (none: Airflow's own authentication)."""
    [app] = [r.app for r in client.app.routes if isinstance(r, Mount)]  # the API app, mounted on the test's server
    saved = dict(app.dependency_overrides)
    app.dependency_overrides.clear()
    app.dependency_overrides.update(overrides)
    try:
        yield client
    finally:
        app.dependency_overrides.clear()
        app.dependency_overrides.update(saved)
