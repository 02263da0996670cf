"""The GPU benchmark scripts and the GPU session script run (tiny sizes, on this machine's
device) and write their JSON. Speed is judged on a GPU by the scripts themselves, never here."""

import json
import os
import subprocess
import sys

import pytest

from dynbook.book import cli

ROOT = cli.book_root()
SCRIPTS = sorted((ROOT / "benchmarks").glob("bench_*.py"))


@pytest.mark.slow
def test_gpu_session_runs_end_to_end_on_cpu(tmp_path):
    """benchmarks/gpu_session.sh at tiny size on the CPU (kernels in Triton's interpreter): the
    kernel-test step, every benchmark (each writing its JSON), no carried wheels, the chapter
    step skipped, and the collection into results/<hardware>/ — no step may crash it."""
    env = {**os.environ, "OUT": str(tmp_path), "DEVICE": "cpu", "QUICK": "1", "CHAPTERS": "none",
           "KERNEL_TESTS": "tests/test_kernel_roofline.py", "PYTHON": sys.executable, "SESSION_SECONDS": "560"}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    log = (tmp_path / "session.log").read_text() if (tmp_path / "session.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:] + log[-2000:]
    assert "no .whl carried" in log and "chapters skipped" in log
    assert "passed" in (tmp_path / "kernel_tests.log").read_text()
    for script in SCRIPTS:
        result = json.loads((tmp_path / "bench" / f"{script.stem}.json").read_text())
        assert result["hardware"] and result["versions"]["torch"] and result["all_correct"] is True
    collected = list((tmp_path / "results").glob("*/bench_*.json"))
    assert len(collected) == len(SCRIPTS)
