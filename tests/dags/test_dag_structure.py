"""The DAG folder parses cleanly and recon_process_tracker has the documented shape."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.dags.conftest import PROJECT

TRACKER_EDGES = {
    "reap": set(),  # beside the claim
    "claim": set(),  # the first step: new work is claimed one scheduler round trip after the run starts
    "chunk.decide": {"claim"},
    "chunk.validate": {"chunk.decide"},
    "chunk.run": {"chunk.validate", "claim"},
    "write_back": {"chunk.run", "claim"},
    "summary": {"chunk.run", "claim", "write_back"},
}


def test_dag_folder_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == {"recon_process_tracker", "recon_maintenance"}


def test_plugin_loader_reports_no_errors(airflow_home):
    from airflow import plugins_manager
    from airflow.configuration import conf

    assert conf.get("core", "plugins_folder") == str(PROJECT / "plugins")
    plugins_manager.ensure_plugins_loaded()
    assert plugins_manager.get_import_errors() == {}


def test_parsing_does_no_database_work():
    """Parse in a fresh process with an unreachable database: no error, engine not even imported."""
    code = (
        "import sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(PROJECT / 'dags')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "print('engine imported' if 'recon.pipeline' in sys.modules else 'engine not imported')\n"
    )
    env = dict(os.environ, RECON_DATABASE_URL="postgresql://nobody@127.0.0.1:1/nothing")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "engine not imported" in result.stdout


def test_task_ids_and_dependencies(tracker_dag):
    edges = {t.task_id: set(t.upstream_task_ids) for t in tracker_dag.tasks}
    assert edges == TRACKER_EDGES


def test_write_back_and_summary_run_whatever_happened(tracker_dag):
    rules = {t.task_id: t.trigger_rule for t in tracker_dag.tasks}
    assert rules["write_back"] == "all_done"
    assert rules["summary"] == "all_done"
    assert {rules[t] for t in ("reap", "claim", "chunk.decide", "chunk.run")} == {"all_success"}


def test_chunk_tasks_are_mapped_and_labelled(tracker_dag):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    for task_id in ("chunk.decide", "chunk.validate", "chunk.run"):
        task = tracker_dag.get_task(task_id)
        assert task.get_closest_mapped_task_group() is not None, task_id
        assert task.map_index_template == "{{ chunk_label }}"
    assert not isinstance(tracker_dag.get_task("summary"), MappedOperator)


def test_chunk_tasks_share_one_pool_with_a_flat_weight(tracker_dag):
    """A backlog cannot start more chunk tasks than the pool has slots, and a run mapped 1,024 wide
    does not outrank other DAGs (absolute weight: downstream tasks add nothing)."""
    for task_id in ("chunk.decide", "chunk.validate", "chunk.run"):
        task = tracker_dag.get_task(task_id)
        assert (task.pool, task.priority_weight, task.weight_rule, task.queue) == (
            "recon_chunks", 1, "absolute", "recon"), task_id
    assert tracker_dag.get_task("chunk.run").max_active_tis_per_dag == 4
    assert (tracker_dag.get_task("claim").pool, tracker_dag.get_task("claim").queue) == ("default_pool", "default")


def test_runs_time_out_and_alert_only_when_asked():
    """No recipients: no notifier, no deadline; with them, a mail on failure and a deadline alert."""
    shown = "dag.dagrun_timeout, dag.on_failure_callback, dag.deadline"
    assert _parse_in_a_fresh_process(shown) == "(datetime.timedelta(seconds=7200), [], None)"
    shown = ("dag.dagrun_timeout, [type(n).__name__ + ':' + ','.join(n.to) + ':' + n.smtp_conn_id "
             "for n in dag.on_failure_callback], [str(d.interval) for d in dag.deadline]")
    assert _parse_in_a_fresh_process(
        shown, RECON_ALERT_EMAIL="ops@example.com, oncall@example.com", RECON_ALERT_SMTP_CONN_ID="smtp_ops",
        RECON_DAGRUN_TIMEOUT_MINUTES="30", RECON_DEADLINE_MINUTES="20",
    ) == ("(datetime.timedelta(seconds=1800), ['SmtpNotifier:ops@example.com,oncall@example.com:smtp_ops'], "
          "['0:20:00'])")


def test_schedule_and_run_settings(tracker_dag):
    """Due work starts it (the asset's watcher runs in the triggerer), or'ed with a slow safety net."""
    from airflow.sdk import AssetOrTimeSchedule

    from recon.due_work_trigger import DueWorkTrigger

    schedule = tracker_dag.schedule
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert schedule.timetable.expression == "0 */2 * * *"
    (asset,) = schedule.asset_condition.objects
    assert asset.name == "recon_due_work"
    (watcher,) = asset.watchers
    assert isinstance(watcher.trigger, DueWorkTrigger)
    assert watcher.trigger.serialize() == (
        "recon.due_work_trigger.DueWorkTrigger",
        {"channel": "recon_due_work", "debounce_seconds": 0.2, "recheck_seconds": 60.0},
    )
    assert tracker_dag.catchup is False
    assert tracker_dag.max_active_runs == 2
    assert {"recon"} <= set(tracker_dag.tags)
    assert "Process Tracker" in tracker_dag.doc_md and "recon_db" in tracker_dag.doc_md
    claim = tracker_dag.get_task("claim")
    assert claim.retries >= 1 and claim.retry_policy is not None


def test_only_infrastructure_errors_are_retried(tracker_dag):
    import sqlalchemy.exc
    from airflow.sdk import RetryAction

    policy = tracker_dag.get_task("chunk.run").retry_policy
    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))
    assert policy.evaluate(lost, 1, 3).action is RetryAction.RETRY
    assert policy.evaluate(TimeoutError("slow"), 1, 3).action is RetryAction.RETRY
    assert policy.evaluate(KeyError("task_ids"), 1, 3).action is RetryAction.FAIL
    integrity = sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
    assert policy.evaluate(integrity, 1, 3).action is RetryAction.FAIL


def _parse_in_a_fresh_process(expression: str, **env: str) -> str:
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(PROJECT / 'dags')!r})\n"
        "dag = bag.dags.get('recon_process_tracker')\n"
        f"print(bag.import_errors or ({expression}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, **env), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_schedule_is_configurable():
    shown = "dag.schedule, dag.max_active_runs, dag.params['batch_size']"
    assert _parse_in_a_fresh_process(shown, RECON_SCHEDULE="*/5 * * * *", RECON_MAX_ACTIVE_RUNS="3",
                                     RECON_BATCH_SIZE="777") == "('*/5 * * * *', 3, 777)"
    assert _parse_in_a_fresh_process("dag.schedule", RECON_SCHEDULE="none") == "None"
    # no safety net: the asset alone; another debounce reaches the watcher
    watcher = "[(a.name, a.watchers[0].trigger.debounce_seconds) for a in dag.schedule]"
    assert _parse_in_a_fresh_process(watcher, RECON_SAFETY_NET_SCHEDULE="none",
                                     RECON_WAKE_DEBOUNCE_SECONDS="2") == "[('recon_due_work', 2.0)]"
    assert _parse_in_a_fresh_process("dag.schedule.timetable.expression",
                                     RECON_SAFETY_NET_SCHEDULE="*/30 * * * *") == "*/30 * * * *"


def test_a_bad_schedule_setting_is_an_import_error_naming_it():
    errors = _parse_in_a_fresh_process("None", RECON_WAKE_DEBOUNCE_SECONDS="soon")
    assert "ConfigurationError: RECON_WAKE_DEBOUNCE_SECONDS must be a number, got " in errors


@pytest.mark.parametrize(
    "name, value",
    [
        ("batch_size", 0),
        ("batch_size", "many"),
        ("chunk_size", -1),
        ("chunk_size", 100_000),  # 988 MiB in one worker: the maximum is what fits ~450 MiB (15,000)
        ("chunk_size", 15_001),
        ("task_type", "SOMETHING_ELSE"),
        ("reprocess", {}),
        ("reprocess", {"created_since": "2026-11-01T00:00:00Z"}),
        ("reprocess", {"task_ids": []}),
        ("reprocess", {"created_from": "last week"}),
        ("dry_run", "yes"),
    ],
)
def test_params_reject_bad_values(tracker_dag, name, value):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        tracker_dag.params.get_param(name).resolve(value)


def test_params_accept_documented_values(tracker_dag):
    params = tracker_dag.params
    assert params.get_param("reprocess").resolve(None) is None
    window = {"created_from": "2026-11-01T00:00:00Z", "created_to": "2026-11-08T00:00:00+00:00"}
    assert params.get_param("reprocess").resolve(window) == window
    assert params.get_param("reprocess").resolve({"task_ids": ["task_1"]}) == {"task_ids": ["task_1"]}
    defaults = params.validate()
    assert defaults["dry_run"] is False and defaults["task_type"] == "PROCESS_STAGING_ENTRY"
    assert defaults["batch_size"] >= defaults["chunk_size"] >= 1
    for name in ("batch_size", "chunk_size", "task_type", "reprocess", "dry_run"):
        assert params.get_param(name).description, name


def test_size_defaults_are_the_same_in_the_dag_the_cli_and_the_pipeline(tracker_dag, monkeypatch):
    """One source (recon.settings): `recon process` runs the DAG's own steps with the DAG's sizes."""
    import inspect

    from recon import cli, pipeline, settings

    defaults = tracker_dag.params.validate()
    process = cli.build_parser().parse_args(["process"])
    in_process = inspect.signature(pipeline.process_queue).parameters
    assert defaults["batch_size"] == process.batch_size == settings.batch_size() == settings.DEFAULT_BATCH_SIZE
    assert defaults["chunk_size"] == process.chunk_size == settings.chunk_size() == settings.DEFAULT_CHUNK_SIZE
    assert in_process["batch_size"].default is None and in_process["chunk_size"].default is None  # settings'
    # an operator's override reaches the CLI the same way it reaches the DAG file
    monkeypatch.setenv("RECON_BATCH_SIZE", "777")
    monkeypatch.setenv("RECON_CHUNK_SIZE", "77")
    process = cli.build_parser().parse_args(["process"])
    assert (process.batch_size, process.chunk_size) == (777, 77)


def test_no_task_logs_its_return_value(dagbag):
    """A run of 25,000 tasks logged its chunks' task ids as 1 MB lines ("Returned value was ...")."""
    python_tasks = [t for dag in dagbag.dags.values() for t in dag.tasks if hasattr(t, "show_return_value_in_logs")]
    assert python_tasks
    assert [t.task_id for t in python_tasks if t.show_return_value_in_logs] == []
