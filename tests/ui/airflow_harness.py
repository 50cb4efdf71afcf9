"""A real Airflow for the Recon view tests: metadata on the test PostgreSQL server, our dags/plugins.

Airflow runs in subprocesses only (its configuration is read once per process, and the DAG
tests configure the pytest process for themselves). A migrated metadata template database is
built once per Airflow version and copied for each server, so a server starts without a
`db migrate`. Waiting is bounded polling of the processes' HTTP endpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from recon import local_airflow, settings
from tests import databases

AIRFLOW_TEMPLATE_LOCK_KEY = 0x6169726677  # "airfw"
STARTUP_TIMEOUT_S = 240
ARTIFACTS = Path(os.environ.get("RECON_TEST_ARTIFACTS", settings.PROJECT_ROOT / "test-artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_environment() -> dict[str, str]:
    """os.environ without any Airflow or recon setting of the pytest process."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "RECON_DATABASE_URL", "RECON_AIRFLOW", "PYTEST_"))
    }


def airflow_metadata_template(admin_url: str) -> str:
    """A database migrated by `airflow db migrate` for the installed Airflow; built once per server."""
    name = "airflow_tpl_" + hashlib.sha256(version("apache-airflow-core").encode()).hexdigest()[:10]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (AIRFLOW_TEMPLATE_LOCK_KEY,))
        try:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return name
            building = f"{name}_building"
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(building)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(building)))
            env = _clean_environment()
            env.update(
                AIRFLOW_HOME=str(ARTIFACTS / ".airflow-template-home"),
                AIRFLOW__CORE__LOAD_EXAMPLES="False",
                AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=local_airflow.airflow_sqlalchemy_url(
                    databases.libpq_url(admin_url, building)
                ),
            )
            result = subprocess.run(
                [sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True, text=True,
                timeout=600,
            )
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(building), sql.Identifier(name)))
            return name
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (AIRFLOW_TEMPLATE_LOCK_KEY,))


def create_metadata_database(admin_url: str) -> str:
    """A fresh, migrated Airflow metadata database (a copy of the template); returns its name."""
    return databases.create_test_database(admin_url, airflow_metadata_template(admin_url))


@dataclass
class AirflowServer:
    """One Airflow process group (api-server or standalone) we started, and how to talk to it."""

    base_url: str
    home: Path
    log_path: Path
    process: subprocess.Popen
    token: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = "default",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("Accept", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        bearer = self.token if token == "default" else token
        if bearer:
            req.add_header("Authorization", f"Bearer {bearer}")
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=30) as resp:
                return resp.status, _decode(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _decode(exc.read())

    def call(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.request(method, path, body)
        assert 200 <= status < 300, f"{method} {path} -> {status}: {payload}"
        return payload

    def wait_for(self, what: str, probe: Callable[[], Any], timeout: float) -> Any:
        """Poll `probe` (another process's state) every second until truthy, at most `timeout` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"airflow exited ({self.process.returncode}) while waiting for {what}:\n{self.log_tail()}")
            try:
                value = probe()
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                value = None
            if value:
                return value
            time.sleep(1)
        pytest.fail(f"timed out after {timeout}s waiting for {what}; airflow output tail:\n{self.log_tail()}")

    def wait_for_dag(self, dag_id: str, timeout: float) -> dict[str, Any]:
        """The DAG as the API reports it, once the dag-processor has registered it."""

        def registered() -> Any:
            status, dag = self.request("GET", f"/api/v2/dags/{dag_id}")
            return dag if status == 200 else None

        return self.wait_for(f"the dag-processor to register {dag_id}", registered, timeout)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        """The DAG run as the API reports it, once it has finished (success or failed)."""
        path = dag_run_path(dag_id, run_id)

        def finished() -> Any:
            run = self.call("GET", path)
            return run if run["state"] in ("success", "failed") else None

        return self.wait_for(f"run {run_id} to finish", finished, timeout)

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def login(self, username: str, password: str) -> str:
        status, payload = self.request("POST", "/auth/token", {"username": username, "password": password}, token=None)
        assert status == 201, payload
        return payload["access_token"]

    def admin_password(self, timeout: float = 60) -> str:
        """The password `airflow standalone` / the api-server generated for `admin`."""
        path = self.home / "simple_auth_manager_passwords.json.generated"

        def read() -> str | None:
            try:
                return json.loads(path.read_text()).get("admin")
            except (FileNotFoundError, ValueError):
                return None

        return self.wait_for(f"the admin password in {path}", read, timeout)

    def stop(self) -> None:
        """Stop the process group we started: SIGTERM, then SIGKILL after a bounded wait."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        try:  # stragglers of the group (workers) go with it
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def dag_run_path(dag_id: str, run_id: str) -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def start_airflow(
    command: list[str],
    home: Path,
    metadata_url: str,
    recon_url: str,
    extra_env: dict[str, str] | None = None,
    log_name: str = "airflow.log",
) -> AirflowServer:
    """Start `airflow <command>` with this project's dags/plugins; returns once /api/v2 answers."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    base = _clean_environment()
    base.update(
        {
            "RECON_SCHEDULE": "none",  # only runs a test triggers may claim tasks
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
            **(extra_env or {}),
        }
    )
    env = local_airflow.airflow_environment(
        home=home,
        metadata_url=local_airflow.airflow_sqlalchemy_url(metadata_url),
        recon_url=recon_url,
        port=port,
        base=base,
    )
    assert "RECON_DATABASE_URL" not in env and env["AIRFLOW_CONN_RECON_DB"] == recon_url
    # `airflow standalone` starts its components as `airflow ...` from PATH: this interpreter's
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_path = home / log_name
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "airflow", *command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
            cwd=str(home),
        )
    server = AirflowServer(f"http://127.0.0.1:{port}", home, log_path, process)
    try:
        server.wait_for(
            "the api-server", lambda: server.request("GET", "/api/v2/monitor/health", token=None)[0] == 200,
            STARTUP_TIMEOUT_S,
        )
    except BaseException:
        server.stop()
        raise
    return server


def save_log(server: AirflowServer, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if server.log_path.exists():
        (ARTIFACTS / name).write_bytes(server.log_path.read_bytes())


@contextmanager
def running_airflow(
    command: list[str],
    home: Path,
    pg_admin_url: str,
    recon_url: str,
    artifact_name: str,
    extra_env: dict[str, str] | None = None,
) -> Iterator[AirflowServer]:
    """`airflow <command>` on a fresh copy of the migrated metadata template, logged in as admin.

    Afterwards the process group is stopped, its log saved to test-artifacts/<artifact_name>
    and its metadata database dropped. The admin password is in ``server.extra["password"]``.
    """
    metadata = create_metadata_database(pg_admin_url)
    server = None
    try:
        server = start_airflow(
            command, home, databases.libpq_url(pg_admin_url, metadata), recon_url,
            extra_env=extra_env, log_name=f"{command[0]}.log",
        )
        server.extra["password"] = server.admin_password()
        server.token = server.login("admin", server.extra["password"])
        yield server
    finally:
        if server is not None:
            server.stop()
            save_log(server, artifact_name)
        databases.drop_database(pg_admin_url, metadata)
