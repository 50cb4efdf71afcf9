"""(s) The DAG where users run it: ``airflow standalone`` (api-server, scheduler, dag-processor,
triggerer; LocalExecutor) with the project's DAGs, started by ``./recon bench --scheduler``.

One Airflow for the whole benchmark, on a fresh Airflow metadata database (a copy of a migrated
template kept between runs), with the DAG in its default ``event`` mode. Each round's drain runs
right after that round's ``dag.test()`` drain, on a fresh copy of the workload swapped in under
the database name the ``recon_db`` connection points at; then, once:

- **drain** (every round): the TRANSACTION lines are held back while Airflow starts, then
  released in one statement; the due-work watcher starts the runs, nothing else does (no
  trigger, and the safety-net tick, if one falls in, finds the queue already handled). When they
  are drained the CONFIRMATION lines are released the same way. Entries/s = entries over the
  time from the first release to the last task finished (database clock);
- **ingest -> first claim**: ``--probes`` small ingests (10 lines each, one transaction) into
  the idle system, one after the other; the median delay from the ingest's transaction to the
  first claim of its tasks;
- **idle cost**: task instances created over ``--idle-minutes`` with nothing due, per hour, plus
  what the safety-net schedule adds: its runs per hour times the task instances of one run on an
  empty queue (measured on the run Airflow starts for the schedule's latest tick at startup).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import psycopg

from bench import workload
from bench.cpu import process_group_cpu
from bench.databases import database_name
from recon import local_airflow, settings
from recon.db import Database
from recon.staging import NewStagingEntry, insert_staging_entries

HELD_BACK = "9999-01-01 00:00:00+00"  # run_after of the TRANSACTION lines until the drain starts
STARTUP_TIMEOUT_S = 300
DRAIN_TIMEOUT_S = 1800
PROBE_LINES = 10
POLL_S = 0.2
HEALTHY = ("scheduler", "triggerer", "dag_processor")


def start(bench: Any, template: str) -> "Airflow":
    """airflow standalone over a fresh copy of the workload (every line held back) and a fresh
    metadata database; returns once the watcher listens and no run is active."""
    args = bench.args
    url = _held_back_copy(bench, template)
    metadata = _fresh_metadata(bench)
    home = args.airflow_home.with_name(args.airflow_home.name + "-scheduler")
    port = _free_port()
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "RECON_DATABASE_URL", "RECON_AIRFLOW"))}
    base.update(RECON_SCHEDULE=settings.EVENT_SCHEDULE, RECON_BATCH_SIZE=str(args.batch_size),
                RECON_CHUNK_SIZE=str(args.chunk_size), AIRFLOW__LOGGING__LOGGING_LEVEL="WARNING")
    env = local_airflow.airflow_environment(home=home, metadata_url=local_airflow.airflow_sqlalchemy_url(metadata),
                                            recon_url=url, port=port, base=base)
    log_path = home / "standalone.log"
    bench.log(f"scheduler: starting airflow standalone (log {log_path})")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(local_airflow.airflow_command(["standalone"]), env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True, cwd=str(home))
    airflow = Airflow(f"http://127.0.0.1:{port}", process, env, log_path, metadata, url)
    try:
        airflow.wait_until_ready()
        airflow.empty_run_tis = airflow.empty_run_task_instances()
    except BaseException:
        airflow.stop(bench)
        raise
    return airflow


def _held_back_copy(bench: Any, template: str) -> str:
    """A fresh copy of the workload (`<prefix>_scheduler`, the database Airflow's recon_db names) with
    the TRANSACTION lines held back like the CONFIRMATION lines, until drain() releases them."""
    url = bench.copy(template, "scheduler")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE process_tracker SET run_after = %s::timestamptz WHERE run_after <> 'infinity'",
                     (HELD_BACK,))
    return url


def finish(airflow: "Airflow", bench: Any, drains: list[dict[str, Any]]) -> dict[str, Any]:
    """The best drain, then the probes and the idle window on the same Airflow; stops it."""
    args = bench.args
    try:
        result = max(drains, key=lambda r: r["entries_per_s"] if not r["problems"] else -1)
        result["rounds"] = [round(r["entries_per_s"]) for r in drains]
        bench.log(f"scheduler: ingest -> first claim, {args.probes} probes")
        result["probes"] = airflow.probes(args.probes)
        result["ingest_to_claim_median_s"] = statistics.median(result["probes"]) if result["probes"] else None
        bench.log(f"scheduler: median ingest -> first claim {result['ingest_to_claim_median_s']:.1f}s;"
                  f" idle for {args.idle_minutes:g} min")
        result["idle"] = airflow.idle(args.idle_minutes * 60, settings.safety_net_schedule())
    finally:
        airflow.stop(bench)
    return result


def _fresh_metadata(bench: Any) -> str:
    """A copy of a migrated Airflow metadata template, `<--airflow-db>_tpl` (migrated on first use, kept)."""
    template = f"{bench.args.airflow_db}_tpl"
    home = bench.args.airflow_home.with_name(bench.args.airflow_home.name + "-template")
    if not bench.server.exists(template):
        (home / "metadata_migrated").unlink(missing_ok=True)  # a stamp of a database that is gone
    template_url = bench.server.ensure(template)
    env = local_airflow.airflow_environment(
        home=home, metadata_url=local_airflow.airflow_sqlalchemy_url(template_url), recon_url=template_url,
        base={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")})
    if local_airflow.ensure_metadata_migrated(env):
        bench.log("scheduler: migrated the Airflow metadata template (first run only)")
    local_airflow.ensure_chunk_pool(env)  # an older template lacks it; the scheduler queues no chunk without it
    name = bench.name("airflow_scheduler")
    bench.created.append(name)
    return bench.server.copy(template, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Airflow:
    """The standalone process group, its health endpoint, and the two databases it works on."""

    def __init__(self, base_url: str, process: subprocess.Popen, env: dict[str, str], log_path: Path,
                 metadata_url: str, recon_url: str):
        self.base_url = base_url
        self.env = env
        self.process = process
        self.log_path = log_path
        self.metadata_url = metadata_url
        self.recon_url = recon_url
        self.empty_run_tis = 0
        self.drains = 0

    def wait_for(self, what: str, probe: Callable[[], Any], timeout: float, interval: float = POLL_S) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"airflow standalone exited ({self.process.returncode}) while waiting for"
                                   f" {what}; see {self.log_path}")
            try:
                value = probe()
            except (OSError, psycopg.OperationalError):
                value = None
            if value:
                return value
            time.sleep(interval)
        raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}; see {self.log_path}")

    def metadata(self, statement: str, *params: Any) -> Any:
        with psycopg.connect(self.metadata_url, autocommit=True) as conn:
            return conn.execute(statement, params).fetchone()

    def recon(self, statement: str, *params: Any) -> Any:
        with psycopg.connect(self.recon_url, autocommit=True) as conn:
            return conn.execute(statement, params).fetchone()

    def wait_until_ready(self, dag_id: str = settings.DAG_ID,
                         watcher_name: str = settings.DUE_WORK_WATCHER_NAME) -> None:
        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.base_url}/api/v2/monitor/health", timeout=10) as resp:
                health = json.loads(resp.read())
            return all((health.get(c) or {}).get("status") == "healthy" for c in HEALTHY)

        self.wait_for("airflow to be healthy", healthy, STARTUP_TIMEOUT_S, interval=1)
        self.wait_for(f"{dag_id} to be registered and unpaused",
                      lambda: self.metadata("SELECT NOT is_paused FROM dag WHERE dag_id = %s", dag_id),
                      STARTUP_TIMEOUT_S)
        self.wait_for("the due-work watcher to listen", lambda: self.recon(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            watcher_name)[0], STARTUP_TIMEOUT_S)
        self.wait_until_no_active_run()

    def wait_until_no_active_run(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        self.wait_for(f"no active run of {settings.DAG_ID}", lambda: self.metadata(
            "SELECT count(*) = 0 FROM dag_run WHERE dag_id = %s AND state IN ('queued', 'running')",
            settings.DAG_ID)[0], timeout)

    def empty_run_task_instances(self, dag_id: str = settings.DAG_ID) -> int:
        """Task instances of one run on an empty queue: the run Airflow starts at startup for the
        safety-net schedule's latest tick, or one triggered with the CLI when it started none."""
        latest_run = ("SELECT count(*) FROM task_instance WHERE dag_id = %s AND run_id = (SELECT run_id FROM dag_run"
                      " WHERE dag_id = %s AND state = 'success' ORDER BY id DESC LIMIT 1)")
        if not self.metadata(latest_run, dag_id, dag_id)[0]:
            subprocess.run(local_airflow.airflow_command(["dags", "trigger", dag_id]), check=True,
                           capture_output=True, env=self.env)
            self.wait_for("a run on the empty queue", lambda: self.metadata(latest_run, dag_id, dag_id)[0], 120)
            self.wait_until_no_active_run()
        return self.metadata(latest_run, dag_id, dag_id)[0]

    def drain(self, bench: Any, template: str, load: workload.Workload) -> dict[str, Any]:
        """Release the held-back TRANSACTION lines, then the CONFIRMATION lines once those are done; the
        watcher starts every run. From the second drain on, on a fresh copy swapped in under the same
        name (the watcher reconnects to it by itself)."""
        if self.drains:
            _held_back_copy(bench, template)
            self.wait_until_ready()
        self.drains += 1
        bench.log(f"scheduler: draining {load.entries:,} entries (the watcher starts the runs)")
        cpu_before = process_group_cpu(self.process.pid)
        started = self.recon("UPDATE process_tracker SET run_after = now() WHERE run_after = %s::timestamptz"
                             " RETURNING now()", HELD_BACK)[0]
        last_run = self.metadata("SELECT coalesce(max(id), 0) FROM dag_run WHERE dag_id = %s", settings.DAG_ID)[0]
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for phase in ("transactions", "confirmations"):
            if phase == "confirmations":
                with psycopg.connect(self.recon_url, autocommit=True) as conn:
                    workload.release_confirmations(conn)
            self.wait_for(f"the {phase} to drain", lambda: not self.recon(workload.IN_FLIGHT)[0],
                          deadline - time.monotonic())
        finished = self.recon("SELECT max(completed_at) FROM process_tracker")[0]
        self.wait_until_no_active_run()
        airflow_cpu = process_group_cpu(self.process.pid) - cpu_before
        seconds = (finished - started).total_seconds()
        db = Database(self.recon_url, "bench")
        try:
            outcomes = workload.outcomes(db)
        finally:
            db.dispose()
        processed = sum(outcomes["tasks"].get(s, 0) for s in ("COMPLETED", "FAILED"))
        runs, tis = self.metadata(
            "SELECT count(DISTINCT r.run_id), count(ti.*) FROM dag_run r LEFT JOIN task_instance ti"
            " USING (dag_id, run_id) WHERE r.dag_id = %s AND r.id > %s", settings.DAG_ID, last_run)
        entries_per_s = processed / seconds if seconds else 0.0
        bench.log(f"scheduler: {entries_per_s:,.0f} entries/s in {runs} runs")
        return {"processed": processed, "seconds": seconds, "entries_per_s": entries_per_s, "runs": runs,
                "task_instances": tis, "airflow_cpu_s": airflow_cpu, "outcomes": outcomes,
                "problems": workload.check(outcomes, load)}

    def probes(self, count: int) -> list[float]:
        """Seconds from each small ingest's transaction to the first claim of its tasks."""
        db = Database(self.recon_url, "bench")
        bank, currency = self.recon("SELECT account_id, currency FROM accounts WHERE account_type = 'DEBIT_NORMAL'"
                                    " AND account_id LIKE %s ORDER BY account_id LIMIT 1", "%bank%")
        delays = []
        try:
            for n in range(count):
                self.wait_until_no_active_run()
                lines = [NewStagingEntry(bank, "DEBIT", "10.00", currency, "TRANSACTION",
                                         workload.BASE_DATE, {"order_id": f"PROBE-{n}-{k}"})
                         for k in range(PROBE_LINES)]
                with db.begin() as conn:
                    ids = [c.task_id for c in insert_staging_entries(conn, lines)]
                delay = self.wait_for(f"probe {n + 1} to be claimed", lambda: self.recon(
                    "SELECT extract(epoch FROM min(processing_started_at) - min(created_at))::float8"
                    " FROM process_tracker WHERE task_id = ANY(%s) HAVING count(processing_started_at) > 0",
                    ids), 120)[0]
                delays.append(delay)
                self.wait_for(f"probe {n + 1} to finish", lambda: self.recon(
                    "SELECT count(*) = 0 FROM process_tracker WHERE task_id = ANY(%s)"
                    " AND status NOT IN ('COMPLETED', 'FAILED')", ids)[0], 120)
        finally:
            db.dispose()
        return delays

    def idle(self, seconds: float, safety_net: str | None) -> dict[str, Any]:
        """Task instances of the tracker DAG created while nothing is due, per hour, and the safety net's
        share (the maintenance DAG adds its two a day)."""
        self.wait_until_no_active_run()
        count_tis = "SELECT count(*) FROM task_instance WHERE dag_id = %s"
        count_runs = "SELECT count(*) FROM dag_run WHERE dag_id = %s"
        before = self.metadata(count_tis, settings.DAG_ID)[0]
        runs_before = self.metadata(count_runs, settings.DAG_ID)[0]
        cpu_before = process_group_cpu(self.process.pid)
        time.sleep(seconds)  # the measurement is what happens in this window: nothing to wait for
        if self.process.poll() is not None:
            raise RuntimeError(f"airflow standalone exited during the idle window; see {self.log_path}")
        cpu = process_group_cpu(self.process.pid) - cpu_before
        created = self.metadata(count_tis, settings.DAG_ID)[0] - before
        runs = self.metadata(count_runs, settings.DAG_ID)[0] - runs_before
        measured = created * 3600 / seconds
        safety_runs = _runs_per_hour(safety_net) if safety_net else 0.0
        return {"seconds": seconds, "task_instances": created, "runs": runs, "measured_per_hour": measured,
                "airflow_cpu_percent": 100 * cpu / seconds,
                "safety_net": safety_net, "safety_net_runs_per_hour": safety_runs,
                "empty_run_task_instances": self.empty_run_tis,
                "task_instances_per_hour": measured + safety_runs * self.empty_run_tis}

    def stop(self, bench: Any) -> None:
        """Stop the process group; drop its metadata database."""
        for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
            if self.process.poll() is None:
                try:
                    os.killpg(self.process.pid, sig)
                    self.process.wait(timeout=wait)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # stragglers of the group
        except ProcessLookupError:
            pass
        bench.server.drop(database_name(self.metadata_url))


def _runs_per_hour(cron: str) -> float:
    """Average runs per hour of a cron expression, counted over a week."""
    from croniter import croniter

    start = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)
    ticks = croniter(cron, start)
    n = 0
    while ticks.get_next(dt.datetime) < start + dt.timedelta(days=7):
        n += 1
    return n / (7 * 24)
