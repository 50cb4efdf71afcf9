"""The plugin file stays light: Airflow imports it in every process (scheduler, workers, ...)."""

from __future__ import annotations

import os
import subprocess
import sys

from recon.settings import PROJECT_ROOT


def test_importing_the_plugin_file_loads_neither_the_view_nor_the_engine() -> None:
    """Only the settings (names, no I/O) and their error types are loaded with it."""
    code = (
        "import sys, recon_ui\n"
        "loaded = sorted(m for m in sys.modules if m == 'recon' or m.startswith('recon.'))\n"
        "print(loaded)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT / "plugins")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "['recon', 'recon.errors', 'recon.settings']", result.stdout[-3000:]
