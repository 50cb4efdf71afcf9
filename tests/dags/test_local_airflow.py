"""recon.local_airflow: the configuration `./recon demo` and `./recon ui` give Airflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recon import local_airflow
from tests import databases
from tests.dags.conftest import PROJECT
from tests.dags.seed import Seed


def test_metadata_url_uses_psycopg2_and_keeps_the_socket_directory():
    url = local_airflow.airflow_sqlalchemy_url("postgresql://postgres:@/airflow?host=/tmp/pg%20data")
    assert url == "postgresql+psycopg2://postgres:@/airflow?host=%2Ftmp%2Fpg+data"
    assert local_airflow.airflow_sqlalchemy_url("postgresql+psycopg://u:p@db:5432/af").startswith(
        "postgresql+psycopg2://u:p@db:5432/af"
    )
    with pytest.raises(local_airflow.AirflowSetupError):
        local_airflow.airflow_sqlalchemy_url("sqlite:////tmp/airflow.db")


def test_environment_points_airflow_at_this_project(tmp_path: Path):
    base = {"PATH": os.environ["PATH"]}
    env = local_airflow.airflow_environment(
        home=tmp_path, metadata_url="postgresql+psycopg2://a@/airflow?host=/s", recon_url="postgresql://r@/recon",
        port=18123, base=base,
    )
    assert env["AIRFLOW_HOME"] == str(tmp_path)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(PROJECT / "dags")
    assert env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(PROJECT / "plugins")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://a@/airflow?host=/s"
    assert "RECON_AIRFLOW_METADATA_URL" not in env  # tasks are not given the metadata database's password
    assert env["AIRFLOW_CONN_RECON_DB"] == "postgresql://r@/recon"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://localhost:18123/execution/"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"  # not every interface, Airflow's default
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(PROJECT / "plugins"), str(PROJECT)]
    # one JWT secret for every process, stable across calls
    again = local_airflow.airflow_environment(home=tmp_path, metadata_url="x", recon_url="y", base=base)
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == again["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 32
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o077 == 0
    # and one Fernet key: trigger arguments written by the dag-processor are read by the triggerer
    from cryptography.fernet import Fernet

    assert env["AIRFLOW__CORE__FERNET_KEY"] == again["AIRFLOW__CORE__FERNET_KEY"]
    Fernet(env["AIRFLOW__CORE__FERNET_KEY"].encode())  # a valid key
    assert (tmp_path / "fernet_key").stat().st_mode & 0o077 == 0


def test_user_settings_win(tmp_path: Path):
    base = {"AIRFLOW__CORE__LOAD_EXAMPLES": "True", "RECON_DATABASE_URL": "postgresql://mine@/db",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://meta@/m", "AIRFLOW__API__HOST": "0.0.0.0"}
    env = local_airflow.airflow_environment(home=tmp_path, base=base)
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "True" and env["AIRFLOW__API__HOST"] == "0.0.0.0"
    assert "AIRFLOW_CONN_RECON_DB" not in env  # RECON_DATABASE_URL decides
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://meta@/m"
    assert local_airflow.recon_url_of(env) == "postgresql://mine@/db"


@pytest.mark.slow
@pytest.mark.airflow
def test_run_dag_once_on_postgresql_metadata(tmp_path: Path, pg_admin_url: str, db_url: str):
    """What `./recon demo` does: a fresh process configures Airflow, migrates, runs dag.test, returns the summary."""
    seed = Seed(db_url)
    tasks = [seed.stage("acc_bank", "DEBIT", "5.00", "TRANSACTION", f"once-{i}")[1] for i in range(3)]
    metadata_db = databases.create_empty_database(pg_admin_url)
    try:
        metadata_url = local_airflow.airflow_sqlalchemy_url(databases.libpq_url(pg_admin_url, metadata_db))
        code = (
            "import json, sys\n"
            "from recon import local_airflow\n"
            "summary = local_airflow.run_dag_once({'chunk_size': 2}, home=sys.argv[1], metadata_url=sys.argv[2],"
            " recon_url=sys.argv[3])\n"
            "print('SUMMARY ' + json.dumps(summary))\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "RECON_DATABASE_URL"}
        env["PYTHONPATH"] = os.pathsep.join([str(PROJECT / "plugins"), str(PROJECT)])
        result = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "airflow"), metadata_url, db_url],
            capture_output=True, text=True, env=env, timeout=600,
        )
    finally:
        databases.drop_database(pg_admin_url, metadata_db)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("SUMMARY ")][-1]
    summary = json.loads(line.removeprefix("SUMMARY "))
    assert summary["claimed"] == 3 and summary["booked"] == 3 and summary["completed"] == 3
    assert [seed.task(t)["status"] for t in tasks] == ["COMPLETED"] * 3
    assert (tmp_path / "airflow" / "metadata_migrated").exists()


@pytest.mark.slow
@pytest.mark.airflow
def test_recon_airflow_passes_commands_through(tmp_path: Path, db_url: str):
    """`./recon airflow dags report` parses this project's DAGs (metadata migrated on first use)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(tmp_path),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path}/airflow.db",
        RECON_DATABASE_URL=db_url,
        PYTHONPATH=os.pathsep.join([str(PROJECT / "plugins"), str(PROJECT)]),
    )
    result = subprocess.run(
        [sys.executable, "-m", "recon", "airflow", "dags", "report", "--output", "json"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("[{")))
    assert {dag for file in report for dag in file["dags"]} == {"recon_process_tracker", "recon_maintenance"}
    assert (tmp_path / "metadata_migrated").exists()
