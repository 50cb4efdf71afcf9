"""A local Airflow for this project: run the DAG once in-process, or start the UI.

Airflow reads its configuration from the environment when it is first imported, so
:func:`configure` must run before anything imports ``airflow`` in this process (the CLI
commands below do that). What it sets:

- ``AIRFLOW_HOME``: ``.recon/airflow`` in the project (git-ignored), or a given directory;
- metadata database: the database ``airflow`` on the embedded PostgreSQL server (or
  ``RECON_AIRFLOW_METADATA_URL``), through psycopg2 as Airflow expects;
- ``dags/`` and ``plugins/`` of this project, no example DAGs, LocalExecutor;
- the connection ``recon_db`` (``AIRFLOW_CONN_RECON_DB``) pointing at the recon database the
  resolver in :mod:`recon.db` chooses;
- one JWT secret and one Fernet key shared by every Airflow process, kept in
  ``AIRFLOW_HOME/jwt_secret`` and ``AIRFLOW_HOME/fernet_key`` (0600);
- the simple auth manager's passwords file created 0600 before Airflow writes a password into it;
- the api-server listening on 127.0.0.1 only.

Values already in the environment win, so a user can point any of them elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from recon import settings
from recon.errors import ConfigurationError

DAG_ID = settings.DAG_ID
DEFAULT_HOME = settings.PROJECT_ROOT / ".recon" / "airflow"
DAGS_FOLDER = settings.PROJECT_ROOT / "dags"
PLUGINS_FOLDER = settings.PROJECT_ROOT / "plugins"
METADATA_DATABASE = "airflow"


class AirflowSetupError(ConfigurationError):
    """Airflow cannot be configured or started as asked."""


def airflow_sqlalchemy_url(libpq_url: str) -> str:
    """A PostgreSQL URL in the form Airflow's metadata engine wants (psycopg2 driver).

    The unix-socket directory of the embedded server stays in the query string
    (``?host=/path``), which psycopg2 and asyncpg (Airflow's async engine) both accept.
    """
    from recon.db import DatabaseConfigError, to_sqlalchemy_url

    try:
        url = to_sqlalchemy_url(libpq_url)
    except DatabaseConfigError as exc:
        raise AirflowSetupError(f"Airflow metadata database: {exc}") from None
    return url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def default_metadata_url() -> str:
    """RECON_AIRFLOW_METADATA_URL, else the database `airflow` on the embedded server."""
    raw = settings.airflow_metadata_url()
    if raw:
        return airflow_sqlalchemy_url(raw)
    from recon.db import start_embedded_server

    return airflow_sqlalchemy_url(start_embedded_server(METADATA_DATABASE))


def default_recon_url() -> str:
    """The recon database as a plain libpq URL (what the resolver in recon.db would pick)."""
    from recon.db import libpq_url, resolve_database

    return libpq_url(resolve_database().url)


def _home_secret(home: Path, name: str, new_value: Callable[[], str]) -> str:
    """A secret kept in AIRFLOW_HOME/<name> (mode 600), made on first use."""
    path = home / name
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(new_value())
    return path.read_text().strip()


def _private_passwords_file(env: Mapping[str, str], home: Path) -> None:
    """Create the simple auth manager's passwords file readable by its owner only (0600).

    Airflow writes the generated admin password into it with the process umask (usually 0644:
    readable by every local user); it opens an existing file for appending, which keeps its mode.
    """
    path = Path(env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
                or home / "simple_auth_manager_passwords.json.generated")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)  # an older file, written before this existed


def _jwt_secret(home: Path) -> str:
    return _home_secret(home, "jwt_secret", lambda: secrets.token_urlsafe(64))


def _fernet_key(home: Path) -> str:
    """Airflow encrypts connections and trigger arguments with it: every process needs the same key
    (processes that each generate their own cannot read each other's trigger rows)."""
    return _home_secret(home, "fernet_key", lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())


def airflow_environment(
    home: Path | None = None,
    metadata_url: str | None = None,
    recon_url: str | None = None,
    port: int | None = None,
    base: Mapping[str, str] | None = None,
    host: str | None = None,
) -> dict[str, str]:
    """The complete environment for Airflow processes of this project (``base`` + our settings).

    Settings already present in ``base`` (default: ``os.environ``) are kept.
    """
    env = dict(os.environ if base is None else base)
    home = Path(home or env.get("AIRFLOW_HOME") or DEFAULT_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    pythonpath = [str(PLUGINS_FOLDER), str(settings.PROJECT_ROOT)]
    if env.get("PYTHONPATH"):
        pythonpath += [p for p in env["PYTHONPATH"].split(os.pathsep) if p and p not in pythonpath]

    ours: dict[str, str] = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API_AUTH__JWT_SECRET": _jwt_secret(home),
        # a developer's UI: this machine only (Airflow's default is every interface)
        "AIRFLOW__API__HOST": "127.0.0.1",
        # LocalExecutor starts `parallelism` worker processes (default 32): one per core is plenty here
        "AIRFLOW__CORE__PARALLELISM": str(max(2, os.cpu_count() or 1)),
        "AIRFLOW__CORE__FERNET_KEY": _fernet_key(home),
        # the UI is for watching and triggering: a new DAG runs without an extra click
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # pick up edits to dags/ quickly on a developer machine
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
    }
    if "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env:
        ours["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = metadata_url or default_metadata_url()
    if "AIRFLOW_CONN_RECON_DB" not in env and "RECON_DATABASE_URL" not in env:
        ours["AIRFLOW_CONN_RECON_DB"] = recon_url or default_recon_url()
    forced = {"AIRFLOW_HOME", "AIRFLOW__API_AUTH__JWT_SECRET"}
    if host is not None:  # `recon ui --host` wins over the environment
        ours["AIRFLOW__API__HOST"] = host
        forced.add("AIRFLOW__API__HOST")
    if port is not None:  # an explicit port wins over the environment
        api = {
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
        }
        ours.update(api)
        forced.update(api)
    for key, value in ours.items():
        if key in forced or key not in env:
            env[key] = value
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    _private_passwords_file(env, home)
    # `airflow standalone` starts its components as `airflow ...` from PATH: use this interpreter's
    bin_dir = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *path])
    return env


def configure(home: Path | None = None, **kwargs: Any) -> dict[str, str]:
    """Put this project's Airflow settings into os.environ (before `airflow` is imported)."""
    env = airflow_environment(home, **kwargs)
    if "airflow" in sys.modules and os.environ.get("AIRFLOW_HOME") != env["AIRFLOW_HOME"]:
        raise AirflowSetupError(
            "airflow was imported before recon.local_airflow.configure(); "
            "its configuration can no longer change in this process"
        )
    os.environ.update(env)
    for entry in reversed(env["PYTHONPATH"].split(os.pathsep)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    return env


def _airflow_version() -> str:
    from importlib.metadata import version

    return version("apache-airflow-core")


def _migration_stamp(env: Mapping[str, str]) -> str:
    key = f"{_airflow_version()}|{env['AIRFLOW__DATABASE__SQL_ALCHEMY_CONN']}"
    return hashlib.sha256(key.encode()).hexdigest()


def airflow_command(args: list[str]) -> list[str]:
    """`airflow ARGS` run with this interpreter (no PATH lookup needed)."""
    return [sys.executable, "-m", "airflow", *args]


def ensure_metadata_migrated(env: Mapping[str, str]) -> bool:
    """Run `airflow db migrate` once per Airflow version and metadata database; True if it ran."""
    home = Path(env["AIRFLOW_HOME"])
    stamp_file = home / "metadata_migrated"
    stamp = _migration_stamp(env)
    if stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        return False
    result = subprocess.run(
        airflow_command(["db", "migrate"]), env=dict(env), capture_output=True, text=True
    )
    if result.returncode != 0:
        raise AirflowSetupError(f"airflow db migrate failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    stamp_file.write_text(stamp)
    return True


def ensure_chunk_pool(env: Mapping[str, str]) -> None:
    """Create (or resize) the pool of the chunk tasks: the scheduler never queues a task whose pool
    does not exist. RECON_CHUNK_POOL_SLOTS slots of about 420 MiB each."""
    slots = str(settings.chunk_pool_slots())
    description = f"recon chunk tasks: one slot needs about {settings.CHUNK_SLOT_MEMORY_MIB} MiB on its worker"
    result = subprocess.run(
        airflow_command(["pools", "set", settings.CHUNK_POOL, slots, description]),
        env=dict(env), capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise AirflowSetupError(f"airflow pools set {settings.CHUNK_POOL} failed:\n{result.stderr[-3000:]}")


def recon_url_of(env: Mapping[str, str]) -> str:
    """The recon database Airflow's tasks will use with this environment."""
    from recon.db.resolve import connection_value_uri

    if env.get("RECON_DATABASE_URL"):
        return env["RECON_DATABASE_URL"]
    if env.get("AIRFLOW_CONN_RECON_DB"):
        return connection_value_uri(env["AIRFLOW_CONN_RECON_DB"])
    raise AirflowSetupError("neither RECON_DATABASE_URL nor AIRFLOW_CONN_RECON_DB is set")


def ensure_recon_schema(env: Mapping[str, str]) -> list[str]:
    """Apply pending sql/ migrations to the recon database the DAG will use."""
    from recon.db import Database
    from recon.db.migrations import migrate

    db = Database(recon_url_of(env), "recon_db")
    try:
        return migrate(db)
    finally:
        db.dispose()


def load_dag(dag_id: str = DAG_ID):
    """The DAG object parsed from dags/ (raises with the import error if it does not parse)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if bag.import_errors:
        raise AirflowSetupError(f"DAG import errors: {json.dumps(bag.import_errors, indent=2)}")
    if dag_id not in bag.dags:
        raise AirflowSetupError(f"no DAG {dag_id!r} in {DAGS_FOLDER}; found {sorted(bag.dags)}")
    return bag.dags[dag_id]


def run_dag_once(
    conf: Mapping[str, Any] | None = None,
    home: Path | None = None,
    quiet: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run recon_process_tracker once in this process (``dag.test``) and return its summary.

    Raises AirflowSetupError when the run does not succeed (the summary, if any, is in the message).
    """
    if quiet:
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
    env = configure(home, **kwargs)
    ensure_metadata_migrated(env)
    ensure_recon_schema(env)
    dag = load_dag()
    dag_run = dag.test(run_conf=dict(conf or {}))
    summary = read_summary(dag_run.run_id)
    if dag_run.state != "success":
        raise AirflowSetupError(f"DAG run {dag_run.run_id} ended {dag_run.state}; summary: {summary}")
    return summary or {}


def read_summary(run_id: str, dag_id: str = DAG_ID) -> dict[str, Any] | None:
    """The summary task's XCom of one run, read from the metadata database."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        for key in ("return_value", "summary"):
            query = XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids="summary", key=key)
            row = session.scalars(query).first()
            if row is not None:
                value = XComModel.deserialize_value(row)
                return json.loads(value) if isinstance(value, str) else value
    return None


def airflow_cli(args: list[str], home: Path | None = None) -> int:
    """`airflow ARGS` with this project's configuration; returns its exit code."""
    env = airflow_environment(home)
    ensure_metadata_migrated(env)
    return subprocess.call(airflow_command(list(args) or ["--help"]), env=env)


def standalone(home: Path | None = None, port: int = 8080, host: str | None = None) -> int:
    """`airflow standalone` with this project's configuration (blocks until Ctrl-C)."""
    env = airflow_environment(home, port=port, host=host)
    ensure_metadata_migrated(env)
    ensure_recon_schema(env)
    ensure_chunk_pool(env)
    home_dir = Path(env["AIRFLOW_HOME"])
    print(f"recon: Airflow UI on http://{env['AIRFLOW__API__HOST']}:{port} (DAG {DAG_ID})", file=sys.stderr)
    print(
        "recon: user admin; its password is in "
        f"{home_dir / 'simple_auth_manager_passwords.json.generated'} (written on first start)",
        file=sys.stderr,
    )
    print(f"recon: AIRFLOW_HOME={home_dir}; stop with Ctrl-C", file=sys.stderr)
    process = subprocess.Popen(airflow_command(["standalone"]), env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:  # Ctrl-C reached airflow too: let it shut its components down
        return process.wait()
