"""
# Recon: Process Tracker

Reconciles staging entries in batches. Every run takes due tasks from the **Process
Tracker** (a PostgreSQL work queue), splits them into chunks and sends each chunk through
the engine:

```
claim ─┬─ chunk.decide → chunk.validate → chunk.run ─┬─ write_back → summary
       └─ (one mapped group per chunk, labelled)   ─┘
reap   (beside the claim)
```

`claim` is the run's first step and `reap` runs beside it: every step before the claim would
cost a scheduler round trip between new work and its processing.

| task | what it does |
| --- | --- |
| `claim` | with the `reprocess` param, first queues FAILED tasks and NEEDS_MANUAL_REVIEW entries in that scope again; then leases up to `batch_size` due tasks to this run (`FOR UPDATE SKIP LOCKED`: safe with concurrent runs) and cuts them into chunks of `chunk_size`, never more than `[core] max_map_length` chunks |
| `reap` | tasks whose lease expired (a worker died) go back to RETRY, or FAILED when out of attempts |
| `chunk.decide` | read-only: which strategy (task implementation) handles each task → routes |
| `chunk.validate` | read-only: a verdict per task from what it read (book, fulfil, manual review with its reason, wait) |
| `chunk.run` | writes validate's verdicts: ledger effect, staging status and tracker status of each task, in one DB transaction |
| `write_back` | runs whatever happened above: any claimed task still PROCESSING goes to RETRY |
| `summary` | logs and returns the counts; fails the run if a chunk did not finish |

Mapped chunks are labelled `chunk 3 · 500 tasks` in the Grid. XCom carries task ids, counts
and compact verdict codes (decide's routes, validate's verdicts), never entry payloads; what
grows with the chunk travels as one packed JSON string (recon.tasks.verdicts.pack).

`chunk.run` does not decide or validate again. Inside its transaction it re-checks, under row
locks, only what another worker can change between `validate` and `run`:

| verdict | re-checked in `run` |
| --- | --- |
| every task | its lease (outcomes are written only for tasks still leased to this run) and its staging entry (locked; a PROCESSED entry makes the verdict outdated) |
| book | that no other worker booked the same order meanwhile (advisory lock on orders other queued lines book too, then a re-read) |
| fulfil, mismatch | that the expected leg is still open (its transaction locked `FOR UPDATE SKIP LOCKED`) |
| fulfil a match group | that every leg of the group is still open (all the chunk's planned legs locked in one statement) |
| manual review, wait | nothing: written as validated |

If a re-check fails, the chunk is validated again inside the same transaction, under those
locks, before anything is written; results never depend on chunking or on which worker ran first.
A line whose expected leg another worker's uncommitted chunk holds is set aside: the rest of the
chunk is validated again without it and committed, then the set-aside lines run on their own and
wait for that commit. One contended line no longer holds back its whole chunk.

## Triggering by hand

- **Backfill / reprocess**: fix a rule, then trigger with
  `reprocess = {"created_from": "2026-11-01T00:00:00Z", "created_to": "2026-11-08T00:00:00Z"}`
  (or `{"task_ids": ["task_..."]}`): FAILED tasks and entries waiting for manual review
  in that scope are queued again, then processed by this run.
- **Dry run**: `dry_run = true` peeks at the due tasks without claiming them and runs
  `decide` and `validate` only; nothing is written. With `reprocess` it says, entry by entry, what
  `decide`/`validate` would make of each line in scope (the claim log lists every one, the summary
  the first ones), and reports the scope: FAILED
  tasks and entries in review per error type that a real run would queue again.
- A conf key this DAG does not take (`{"dryrun": true}`) fails the run before anything is claimed.

## When it runs

Work starts it. The asset `recon_due_work` has a watcher running in Airflow's **triggerer**:
every statement that inserts or updates Process Tracker rows notifies it (PostgreSQL `NOTIFY`),
and it fires when something is due that no run has been asked to do yet (a new task, a RETRY
whose `run_after` arrived, an expired lease for `reap`). A backlog drains back to back: each
run's claim queues the next run, which starts as soon as a slot under `max_active_runs` frees.
An empty queue starts nothing. A slow safety-net schedule also runs it, for a triggerer that is
down. Manual triggers (backfill, dry run) work at any time.

## Configuration

The recon database is the Airflow connection **`recon_db`** (Postgres), or the
`RECON_DATABASE_URL` environment variable, which wins when set (the triggerer needs it too).
Environment variables read when the DAG file is parsed: `RECON_SCHEDULE` (`event`, the default:
as above; a cron for time-only runs; `none` for manual runs only), `RECON_SAFETY_NET_SCHEDULE`
(default `0 */2 * * *`; `none` for none), `RECON_WAKE_DEBOUNCE_SECONDS` (default 0.2: a burst of
inserts is one look at the queue), `RECON_MAX_ACTIVE_RUNS` (default 2; claims stay safe with
more), `RECON_BATCH_SIZE` and `RECON_CHUNK_SIZE` (param defaults), `RECON_TASK_RETRIES` and
`RECON_TASK_RETRY_DELAY_SECONDS` (retries of infrastructure errors: connection loss, timeouts; a
bug or a constraint violation fails at once).

## Concurrency and alerts

Chunk tasks run in the pool **`recon_chunks`** (`RECON_CHUNK_POOL_SLOTS`, default 4, created by
the compose init service and `./recon ui`; each slot needs about 420 MiB on its worker), at most
`RECON_MAX_ACTIVE_CHUNK_RUNS` (4) `chunk.run` at once over all runs, each with the same absolute
priority weight, on the executor queue `RECON_CHUNK_QUEUE` (`recon`: Celery workers must
listen on it, `airflow celery worker --queues default,recon`). A run still going after `RECON_DAGRUN_TIMEOUT_MINUTES` (120) fails. With
`RECON_ALERT_EMAIL` set, a failed run mails its run id and reason, and a run not finished
`RECON_DEADLINE_MINUTES` (60) after it was queued mails a deadline alert (SMTP connection
`RECON_ALERT_SMTP_CONN_ID`, default `smtp_default`).
"""

