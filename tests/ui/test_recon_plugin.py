"""The Recon plugin in a real Airflow: it loads, its JSON equals the database, anonymous gets nothing.

The api-server runs as a subprocess on a temporary AIRFLOW_HOME with its metadata on the test
PostgreSQL server and this project's plugins/ and dags/; the recon database is the module's
seeded one (through the recon_db connection, as in a deployment).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
from psycopg import sql

from recon import ledger
from recon.settings import PROJECT_ROOT
from tests.ui.airflow_harness import AirflowServer, _clean_environment, running_airflow
from tests.ui.seed import LEASE_OWNER, MISMATCH_ORDER, SeededBooks

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

ENDPOINTS = [
    "/recon/api/queue",
    "/recon/api/throughput",
    "/recon/api/exceptions",
    "/recon/api/ledger",
    "/recon/api/settlements",
    "/recon/api/overview",
    "/recon/api/runs/recon_process_tracker/manual__seed-2",
    "/recon/",
    "/recon/runs/recon_process_tracker/manual__seed-2",
]


def test_airflow_plugins_lists_the_recon_plugin_without_import_errors(tmp_path: Path) -> None:
    env = _clean_environment()
    env.update(
        AIRFLOW_HOME=str(tmp_path),
        AIRFLOW__CORE__PLUGINS_FOLDER=str(PROJECT_ROOT / "plugins"),
        AIRFLOW__CORE__DAGS_FOLDER=str(PROJECT_ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path}/airflow.db",
    )
    env.pop("PYTHONPATH", None)  # Airflow itself must put plugins/ on sys.path for `import recon`
    result = subprocess.run(
        [sys.executable, "-m", "airflow", "plugins", "--output", "json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Failed to import plugin" not in output and "could not be built" not in output, output[-3000:]
    plugins = {p["name"]: p for p in json.loads(result.stdout[result.stdout.index("[") :])}
    recon = plugins["recon"]
    assert recon["source"].endswith("recon_ui.py")
    assert [(a["url_prefix"], a["app"]) for a in recon["fastapi_apps"]] == [("/recon", "fastapi.applications.FastAPI")]
    views = {v["name"]: v for v in recon["external_views"]}
    assert (views["Recon"]["destination"], views["Recon"]["url_route"], views["Recon"]["href"]) == ("nav", "recon", "/recon/")
    assert views["Recon summary"]["destination"] == "dag_run"
    assert views["Recon summary"]["href"] == "/recon/runs/{DAG_ID}/{RUN_ID}"


@pytest.fixture(scope="module")
def api_server(seeded: SeededBooks, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowServer]:
    home = tmp_path_factory.mktemp("airflow-api")
    with running_airflow(["api-server"], home, pg_admin_url, seeded.url, "recon-plugin-api-server.log") as server:
        yield server


def test_the_running_api_server_reports_the_plugin_and_no_import_errors(api_server: AirflowServer) -> None:
    plugins = api_server.call("GET", "/api/v2/plugins")["plugins"]
    assert "recon" in {p["name"] for p in plugins}
    errors = api_server.call("GET", "/api/v2/plugins/importErrors")
    assert errors["total_entries"] == 0, errors


def test_queue_endpoint_equals_the_database(api_server: AirflowServer, seeded: SeededBooks) -> None:
    q = api_server.call("GET", "/recon/api/queue")
    by_status = dict(seeded.rows("SELECT status, count(*) FROM process_tracker GROUP BY status"))
    assert {s: n for s, n in q["by_status"].items() if n} == by_status
    assert len(by_status) == 5  # every status is seeded
    assert q["total"] == seeded.scalar("SELECT count(*) FROM process_tracker")
    assert q["due_now"] == seeded.scalar(
        "SELECT count(*) FROM process_tracker WHERE status IN ('PENDING', 'RETRY') AND run_after <= now()")
    assert q["leases"]["held"] == by_status["PROCESSING"]
    assert [o["lease_owner"] for o in q["leases"]["owners"]] == [LEASE_OWNER]
    retry = seeded.rows("SELECT task_id, run_after FROM process_tracker WHERE status = 'RETRY'")
    assert [(t["task_id"], t["next_due_at"]) for t in q["retry"]["tasks"]] == [
        (r.task_id, r.run_after.isoformat()) for r in retry]


def test_exceptions_endpoint_equals_the_database_and_filters(api_server: AirflowServer, seeded: SeededBooks) -> None:
    ex = api_server.call("GET", "/recon/api/exceptions")
    groups = dict(seeded.rows(
        "SELECT metadata ->> 'error_type', count(*) FROM staging_entries WHERE status = 'NEEDS_MANUAL_REVIEW' GROUP BY 1"))
    assert {g["error_type"]: g["count"] for g in ex["manual_review"]["groups"]} == groups
    reasons = dict(seeded.rows(
        "SELECT staging_entry_id, metadata ->> 'error' FROM staging_entries WHERE status = 'NEEDS_MANUAL_REVIEW'"))
    assert {e["staging_entry_id"]: e["reason"] for e in ex["manual_review"]["entries"]} == reasons
    failed = dict(seeded.rows("SELECT task_id, last_error FROM process_tracker WHERE status = 'FAILED'"))
    assert {t["task_id"]: t["last_error"] for t in ex["failed_tasks"]["tasks"]} == failed

    query = urllib.parse.urlencode({"order_id": MISMATCH_ORDER})
    one = api_server.call("GET", f"/recon/api/exceptions?{query}")["manual_review"]
    assert [(e["order_id"], e["error_type"], e["amount"]) for e in one["entries"]] == [
        (MISMATCH_ORDER, "MismatchError", "249.0000")]  # money as an exact string
    status, body = api_server.request("GET", "/recon/api/exceptions?limit=0")
    assert status == 422, body


def test_ledger_endpoint_equals_the_database(api_server: AirflowServer, seeded: SeededBooks) -> None:
    lg = api_server.call("GET", "/recon/api/ledger")
    expected = {b.account_id: (str(b.posted), str(b.pending), str(b.available)) for b in ledger.balances(db=seeded.db)}
    assert {b["account_id"]: (b["posted"], b["pending"], b["available"]) for b in lg["balances"]} == expected
    assert any(Decimal(p) != 0 for p, _, _ in expected.values())
    mismatch = [r[0] for r in seeded.rows("SELECT transaction_id FROM transactions WHERE status = 'MISMATCH'")]
    assert [t["transaction_id"] for t in lg["mismatch"]["transactions"]] == mismatch
    assert lg["mismatch"]["count"] == len(mismatch) == 1


def test_throughput_and_run_endpoints_equal_the_recorded_runs(api_server: AirflowServer, seeded: SeededBooks) -> None:
    tp = api_server.call("GET", "/recon/api/throughput")
    recorded = seeded.rows("SELECT run_id, processed, backlog FROM run_summaries ORDER BY recorded_at")
    assert [(r["run_id"], r["processed"], r["backlog"]) for r in tp["runs"]] == [tuple(r) for r in recorded]
    run = api_server.call("GET", "/recon/api/runs/recon_process_tracker/manual__seed-2")
    assert run["summary"]["claimed"] == 3 and "**3 claimed**" in run["markdown"]
    status, _ = api_server.request("GET", "/recon/api/runs/recon_process_tracker/no-such-run")
    assert status == 404


def test_the_html_view_shows_the_database_figures(api_server: AirflowServer, seeded: SeededBooks) -> None:
    """The page is a shell; each section comes rendered from its JSON endpoint (`html=1`)."""
    status, shell = api_server.request("GET", "/recon/", headers={"Accept": "text/html"})
    assert status == 200 and 'data-src="/recon/api/exceptions"' in shell, shell
    html = ""
    for name in ("queue", "throughput", "exceptions", "ledger"):
        status, body = api_server.request("GET", f"/recon/api/{name}?html=1")
        assert status == 200, body
        html += body["html"]
    for state, n in seeded.rows("SELECT status, count(*) FROM process_tracker GROUP BY status"):
        assert f'data-testid="status-{state}">{n}<' in html
    for error_type, n in seeded.rows(
        "SELECT metadata ->> 'error_type', count(*) FROM staging_entries WHERE status = 'NEEDS_MANUAL_REVIEW' GROUP BY 1"
    ):
        assert f'data-testid="review-count-{error_type}">{n}<' in html
    assert "amount: expected 250.0000, got 249.0000" in html
    assert 'action="/api/v2/dags/recon_process_tracker/dagRuns"' in html  # the pre-filled trigger posts to Airflow
    assert 'href="/dags/recon_process_tracker/runs/manual__seed-2"' in html


def test_anonymous_requests_get_no_data(api_server: AirflowServer, seeded: SeededBooks) -> None:
    secrets_of_the_books = [r[0] for r in seeded.rows("SELECT staging_entry_id FROM staging_entries")]
    for path in ENDPOINTS:
        for headers in ({"Accept": "application/json"}, {"Accept": "text/html"}):
            status, body = api_server.request("GET", path, token=None, headers=headers)
            text = json.dumps(body) if not isinstance(body, str) else body
            assert not any(s in text for s in secrets_of_the_books), (path, text[:500])
            if headers["Accept"] == "text/html" and "/api/" not in path:
                assert status == 303, (path, status)  # a browser is sent to Airflow's login page
            else:
                assert status == 401, (path, status, body)
        status, body = api_server.request("GET", path, token="not-a-jwt")
        assert status in (401, 403) and "stg_" not in json.dumps(body), (path, status, body)


def test_anonymous_browser_is_sent_to_the_login_page(api_server: AirflowServer) -> None:
    status, _ = api_server.request("GET", "/recon/?error_type=MismatchError", token=None, headers={"Accept": "text/html"})
    assert status == 303
    import urllib.request

    req = urllib.request.Request(api_server.base_url + "/recon/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # follows the redirect
        assert "/auth/login" in resp.url and "next=" in resp.url


def test_a_viewer_may_read_the_view(api_server: AirflowServer) -> None:
    token = api_server.login("viewer", json.loads(
        (api_server.home / "simple_auth_manager_passwords.json.generated").read_text())["viewer"])
    status, body = api_server.request("GET", "/recon/api/queue", token=token)
    assert status == 200 and body["total"] > 0


def test_an_unmigrated_database_gets_a_clear_503(api_server: AirflowServer, seeded: SeededBooks) -> None:
    with seeded.db.begin() as c:
        c.exec_driver_sql("ALTER TABLE run_summaries RENAME TO run_summaries_hidden")
    try:
        status, body = api_server.request("GET", "/recon/api/throughput")
        assert status == 503 and "not migrated" in body["detail"] and "recon db migrate" in body["detail"], body
        assert "postgresql://" not in json.dumps(body)
    finally:
        with seeded.db.begin() as c:
            c.exec_driver_sql("ALTER TABLE run_summaries_hidden RENAME TO run_summaries")
    assert api_server.request("GET", "/recon/api/throughput")[0] == 200


@pytest.mark.parametrize("path", [
    "/recon/api/exceptions?order_id=a%00b",
    "/recon/api/overview?q=%00",
    "/recon/?error_type=Mismatch%00Error",
    "/recon/api/runs/recon_process_tracker/run%00id",
    "/recon/runs/recon_process%00tracker/manual__seed-2",
])
def test_a_nul_byte_in_a_filter_or_run_id_is_a_422(api_server: AirflowServer, path: str) -> None:
    status, body = api_server.request("GET", path)
    assert status == 422, (path, status, body)


def test_a_locked_recon_database_costs_the_view_503s_never_airflows_own_api(
    api_server: AirflowServer, seeded: SeededBooks
) -> None:
    """45 concurrent Recon requests against a locked process_tracker: each gets a 503 within its
    deadline (lock timeout, or the request deadline while queued for the view's few threads), and
    /api/v2/version keeps answering meanwhile: the view never holds the API server's shared threads."""
    with psycopg.connect(seeded.url) as holder, ThreadPoolExecutor(max_workers=45) as pool:
        holder.execute("LOCK TABLE process_tracker IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        recon = [pool.submit(answered_in, api_server, "/recon/api/queue") for _ in range(45)]
        version_answers = []
        while not all(f.done() for f in recon):
            version_answers.append(answered_in(api_server, "/api/v2/version"))
            time.sleep(0.25)  # pacing the probe, not waiting for a condition
        results = [f.result() for f in recon]
        held_for = time.monotonic() - started
    assert Counter(status for status, _, _ in results) == {503: 45}, results
    assert all("try again later" in body["detail"] for _, body, _ in results), results[:3]
    assert max(seconds for _, _, seconds in results) < 15 + 10  # the request deadline (default) + slack
    assert len(version_answers) >= 5 and held_for > 3, (version_answers, held_for)  # probed while blocked
    assert {status for status, _, _ in version_answers} == {200}
    assert max(seconds for _, _, seconds in version_answers) < 3, version_answers
    assert api_server.request("GET", "/recon/api/queue")[0] == 200  # the lock is gone: the view is back


def test_a_database_that_refuses_connections_is_a_503(
    api_server: AirflowServer, seeded: SeededBooks, pg_admin_url: str
) -> None:
    name = seeded.db.url.database
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        try:  # the view's pooled connections go too: it must open new ones, which are refused
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            for path in ("/recon/api/queue", "/recon/api/ledger?html=1"):
                status, body = api_server.request("GET", path)
                assert status == 503 and "cannot be reached" in json.dumps(body), (path, status, body)
            # the page's shell reads nothing: it still paints, and each section says it could not load
            status, shell = api_server.request("GET", "/recon/", headers={"Accept": "text/html"})
            assert status == 200 and 'data-state="loading"' in shell, (status, shell)
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
    assert api_server.request("GET", "/recon/api/queue")[0] == 200


def answered_in(server: AirflowServer, path: str) -> tuple[int, object, float]:
    started = time.monotonic()
    status, body = server.request("GET", path)
    return status, body, time.monotonic() - started


def test_the_generated_passwords_file_is_readable_by_its_owner_only(api_server: AirflowServer) -> None:
    path = api_server.home / "simple_auth_manager_passwords.json.generated"
    assert json.loads(path.read_text())["admin"]  # Airflow wrote the password into the file we created
    assert path.stat().st_mode & 0o777 == 0o600, oct(path.stat().st_mode)
