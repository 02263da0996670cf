"""Benchmark of the fused scan kernels ``dynbook.kernels.selective_scan`` / ``linear_scan`` (issue #4).

Reports, in one run on one device, as ratios taken within that run:

* the headline case, Mamba's selective scan at b = 8, l = 4096, d = 1024, n = 16 (fp32, and
  bf16 inputs with fp32 accumulation): forward seconds of the Triton kernel, the sequential
  PyTorch reference and the pure-PyTorch parallel (odd–even) scan; the speed-ups against their
  targets (≥ 20× sequential, ≥ 3× parallel); the kernel's achieved bandwidth, counting the bytes
  it must read and write once (``selective_scan_bytes``), as a fraction of the device's measured
  copy bandwidth (target ≥ 70%);
* ``linear_scan`` on (b·d, l) = (8192, 4096) rows: the same three implementations and bandwidth;
* a sweep of the sequence length l (Triton only): bandwidth fraction vs l;
* forward + backward at a quarter of the headline batch: the Triton path (fused forward,
  backward recomputed through the parallel scan) against autograd through the parallel scan.

Every implementation is checked against the sequential reference before it is timed. Timings are
medians (``dynbook.measure.time_it``, CUDA-synchronised). Writes ``<out>/bench_scan.json``
(default ``results/<gpu>/``; ``_build/bench/`` with ``--quick``) with device, driver, versions
and commit.

    python benchmarks/bench_scan.py                       # on an NVIDIA GPU
    python benchmarks/bench_scan.py --device cpu --quick  # tiny sizes: checks the script runs

On a CPU the Triton kernels run in Triton's interpreter: checked for correctness, not timed
(interpreter timings mean nothing).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone

import torch

import _cli  # benchmarks/_cli.py: the shared command line and output
from dynbook import environment
from dynbook.kernels import scan
from dynbook.measure import time_it

HEADLINE = {"b": 8, "l": 4096, "d": 1024, "n": 16}
TARGETS = {"speedup_vs_torch": 20.0, "speedup_vs_parallel": 3.0, "bandwidth_fraction": 0.70}
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}  # max |error| / max |y| against the reference


def selective_case(shape, dtype, device, mrt, copy_bps):
    impls = ("triton", "parallel", "torch") if device == "cuda" else ("parallel", "torch")
    row = scan.bench_selective_scan(**shape, dtype=dtype, device=device, impls=impls, min_run_time=mrt)
    if device != "cuda":  # the interpreter: correctness only
        args = scan.selective_scan_inputs(**shape, dtype=dtype, device=device)
        with torch.no_grad():
            ref = scan.selective_scan_reference(*args).float()
            got = scan.selective_scan(*args, impl="triton").float()
        row["max_rel_err"]["triton_interpreter"] = ((got - ref).abs().max() / ref.abs().max()).item()
    if "bandwidth_Bps" in row and copy_bps:
        row["bandwidth_fraction"] = row["bandwidth_Bps"] / copy_bps
    row["correct"] = all(e <= TOLERANCE[row["dtype"]] for e in row["max_rel_err"].values())
    if device == "cuda":
        row["meets_target"] = {k: row[k] >= v for k, v in TARGETS.items() if k in row}
    return row


def linear_case(rows, l, device, mrt, copy_bps):
    impls = ("triton", "parallel", "torch") if device == "cuda" else ("parallel", "torch")
    row = scan.bench_linear_scan(rows, l, device=device, impls=impls, min_run_time=mrt)
    if device != "cuda":
        g = torch.Generator().manual_seed(1)
        a, x = torch.rand(rows, l, generator=g), torch.randn(rows, l, generator=g)
        ref = scan.linear_scan_reference(a, x)
        row["max_rel_err"]["triton_interpreter"] = (
            (scan.linear_scan(a, x, impl="triton") - ref).abs().max() / ref.abs().max()).item()
    if "bandwidth_Bps" in row and copy_bps:
        row["bandwidth_fraction"] = row["bandwidth_Bps"] / copy_bps
    row["correct"] = all(e <= TOLERANCE["float32"] for e in row["max_rel_err"].values())
    return row


def length_sweep(lengths, shape, device, mrt, copy_bps):
    out = []
    for l in lengths:
        s = {**shape, "l": l}
        row = scan.bench_selective_scan(**s, device=device, impls=("triton",), min_run_time=mrt)
        if copy_bps:
            row["bandwidth_fraction"] = row["bandwidth_Bps"] / copy_bps
        out.append(row)
        print(f"  l={l}: {row['seconds']['triton'] * 1e3:.3g} ms, "
              f"{row['bandwidth_Bps'] / 1e9:.0f} GB/s ({row.get('bandwidth_fraction', float('nan')):.0%} of copy)",
              flush=True)
    return out


def forward_backward(shape, device, mrt):
    """One training step's scan: Triton forward + recomputed backward vs autograd (parallel)."""
    args = scan.selective_scan_inputs(**shape, device=device)
    leaves = [a.clone().requires_grad_() for a in args]
    g = torch.randn_like(args[0])

    def step(fn):
        def run():
            for a in leaves:
                a.grad = None
            fn(*leaves).backward(g)
        return run

    out = {"shape": shape,
           "parallel": time_it(step(scan.selective_scan_parallel), device=device, min_run_time=mrt)}
    if device == "cuda":
        out["triton"] = time_it(step(lambda *xs: scan.selective_scan(*xs, impl="triton")), device=device,
                                min_run_time=mrt)
        out["speedup"] = out["parallel"] / out["triton"]
    return out


