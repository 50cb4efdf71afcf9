"""Each benchmark mode runs in its own process, so its peak RSS is its own:

    python -m bench.modes MODE RESULT.json --url URL [--batch-size N] [--chunk-size N] [--explain PLANS.json]

MODE is ``inprocess`` (the DAG's steps through ``recon.pipeline.process_queue``, no Airflow),
``serial`` (bench.serial), ``raw`` (bench.raw_sql) or ``noop`` (bench.noop_queue). The drain
modes run the workload's two phases: TRANSACTION lines, then (released, untimed) the
CONFIRMATION lines. The DAG mode has its own driver, bench.dag_driver.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psycopg

from bench import noop_queue, raw_sql, serial
from bench.cpu import CpuMeter, peak_rss_mib
from bench.workload import release_confirmations


def two_phases(url: str, drain: Callable[[], int]) -> dict[str, Any]:
    """Drain, release the confirmations (not timed), drain again; wall and CPU of the drains."""
    meter = CpuMeter(url)
    phases = []
    with psycopg.connect(url, autocommit=True) as admin:
        meter.start()
        for phase in ("transactions", "confirmations"):
            if phase == "confirmations":
                release_confirmations(admin)
            started = time.perf_counter()
            processed = drain()
            phases.append({"phase": phase, "processed": processed, "seconds": time.perf_counter() - started})
        meter.stop()
    return {
        "phases": phases,
        "processed": sum(p["processed"] for p in phases),
        "seconds": sum(p["seconds"] for p in phases),
        **meter.as_dict(),
    }


def run_inprocess(url: str, batch_size: int, chunk_size: int, explain: Path | None = None) -> dict[str, Any]:
    from recon import pipeline
    from recon.db import Database

    recorder = None
    if explain:
        from bench.scale import StatementRecorder

        recorder = StatementRecorder()
        recorder.install()

    db = Database(url, "bench")
    with db.begin():
        pass  # connect before the CPU meter starts, as the other modes do

    def drain() -> int:
        summary = pipeline.process_queue(batch_size=batch_size, chunk_size=chunk_size, db=db, run_id="bench")
        return summary["completed"] + summary["failed"]

    try:
        result = two_phases(url, drain)
    finally:
        db.dispose()
    if recorder and explain:
        explain.write_text(json.dumps(recorder.explain(url), indent=2))
    return result


def run_serial(url: str) -> dict[str, Any]:
    from recon.db import Database

    db = Database(url, "bench")
    with db.begin():
        pass
    try:
        return two_phases(url, lambda: serial.drain(db)["processed"])
    finally:
        db.dispose()


def run_raw(url: str, batch_size: int) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        return two_phases(url, lambda: raw_sql.drain(conn, batch_size)["processed"])


def run_noop(url: str) -> dict[str, Any]:
    from recon.db import Database

    db = Database(url, "bench")
    try:
        return {"raw": noop_queue.run_raw(url), "api": noop_queue.run_api(db)}
    finally:
        db.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.modes")
    parser.add_argument("mode", choices=["inprocess", "serial", "raw", "noop"])
    parser.add_argument("result", type=Path)
    parser.add_argument("--url", required=True)
    parser.add_argument("--batch-size", type=int, default=20_000)
    parser.add_argument("--chunk-size", type=int, default=2_000)
    parser.add_argument("--explain", type=Path, help="inprocess: EXPLAIN the statements it ran into this file")
    args = parser.parse_args(argv)
    if args.mode == "inprocess":
        result = run_inprocess(args.url, args.batch_size, args.chunk_size, args.explain)
    elif args.mode == "serial":
        result = run_serial(args.url)
    elif args.mode == "raw":
        result = run_raw(args.url, args.batch_size)
    else:
        result = run_noop(args.url)
    result["peak_rss_mib"] = peak_rss_mib()
    args.result.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
