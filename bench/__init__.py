"""Throughput benchmark of the recon engine: ``./recon bench`` (``python -m bench``).

One run generates a realistic workload once, copies it into fresh databases, and drains it
(a) through the Airflow DAG with ``dag.test()``, (b) through a serial one-task-per-loop
consumer, (c) through hand-written set-based SQL, and measures the tracker's claim+complete
throughput against a bare ``UPDATE ... SKIP LOCKED`` bound. With ``--scheduler`` it also runs
(s) the DAG under a real Airflow (``airflow standalone``), started by the due-work watcher
(bench/scheduler.py). See bench/RESULTS.md.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "plugins") not in sys.path:  # `python -m bench` without ./recon's PYTHONPATH
    sys.path.append(str(ROOT / "plugins"))