from __future__ import annotations

import difflib
import logging
from collections import Counter
from datetime import datetime, timedelta

from airflow.sdk import (
    ExceptionRetryPolicy,
    Param,
    RetryAction,
    RetryRule,
    TriggerRule,
    conf,
    dag,
    get_current_context,
    task,
    task_group,
)
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

# recon.settings and recon.errors import nothing heavy: parsing this file does not load the engine
from recon import alerts, settings
from recon.errors import RETRYABLE_ERRORS

log = logging.getLogger("recon.dags.process_tracker")

TASK_TYPES = ["PROCESS_STAGING_ENTRY"]

# Only errors a second attempt can cure are retried: the database went away or timed out.
INFRASTRUCTURE_ERRORS = ExceptionRetryPolicy(
    rules=[RetryRule(exception=list(RETRYABLE_ERRORS), action=RetryAction.RETRY,
                     reason="infrastructure error: retrying")],
    default=RetryAction.FAIL,
)

CHUNK_LABEL = "{{ chunk_label }}"
# Every chunk task takes a slot of the pool (about 420 MiB each, README "Concurrency and memory"),
# and weighs the same whatever is downstream: a run mapped 1,024 wide does not outrank other DAGs.
CHUNK_TASK = dict(map_index_template=CHUNK_LABEL, multiple_outputs=False, show_return_value_in_logs=False, pool=settings.CHUNK_POOL,
                  priority_weight=1, weight_rule="absolute", queue=settings.chunk_queue())
ISO_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"


def _recon_db():
    """The recon database of a task: the Airflow connection recon_db or RECON_DATABASE_URL, never an
    embedded server (a task on a private empty database would report an empty queue)."""
    from recon.db import default_database

    return default_database(allow_embedded=False)


def _schedule():
    """RECON_SCHEDULE as Airflow wants it: in `event` mode the due-work asset (its watcher runs in
    the triggerer), or'ed with the safety-net cron when there is one."""
    mode = settings.schedule()
    if mode != settings.EVENT_SCHEDULE:
        return mode  # a cron, or None for manual runs only
    from airflow.sdk import Asset, AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable

    from recon.due_work_trigger import DueWorkTrigger

    due_work = Asset(
        settings.DUE_WORK_ASSET,
        watchers=[AssetWatcher(name="recon_due_work_watcher",
                               trigger=DueWorkTrigger(debounce_seconds=settings.wake_debounce_seconds()))],
    )
    safety_net = settings.safety_net_schedule()
    if safety_net is None:
        return [due_work]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(safety_net, timezone="UTC"), assets=[due_work])


