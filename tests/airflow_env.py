"""The test session's Airflow environment: a throwaway AIRFLOW_HOME with a SQLite metadata database.

Airflow reads its configuration when it is first imported, so this module sets the environment
at import time. The root tests/conftest.py imports it first, before any test module (the API
tests import the web plugin, which imports airflow) can import airflow.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from recon import settings

AIRFLOW_IMPORTED_EARLY = "airflow" in sys.modules

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="recon-dag-tests-airflow-"))
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)

METADATA_URL = f"sqlite:///{AIRFLOW_HOME}/airflow.db"
os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(settings.PROJECT_ROOT / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": METADATA_URL,
        # the maintenance DAG's `airflow db clean` reads the metadata URL from here
        "RECON_AIRFLOW_METADATA_URL": METADATA_URL,
    }
)
os.environ.pop("AIRFLOW_CONN_RECON_DB", None)  # the db_url fixture's RECON_DATABASE_URL decides
