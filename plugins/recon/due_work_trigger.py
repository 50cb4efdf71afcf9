"""The due-work watcher: an Airflow event trigger that starts the tracker DAG when work is due.

It runs in Airflow's triggerer as the ``AssetWatcher`` of the asset ``recon_due_work``
(``dags/recon_process_tracker.py``). It LISTENs on the channel that ``sql/0006`` notifies on
every statement inserting or updating Process Tracker rows, and asks the tracker
(:func:`recon.tracker.read_due_work`) what a DAG run would find:

- something is due (a task, or an expired lease for the reaper) and no event was fired for that
  work yet: fire one event. The asset event queues a DAG run; while runs are active, Airflow folds
  further events into one queued run that starts when a slot under ``max_active_runs`` frees;
- otherwise sleep until a notification arrives, or until the next ``run_after`` or lease expiry.

It fires once per *work key*, the head of the queue in claim order. A run's claim moves the head,
so while a backlog remains each claim queues the next run and the backlog drains back to back; a
condition that stays true (a paused DAG, a run that fails before it claims) does not start run
after run.

Notifications sent while nobody listens are lost (a triggerer restart, a dropped connection): the
watcher looks at the queue after every LISTEN, so it catches up on start and after a reconnect,
and again every ``recheck_seconds`` in case notifications cannot reach it at all (a connection
pooler in transaction mode does not pass LISTEN through).

The recon database comes from the project's resolver (``RECON_DATABASE_URL``, else the Airflow
connection ``recon_db``), never from an embedded server: a watcher on a private empty database
would never see the real queue.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from recon import settings

RECHECK_SECONDS = 60.0  # a look at the queue without a notification: cheap, and a fallback
CLOCK_MARGIN_SECONDS = 0.05  # wake just after a run_after, so the database agrees it is due
RECONNECT_MAX_SECONDS = 30.0


class DueWorkTrigger(BaseEventTrigger):
    """Fires an event when the Process Tracker has work a DAG run has not been asked to do yet."""

    def __init__(
        self,
        channel: str = settings.DUE_WORK_CHANNEL,
        debounce_seconds: float = settings.DEFAULT_WAKE_DEBOUNCE_SECONDS,
        recheck_seconds: float = RECHECK_SECONDS,
    ):
        super().__init__()
        self.channel = channel
        self.debounce_seconds = debounce_seconds
        self.recheck_seconds = recheck_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"channel": self.channel, "debounce_seconds": self.debounce_seconds,
             "recheck_seconds": self.recheck_seconds},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        import psycopg
        from psycopg import sql

        from recon.errors import DatabaseConfigError
        from recon.tracker import read_due_work

        last_fired: tuple[Any, ...] | None = None
        failures = 0
        while True:
            try:
                url = await asyncio.to_thread(_recon_database_url)
                async with await psycopg.AsyncConnection.connect(
                    url, autocommit=True, application_name=settings.DUE_WORK_WATCHER_NAME,
                    keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.log.info("listening on %r; looking at the queue (catch-up)", self.channel)
                    failures = 0
                    while True:
                        work = await read_due_work(conn)
                        if work.anything_due and work.work_key != last_fired:
                            last_fired = work.work_key
                            yield TriggerEvent(_event_payload(work))
                        await self._wait(conn, work.seconds_until_change())
            except (psycopg.Error, DatabaseConfigError) as exc:
                # never give up: the database comes back, a connection gets defined, a schema gets
                # migrated; a watcher that died would leave new work to the safety net
                failures += 1
                delay = min(RECONNECT_MAX_SECONDS, 2.0 ** failures)
                log = self.log.warning if isinstance(exc, psycopg.OperationalError) else self.log.error
                log("cannot watch the recon database (%s: %s); trying again in %.0f s", type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)

    async def _wait(self, conn: Any, seconds_until_change: float | None) -> None:
        """Until a notification arrives (then gather more for the debounce time) or the clock
        makes something due."""
        timeout = self.recheck_seconds
        if seconds_until_change is not None:
            timeout = min(timeout, seconds_until_change + CLOCK_MARGIN_SECONDS)
        woken = False
        async for _ in conn.notifies(timeout=timeout, stop_after=1):
            woken = True
        if woken and self.debounce_seconds > 0:
            async for _ in conn.notifies(timeout=self.debounce_seconds):
                pass


def _recon_database_url() -> str:
    """The recon database as a libpq URL, from the project's resolver (blocking: run in a thread)."""
    from recon.db.resolve import libpq_url, resolve_database

    return libpq_url(resolve_database(allow_embedded=False).url)


def _event_payload(work: Any) -> dict[str, Any]:
    """What the asset event records: why the run was asked for (ids and times only)."""
    payload: dict[str, Any] = {}
    if work.tasks_due:
        payload.update(due_task_id=work.head_task_id, due_since=work.head_run_after.isoformat())
    if work.leases_expired:
        payload.update(lease_expired_at=work.lease_expires_at.isoformat())
    return payload
