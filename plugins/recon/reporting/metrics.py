"""The engine's own metrics, sent to StatsD beside Airflow's (``[metrics] statsd_on``).

Sent when RECON_STATSD_HOST is set (port RECON_STATSD_PORT, names prefixed RECON_STATSD_PREFIX):

| metric | type | when |
| --- | --- | --- |
| `recon.backlog.due` | gauge | after each run: tasks due now (PENDING or RETRY, run_after passed) |
| `recon.backlog.oldest_due_age_seconds` | gauge | after each run: how long the oldest due task has waited (0: none) |
| `recon.run.entries_processed` | gauge | after each run: entries finished by it (completed + failed) |
| `recon.entries.processed` | counter | after each run: the same, summed over runs |
| `recon.manual_review.<error_type>` | counter | after each run: entries sent to manual review, per reason |
| `recon.chunk.duration` | timer (ms) | after each `chunk.run`: its write transaction |

Metrics are UDP datagrams: a missing or slow collector never slows or fails a task.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, Mapping

from recon import settings
from recon.db import Database
from recon.tracker import ProcessTracker

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _client(address: tuple[str, int], prefix: str):
    import statsd

    return statsd.StatsClient(address[0], address[1], prefix=prefix)


def _statsd():
    """The StatsD client of the current settings, or None when metrics are off or the host does not
    resolve (logged: metrics never fail a task)."""
    address = settings.statsd_address()
    if address is None:
        return None
    try:
        return _client(address, settings.statsd_prefix())
    except OSError as exc:
        log.warning("recon metrics: StatsD at %s:%s unusable (%s); not sent", *address, exc)
        return None


def record_run(summary: Mapping[str, Any], db: Database) -> None:
    """A run's throughput and manual reviews, and the backlog it left behind."""
    client = _statsd()
    if client is None:
        return
    with db.begin() as conn:
        queue = ProcessTracker(db).queue_timing(conn)
    oldest_age = (queue.as_of - queue.oldest_due_at).total_seconds() if queue.oldest_due_at else 0.0
    processed = int(summary.get("completed", 0)) + int(summary.get("failed", 0))
    with client.pipeline() as batch:
        batch.gauge("backlog.due", queue.due_now)
        batch.gauge("backlog.oldest_due_age_seconds", round(oldest_age, 3))
        batch.gauge("run.entries_processed", processed)
        batch.incr("entries.processed", processed)
        for error_type, count in (summary.get("manual_review_by_type") or {}).items():
            batch.incr(f"manual_review.{error_type}", int(count))


def record_chunk_duration(seconds: float) -> None:
    client = _statsd()
    if client is not None:
        client.timing("chunk.duration", seconds * 1000.0)
