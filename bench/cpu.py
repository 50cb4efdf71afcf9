"""CPU time spent on a measured piece of work: this process, plus the PostgreSQL backends
serving the benchmark database (read from /proc, so only when the server runs on this
machine, as the embedded one does). And a process's peak memory.

Wall-clock figures on a shared 2-core machine swing with other people's load; CPU seconds per
entry barely do, so the report shows both.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field

import psycopg

_TICKS = os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or, with RUSAGE_CHILDREN, of its largest waited-for child)."""
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


def _proc_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def process_group_cpu(pgid: int) -> float:
    """CPU seconds of the live processes of a process group (e.g. airflow standalone and its
    components), including their children that have exited and been waited for."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # pgrp
            total += sum(int(x) for x in fields[11:15]) / _TICKS  # utime, stime, cutime, cstime
    return total


def _backends(url: str, application_name: str | None) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        me = conn.info.backend_pid
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s"
            " AND (%s::text IS NULL OR application_name = %s)",
            (me, application_name, application_name),
        ).fetchall()
    return [r[0] for r in rows]


@dataclass
class CpuMeter:
    """start() / stop() around the work; backends must still be connected at stop().

    ``application_name`` counts only the backends of connections that set it (one DAG driver
    among several); otherwise every backend of the database counts.
    """

    url: str
    application_name: str | None = None
    client_seconds: float = 0.0
    server_seconds: float | None = None
    _client_start: float = 0.0
    _server_start: dict[int, float] = field(default_factory=dict)

    def start(self) -> "CpuMeter":
        self._client_start = _own_cpu()
        self._server_start = {pid: cpu for pid in _backends(self.url, self.application_name) if (cpu := _proc_cpu(pid)) is not None}
        return self

    def stop(self) -> "CpuMeter":
        self.client_seconds = _own_cpu() - self._client_start
        total, seen = 0.0, False
        for pid in _backends(self.url, self.application_name):
            cpu = _proc_cpu(pid)
            if cpu is not None:
                seen = True
                total += cpu - self._server_start.get(pid, 0.0)
        self.server_seconds = total if seen else None
        return self

    def as_dict(self) -> dict[str, float | None]:
        return {"client_cpu_s": self.client_seconds, "server_cpu_s": self.server_seconds}