def _requeue(params) -> dict:
    """Backfill: queue FAILED tasks and manual-review entries in the `reprocess` scope again (a dry
    run only counts them, per error type)."""
    from recon import pipeline
    from recon.staging import ReviewFilter

    scope = params["reprocess"]
    if not scope:
        return {"requeued": 0}
    result = pipeline.requeue_scope(
        created_from=scope.get("created_from"),
        created_to=scope.get("created_to"),
        task_ids=scope.get("task_ids"),
        review=ReviewFilter(scope.get("error_type"), scope.get("account_id"), scope.get("order_id"), scope.get("q")),
        exclude_error_types=scope.get("exclude_error_types") or (),
        dry_run=params["dry_run"],
        db=_recon_db(),
    )
    if params["dry_run"]:
        # every entry on its own short line; the XCom and the summary keep the first few
        for e in result["preview"]:
            log.info("dry run: %s %s -> %s %s", e["staging_entry_id"] or e["task_id"], e["error_type"], e["would"],
                     e["detail"])
        shown = settings.DRY_RUN_ENTRIES_SHOWN
        result = {**result, "preview": result["preview"][:shown],
                  "preview_not_shown": max(len(result["preview"]) - shown, 0)}
    log.info("reprocess%s: %s", " (dry run, nothing written)" if params["dry_run"] else "",
             {k: v for k, v in result.items() if k != "preview"})
    return result


def _refuse_unknown_conf(conf_keys, params) -> None:
    """A misspelt key (`dryrun`) would otherwise be ignored and the run be real: refuse it before
    anything is claimed, naming the keys this DAG takes (`params`: the DAG's declared ones; the
    run's params already hold every conf key)."""
    unknown = sorted(set(conf_keys or ()) - set(params))
    if unknown:
        hints = [f"{key!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(key, params, 1))
                 else repr(key) for key in unknown]
        raise AirflowFailException(f"unknown conf key(s) {', '.join(hints)}: this DAG takes"
                                   f" {', '.join(sorted(params))}; nothing was claimed or written")


def _claimed(ti, key: str):
    """One of claim's own XComs (lease_owner, count), None when the claim did not get that far.

    write_back and summary run whatever happened, so they read these in their body: as task
    arguments a missing one would fail them before they start."""
    return ti.xcom_pull(task_ids="claim", key=key)


def _label_chunk(n: int) -> None:
    """Name this mapped instance in the Grid: `chunk 3 · 500 tasks` (rendered by map_index_template)."""
    context = get_current_context()
    context["chunk_label"] = f"chunk {context['ti'].map_index + 1} · {n} task{'' if n == 1 else 's'}"


def _chunk_results(value) -> list[dict]:
    """Results of the mapped group's `run` as a list.

    Airflow hands a downstream task the group's output as a list, or as the bare value when
    exactly one chunk pushed one; a mapped *task* would give a lazy sequence (read with [:]).
    """
    if value is None:
        return []
    if isinstance(value, dict):
        return [value]
    return [r for r in value[:] if r is not None]


def _validation_totals(ti) -> dict:
    """What a dry run found: verdicts and manual-review reasons summed over the chunks."""
    verdicts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for validation in ti.xcom_pull(task_ids=["chunk.validate"], default=[]) or []:
        verdicts.update((validation or {}).get("verdicts", {}))
        reasons.update((validation or {}).get("manual_review_by_type", {}))
    return {"verdicts": dict(verdicts), "manual_review_by_type": dict(reasons)}


