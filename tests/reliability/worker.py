"""Test-only worker: ``pipeline.process_queue`` in a real OS process, with deterministic fault points.

    RECON_TEST_FAULT="<point>[@<n>]:<action>"   (unset: a plain worker, like `python -m recon process`)

The worker wraps a few engine functions *in its own process* (never the database) so it can
stop exactly at a point, the n-th time that point is reached (default the first):

    after_claim         pipeline.claim returned tasks: PROCESSING under our lease, nothing else done
    after_lock          inside run_chunk's DB transaction: the chunk's rows are locked, nothing written
    after_expected_legs the matcher read the open expected entries of its confirmations (validate's
                        read, or run's locked read when it validates under locks itself)
    after_ledger_write  inside run_chunk's DB transaction: tracker rows and ledger rows written,
                        staging statuses not yet, nothing committed
    after_chunk_commit  run_chunk committed (ledger + staging + tracker); later chunks not run yet
    before_write_back   every chunk of the batch ran; write_back has not been called

Actions:
    kill    SIGKILL this process (``kill -9``): no cleanup, no rollback sent, no exit handlers
    pause   print ``PAUSED {"point": ..., "backend_pid": ...}`` (the PostgreSQL backend of the
            transaction in progress, if any) and block until a line arrives on stdin

The last stdout line of a worker that finishes is ``SUMMARY {json}`` (process_queue's summary).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any

POINTS = ("after_claim", "after_lock", "after_expected_legs", "after_ledger_write", "after_chunk_commit",
          "before_write_back")


class FaultPlan:
    def __init__(self, spec: str):
        self.point = self.action = None
        self.nth = 1
        self.seen = 0
        if not spec:
            return
        where, _, action = spec.partition(":")
        point, _, nth = where.partition("@")
        if point not in POINTS or action not in ("kill", "pause"):
            raise SystemExit(f"worker: bad RECON_TEST_FAULT {spec!r}; points {POINTS}, actions kill|pause")
        self.point, self.action, self.nth = point, action, int(nth or 1)

    def reached(self, point: str, conn: Any = None) -> None:
        if point != self.point:
            return
        self.seen += 1
        if self.seen != self.nth:
            return
        if self.action == "kill":
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        backend_pid = None
        if conn is not None:
            import sqlalchemy as sa

            backend_pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        print("PAUSED " + json.dumps({"point": point, "backend_pid": backend_pid}), flush=True)
        sys.stdin.readline()


def install(plan: FaultPlan) -> None:
    from recon import ledger, pipeline
    from recon.ledger import LedgerBatch
    from recon.tasks import manager

    claim, run_chunk, write_back = pipeline.claim, pipeline.run_chunk, pipeline.write_back
    load_items, flush = manager.load_items, LedgerBatch.flush
    expected_legs_by_order = ledger.expected_legs_by_order

    def claim_hooked(*args: Any, **kwargs: Any) -> list[str]:
        ids = claim(*args, **kwargs)
        if ids:
            plan.reached("after_claim")
        return ids

    def load_items_hooked(conn: Any, tracker: Any, task_ids: Any, lock: bool, **kwargs: Any) -> Any:
        items = load_items(conn, tracker, task_ids, lock, **kwargs)
        if lock:
            plan.reached("after_lock", conn)
        return items

    def expected_legs_by_order_hooked(conn: Any, order_keys: Any, lock: bool, *args: Any, **kwargs: Any) -> Any:
        legs = expected_legs_by_order(conn, order_keys, lock, *args, **kwargs)
        plan.reached("after_expected_legs", conn)
        return legs

    def flush_hooked(self: Any, conn: Any) -> None:
        flush(self, conn)
        plan.reached("after_ledger_write", conn)

    def run_chunk_hooked(*args: Any, **kwargs: Any) -> dict[str, Any]:
        result = run_chunk(*args, **kwargs)
        plan.reached("after_chunk_commit")
        return result

    def write_back_hooked(*args: Any, **kwargs: Any) -> dict[str, int]:
        plan.reached("before_write_back")
        return write_back(*args, **kwargs)

    pipeline.claim = claim_hooked
    pipeline.run_chunk = run_chunk_hooked
    pipeline.write_back = write_back_hooked
    manager.load_items = load_items_hooked
    ledger.expected_legs_by_order = expected_legs_by_order_hooked
    LedgerBatch.flush = flush_hooked


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--chunk-size", type=int, default=250)
    parser.add_argument("--run-id", default="reliability-worker")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from recon import pipeline
    from recon.db import default_database

    plan = FaultPlan(os.environ.get("RECON_TEST_FAULT", ""))
    if plan.point:
        install(plan)
    summary = pipeline.process_queue(batch_size=args.batch_size, chunk_size=args.chunk_size, run_id=args.run_id,
                                     db=default_database())
    print("SUMMARY " + json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
