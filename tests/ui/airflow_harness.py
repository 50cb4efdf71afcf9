"""A real Airflow for the tests: metadata on the test PostgreSQL server, our dags/plugins.

One harness for every real-Airflow test: `airflow standalone` (api-server, scheduler,
dag-processor and triggerer in one process group), or an api-server plus components started one
by one (`components=[["scheduler"], ["triggerer"], ...]`), each its own process group that a test
can kill and start again (e.g. the triggerer), all with one environment.

Airflow runs in subprocesses only (its configuration is read once per process, and the DAG
tests configure the pytest process for themselves). A migrated metadata template database is
built once per Airflow version and copied for each server, so a server starts without a
`db migrate`. Waiting is bounded polling of the processes' HTTP endpoints or of a database.
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
# the airflow command of a component -> its key in /api/v2/monitor/health
HEALTH_NAMES = {"scheduler": "scheduler", "triggerer": "triggerer", "dag-processor": "dag_processor"}
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
    """A database migrated by `airflow db migrate` for the installed Airflow, with the chunk pool;
    built once per server."""
    # "+pool": templates built before the chunk pool existed lack it
    name = "airflow_tpl_" + hashlib.sha256(f"{version('apache-airflow-core')}+pool".encode()).hexdigest()[:10]
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
            local_airflow.ensure_chunk_pool(env)  # as `./recon ui` and the compose init do
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(building), sql.Identifier(name)))
            return name
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (AIRFLOW_TEMPLATE_LOCK_KEY,))


def create_metadata_database(admin_url: str) -> str:
    """A fresh, migrated Airflow metadata database (a copy of the template); returns its name."""
    return databases.create_test_database(admin_url, airflow_metadata_template(admin_url))


@dataclass
class AirflowServer:
    """The Airflow processes we started (api-server or standalone, plus separately started
    components), and how to talk to them."""

    base_url: str
    home: Path
    log_path: Path
    process: subprocess.Popen
    token: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # every process's environment
    components: dict[str, subprocess.Popen] = field(default_factory=dict)  # "scheduler", "triggerer", ...
    stopped: set[str] = field(default_factory=set)  # components a test stopped on purpose

    def start_component(self, command: list[str]) -> subprocess.Popen:
        """`airflow COMMAND` as its own process group, logging to HOME/<command>.log (appended)."""
        name = " ".join(command)
        self.components[name] = _spawn(command, self.env, self.home, self.home / f"{name.replace(' ', '-')}.log")
        self.stopped.discard(name)
        return self.components[name]

    def kill_component(self, name: str, sig: int = signal.SIGKILL, timeout: float = 60) -> None:
        """Signal a component's whole process group and wait until its leader has exited."""
        process = self.components[name]
        self.stopped.add(name)
        _signal_group(process, sig)
        process.wait(timeout=timeout)
        _signal_group(process, signal.SIGKILL)  # stragglers (a triggerer's runner subprocess)

    def _exited(self) -> str | None:
        if self.process.poll() is not None:
            return f"airflow exited ({self.process.returncode})"
        for name, process in self.components.items():
            if name not in self.stopped and process.poll() is not None:
                return f"airflow {name} exited ({process.returncode})"
        return None

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
            if exited := self._exited():
                pytest.fail(f"{exited} while waiting for {what}:\n{self.log_tail()}")
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

    def wait_for_components(self, timeout: float = STARTUP_TIMEOUT_S) -> dict[str, Any]:
        """Airflow's health report once every component running (as we started it) reports healthy."""
        running = set(HEALTH_NAMES) if "standalone" in self.process.args else set(self.components) - self.stopped
        wanted = sorted(HEALTH_NAMES[c] for c in running if c in HEALTH_NAMES)

        def healthy() -> Any:
            status, health = self.request("GET", "/api/v2/monitor/health", token=None)
            ok = status == 200 and all((health.get(c) or {}).get("status") == "healthy" for c in wanted)
            return health if ok else None

        return self.wait_for(f"healthy {wanted}", healthy, timeout)

    def log_tail(self, chars: int = 6000) -> str:
        paths = [self.log_path] + [self.home / f"{n.replace(' ', '-')}.log" for n in self.components]
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in paths if p.exists())

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
        """Stop every process group we started: SIGTERM, then SIGKILL after a bounded wait."""
        for process in [*self.components.values(), self.process]:
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM)
                try:
                    process.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    _signal_group(process, signal.SIGKILL)
                    process.wait(timeout=30)
            _signal_group(process, signal.SIGKILL)  # stragglers of the group (workers) go with it


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _spawn(command: list[str], env: dict[str, str], home: Path, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "airflow", *command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
            cwd=str(home),
        )


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
    components: list[list[str]] = (),
) -> AirflowServer:
    """Start `airflow <command>` (and each of `components`, e.g. ["triggerer"]) with this project's
    dags/plugins; returns once /api/v2 answers."""
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
    log_path.unlink(missing_ok=True)
    server = AirflowServer(f"http://127.0.0.1:{port}", home, log_path, _spawn(command, env, home, log_path), env=env)
    try:
        for component in components:
            server.start_component(list(component))
        server.wait_for(
            "the api-server", lambda: server.request("GET", "/api/v2/monitor/health", token=None)[0] == 200,
            STARTUP_TIMEOUT_S,
        )
    except BaseException:
        server.stop()
        raise
    return server


def save_log(server: AirflowServer, name: str) -> None:
    """The main log as test-artifacts/<name>; each component's as <name stem>-<component>.log."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if server.log_path.exists():
        (ARTIFACTS / name).write_bytes(server.log_path.read_bytes())
    for component in server.components:
        path = server.home / f"{component.replace(' ', '-')}.log"
        if path.exists():
            (ARTIFACTS / f"{Path(name).stem}-{component.replace(' ', '-')}.log").write_bytes(path.read_bytes())


@contextmanager
def running_airflow(
    command: list[str],
    home: Path,
    pg_admin_url: str,
    recon_url: str,
    artifact_name: str,
    extra_env: dict[str, str] | None = None,
    components: list[list[str]] = (),
) -> Iterator[AirflowServer]:
    """`airflow <command>` (plus `components`) on a fresh copy of the migrated metadata template,
    logged in as admin.

    Afterwards the process groups are stopped, their logs saved to test-artifacts/<artifact_name>
    (and <stem>-<component>.log) and the metadata database dropped. The admin password is in
    ``server.extra["password"]``; the metadata database's URL in ``server.extra["metadata_url"]``.
    """
    metadata = create_metadata_database(pg_admin_url)
    server = None
    try:
        server = start_airflow(
            command, home, databases.libpq_url(pg_admin_url, metadata), recon_url,
            extra_env=extra_env, log_name=f"{command[0]}.log", components=components,
        )
        server.extra["metadata_url"] = databases.libpq_url(pg_admin_url, metadata)
        server.extra["password"] = server.admin_password()
        server.token = server.login("admin", server.extra["password"])
        yield server
    finally:
        if server is not None:
            server.stop()
            save_log(server, artifact_name)
        databases.drop_database(pg_admin_url, metadata)
