"""The GPU benchmark scripts run (tiny sizes, on this machine's device) and write their JSON.
Speed is judged on a GPU by the scripts themselves, never here."""

import json
import subprocess
import sys

import pytest

from dynbook import cli

ROOT = cli.book_root()
SCRIPTS = sorted((ROOT / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_runs_quick_and_is_correct(script, tmp_path):
    proc = subprocess.run([sys.executable, str(script), "--device", "cpu", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / f"{script.stem}.json").read_text())
    assert result["hardware"] and result["versions"]["torch"]
