"""Compile every choosable kernel configuration for sm_90, sm_80 and sm_75 without a GPU, and
write the table "compiled, not timed" (registers, spills, shared memory, exp/shuffle/barrier
instructions per element) beside each kernel's roofline prediction.

    python benchmarks/static_kernels.py [--out results/static/kernels.json] [--jobs 2] [--quick]

Rows already in the output file for the same kernel source (``dynbook.kernels.static.source_hash``)
are reused, so a rerun after editing one kernel recompiles only what changed. ``--quick`` compiles
the headline configurations only. Needs no GPU: ``triton.compile`` for a ``GPUTarget`` and
``ptxas -v``. Takes ~1–3 s per configuration and architecture on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # the compiler, not the interpreter
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dynbook.kernels import roofline, static  # noqa: E402

HEADLINE = {"selective": dict(b=8, l=4096, d=1024, n=16), "linear_rows": 8 * 1024, "linear_l": 4096,
            "rk4": dict(batch=1024, d=2, h=64, n_steps=100)}


def _compile(args):
    launch, arch = args
    t = time.perf_counter()
    row = static.compile_launch(launch, arch)
    row["compile_seconds"] = round(time.perf_counter() - t, 2)
    return row


def predictions(rows: list[dict]) -> list[dict]:
    """Roofline floors at the headline shapes, with per-element counts from the compiled sm_90 PTX
    of the configuration that predicts the best (the autotuner's best case)."""
    def best(kernel, **match):
        cands = [r for r in rows if r["kernel"] == kernel and r["arch"] == 90 and r["dtype"] == "fp32"
                 and "per_element" in r and all(r["config"].get(k) == v for k, v in match.items())]
        return min(cands, key=lambda r: (r["per_element"]["instructions"], r["per_element"]["shfl"]), default=None)

    def per(r, k):
        return r["ptx"]["main_loop"][k] / r["per_element"]["elements_per_thread_per_trip"]

    s = HEADLINE["selective"]
    out = []
    fwd = best("_ssm_fwd_kernel", n=16, STORE_STATES=None)
    bwd = best("_ssm_bwd_kernel", n=16, BLOCK_L=32, BLOCK_D=32)  # the configuration the headline uses
    lin = best("_linear_scan_kernel", REVERSE=False)
    works = []
    if fwd:
        for issue in (False, True):
            works.append((roofline.selective_scan_work(**s, exp_per_element=per(fwd, "ex2"), shuffles_per_element=per(fwd, "shfl"),
                                                       instructions_per_element=per(fwd, "instructions") if issue else 0),
                          fwd["key"] + (" +issue" if issue else "")))
    works.append((roofline.selective_scan_work(**s, exp_per_element=1, shuffles_per_element=4),
                  "old design (review of 6cc0f9c: 4 shuffles per element)"))
    if bwd:
        for issue in (False, True):
            works.append((roofline.selective_scan_backward_work(
                **s, chunk=bwd["config"]["BLOCK_L"], exp_per_element=per(bwd, "ex2"), shuffles_per_element=per(bwd, "shfl"),
                instructions_per_element=per(bwd, "instructions") if issue else 0), bwd["key"] + (" +issue" if issue else "")))
    if lin:
        for issue in (False, True):
            works.append((roofline.linear_scan_work(HEADLINE["linear_rows"] * HEADLINE["linear_l"], shuffles_per_element=per(lin, "shfl"),
                                                    instructions_per_element=per(lin, "instructions") if issue else 0),
                          lin["key"] + (" +issue" if issue else "")))
    head = [r for r in rows if r["kernel"] == "_rk4_mlp_fwd_kernel" and r["arch"] == 90 and not r["config"]["STORE_TRAJ"]
            and r.get("forward_config") is None and "ptx" in r]
    from dynbook.kernels import rk4 as _rk4

    cfg = _rk4.pick_config(**{k: HEADLINE["rk4"][k] for k in ("batch", "d", "h")})
    for r in head:
        if (r["config"]["ROWS"], r["config"]["BLOCK_D"], r["config"]["BLOCK_H"]) == (cfg["rows"], cfg["block_d"], cfg["block_h"]):
            steps = HEADLINE["rk4"]["n_steps"]
            for g in ("H100", "H200", "A100", "T4"):
                lo, hi = roofline.rk4_mlp_latency(r["ptx"]["main_loop"]["instructions"], steps, g, (1.0, 2.0))
                f = roofline.floor(roofline.rk4_mlp_work(**HEADLINE["rk4"]), g)
                out.append({"kernel": "rk4_mlp", "from": r["key"], "gpu": g, "floor_us": max(f["floor_s"], lo) * 1e6,
                            "bound": "latency (one program's step chain)", "latency_range_us": [lo * 1e6, hi * 1e6],
                            "instructions_per_step": r["ptx"]["main_loop"]["instructions"],
                            "seconds_us": {k: v * 1e6 for k, v in f["seconds"].items()}})
    for w, key in works:
        for g in ("H100", "H200", "A100", "T4"):
            f = roofline.floor(w, g)
            out.append({"kernel": w.kernel, "from": key, "gpu": g, "floor_us": f["floor_s"] * 1e6, "bound": f["bound"],
                        "fraction_of_copy": f["fraction_of_copy"],
                        "seconds_us": {k: v * 1e6 for k, v in f["seconds"].items()}})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "static" / "kernels.json"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="the launches compiled for every arch only")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(a.out)
    src = static.source_hash()
    old = {}
    if out.exists():
        prev = json.loads(out.read_text())
        if prev.get("source_hash") == src:
            old = {(r["key"], r["arch"]): r for r in prev["rows"]}
    launches = static.choosable_launches()
    if a.quick:
        launches = [lc for lc in launches if lc.meta.get("all_archs")]
    pairs = [(lc, arch) for lc in launches for arch in (static.ARCHS if lc.meta.get("all_archs") else (90,))]
    todo = [(lc, arch) for lc, arch in pairs if (lc.key(), arch) not in old]
    print(f"{len(launches)} launches, {len(pairs)} (launch, arch) pairs; {len(todo)} to compile", flush=True)
    rows = [old[(lc.key(), arch)] for lc, arch in pairs if (lc.key(), arch) in old]
    with ProcessPoolExecutor(a.jobs) as pool:
        for i, row in enumerate(pool.map(_compile, todo, chunksize=1)):
            rows.append(row)
            if i % 20 == 0 or "error" in row or row.get("spill_stores"):
                print(f"  [{i + 1}/{len(todo)}] {row['key']} sm_{row['arch']}: "
                      + (row.get("error") or f"{row['registers']} regs, spills {row['spill_stores']} B, "
                                             f"per element {row.get('per_element')}"), flush=True)
    rows.sort(key=lambda r: (r["kernel"], r["key"], -r["arch"]))
    result = {"source_hash": src, "archs": list(static.ARCHS), "quick": a.quick,
              "how": "triton.compile for GPUTarget('cuda', arch, 32) + ptxas -v; counts from the PTX main loop",
              "rows": rows, "roofline": predictions(rows), "wall_seconds": time.perf_counter() - t0}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    spills = [r["key"] + f" sm_{r['arch']}" for r in rows if r.get("spill_stores")]
    errors = [r["key"] + f" sm_{r['arch']}: {r['error']}" for r in rows if "error" in r]
    print(f"wrote {out}: {len(rows)} rows, {len(spills)} spill, {len(errors)} do not compile, "
          f"{result['wall_seconds']:.0f} s")
    for s in spills[:20]:
        print("  SPILLS", s)
    for e in errors[:20]:
        print("  ERROR", e)
    for p in result["roofline"]:
        if p["gpu"] in ("H100", "H200"):
            frac = f", {p['fraction_of_copy']:.0%} of copy" if "fraction_of_copy" in p else \
                f", {p['latency_range_us'][0]:.0f}–{p['latency_range_us'][1]:.0f} µs"
            print(f"  {p['kernel']:26s} {p['gpu']} floor {p['floor_us']:8.1f} µs ({p['bound']}{frac})  [{p['from']}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
