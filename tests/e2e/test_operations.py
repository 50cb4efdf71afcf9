"""Operations on a real Airflow (api-server, scheduler, dag-processor): the recon database is
unreachable, and Airflow keeps working and tells someone.

The recon connection points at a port that accepts TCP connections and never answers (a database
host that hangs, the worst case for a timeout). One deployment serves three checks:

- the run-note listener, which runs inside the scheduler loop, gives up after its 2 s connect
  timeout, never raises, and the scheduler goes on scheduling: a run of the other DAG triggered
  afterwards is scheduled and finishes, the health endpoint reports the scheduler healthy and the
  UI's page loads;
- the failed run's `on_failure_callback` (SmtpNotifier, run by the dag-processor) mails a local
  SMTP sink (aiosmtpd on 127.0.0.1) with the run id and the reason;
- Airflow's own StatsD metrics, switched on by configuration only, reach a local UDP sink.
"""

from __future__ import annotations

import json
import socket
import threading
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Iterator

import pytest
from aiosmtpd.controller import Controller

from tests.ui.airflow_harness import AirflowServer, free_port, running_airflow

pytestmark = [pytest.mark.slow, pytest.mark.airflow]

STARTUP_TIMEOUT_S = 240
RUN_TIMEOUT_S = 180
COMPONENTS = [["scheduler"], ["dag-processor"]]
ALERT_TO = "recon-ops@example.com"


class Mailbox:
    """aiosmtpd handler: keeps every message delivered to the sink."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=default_policy)))
        return "250 OK"


class SilentDatabase:
    """Accepts TCP connections and never says a word: a database host that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


class UdpSink:
    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.lines: list[str] = []

    def read(self) -> list[str]:
        try:
            while True:
                self.lines += self.socket.recv(65535).decode(errors="replace").splitlines()
        except TimeoutError:
            return self.lines


@pytest.fixture(scope="module")
def sinks() -> Iterator[tuple[Mailbox, SilentDatabase, UdpSink, int]]:
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    silent, statsd = SilentDatabase(), UdpSink()
    try:
        yield mailbox, silent, statsd, smtp.port
    finally:
        smtp.stop()
        silent.close()
        statsd.socket.close()


@pytest.fixture(scope="module")
def airflow(sinks, pg_admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowServer]:
    mailbox, silent, statsd, smtp_port = sinks
    smtp_connection = {
        "conn_type": "smtp", "host": "127.0.0.1", "port": smtp_port,
        "extra": {"from_email": "airflow@example.com", "disable_tls": True, "disable_ssl": True,
                  "timeout": 10, "retry_limit": 0},
    }
    with running_airflow(
        ["api-server"], tmp_path_factory.mktemp("operations") / "airflow", pg_admin_url,
        f"postgresql://recon@127.0.0.1:{silent.port}/recon", "operations-api-server.log", components=COMPONENTS,
        extra_env={
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "RECON_TASK_RETRIES": "0",
            "RECON_MAINTENANCE_SCHEDULE": "none",  # no scheduled run of its own in the way of ours
            "RECON_DB_CONNECT_TIMEOUT_SECONDS": "3",  # the tasks fail fast too
            "RECON_ALERT_EMAIL": ALERT_TO,
            "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps(smtp_connection),
            "AIRFLOW__METRICS__STATSD_ON": "True",
            "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
            "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
            "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        },
    ) as server:
        server.wait_for_dag("recon_process_tracker", STARTUP_TIMEOUT_S)
        server.wait_for_dag("recon_maintenance", STARTUP_TIMEOUT_S)
        server.wait_for_components()
        yield server


def _trigger(airflow: AirflowServer, dag_id: str) -> str:
    return airflow.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})["dag_run_id"]


def test_an_unreachable_recon_database_fails_the_run_mails_it_and_stalls_nothing(airflow, sinks):
    mailbox, _, statsd, _ = sinks
    run_id = _trigger(airflow, "recon_process_tracker")
    run = airflow.wait_for_run("recon_process_tracker", run_id, RUN_TIMEOUT_S)
    assert run["state"] == "failed"

    # the listener tried, timed out and said so, inside the scheduler, which lived on
    scheduler_log = airflow.home / "scheduler.log"
    airflow.wait_for("the listener's warning in the scheduler log",
                     lambda: f"could not write the summary note of run {run_id}" in scheduler_log.read_text(errors="replace"),
                     60)
    # ... and still schedules: the other DAG's run is started and each of its tasks runs (and fails:
    # same database; it would retry in 5 minutes)
    other = _trigger(airflow, "recon_maintenance")

    def other_tasks_ran():
        path = f"/api/v2/dags/recon_maintenance/dagRuns/{other}/taskInstances"
        tis = airflow.call("GET", path)["task_instances"]
        done = [ti for ti in tis if ti["state"] in ("success", "failed", "up_for_retry") and ti["start_date"]]
        return tis if tis and len(done) == len(tis) else None

    airflow.wait_for("every task of the other DAG's run to run", other_tasks_ran, RUN_TIMEOUT_S)
    health = airflow.call("GET", "/api/v2/monitor/health")
    assert health["scheduler"]["status"] == "healthy", health
    status, page = airflow.request("GET", "/", token=None, headers={"Accept": "text/html"})
    assert status == 200 and "<html" in str(page).lower()

    # the failure mail: to the configured address, naming the run and the reason
    def mail_about_run():
        return [m for to, m in mailbox.messages if run_id in str(m["Subject"]) and ALERT_TO in to]

    [mail] = airflow.wait_for("the failure mail in the SMTP sink", mail_about_run, 120)
    assert mail["Subject"] == f"[recon] recon_process_tracker run {run_id} failed: task_failure"
    body = mail.get_body(preferencelist=("html", "plain")).get_content()
    assert run_id in body and "Reason: task_failure" in body and "last failed task: " in body

    # Airflow's own metrics, switched on by configuration alone
    lines = airflow.wait_for("Airflow's StatsD metrics in the UDP sink",
                             lambda: [l for l in statsd.read() if l.startswith("airflow.")], 60)
    names = {line.split(":")[0] for line in lines}
    assert "airflow.scheduler_heartbeat" in names, sorted(names)[:50]
