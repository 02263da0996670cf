"""Benchmark of the fused RK4 kernel ``dynbook.kernels.rk4_mlp`` (issue #3).

Solves dy/dt = tanh(y W1 + b1) W2 + b2 for n_steps classical RK4 steps, fp32, and reports, in one
run on one device:

* the headline case (batch 1024, d = 2, h = 64, 100 steps): seconds per solve of the fused
  Triton kernel (end to end, and kernel-only by ``triton.testing.do_bench`` on the bare launch),
  torchdiffeq ``odeint(method="rk4")``, torchode (classical RK4 tableau, fixed steps; when it is
  installed), the eager PyTorch loop, the loop with its step ``torch.compile``d, and the loop
  captured in a CUDA graph; the speed-ups against the issue-11 goals (≥ 500× torchdiffeq, ≥ 50×
  CUDA graph); forward + backward against PyTorch autograd;
* every launch configuration (rows per program × num_warps) at the headline case, each checked
  against a float64 reference before it is timed;
* sweeps of batch (1 … 65536) and hidden size h (16 … 256): seconds, achieved FLOP/s (matmul
  FLOPs, ``rk4_mlp_flops``) and its fraction of the device's fp32 peak (SMs × max SM clock ×
  FP32 lanes per SM × 2, from the device properties and NVML).

Timings are medians (``dynbook.measure.timing.time_it``, CUDA-synchronised). Writes
``<out>/bench_rk4_mlp.json`` (default ``results/<gpu>/``) with device, driver, versions and commit,
rewritten after every measurement (a run stopped by a time limit keeps what it measured).

    python benchmarks/bench_rk4_mlp.py                       # on an NVIDIA GPU
    python benchmarks/bench_rk4_mlp.py --device cpu --quick  # tiny sizes: checks the script runs

On a CPU the Triton kernel runs in Triton's interpreter: it is checked for correctness but not
timed (interpreter timings mean nothing), and there is no CUDA graph.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone

import torch

import _cli  # benchmarks/_cli.py: the shared command line and output
from dynbook.book import environment
from dynbook.kernels.rk4 import (ROWS_CHOICES, float64_error, pick_config, rk4_mlp,
                                 rk4_mlp_flops, rk4_mlp_inputs)
from dynbook.measure.timing import time_it
from dynbook.models.neural_ode import rk4_runners

HEADLINE = {"batch": 1024, "d": 2, "h": 64, "n_steps": 100}
TARGETS = {"torchdiffeq": 500.0, "cuda_graph": 50.0}  # the issue-11 goals for the fused kernel
#: FP32 lanes (CUDA cores) per SM by compute capability (NVIDIA CUDA programming guide).
FP32_LANES = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128,
              (9, 0): 128, (10, 0): 128, (10, 3): 128, (12, 0): 128}


def fp32_peak(device: str) -> dict:
    """The device's fp32 (non-tensor-core) peak FLOP/s and how it was derived."""
    if device != "cuda":
        return {"flops": None, "how": "no fp32 peak for a CPU run"}
    props = torch.cuda.get_device_properties(0)
    cc = (props.major, props.minor)
    lanes = FP32_LANES.get(cc)
    clock_mhz = None
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            clock_mhz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 - without NVML there is no clock to read
        return {"flops": None, "how": f"max SM clock unreadable: {type(e).__name__}: {e}"}
    if lanes is None:
        return {"flops": None, "how": f"FP32 lanes per SM unknown for compute capability {cc}"}
    flops = props.multi_processor_count * clock_mhz * 1e6 * lanes * 2
    return {"flops": flops, "sm_count": props.multi_processor_count, "max_sm_clock_mhz": clock_mhz,
            "fp32_lanes_per_sm": lanes, "compute_capability": f"{cc[0]}.{cc[1]}",
            "how": "SMs × max SM clock (NVML) × FP32 lanes per SM × 2 (FMA)"}


