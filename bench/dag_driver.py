"""Drive recon_process_tracker with ``dag.test()`` until the queue is drained (a subprocess).

    python -m bench.dag_driver RESULT.json --airflow-home DIR --batch-size N --chunk-size N
                               [--sync-dir DIR --name NAME] [--prepare-only]

RECON_DATABASE_URL points at the benchmark's copy of the workload, so the DAG's tasks (run
in-process by ``dag.test``) use it, with ``application_name`` set to ``--name``. Airflow is
configured with the project's ``recon.local_airflow`` helpers before it is imported: a
benchmark AIRFLOW_HOME and metadata database (RECON_AIRFLOW_METADATA_URL), never the user's.

Several drivers may run at once (``--workers``): each warms up (one dry run: imports and the
in-process execution API), reports ready in ``--sync-dir``, waits for the go file, then runs
the DAG while tasks are due. Phase two (the confirmations) is released by whichever driver
first finds phase one finished everywhere.

Timing: every ``dag.test()`` call, the DAG's steps (the ``recon.pipeline`` functions its tasks
call) and every SQL statement on the recon database, so the wall time splits into Airflow
overhead, engine Python and engine SQL; CPU of this process and of its recon backends.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

PIPELINE_STEPS = ("reap", "requeue_scope", "claim", "peek", "decide_chunk", "validate_chunk", "run_chunk",
                  "write_back", "summarize")
POLL_SECONDS = 0.05


class Timers:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1

        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def instrument(timers: Timers, recon_database: str) -> None:
    """Time the pipeline steps the DAG calls, and SQL statements sent to the recon database."""
    import sqlalchemy as sa

    from recon import ledger, pipeline

    for name in PIPELINE_STEPS:
        if hasattr(pipeline, name):
            setattr(pipeline, name, timers.wrap(name, getattr(pipeline, name)))
    # the ledger's COPY goes to the driver connection directly, past the cursor events below
    ledger.copy_rows = timers.wrap("sql", ledger.copy_rows)

    @sa.event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def _before(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    @sa.event.listens_for(sa.engine.Engine, "after_cursor_execute")
    def _after(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        started = conn.info["bench_started"].pop()
        if conn.engine.url.database == recon_database:
            timers.seconds["sql"] += time.perf_counter() - started
            timers.calls["sql"] += 1


def _profiled(fn: Callable[..., Any], path: Path | None, **kwargs: Any) -> Any:
    """BENCH_PROFILE=DIR: a cProfile of each timed dag.test() call in DIR (py-spy works too)."""
    if path is None:
        return fn(**kwargs)
    import cProfile

    profile = cProfile.Profile()
    try:
        return profile.runcall(fn, **kwargs)
    finally:
        path.parent.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(str(path))


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(POLL_SECONDS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dag_driver")
    parser.add_argument("result", type=Path)
    parser.add_argument("--airflow-home", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=20_000)
    parser.add_argument("--chunk-size", type=int, default=2_000)
    parser.add_argument("--sync-dir", type=Path)
    parser.add_argument("--name", default="dag-1")
    parser.add_argument("--prepare-only", action="store_true", help="migrate the metadata database and exit")
    parser.add_argument("--max-runs", type=int, default=10_000)
    args = parser.parse_args(argv)

    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    os.environ["RECON_SCHEDULE"] = "none"  # manual runs only: dag.test() is the only trigger

    from recon import local_airflow

    setup_started = time.perf_counter()
    env = local_airflow.configure(args.airflow_home)
    local_airflow.ensure_metadata_migrated(env)
    if args.prepare_only:
        # one dry run writes the DAGs' rows: drivers started side by side on a fresh metadata
        # database otherwise race to INSERT them and one dies of a duplicate key
        local_airflow.load_dag().test(run_conf={"dry_run": True, "batch_size": 1, "chunk_size": 1})
        return 0

    import psycopg

    from bench.cpu import CpuMeter, peak_rss_mib
    from bench.databases import database_name, with_query
    from bench.workload import DUE_SQL, IN_FLIGHT, release_confirmations

    plain_url = os.environ["RECON_DATABASE_URL"]
    # the DAG's tasks run in this process: their connections carry the driver's name, so the
    # CPU meter counts this driver's backends only
    os.environ["RECON_DATABASE_URL"] = with_query(plain_url, application_name=args.name)
    timers = Timers()
    instrument(timers, database_name(plain_url))
    dag = local_airflow.load_dag()
    warm_started = time.perf_counter()
    dag.test(run_conf={"dry_run": True, "batch_size": 1, "chunk_size": 1})  # imports, in-process API
    warmup_seconds = time.perf_counter() - warm_started
    setup_seconds = time.perf_counter() - setup_started
    timers.reset()

    if args.sync_dir:
        (args.sync_dir / f"{args.name}.ready").touch()
        _wait_for(args.sync_dir / "go")
    started_at = time.time()
    meter = CpuMeter(plain_url, application_name=args.name).start()

    # every param explicit: dag.test() keeps the warm-up run's conf as the DAG's param defaults
    conf = {"batch_size": args.batch_size, "chunk_size": args.chunk_size, "dry_run": False, "reprocess": None}
    runs: list[dict[str, Any]] = []
    released = 0
    failed = False
    profile_dir = os.environ.get("BENCH_PROFILE")

    # one autocommit connection for the polls and the release (each statement sees a fresh now()),
    # without the driver's application_name, so the CPU meter leaves it out
    with psycopg.connect(plain_url, autocommit=True) as conn:
        for phase in ("transactions", "confirmations"):
            if phase == "confirmations":
                released = release_confirmations(conn)  # the first driver here releases them
            while not failed and len(runs) < args.max_runs:
                if not conn.execute(DUE_SQL).fetchone()[0]:
                    if not conn.execute(IN_FLIGHT).fetchone()[0]:
                        break
                    time.sleep(POLL_SECONDS)  # another driver is still on it, or a retry is due soon
                    continue
                run_started = time.perf_counter()
                profile = Path(profile_dir) / f"{args.name}-run-{len(runs)}.prof" if profile_dir else None
                dag_run = _profiled(dag.test, profile, run_conf=conf)
                seconds = time.perf_counter() - run_started
                summary = local_airflow.read_summary(dag_run.run_id) or {}
                runs.append({"phase": phase, "run_id": dag_run.run_id, "state": str(dag_run.state),
                             "seconds": seconds, "claimed": summary.get("claimed", 0),
                             "completed": summary.get("completed", 0), "failed": summary.get("failed", 0)})
                failed = str(dag_run.state) != "success"
    finished_at = time.time()
    meter.stop()

    result = {
        "name": args.name,
        "ok": not failed,
        "runs": runs,
        "started_at": started_at,
        "finished_at": finished_at,
        "seconds": finished_at - started_at,
        "dag_test_seconds": sum(r["seconds"] for r in runs),
        "processed": sum(r["completed"] + r["failed"] for r in runs),
        "claimed": sum(r["claimed"] for r in runs),
        "released": released,
        "setup_seconds": setup_seconds,
        "warmup_seconds": warmup_seconds,
        "steps": {name: {"seconds": timers.seconds[name], "calls": timers.calls[name]} for name in timers.seconds},
        **meter.as_dict(),
        "peak_rss_mib": peak_rss_mib(),
        "children_peak_rss_mib": peak_rss_mib(resource.RUSAGE_CHILDREN),
    }
    args.result.write_text(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
