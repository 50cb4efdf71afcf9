"""Where Airflow and the Recon view are mounted, for links that work behind any base URL."""

from __future__ import annotations

from fastapi import Request

# The plugin's own constants, defined once in the plugin file (DAG_ID moves to recon.settings).
from recon.settings import DAG_ID, WEB_URL_PREFIX as URL_PREFIX


def airflow_base(request: Request) -> str:
    """Where Airflow is mounted ('' at the root): the plugin app's root_path minus its prefix."""
    root = request.scope.get("root_path", "")
    return root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else root


def page_links(request: Request) -> dict[str, str]:
    """The links every page renders: Airflow, the view itself, the DAG and its trigger endpoint."""
    airflow = airflow_base(request)
    return {
        "airflow": airflow,
        "base": f"{airflow}{URL_PREFIX}",
        "dag_id": DAG_ID,
        "dag_url": f"{airflow}/dags/{DAG_ID}",
        "trigger_api": f"{airflow}/api/v2/dags/{DAG_ID}/dagRuns",
    }