def extra_runners(y0, w1, b1, w2, b2, *, n_steps, t1=1.0) -> dict:
    """Baselines beyond ``rk4_runners``: the loop with its RK4 step ``torch.compile``d (CUDA),
    and torchode with the classical RK4 tableau on a fixed grid (if torchode is installed).
    A baseline that cannot run is returned as the string saying why."""
    from dynbook.kernels.rk4 import mlp_field

    out = {}
    dt = t1 / n_steps
    w = (w1, b1, w2, b2)

    def step(y):
        k1 = mlp_field(y, *w)
        k2 = mlp_field(y + (0.5 * dt) * k1, *w)
        k3 = mlp_field(y + (0.5 * dt) * k2, *w)
        k4 = mlp_field(y + dt * k3, *w)
        return y + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)

    if y0.is_cuda:
        try:
            cstep = torch.compile(step, dynamic=False)

            def compiled_loop():
                y = y0
                for _ in range(n_steps):
                    y = cstep(y)
                return y

            compiled_loop()  # compile outside the timing
            out["torch_compile"] = compiled_loop
        except Exception as e:  # noqa: BLE001 - a baseline that fails is reported, not fatal
            out["torch_compile"] = f"torch.compile failed: {type(e).__name__}: {e}"[:300]
    else:
        out["torch_compile"] = "not run on a CPU (inductor needs a C++ toolchain; timing here means nothing)"
    try:
        import torchode as to
        from torchode.single_step_methods.runge_kutta import ButcherTableau, ExplicitRungeKutta

        class RK4(ExplicitRungeKutta):
            TABLEAU = ButcherTableau.from_lists(c=[0.0, 0.5, 0.5, 1.0], a=[[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
                                                b=[1 / 6, 1 / 3, 1 / 3, 1 / 6], b_low_order=[1 / 6, 1 / 3, 1 / 3, 1 / 6])

            def __init__(self, term=None):
                super().__init__(term, RK4.TABLEAU)

            def convergence_order(self):
                return 4

            def build_interpolation(self, data):
                from torchode.interpolation import ThirdOrderPolynomialInterpolation

                return ThirdOrderPolynomialInterpolation.from_k(data.t0, data.dt, data.y0, data.y1, data.k)

        term = to.ODETerm(lambda t, y: mlp_field(y, *w))
        solver = to.AutoDiffAdjoint(RK4(term), to.FixedStepController())
        batch = y0.shape[0]
        t_eval = torch.tensor([0.0, t1], device=y0.device, dtype=y0.dtype).expand(batch, 2)
        prob = to.InitialValueProblem(y0=y0, t_eval=t_eval)
        dt0 = torch.full((batch,), dt, device=y0.device, dtype=y0.dtype)
        out["torchode"] = lambda: solver.solve(prob, dt0=dt0).ys[:, -1]
    except Exception as e:  # noqa: BLE001
        out["torchode"] = f"torchode unavailable: {type(e).__name__}: {e}"[:300]
    return out


def problem(batch, d, h, device, seed=0):
    """The chapter's and the tests' problem builder (``dynbook.kernels.rk4.rk4_mlp_inputs``)."""
    return rk4_mlp_inputs(batch, d, h, seed=seed, device=device)


def timed(fn, device, min_run_time):
    with torch.no_grad():
        return time_it(fn, device=device, min_run_time=min_run_time)


def headline(case, device, min_run_time, rec):
    """Every implementation on one case; speed-ups and forward+backward (each result recorded
    the moment it is measured)."""
    from dynbook.kernels import rk4 as _rk4

    args = problem(case["batch"], case["d"], case["h"], device)
    n = case["n_steps"]
    with torch.no_grad():
        runners = rk4_runners(*args, n_steps=n)
        extra = extra_runners(*args, n_steps=n)
    runners.update({k: v for k, v in extra.items() if callable(v)})
    cfg = pick_config(case["batch"], case["d"], case["h"], n_sm=_n_sm(device))
    rec.set("headline", {"case": case, "seconds": {}, "rel_err_vs_float64": {}, "config": cfg,
                         "unavailable": {k: v for k, v in extra.items() if isinstance(v, str)}})
    for name, fn in runners.items():  # checked against float64 before it is timed
        with torch.no_grad():
            rec.set(f"headline.rel_err_vs_float64.{name}", float64_error(fn(), args, n_steps=n))
        rec.set(f"headline.seconds.{name}", timed(fn, device, min_run_time))
        print(f"  {name}: {rec.get(f'headline.seconds.{name}') * 1e3:.4g} ms", flush=True)
    if device == "cuda":
        dt = 1.0 / n
        bare = lambda: _rk4._launch_forward(*args, dt, n, cfg)  # noqa: E731 - no checks, no autograd
        rec.set("headline.seconds.triton_kernel", _cli.kernel_seconds(bare, device))
    else:  # the interpreter (slow): correctness only, on a few rows
        few = [args[0][:9], *args[1:]]
        rec.set("headline.rel_err_vs_float64.triton_interpreter", float64_error(rk4_mlp(*few, n_steps=n, impl="triton"), few, n_steps=n))
    out = rec.get("headline")
    seconds = out["seconds"]
    out["correct"] = all(e < 1e-4 for e in out["rel_err_vs_float64"].values())
    if "triton" in seconds:
        out["speedup"] = {k: seconds[k] / seconds["triton"] for k in seconds if k not in ("triton", "triton_kernel")}
        if "triton_kernel" in seconds:
            out["speedup_kernel_only"] = {k: seconds[k] / seconds["triton_kernel"] for k in out["speedup"]}
        out["meets_target"] = {k: out["speedup"][k] >= v for k, v in TARGETS.items() if k in out["speedup"]}
    rec.set("headline", out)
    # forward + backward: fused kernel pair vs autograd through the PyTorch loop
    leaves = [a.clone().requires_grad_() for a in args]

    def train_step(impl):
        def step():
            for a in leaves:
                a.grad = None
            rk4_mlp(*leaves, n_steps=n, impl=impl).square().sum().backward()
        return step

    rec.set("headline.forward_backward_seconds.torch", time_it(train_step("torch"), device=device,
                                                                min_run_time=min_run_time))
    if device == "cuda":
        rec.set("headline.forward_backward_seconds.triton", time_it(train_step("triton"), device=device,
                                                                     min_run_time=min_run_time))
        fb = rec.get("headline.forward_backward_seconds")
        rec.set("headline.forward_backward_seconds.speedup", fb["torch"] / fb["triton"])
    return rec.get("headline")


def _n_sm(device):
    return torch.cuda.get_device_properties(0).multi_processor_count if device == "cuda" else 132


def config_sweep(case, device, min_run_time):
    """Every rows-per-program × num_warps at ``case``: correctness first, then time (CUDA)."""
    args = problem(case["batch"], case["d"], case["h"], device)
    base = pick_config(case["batch"], case["d"], case["h"], n_sm=_n_sm(device))
    warps = (1, 2, 4, 8) if device == "cuda" else (base["num_warps"],)
    rows_out = []
    for rows in ROWS_CHOICES:
        for w in warps:
            cfg = {**base, "rows": rows, "num_warps": w}
            fn = lambda: rk4_mlp(*args, n_steps=case["n_steps"], impl="triton", config=cfg)  # noqa: E731
            with torch.no_grad():
                err = float64_error(fn(), args, n_steps=case["n_steps"])
            row = {"config": cfg, "rel_err_vs_float64": err, "correct": err < 1e-4}
            if device == "cuda":
                row["seconds"] = timed(fn, device, min_run_time)
            rows_out.append(row)
    return rows_out


def sweep(name, values, case, device, peak, min_run_time, baselines):
    out = []
    for v in values:
        c = {**case, name: v}
        args = problem(c["batch"], c["d"], c["h"], device)
        with torch.no_grad():
            runners = rk4_runners(*args, n_steps=c["n_steps"])
        flops = rk4_mlp_flops(c["batch"], c["d"], c["h"], c["n_steps"])
        row = {"case": c, "flops": flops, "config": pick_config(c["batch"], c["d"], c["h"], n_sm=_n_sm(device)),
               "seconds": {}, "flops_per_s": {}, "fraction_of_fp32_peak": {}}
        for impl in ("triton", *baselines):
            if impl not in runners:
                continue
            s = timed(runners[impl], device, min_run_time)
            row["seconds"][impl] = s
            row["flops_per_s"][impl] = flops / s
            if peak["flops"]:
                row["fraction_of_fp32_peak"][impl] = flops / s / peak["flops"]
        if device == "cuda":
            with torch.no_grad():
                row["rel_err_vs_float64"] = float64_error(runners["triton"](), args, n_steps=c["n_steps"])
        out.append(row)
        print(f"  {name}={v}: " + ", ".join(f"{k} {s * 1e3:.3g} ms" for k, s in row["seconds"].items()),
              flush=True)
    return out


def main(argv=None):
    a = _cli.parse(__doc__.split("\n\n")[0], argv)
    device = a.device
    mrt = a.min_run_time
    if a.quick:
        case = {"batch": 64, "d": 2, "h": 16, "n_steps": 10}
        batches, hiddens, cfg_case = [1, 5, 64], [16, 37], {"batch": 19, "d": 3, "h": 37, "n_steps": 2}
    else:
        case = dict(HEADLINE)
        batches = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536]
        hiddens = [16, 32, 64, 128, 256]
        cfg_case = dict(HEADLINE)
    t0 = time.perf_counter()
    hw = environment.hardware(device)
    peak = fp32_peak(device)
    print(f"rk4_mlp benchmark on {hw.get('gpu') or hw['cpu']} ({device}), quick={a.quick}", flush=True)
    rec = _cli.Recorder("rk4_mlp", a, hw, benchmark="rk4_mlp", device=device, quick=a.quick, dtype="float32",
                        started_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        commit=environment.commit(), versions=environment.versions(), hardware=hw,
                        fp32_peak=peak, targets=TARGETS,
                        timing=f"median of time_it, min_run_time={mrt} s; kernel-only: triton.testing.do_bench "
                               "median on the bare launch",
                        flops_counted="matmul FLOPs only: 4·d·h per row per field evaluation, 4 evaluations per step")
    print("headline", flush=True)
    headline(case, device, mrt, rec)
    print(json.dumps(rec.get("headline.seconds")), flush=True)
    print("launch configurations", flush=True)
    rec.set("configs", config_sweep(cfg_case, device, mrt))
    baselines = ("cuda_graph", "torchdiffeq") if device == "cuda" else ("torch_loop", "torchdiffeq")
    print("batch sweep", flush=True)
    rec.set("batch_sweep", sweep("batch", batches, case, device, peak, mrt, baselines))
    print("hidden-size sweep", flush=True)
    h_case = {**case, "batch": batches[-1]}
    rec.set("hidden_sweep", sweep("h", hiddens, h_case, device, peak, mrt,
                                  ("cuda_graph",) if device == "cuda" else ("torch_loop",)))
    result = rec.result
    rec.set("all_configs_correct", all(r["correct"] for r in result["configs"]))
    rec.set("all_correct", result["all_configs_correct"] and result["headline"]["correct"] and all(
        r.get("rel_err_vs_float64", 0.0) < 1e-4 for r in result["batch_sweep"] + result["hidden_sweep"]))
    rec.set("wall_seconds", time.perf_counter() - t0)

    path = rec.path
    h = result["headline"]
    if "speedup" in h:
        print("speed-up of the fused kernel: " + ", ".join(
            f"{k} {v:.1f}× (target {TARGETS[k]:g}×, {'met' if h['meets_target'][k] else 'NOT met'})"
            for k, v in h["speedup"].items() if k in TARGETS))
    print(f"all launch configurations correct: {result['all_configs_correct']}; "
          f"every result correct: {result['all_correct']}")
    print(f"wrote {path} in {result['wall_seconds']:.1f} s")
    return 0 if result["all_correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
