"""Benchmark of the scan kernels ``dynbook.kernels.selective_scan`` / ``linear_scan`` (issues #4, #11).

Reports, in one run on one device, as ratios taken within that run:

* the headline case, Mamba's selective scan at b = 8, l = 4096, d = 1024, n = 16 (fp32, and bf16
  inputs with fp32 accumulation): the Triton kernel end to end (checks, autograd wrapper) and
  kernel-only (``triton.testing.do_bench`` on the bare launch); the baselines: the chunked
  PyTorch scan ``selective_scan_chunked`` (the fastest pure-PyTorch parallel scan here), the
  odd–even parallel scan and the sequential reference; the kernel's bandwidth (bytes it must move
  once over its time) as a fraction of the measured copy bandwidth (target ≥ 70 %); and measured
  ÷ predicted, the prediction being the roofline of ``dynbook.kernels.roofline`` with the
  per-element counts of the compiled kernel (``results/static/kernels.json``) and the measured
  copy bandwidth;
* ``linear_scan`` on (b·d, l) = (8192, 4096) rows, forward and backward, likewise;
* a sweep of the sequence length l (Triton only);
* forward + backward at the headline shape: the fused Triton backward against autograd through
  the chunked scan (at a quarter of the batch: autograd's (b, chunk, d, n) tensors).

Every implementation is checked against the sequential reference before it is timed. The JSON is
written after every measurement (a run stopped by a time limit keeps what it measured).

    python benchmarks/bench_scan.py                       # on an NVIDIA GPU
    python benchmarks/bench_scan.py --device cpu --quick  # tiny sizes: checks the script runs

On a CPU the Triton kernels run in Triton's interpreter: checked for correctness, not timed.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import _cli  # benchmarks/_cli.py: the shared command line and output
from dynbook.book import environment
from dynbook.kernels import roofline, scan
from dynbook.measure.fits import relative_error
from dynbook.measure.timing import copy_bandwidth
from dynbook.measure.timing import time_it

HEADLINE = {"b": 8, "l": 4096, "d": 1024, "n": 16}
TARGETS = {"speedup_vs_torch": 20.0, "speedup_vs_chunked": 3.0, "bandwidth_fraction": 0.70}
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}  # max |error| / max |y| against the reference
STATIC = Path(__file__).resolve().parents[1] / "results" / "static" / "kernels.json"


def static_counts(kernel: str, **match) -> dict:
    """Per-element exp / shuffle / instruction counts of the compiled sm_90 kernel (the static
    table), or the design's counts when the table is absent."""
    try:
        rows = json.loads(STATIC.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return {"ex2": 1.0, "shfl": 0.0, "instructions": 0.0, "from": "design (no static table)"}
    cands = [r for r in rows if r["kernel"] == kernel and r["arch"] == 90 and r["dtype"] == "fp32" and "per_element" in r
             and all(r["config"].get(k) == v for k, v in match.items())]
    if not cands:
        return {"ex2": 1.0, "shfl": 0.0, "instructions": 0.0, "from": "design (no matching row)"}
    r = min(cands, key=lambda r: r["per_element"]["shfl"])
    per = r["ptx"]["main_loop"]
    e = r["per_element"]["elements_per_thread_per_trip"]
    return {"ex2": per["ex2"] / e, "shfl": per["shfl"] / e, "instructions": per["instructions"] / e, "from": r["key"]}


def predicted(work: roofline.Work, hw: dict, copy_bps: float | None) -> dict | None:
    key = _cli.gpu_name_key(hw)
    if key is None:
        return None
    gpu = roofline.GPUS[key].with_copy(copy_bps) if copy_bps else roofline.GPUS[key]
    return roofline.floor(work, gpu)


def add_bandwidth(row: dict, copy_bps: float | None) -> float | None:
    """The Triton time of ``row`` (kernel-only where it was measured) and, from it and
    ``row["bytes"]``, the achieved bandwidth and its fraction of the copy roof; None when
    Triton was not timed."""
    s = row["seconds"]
    if "triton" not in s:
        return None
    t = s.get("triton_kernel") or s["triton"]
    row["bandwidth_Bps"] = row["bytes"] / t
    if copy_bps:
        row["bandwidth_fraction"] = row["bandwidth_Bps"] / copy_bps
    return t


def _check(got, ref) -> float:
    return relative_error(got.float(), ref)  # max |got − ref| / max |ref|


def selective_case(rec, tag, shape, dtype, device, mrt, copy_bps, hw):
    args = scan.selective_scan_inputs(**shape, dtype=dtype, device=device)
    run = {"triton": lambda: scan.selective_scan(*args, impl="triton"),
           "chunked": lambda: scan.selective_scan_chunked(*args),
           "parallel": lambda: scan.selective_scan_parallel(*args),
           "torch": lambda: scan.selective_scan_reference(*args)}
    key = f"selective.{str(dtype).removeprefix('torch.')}"
    rec.set(key, {"shape": shape, "dtype": str(dtype).removeprefix("torch."), "seconds": {}, "max_rel_err": {}})
    with torch.no_grad():
        ref = scan.selective_scan_reference(*args).float()
        for impl in run:
            rec.set(f"{key}.max_rel_err.{impl}", _check(run[impl](), ref))
            if device == "cuda" or impl != "triton":  # the interpreter: correctness only
                rec.set(f"{key}.seconds.{impl}", time_it(run[impl], device=device, min_run_time=mrt))
                print(f"  {tag} {impl}: {rec.get(f'{key}.seconds.{impl}') * 1e3:.4g} ms", flush=True)
        if device == "cuda":
            u, delta, A, B, C, D = args
            y = torch.empty_like(u)
            A2 = (A.float() * scan.LOG2E).contiguous()
            bsz, l, d = u.shape
            grid = lambda meta: (bsz, (d + meta["BLOCK_D"] - 1) // meta["BLOCK_D"])  # noqa: E731
            scr = scan.ssm_scratch(bsz, d, A.shape[1], u.dtype, u.device)
            bare = lambda: scan._ssm_fwd_tuned[grid](u, delta, A2, B, C, D, y, y, scr, l, d, A.shape[1], 1,  # noqa: E731
                                                      HAS_D=True, STORE_STATES=False, BLOCK_N=max(2, scan._pow2(A.shape[1])),
                                                      RUN=scan.SSM_RUN, ACC=scan.tl.float32)
            rec.set(f"{key}.seconds.triton_kernel", _cli.kernel_seconds(bare, device))
    row = rec.get(key)
    itemsize = torch.empty((), dtype=dtype).element_size()
    row["bytes"] = scan.selective_scan_bytes(**shape, itemsize=itemsize)
    s = row["seconds"]
    t = add_bandwidth(row, copy_bps)
    if t is not None:
        for other in ("chunked", "parallel", "torch"):
            if other in s:
                row[f"speedup_vs_{other}"] = s[other] / s["triton"]
        counts = static_counts("_ssm_fwd_kernel", n=16, STORE_STATES=None)
        pred = predicted(roofline.selective_scan_work(**shape, itemsize=itemsize, exp_per_element=counts["ex2"],
                                                      shuffles_per_element=counts["shfl"],
                                                      instructions_per_element=counts["instructions"]), hw, copy_bps)
        if pred:
            row["roofline"] = {**pred, "counts": counts, "measured_over_predicted": t / pred["floor_s"]}
    row["correct"] = all(e <= TOLERANCE[row["dtype"]] for e in row["max_rel_err"].values())
    if device == "cuda":
        row["meets_target"] = {k: row[k] >= v for k, v in TARGETS.items() if k in row}
    rec.set(key, row)
    return row


def linear_case(rec, rows, l, device, mrt, copy_bps, hw):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(rows, l, generator=g).to(device)
    x = torch.randn(rows, l, generator=g).to(device)
    gy = torch.randn(rows, l, generator=g).to(device)
    run = {"triton": lambda: scan.linear_scan(a, x, impl="triton"),
           "parallel": lambda: scan.linear_scan_parallel(a, x),
           "torch": lambda: scan.linear_scan_reference(a, x)}
    rec.set("linear", {"shape": {"rows": rows, "l": l}, "seconds": {}, "max_rel_err": {}})
    with torch.no_grad():
        ref = scan.linear_scan_reference(a, x).float()
        for impl in run:
            rec.set(f"linear.max_rel_err.{impl}", _check(run[impl](), ref))
            if device == "cuda" or impl != "triton":
                rec.set(f"linear.seconds.{impl}", time_it(run[impl], device=device, min_run_time=mrt))
        if device == "cuda":
            h = torch.empty_like(x)
            bare = lambda: scan._launch_linear(a, x)  # noqa: E731 - contiguous (R, L): no copies
            rec.set("linear.seconds.triton_kernel", _cli.kernel_seconds(bare, device))
            hs = scan._launch_linear(a, x)
            bare_b = lambda: scan._launch_linear(a, gy, reverse=True, h_prev=hs)  # noqa: E731
            rec.set("linear.seconds.triton_backward_kernel", _cli.kernel_seconds(bare_b, device))
            del h
    row = rec.get("linear")
    row["bytes"] = scan.linear_scan_bytes(rows * l, 4)
    s = row["seconds"]
    t = add_bandwidth(row, copy_bps)
    if t is not None:
        if copy_bps and "triton_backward_kernel" in s:
            row["backward_bandwidth_fraction"] = 5 * rows * l * 4 / s["triton_backward_kernel"] / copy_bps
        counts = static_counts("_linear_scan_kernel", REVERSE=False)
        pred = predicted(roofline.linear_scan_work(rows * l, shuffles_per_element=counts["shfl"],
                                                   instructions_per_element=counts["instructions"]), hw, copy_bps)
        if pred:
            row["roofline"] = {**pred, "counts": counts, "measured_over_predicted": t / pred["floor_s"]}
    row["correct"] = all(e <= TOLERANCE["float32"] for e in row["max_rel_err"].values())
    rec.set("linear", row)
    return row


def forward_backward(rec, shape, device, mrt, hw, copy_bps):
    """One training step's scan: fused Triton forward + backward vs autograd through the chunked scan."""
    args = scan.selective_scan_inputs(**shape, device=device)
    leaves = [a.clone().requires_grad_() for a in args]
    g = torch.randn_like(args[0])

    def step(fn):
        def run():
            for a in leaves:
                a.grad = None
            fn(*leaves).backward(g)
        return run

    rec.set("forward_backward", {"shape": shape})
    if device == "cuda":
        rec.set("forward_backward.triton", time_it(step(lambda *xs: scan.selective_scan(*xs, impl="triton")),
                                                   device=device, min_run_time=mrt))
        small = {**shape, "b": max(1, shape["b"] // 4)}
        sargs = scan.selective_scan_inputs(**small, device=device)
        sleaves = [a.clone().requires_grad_() for a in sargs]
        sg = torch.randn_like(sargs[0])

        def chunked():
            for a in sleaves:
                a.grad = None
            scan.selective_scan_chunked(*sleaves).backward(sg)

        t_small = time_it(chunked, device=device, min_run_time=mrt)
        rec.set("forward_backward.chunked_autograd_quarter_batch", t_small)
        rec.set("forward_backward.speedup_vs_chunked_per_sample",
                t_small / small["b"] / (rec.get("forward_backward.triton") / shape["b"]))
        counts = static_counts("_ssm_bwd_kernel", n=16, BLOCK_L=32, BLOCK_D=32)
        pred = predicted(roofline.selective_scan_backward_work(**shape, chunk=32, exp_per_element=counts["ex2"],
                                                               shuffles_per_element=counts["shfl"],
                                                               instructions_per_element=counts["instructions"]),
                         hw, copy_bps)
        if pred:
            rec.set("forward_backward.backward_roofline", {**pred, "counts": counts})
    else:
        rec.set("forward_backward.chunked_autograd", time_it(step(scan.selective_scan_chunked), device=device,
                                                             min_run_time=mrt))
        xs = [a.detach().clone().requires_grad_() for a in args]
        scan.selective_scan(*xs, impl="triton").backward(g)  # the interpreter: correctness only
        ys = [a.detach().clone().requires_grad_() for a in args]
        scan.selective_scan_reference(*ys).backward(g)
        rec.set("forward_backward.triton_interpreter_grad_err",
                max(_check(x.grad, y.grad.float()) for x, y in zip(xs, ys)))


def main(argv=None):
    a = _cli.parse(__doc__.split("\n\n")[0], argv)
    device, mrt = a.device, a.min_run_time
    if a.quick:
        head = {"b": 2, "l": 37, "d": 19, "n": 5}
        lin, lengths, fb = (6, 53), [16, 64], {"b": 1, "l": 33, "d": 8, "n": 4}
    else:
        head = dict(HEADLINE)
        lin, lengths = (HEADLINE["b"] * HEADLINE["d"], HEADLINE["l"]), [512, 1024, 2048, 4096, 8192, 16384, 32768]
        fb = dict(HEADLINE)
    t0 = time.perf_counter()
    hw = environment.hardware(device)
    print(f"scan benchmark on {hw.get('gpu') or hw['cpu']} ({device}), quick={a.quick}", flush=True)
    rec = _cli.Recorder("scan", a, hw, benchmark="scan", device=device, quick=a.quick,
                        started_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        commit=environment.commit(), versions=environment.versions(), hardware=hw,
                        targets=TARGETS, tolerance=TOLERANCE, timing=f"median of time_it, min_run_time={mrt} s; "
                        "kernel-only: triton.testing.do_bench median on the bare launch",
                        bytes_counted="selective: read u, delta (b·l·d), B, C (b·l·n), A (d·n), D (d); write y "
                                      "(b·l·d); linear: read a, b, write h")
    copy_bps = copy_bandwidth(device, 1 << 30, min_run_time=mrt) if device == "cuda" else None
    rec.set("copy_bandwidth_Bps", copy_bps)
    if copy_bps:
        print(f"copy bandwidth {copy_bps / 1e9:.0f} GB/s", flush=True)
    for dtype in (torch.float32, torch.bfloat16):
        print(f"selective_scan {head} {dtype}", flush=True)
        row = selective_case(rec, str(dtype), head, dtype, device, mrt, copy_bps, hw)
        print("  " + json.dumps({k: row.get(k) for k in ("speedup_vs_chunked", "speedup_vs_torch", "bandwidth_fraction")}),
              flush=True)
    print(f"linear_scan rows={lin[0]} l={lin[1]}", flush=True)
    linear_case(rec, *lin, device, mrt, copy_bps, hw)
    if device == "cuda":
        print("length sweep (Triton)", flush=True)
        for l in lengths:
            s = {**head, "l": l}
            args = scan.selective_scan_inputs(**s, device=device)
            with torch.no_grad():
                t = time_it(lambda: scan.selective_scan(*args, impl="triton"), device=device, min_run_time=mrt)
            frac = scan.selective_scan_bytes(**s, itemsize=4) / t / copy_bps
            rec.set(f"length_sweep.{l}", {"seconds": t, "bandwidth_fraction": frac})
            print(f"  l={l}: {t * 1e3:.3g} ms ({frac:.0%} of copy)", flush=True)
            del args
    print(f"forward + backward {fb}", flush=True)
    forward_backward(rec, fb, device, mrt, hw, copy_bps)
    ok = rec.get("linear.correct") and all(r["correct"] for r in rec.get("selective").values())
    rec.set("all_correct", bool(ok))
    rec.set("wall_seconds", time.perf_counter() - t0)
    fp32 = rec.get("selective.float32")
    for k, v in TARGETS.items():
        if k in fp32:
            print(f"{k}: {fp32[k]:.3g} (target {v:g}, {'met' if fp32[k] >= v else 'NOT met'})")
    if "roofline" in fp32:
        print(f"selective_scan measured ÷ predicted: {fp32['roofline']['measured_over_predicted']:.2f} "
              f"(floor {fp32['roofline']['floor_s'] * 1e6:.1f} µs, {fp32['roofline']['bound']})")
    print(f"all implementations correct: {ok}")
    print(f"wrote {rec.path} in {rec.get('wall_seconds'):.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
