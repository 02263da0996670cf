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

from dynbook import environment


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
