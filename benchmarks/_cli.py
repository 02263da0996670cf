"""What every benchmark script shares: its command line and where its JSON goes.

    python benchmarks/bench_NAME.py [--device cuda|cpu] [--quick] [--out DIR] [--min-run-time S]

``--quick`` runs tiny sizes (a check that the script works, e.g. on a CPU in CI) and writes to
``_build/bench/``; a full run writes ``results/<hardware>/bench_NAME.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dynbook.book import environment


def parse(description: str, argv=None) -> argparse.Namespace:
    """Parse the common options; ``min_run_time`` is filled in (0.05 s quick, 0.5 s full)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check that the script runs")
    ap.add_argument("--out", default=None, help="output folder (default results/<hardware>/)")
    ap.add_argument("--min-run-time", type=float, default=None, help="seconds per timing (median)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is False on this machine")
    args.min_run_time = args.min_run_time or (0.05 if args.quick else 0.5)
    return args


def write(result: dict, name: str, args: argparse.Namespace, hardware: dict) -> Path:
    """Write ``result`` as ``bench_<name>.json`` in the folder the options choose; return it."""
    if args.out:
        folder = Path(args.out)
    elif args.quick:
        folder = Path("_build") / "bench"
    else:
        folder = Path("results") / environment.hardware_slug(hardware)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"bench_{name}.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    return path


class Recorder:
    """A result dict that is written to ``bench_<name>.json`` every time a value is set, so a
    run cut short by a time limit keeps everything it measured."""

    def __init__(self, name: str, args: argparse.Namespace, hw: dict, **header):
        self.name, self.args, self.hardware = name, args, hw
        self.result = dict(header)
        self.path = write(self.result, name, args, hw)

    def set(self, key: str, value) -> None:
        """``result[key] = value`` (``key`` may be dotted: ``"selective.float32"``), then write."""
        *parents, leaf = key.split(".")
        d = self.result
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = value
        self.path = write(self.result, self.name, self.args, self.hardware)

    def get(self, key: str, default=None):
        d = self.result
        for p in key.split("."):
            if not isinstance(d, dict) or p not in d:
                return default
            d = d[p]
        return d


def gpu_name_key(hardware: dict) -> str | None:
    """The roofline's name (H100, H200, A100, T4) of the GPU in ``hardware``, if it is one."""
    name = str(hardware.get("gpu") or "")
    for key in ("H200", "H100", "A100", "T4"):
        if key in name:
            return key
    return None


def kernel_seconds(fn, device: str) -> float | None:
    """Kernel-only median seconds of ``fn`` by ``triton.testing.do_bench`` (CUDA only)."""
    if device != "cuda":
        return None
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3
