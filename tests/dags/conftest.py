"""Airflow for DAG tests: the session's throwaway AIRFLOW_HOME (tests/airflow_env.py, set before
anything imports airflow), its metadata database migrated once per session (per xdist worker),
and the DAGs loaded from it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from recon import settings
from tests.airflow_env import AIRFLOW_HOME, AIRFLOW_IMPORTED_EARLY

PROJECT = settings.PROJECT_ROOT


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """This session's AIRFLOW_HOME, as long as airflow was first imported after this conftest."""
    if AIRFLOW_IMPORTED_EARLY:
        pytest.fail("airflow was imported before tests/dags/conftest.py could point it at a test AIRFLOW_HOME (tests/airflow_env.py)")
    from airflow.configuration import AIRFLOW_HOME as configured

    assert Path(configured) == AIRFLOW_HOME
    return AIRFLOW_HOME


@pytest.fixture(scope="session")
def airflow_metadata(airflow_home: Path) -> Path:
    """A migrated Airflow metadata database (SQLite) for this session."""
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], capture_output=True, text=True, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return AIRFLOW_HOME


def load_dags() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT / "dags"))


@pytest.fixture
def dagbag(airflow_home: Path) -> Any:
    return load_dags()


@pytest.fixture
def tracker_dag(dagbag: Any) -> Any:
    assert not dagbag.import_errors, dagbag.import_errors
    return dagbag.dags["recon_process_tracker"]


@pytest.fixture
def maintenance_dag(dagbag: Any) -> Any:
    assert not dagbag.import_errors, dagbag.import_errors
    return dagbag.dags["recon_maintenance"]


def task_instances(run_id: str) -> list[Any]:
    """(task_id, map_index, state, rendered_map_index) of one run, from the metadata DB."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(TaskInstance)
            .filter(TaskInstance.run_id == run_id)
            .order_by(TaskInstance.task_id, TaskInstance.map_index)
            .all()
        )
        return [
            (ti.task_id, ti.map_index, getattr(ti.state, "value", ti.state), ti.rendered_map_index) for ti in rows
        ]


@pytest.fixture
def run_dag(airflow_metadata: Path, tracker_dag: Any, db_url: str) -> Iterator[Any]:
    """Run recon_process_tracker once with dag.test() on the test's recon database."""
    from recon.local_airflow import read_summary

    def run(conf: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        dag_run = tracker_dag.test(run_conf=conf or {}, **kwargs)
        dag_run.summary = read_summary(dag_run.run_id)
        dag_run.tis = task_instances(dag_run.run_id)
        return dag_run

    yield run
