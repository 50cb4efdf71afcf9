"""The Recon view's own FastAPI app served without Airflow, for tests of the page itself: mounted at
/recon as Airflow mounts it, Airflow's permission check replaced by "anyone may read" (the tests
with a real Airflow check the permissions)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest
import uvicorn
from fastapi import FastAPI

from recon.settings import WEB_URL_PREFIX
from recon.web import database
from recon.web.access import can_read_recon_runs
from recon.web.app import build_app


def view_app(database_url: str, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """The app reading `database_url` (as RECON_DATABASE_URL would in the API server)."""
    monkeypatch.setenv("RECON_DATABASE_URL", database_url)
    monkeypatch.setattr(database, "_database", None)  # resolved again from the environment
    app = build_app()
    app.dependency_overrides[can_read_recon_runs] = lambda: None
    root = FastAPI()
    root.mount(WEB_URL_PREFIX, app)
    return root


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app on a free local port in a thread of this process; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the view's app did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