def main(argv=None):
    a = _cli.parse(__doc__.split("\n\n")[0], argv)
    device = a.device
    mrt = a.min_run_time
    if a.quick:
        head = {"b": 2, "l": 37, "d": 19, "n": 5}
        lin, lengths, fb = (6, 53), [16, 64], {"b": 1, "l": 33, "d": 8, "n": 4}
    else:
        head = dict(HEADLINE)
        lin, lengths = (HEADLINE["b"] * HEADLINE["d"], HEADLINE["l"]), [512, 1024, 2048, 4096, 8192, 16384, 32768]
        fb = {**HEADLINE, "b": HEADLINE["b"] // 4}
    t0 = time.perf_counter()
    hw = environment.hardware(device)
    print(f"scan benchmark on {hw.get('gpu') or hw['cpu']} ({device}), quick={a.quick}", flush=True)
    copy_bps = scan.copy_bandwidth(device=device, min_run_time=mrt) if device == "cuda" else None
    if copy_bps:
        print(f"copy bandwidth {copy_bps / 1e9:.0f} GB/s", flush=True)
    result = {
        "benchmark": "scan", "device": device, "quick": a.quick,
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": environment.commit(), "versions": environment.versions(), "hardware": hw,
        "copy_bandwidth_Bps": copy_bps, "targets": TARGETS, "tolerance": TOLERANCE,
        "timing": f"median of time_it, min_run_time={mrt} s",
        "bytes_counted": "selective: read u, delta (b·l·d), B, C (b·l·n), A (d·n), D (d); write y (b·l·d); "
                         "linear: read a, b, write h",
        "backward": "selective_scan impl='triton' recomputes the forward through the parallel scan "
                    "and differentiates it with autograd (no fused backward kernel yet)",
    }
    result["selective"] = {}
    for dtype in (torch.float32, torch.bfloat16):
        print(f"selective_scan {head} {dtype}", flush=True)
        row = selective_case(head, dtype, device, mrt, copy_bps)
        result["selective"][row["dtype"]] = row
        print("  " + json.dumps({k: row.get(k) for k in ("seconds", "speedup_vs_torch", "speedup_vs_parallel",
                                                           "bandwidth_fraction", "max_rel_err")}), flush=True)
    print(f"linear_scan rows={lin[0]} l={lin[1]}", flush=True)
    result["linear"] = linear_case(*lin, device, mrt, copy_bps)
    print("  " + json.dumps(result["linear"]["seconds"]), flush=True)
    if device == "cuda":
        print("length sweep (Triton)", flush=True)
        result["length_sweep"] = length_sweep(lengths, head, device, mrt, copy_bps)
    print(f"forward + backward {fb}", flush=True)
    result["forward_backward"] = forward_backward(fb, device, mrt)
    result["all_correct"] = result["linear"]["correct"] and all(r["correct"] for r in result["selective"].values())
    result["wall_seconds"] = time.perf_counter() - t0

    path = _cli.write(result, "scan", a, hw)
    fp32 = result["selective"]["float32"]
    if "meets_target" in fp32:
        for k, v in TARGETS.items():
            print(f"{k}: {fp32[k]:.3g} (target {v:g}, {'met' if fp32['meets_target'][k] else 'NOT met'})")
    print(f"all implementations correct: {result['all_correct']}")
    print(f"wrote {path} in {result['wall_seconds']:.1f} s")
    return 0 if result["all_correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