@dag(
    dag_id=settings.DAG_ID,
    schedule=_schedule(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=settings.max_active_runs(),
    dagrun_timeout=timedelta(minutes=settings.dagrun_timeout_minutes()),
    on_failure_callback=alerts.failure_notifiers(),
    deadline=alerts.deadline_alert(),
    doc_md=__doc__,
    tags=["recon", "process-tracker"],
    default_args={
        "owner": "recon",
        "retries": settings.task_retries(),
        "retry_delay": timedelta(seconds=settings.task_retry_delay_seconds()),
        "retry_policy": INFRASTRUCTURE_ERRORS,
        "execution_timeout": timedelta(minutes=30),
    },
    params={
        "batch_size": Param(
            settings.batch_size(),
            type="integer",
            minimum=1,
            maximum=settings.MAX_BATCH_SIZE,
            title="Batch size",
            description="Most tasks this run claims from the Process Tracker.",
        ),
        "chunk_size": Param(
            settings.chunk_size(),
            type="integer",
            minimum=1,
            maximum=settings.MAX_CHUNK_SIZE,
            title="Chunk size",
            description="Tasks per mapped chunk (decide → validate → run). "
            "Raised automatically so a batch never needs more than [core] max_map_length chunks.",
        ),
        "task_type": Param(
            TASK_TYPES[0],
            type="string",
            enum=TASK_TYPES,
            title="Task type",
            description="Which Process Tracker tasks to claim.",
        ),
        "reprocess": Param(
            None,
            type=["null", "object"],
            title="Reprocess (backfill)",
            description="Requeue FAILED tasks and NEEDS_MANUAL_REVIEW entries in a scope before claiming: "
            '{"created_from": "2026-11-01T00:00:00Z", "created_to": "2026-11-08T00:00:00Z"} '
            '(created_at window, end exclusive), {"task_ids": ["task_..."]}, or the Recon view\'s filter '
            '{"error_type": "NoReconRuleFoundError", "account_id": "acc_...", "order_id": ..., "q": ...}; "exclude_error_types" leaves '
            "reasons out. With dry run: counts per error type, nothing requeued. Empty: no requeue.",
            properties={
                "created_from": {"type": "string", "format": "date-time", "pattern": ISO_TIMESTAMP},
                "created_to": {"type": "string", "format": "date-time", "pattern": ISO_TIMESTAMP},
                "task_ids": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "error_type": {"type": "string", "minLength": 1},
                "account_id": {"type": "string", "minLength": 1},
                "order_id": {"type": "string", "minLength": 1},
                "q": {"type": "string", "minLength": 1},
                "exclude_error_types": {"type": "array", "items": {"type": "string"}},
            },
            additionalProperties=False,
            minProperties=1,
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Peek at due tasks without claiming them and run decide and validate only: nothing is written.",
        ),
    },
)
def recon_process_tracker():
    # A Mapping return annotation would turn on multiple_outputs (every key its own XCom): the
    # tasks returning a dict say multiple_outputs=False.
    @task(multiple_outputs=False, show_return_value_in_logs=False)
    def reap() -> dict:
        """Rescue tasks whose lease expired (their worker died). Beside the claim, not before it: a
        rescued task is due again only after its retry backoff, so this run would not claim it."""
        from recon import pipeline

        return pipeline.reap(_recon_db())

    @task(show_return_value_in_logs=False)
    def claim(params=None, run_id=None, ti=None, dag_run=None, dag=None) -> list[str]:
        """Requeue the `reprocess` scope if there is one, then lease a batch of due tasks to this run
        (a dry run only peeks) and cut it into chunks: one mapped `chunk` group per chunk.

        The run's first step: each task before it would cost a scheduler round trip between new
        work and its processing. Returns the chunks (what the group maps over), each one packed
        string of task ids (see recon.tasks.verdicts); the lease owner and the counts are XComs of
        their own."""
        from recon import pipeline

        _refuse_unknown_conf(dag_run.conf, dag.params)
        requeued = _requeue(params)
        if params["dry_run"]:
            task_ids = pipeline.peek(params["batch_size"], params["task_type"], db=_recon_db())
            lease_owner = None
        else:
            lease_owner = pipeline.new_owner(run_id)
            task_ids = pipeline.claim(params["batch_size"], params["task_type"], lease_owner, db=_recon_db())
        chunk_size = max(params["chunk_size"], -(-len(task_ids) // conf.getint("core", "max_map_length")))
        chunks = pipeline.split_into_chunks(task_ids, chunk_size)
        log.info("claimed %d task(s)%s in %d chunk(s) of up to %d", len(task_ids),
                 " (dry run: peeked, not leased)" if lease_owner is None else "", len(chunks), chunk_size)
        ti.xcom_push(key="lease_owner", value=lease_owner or "")  # "": a dry run leases nothing (None is no XCom)
        ti.xcom_push(key="count", value=len(task_ids))
        ti.xcom_push(key="requeued", value=requeued)
        return [pipeline.pack(chunk) for chunk in chunks]

    @task_group(group_id="chunk", tooltip="One chunk of claimed tasks: decide → validate → run")
    def process_chunk(task_ids: str, lease_owner: str | None):
        @task(**CHUNK_TASK)
        def decide(task_ids: str) -> dict:
            """Which strategy handles each claimed task (read-only): routes for validate."""
            from recon import pipeline

            chunk = pipeline.unpack(task_ids)
            _label_chunk(len(chunk))
            return pipeline.decide_chunk(chunk, _recon_db())

        @task(**CHUNK_TASK)
        def validate(decision: dict) -> dict:
            """A verdict per task from what it read, before anything is written (read-only)."""
            from recon import pipeline

            _label_chunk(decision["count"])
            return pipeline.validate_chunk(decision, _recon_db())

        @task(**CHUNK_TASK, max_active_tis_per_dag=settings.max_active_chunk_runs())
        def run(validation: dict, lease_owner: str | None, params=None) -> dict:
            """Write validate's verdicts: ledger effect, staging status and tracker status together."""
            from recon import pipeline

            _label_chunk(validation["count"])
            if params["dry_run"]:
                raise AirflowSkipException("dry run: decide and validate only, nothing written")
            return pipeline.run_chunk(validation, lease_owner, _recon_db())

        return run(validate(decide(task_ids)), lease_owner)

    @task(trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False, show_return_value_in_logs=False)
    def write_back(chunks: list[str] | None, ti=None) -> dict:
        """Whatever happened to the chunks, no claimed task stays PROCESSING after this run."""
        from recon import pipeline

        task_ids = [task_id for chunk in chunks or [] for task_id in pipeline.unpack(chunk)]
        lease_owner = _claimed(ti, "lease_owner")
        if not lease_owner or not task_ids:
            return {"leftover": 0, "retried": 0, "failed": 0}
        return pipeline.write_back(task_ids, lease_owner, _recon_db())

    @task(trigger_rule=TriggerRule.ALL_DONE, multiple_outputs=False, show_return_value_in_logs=False)
    def summary(chunk_results, chunks, written_back: dict | None, dag_run=None, params=None, ti=None) -> dict:
        """Log and return the run's counts; fail the run when a chunk did not finish."""
        from recon import pipeline
        from recon.reporting import metrics, run_summaries

        results = _chunk_results(chunk_results)
        claimed = _claimed(ti, "count")
        if params["dry_run"]:
            counts = pipeline.summarize([], 0, dag_run.start_date.timestamp())
            counts.update(dry_run=True, due=claimed or 0, **_validation_totals(ti))
            if params["reprocess"]:
                counts["reprocess_scope"] = _claimed(ti, "requeued")
        else:
            counts = pipeline.summarize(results, claimed or 0, dag_run.start_date.timestamp(), written_back)
        log.info("recon summary: %s", " ".join(f"{k}={v}" for k, v in counts.items()))
        if claimed is None:  # the claim itself failed (a refused conf, the database away): so does the run
            raise AirflowFailException("claim did not finish: see its log; nothing was processed")
        expected = len(chunks) if chunks else 0
        incomplete = not params["dry_run"] and (len(results) < expected or written_back is None)
        # the Recon view (Airflow UI → Recon, and this run's "Recon summary" tab) reads this row
        recorded = run_summaries.record_run_summary(dag_run.run_id, counts,
                                                    outcome="failed" if incomplete else "success", db=_recon_db())
        log.info("%s", run_summaries.summary_markdown(recorded["summary"], dag_run.run_id))
        if not params["dry_run"]:
            metrics.record_run(counts, _recon_db())  # StatsD, when RECON_STATSD_HOST is set
        if incomplete:
            ti.xcom_push(key="summary", value=counts)
            raise AirflowFailException(
                f"{expected - len(results)} of {expected} chunk(s) did not finish; "
                f"write_back returned their tasks to RETRY: {written_back}"
            )
        return counts

    reap()  # beside the claim: nothing waits for it
    claimed = claim()
    chunks = claimed  # the return value: a list of chunks
    chunk_results = process_chunk.partial(lease_owner=claimed["lease_owner"]).expand(task_ids=chunks)
    written_back = write_back(chunks)
    chunk_results >> written_back
    summary(chunk_results, chunks, written_back)


recon_process_tracker()
