"""`python -m bench` at a small size completes, writes its JSON, and every mode's books balance.

Its speed is not checked here (figures come from full runs: bench/RESULTS.md). The run uses
the test server, databases named rt_bench_<random>_*, dropped afterwards, and an Airflow
metadata database kept on the test server between runs so it is migrated only once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from recon import settings

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

ROOT = settings.PROJECT_ROOT
ENTRIES = 2_000


def test_bench_runs_at_a_small_size_and_the_books_balance(pg_admin_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    prefix = f"rt_bench_{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AIRFLOW") and k not in ("RECON_DATABASE_URL", "RECON_AIRFLOW_METADATA_URL")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "plugins"), str(ROOT)])
    command = [
        sys.executable, "-m", "bench", "--entries", str(ENTRIES), "--serial-entries", "300",
        "--noop-tasks", "3000", "--noop-rounds", "1", "--server-url", pg_admin_url, "--prefix", prefix,
        "--airflow-home", str(ROOT / ".recon" / "test-bench-airflow"), "--airflow-db", "recon_bench_tests_airflow",
        "--scheduler", "--probes", "1", "--idle-minutes", "0.1",  # the real-scheduler mode, briefly
        "--json", str(out),
    ]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "targets:" in done.stdout

    results = json.loads(out.read_text())
    assert set(results["modes"]) == {"dag", "inprocess", "serial", "raw"}
    for mode, result in results["modes"].items():
        outcomes = result["outcomes"]
        assert result["problems"] == [], (mode, result["problems"])
        assert outcomes["books_balance"], (mode, outcomes["invariants"])
        assert sum(outcomes["staging"].values()) == result["processed"], mode
        assert set(outcomes["tasks"]) <= {"COMPLETED", "FAILED"}, mode
        assert any(Decimal(b) > 0 for b in outcomes["fee_balances"].values()), mode  # checked against Σ fees
    assert results["workload"]["mix"]["with_fees"] > 0  # settled payments carrying a PSP fee (issue 15)
    scheduled = results["scheduler"]  # drained by runs the due-work watcher started, books checked
    assert scheduled["problems"] == [] and scheduled["outcomes"]["books_balance"], scheduled["problems"]
    assert scheduled["processed"] == ENTRIES and scheduled["runs"] >= 2
    assert len(scheduled["probes"]) == 1 and scheduled["ingest_to_claim_median_s"] > 0
    assert scheduled["idle"]["empty_run_task_instances"] > 0
    assert results["modes"]["dag"]["processed"] == ENTRIES
    assert results["noop"]["api"]["tasks"] == results["noop"]["raw"]["tasks"] == 3000
    assert set(results["summary"]["targets"]) >= {"dag_vs_serial", "dag_vs_raw", "noop_api_vs_raw", "peak_rss_mib"}
