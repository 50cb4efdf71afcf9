"""The engine's own StatsD metrics, read from a local UDP sink after a real run (dag.test)."""

from __future__ import annotations

import socket

import pytest

from tests.dags.seed import Seed

pytestmark = [pytest.mark.airflow, pytest.mark.slow]


@pytest.fixture
def statsd_sink(monkeypatch):
    """A UDP socket standing in for StatsD; the engine is pointed at it."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    monkeypatch.setenv("RECON_STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("RECON_STATSD_PORT", str(sink.getsockname()[1]))
    yield sink
    sink.close()


def received(sink: socket.socket) -> list[str]:
    """Every metric line already delivered (the run sent them before it returned)."""
    sink.settimeout(0.5)
    lines = []
    try:
        while True:
            lines += sink.recv(65535).decode().splitlines()
    except TimeoutError:
        return lines


def test_a_run_reports_throughput_manual_review_backlog_and_chunk_durations(run_dag, db_url, statsd_sink):
    seed = Seed(db_url)
    claimed = [seed.stage("acc_norule", "DEBIT", "5.00", "TRANSACTION", "o-x")[1]]
    claimed += [seed.stage("acc_bank", "DEBIT", "100.00", "TRANSACTION", f"o-{i}")[1] for i in range(2)]
    left = [seed.stage("acc_bank", "DEBIT", "1.00", "TRANSACTION", f"later-{i}")[1] for i in range(2)]
    with seed.connect() as c:  # the run claims the three oldest; two due tasks stay behind
        c.execute("UPDATE process_tracker SET run_after = now() - interval '10 minutes' WHERE task_id = ANY(%s)",
                  (claimed,))
        c.execute("UPDATE process_tracker SET run_after = now() - interval '5 minutes' WHERE task_id = ANY(%s)",
                  (left,))

    run = run_dag({"batch_size": 3, "chunk_size": 2})

    assert run.state == "success" and run.summary["claimed"] == 3
    lines = received(statsd_sink)
    assert "recon.run.entries_processed:3|g" in lines
    assert "recon.entries.processed:3|c" in lines
    assert "recon.manual_review.NoReconRuleFoundError:1|c" in lines
    assert "recon.backlog.due:2|g" in lines
    [age] = [float(line.split(":")[1].split("|")[0]) for line in lines
             if line.startswith("recon.backlog.oldest_due_age_seconds:")]
    assert 300 <= age < 900
    durations = [line for line in lines if line.startswith("recon.chunk.duration:")]
    assert len(durations) == 2 and all(line.endswith("|ms") for line in durations)  # two chunks of up to 2


def test_no_host_no_metrics(run_dag, db_url):
    """Off by default: nothing configured, nothing sent, and the run is unaffected."""
    Seed(db_url).stage("acc_bank", "DEBIT", "100.00", "TRANSACTION", "o-1")
    from recon.reporting import metrics

    assert metrics._statsd() is None
    assert run_dag({}).state == "success"
