"""``python -m bench``: generate the workload, run every mode on a fresh copy, print and save figures."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import ROOT, report, workload
from bench.cpu import peak_rss_mib
from bench.databases import Server, default_server_url, vacuum_analyze
from recon.db import Database

DEFAULT_JSON = ROOT / "bench-results" / "latest.json"
ROUND_MODES = ("raw", "dag", "inprocess")  # serial runs once, after the rounds (it is slow)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from recon import settings

    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--entries", type=int, default=100_000, help="staging entries in the workload (default 100,000)")
    p.add_argument("--batch-size", type=int, default=settings.batch_size(),
                   help="tasks claimed per DAG run / per raw SQL batch (default: recon.settings.batch_size())")
    p.add_argument("--chunk-size", type=int, default=settings.chunk_size(),
                   help="tasks per mapped chunk (default: recon.settings.chunk_size())")
    p.add_argument("--workers", type=int, default=2,
                   help="dag.test() drivers side by side, like concurrent DAG runs or executor slots"
                        " (default 2, one per CPU of the reference machine)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the DAG, in-process and raw SQL modes this many times, interleaved, each on a fresh"
                        " copy, and keep each mode's best round (the machine is shared: default 1)")
    p.add_argument("--serial-entries", type=int, default=10_000,
                   help="entries for the serial baseline, on its own workload from the same generator"
                        " (default 10,000 or --entries if smaller; it runs about 200 entries/s)")
    p.add_argument("--noop-tasks", type=int, default=100_000, help="no-op tasks for the claim+complete figure")
    p.add_argument("--noop-rounds", type=int, default=2, help="claim+complete rounds; the best of each is kept")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the figures (default {DEFAULT_JSON})")
    p.add_argument("--skip-dag", action="store_true", help="no Airflow (a)")
    p.add_argument("--skip-serial", action="store_true")
    p.add_argument("--skip-raw", action="store_true")
    p.add_argument("--skip-inprocess", action="store_true")
    p.add_argument("--skip-noop", action="store_true")
    p.add_argument("--scale-check", action="store_true",
                   help="also measure cost per entry with 1,000,000 rows already in the tables vs 10,000 (slow)")
    p.add_argument("--scale-history", type=int, nargs=2, default=[10_000, 1_000_000], metavar=("SMALL", "LARGE"))
    p.add_argument("--scale-entries", type=int, default=20_000, help="entries processed on top of each history")
    p.add_argument("--scheduler", action="store_true",
                   help="also run the DAG under a real Airflow (airflow standalone: scheduler, triggerer, ...),"
                        " started by the due-work watcher: drain entries/s, ingest-to-claim delay, idle cost")
    p.add_argument("--probes", type=int, default=7,
                   help="--scheduler: small ingests into the idle system for the ingest-to-claim median (default 7)")
    p.add_argument("--idle-minutes", type=float, default=5,
                   help="--scheduler: how long to count task instances with nothing due (default 5)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--server-url", help="PostgreSQL server for the benchmark databases (default: the resolved"
                                        " recon database's server; the user's own database is never touched)")
    p.add_argument("--prefix", default="recon_bench", help="name prefix of the benchmark databases")
    p.add_argument("--airflow-home", type=Path, default=ROOT / ".recon" / "bench-airflow",
                   help="AIRFLOW_HOME of the DAG drivers (default .recon/bench-airflow)")
    p.add_argument("--airflow-db", default="recon_bench_airflow",
                   help="Airflow metadata database on the benchmark server, kept between runs (migrated once)")
    p.add_argument("--keep", action="store_true", help="keep the benchmark databases for inspection")
    args = p.parse_args(argv)
    args.serial_entries = min(args.serial_entries, args.entries)
    return args


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "plugins"), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def run_module(module: str, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> None:
    command = [sys.executable, "-m", module, *args]
    with open(log or os.devnull, "a") as out:
        done = subprocess.run(command, env=env or subprocess_env(), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    if done.returncode != 0:
        hint = f"; its output is in {log}" if log else ""
        raise RuntimeError(f"{' '.join(command[2:4])} failed with exit code {done.returncode}{hint}")


def machine() -> dict[str, Any]:
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_kib = 0
    try:
        mem_kib = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")))
    except (OSError, StopIteration):
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kib / 1024 / 1024, 1),
            "python": platform.python_version(), "platform": platform.platform(), "load_average": os.getloadavg()}


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.server = Server(args.server_url or default_server_url())
        self.work = Path(tempfile.mkdtemp(prefix="recon-bench-"))
        self.created: list[str] = []
        self.airflow_env: dict[str, str] | None = None  # set by prepare_airflow(), once per run

    def name(self, role: str) -> str:
        return f"{self.args.prefix}_{role}"

    def log(self, message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    def migrated(self, role: str) -> str:
        """A fresh migrated database for `role`, dropped by cleanup(); returns its URL."""
        name = self.name(role)
        self.created.append(name)
        return self.server.create_migrated(name)

    def template(self, role: str, entries: int) -> tuple[str, workload.Workload]:
        name = self.name(role)
        url = self.migrated(role)
        db = Database(url, "bench")
        started = time.perf_counter()
        try:
            load = workload.generate(db, entries, seed=self.args.seed)
        finally:
            db.dispose()
        vacuum_analyze(url)
        self.log(f"generated {load.entries:,} entries in {name} ({time.perf_counter() - started:.1f}s)")
        return name, load

    def copy(self, template: str, role: str) -> str:
        name = self.name(role)
        self.created.append(name)
        return self.server.copy(template, name)

    def checked(self, url: str, load: workload.Workload, result: dict[str, Any]) -> dict[str, Any]:
        db = Database(url, "bench")
        try:
            result["outcomes"] = workload.outcomes(db)
        finally:
            db.dispose()
        result["problems"] = workload.check(result["outcomes"], load)
        result["entries_per_s"] = result["processed"] / result["seconds"] if result["seconds"] else 0.0
        if result["problems"]:
            self.log(f"PROBLEMS: {result['problems']}")
        return result

    def run_mode(self, mode: str, template: str, load: workload.Workload, tag: str = "") -> dict[str, Any]:
        url = self.copy(template, mode)
        out = self.work / f"{mode}{tag}.json"
        self.log(f"{mode}: draining {load.entries:,} entries")
        run_module("bench.modes", mode, str(out), "--url", url, "--batch-size", str(self.args.batch_size),
                   "--chunk-size", str(self.args.chunk_size), log=self.work / f"{mode}.log")
        result = self.checked(url, load, json.loads(out.read_text()))
        self.log(f"{mode}: {result['entries_per_s']:,.0f} entries/s")
        return result

    def prepare_airflow(self, url: str) -> dict[str, str]:
        """The DAG drivers' environment; the Airflow metadata database is migrated on the first call only."""
        if self.airflow_env is None:
            from recon.local_airflow import airflow_sqlalchemy_url

            metadata = self.server.ensure(self.args.airflow_db)
            # a clean Airflow configuration: none of the caller's AIRFLOW_* settings (its metadata
            # database, its recon_db connection) may leak into the benchmark
            env = {k: v for k, v in subprocess_env().items() if not k.startswith("AIRFLOW")}
            env.update(
                RECON_DATABASE_URL=url,
                RECON_AIRFLOW_METADATA_URL=metadata,
                AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=airflow_sqlalchemy_url(metadata),
            )
            self.log("dag: preparing the Airflow metadata database (first run: about a minute)")
            run_module("bench.dag_driver", str(self.work / "prepare.json"), "--airflow-home",
                       str(self.args.airflow_home), "--prepare-only", env=env, log=self.work / "dag-prepare.log")
            self.airflow_env = env
        return dict(self.airflow_env, RECON_DATABASE_URL=url)

    def run_dag(self, template: str, load: workload.Workload, tag: str = "") -> dict[str, Any]:
        url = self.copy(template, "dag")
        env = self.prepare_airflow(url)
        sync = self.work / f"sync{tag}"
        sync.mkdir()
        drivers = []
        for n in range(1, self.args.workers + 1):
            name = f"bench-dag-{n}"
            command = [sys.executable, "-m", "bench.dag_driver", str(self.work / f"{name}{tag}.json"),
                       "--airflow-home", str(self.args.airflow_home), "--batch-size", str(self.args.batch_size),
                       "--chunk-size", str(self.args.chunk_size), "--sync-dir", str(sync), "--name", name]
            log = open(self.work / f"{name}{tag}.log", "w")
            drivers.append((name, subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                   cwd=ROOT), log))
        self.log(f"dag: {len(drivers)} driver(s) warming up (imports, one dry run)")
        while not all((sync / f"{name}.ready").exists() for name, _, _ in drivers):
            for name, process, _ in drivers:
                if process.poll() is not None:
                    raise RuntimeError(f"DAG driver {name} exited early; see {self.work / (name + '.log')}")
            time.sleep(0.1)
        self.log(f"dag: draining {load.entries:,} entries with dag.test()")
        go = time.time()
        (sync / "go").touch()
        for name, process, log in drivers:
            process.wait()
            log.close()
        results = []
        for name, process, _ in drivers:
            path = self.work / f"{name}{tag}.json"
            if not path.exists():
                raise RuntimeError(f"DAG driver {name} failed; see {self.work / (name + '.log')}")
            results.append(json.loads(path.read_text()))
        combined = report.combine_drivers(results, go)
        result = self.checked(url, load, combined)
        self.log(f"dag: {result['entries_per_s']:,.0f} entries/s")
        return result

    def run_noop(self) -> dict[str, Any]:
        from bench import noop_queue

        best: dict[str, Any] = {}
        for round_ in range(self.args.noop_rounds):
            url = self.migrated("noop")
            db = Database(url, "bench")
            try:
                noop_queue.populate(db, self.args.noop_tasks)
            finally:
                db.dispose()
            vacuum_analyze(url)
            out = self.work / f"noop-{round_}.json"
            run_module("bench.modes", "noop", str(out), "--url", url, log=self.work / "noop.log")
            result = json.loads(out.read_text())
            self.log(f"noop round {round_ + 1}: API {result['api']['tasks_per_s']:,.0f} tasks/s,"
                     f" raw {result['raw']['tasks_per_s']:,.0f} tasks/s")
            for side in ("api", "raw"):
                if side not in best or result[side]["tasks_per_s"] > best[side]["tasks_per_s"]:
                    best[side] = result[side]
            best["peak_rss_mib"] = max(best.get("peak_rss_mib", 0), result["peak_rss_mib"])
            self.server.drop(self.name("noop"))
        best["ratio"] = best["api"]["tasks_per_s"] / best["raw"]["tasks_per_s"]
        return best

    def cleanup(self) -> None:
        if self.args.keep:
            self.log(f"kept databases: {', '.join(sorted(set(self.created)))}")
            return
        for name in set(self.created):
            self.server.drop(name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    started = time.time()
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "modes": {},
    }
    try:
        template, load = bench.template("tpl", args.entries)
        results["workload"] = {"entries": load.entries, "transactions": load.transactions,
                               "confirmations": load.confirmations, "mix": load.mix, "expected": load.expected}
        rounds: dict[str, list[dict[str, Any]]] = {}
        airflow = None
        if args.scheduler:  # one real Airflow for every round's drain, then the probes and the idle window
            from bench import scheduler

            airflow = scheduler.start(bench, template)
        try:
            for n in range(args.rounds):  # interleaved, so a burst of other load hits every mode alike
                tag = f"-{n + 1}" if args.rounds > 1 else ""
                if args.rounds > 1:
                    bench.log(f"round {n + 1} of {args.rounds}")
                for mode in ROUND_MODES:
                    if not getattr(args, f"skip_{mode}"):
                        run = (bench.run_dag(template, load, tag) if mode == "dag"
                               else bench.run_mode(mode, template, load, tag))
                        rounds.setdefault(mode, []).append(run)
                    if mode == "dag" and airflow is not None:  # right after it: the same load on the machine
                        rounds.setdefault("scheduler", []).append(airflow.drain(bench, template, load))
        except BaseException:
            if airflow is not None:
                airflow.stop(bench)
            raise
        if airflow is not None:
            results["scheduler"] = scheduler.finish(airflow, bench, rounds.pop("scheduler"))
        for mode, runs in rounds.items():
            best = max(runs, key=lambda r: r["entries_per_s"] if not r["problems"] else -1)
            best["rounds"] = [round(r["entries_per_s"]) for r in runs]
            results["modes"][mode] = best
        if not args.skip_serial:
            serial_template, serial_load = (
                (template, load) if args.serial_entries == args.entries
                else bench.template("tpl_serial", args.serial_entries)
            )
            results["modes"]["serial"] = bench.run_mode("serial", serial_template, serial_load)
        if not args.skip_noop:
            results["noop"] = bench.run_noop()
        if args.scale_check:
            from bench import scale

            results["scale"] = scale.run(bench)
    finally:
        bench.cleanup()
    results["machine"]["load_average_end"] = os.getloadavg()
    results["seconds"] = time.time() - started
    results["bench_peak_rss_mib"] = peak_rss_mib()
    results["summary"] = report.summarize(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print(report.table(results))
    print(f"\nJSON: {args.json}")
    problems = {m: r["problems"] for m, r in results["modes"].items() if r.get("problems")}
    if results.get("scheduler", {}).get("problems"):
        problems["scheduler"] = results["scheduler"]["problems"]
    if problems:
        print(f"\nPROBLEMS (the books did not end as the workload says): {problems}", file=sys.stderr)
        return 1
    return 0
