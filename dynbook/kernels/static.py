"""Static evidence without a GPU: compile every choosable launch configuration for a named
architecture and read registers, spills, shared memory and per-element instruction counts.

``triton.compile`` with a ``GPUTarget("cuda", arch, 32)`` runs Triton's whole pipeline (TTIR →
TTGIR → LLVM → PTX) and ``ptxas`` on the PTX, with no GPU present; ``ptxas -v`` then reports
registers per thread, spill stores/loads and stack. From the PTX this module counts, in the
kernel's main loop (the innermost loop with the most instructions: the chunk loop of a scan,
the step loop of RK4), the ``ex2`` (MUFU exp), ``shfl.sync`` (warp shuffle) and ``bar.sync``
instructions, and divides by the elements each thread handles per trip of that loop. Those
per-element counts feed :mod:`dynbook.kernels.roofline`.

Must run in a process where ``TRITON_INTERPRET`` is unset (the interpreter replaces the
compiler); ``scripts/static_kernels.py`` does, and writes ``results/static/kernels.json``.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

__all__ = ["Launch", "choosable_launches", "compile_launch", "ptx_counts", "source_hash", "ARCHS"]

#: Architectures compiled: sm_90 (H100/H200), sm_80 (A100), sm_75 (T4, the free Colab GPU).
ARCHS = (90, 80, 75)


@dataclass
class Launch:
    """One kernel at one configuration: ``signature`` maps argument name → Triton type
    (``*fp32``, ``i32``, ``fp32``, ``constexpr``); ``constexprs`` the compile-time values;
    ``elements`` how many elements one thread handles per trip of the main loop (to turn
    instruction counts into per-element counts)."""

    kernel: str
    module: str
    config: dict
    signature: dict
    constexprs: dict
    num_warps: int
    elements: float
    dtype: str = "fp32"
    meta: dict = field(default_factory=dict)

    def key(self) -> str:
        cfg = ",".join(f"{k}={v}" for k, v in self.config.items())
        return f"{self.kernel}[{cfg},warps={self.num_warps},{self.dtype}]"


def source_hash() -> str:
    """A hash of the source of every ``@triton.jit`` function of the kernel modules: a stored
    table is stale when this changes (a changed configuration list changes the launches' keys,
    which the test checks separately)."""
    from dynbook.kernels import rk4, scan

    h = hashlib.sha256()
    for mod in (rk4, scan):
        for name in mod._JIT_NAMES:
            h.update(inspect.getsource(getattr(mod, name).fn).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- what can be chosen


def _ptr(dtype):
    return f"*{dtype}"


def choosable_launches() -> list[Launch]:
    """Every configuration the autotuners or ``pick_config``/``ssm_backward_config`` can choose
    for the scans (fp32; states n = 16 and n = 64), every rk4 configuration ``pick_config``
    can pick over its whole range (:func:`dynbook.kernels.rk4.choosable_configs`), and one bf16
    launch per scan. ``meta["all_archs"]`` marks the launches compiled for sm_80
    and sm_75 too (the headline choices and the bf16 ones); the rest are compiled for sm_90."""
    import torch
    import triton.language as tl

    from dynbook.kernels import rk4, scan

    out: list[Launch] = []
    for dt in ("fp32", "bf16"):
        p = _ptr(dt)
        for br, bl, w in scan.LINEAR_SCAN_CONFIGS:
            if dt == "bf16" and (br, bl, w) != (4, 512, 4):
                continue
            for reverse in (False, True):
                sig = {"A": p, "X": p, "H": p, "HPREV": p, "DA": p, "R": "i32", "L": "i32",
                       "BLOCK_R": "constexpr", "BLOCK_L": "constexpr", "REVERSE": "constexpr", "ACC": "constexpr"}
                out.append(Launch("_linear_scan_kernel", "scan", {"BLOCK_R": br, "BLOCK_L": bl, "REVERSE": reverse},
                                  sig, {"BLOCK_R": br, "BLOCK_L": bl, "REVERSE": reverse, "ACC": tl.float32}, w,
                                  elements=br * bl / (32 * w), dtype=dt,
                                  meta={"all_archs": (br, bl, w) == (4, 512, 4)}))
    head_fwd, head_bwd = scan.SSM_FWD_CONFIGS[0][:2], scan.ssm_backward_config(4096, 1024)[:2]
    for lc in scan.selective_scan_launches("fp32", ns=(16, 64)):
        if lc.kernel == "_ssm_fwd_kernel" and not lc.config.get("STORE_STATES") and \
                (lc.config["BLOCK_L"], lc.config["BLOCK_D"], lc.num_warps) not in scan.ssm_forward_configs(torch.float32):
            continue
        pair = (lc.config["BLOCK_L"], lc.config["BLOCK_D"])
        head = head_bwd if (lc.kernel == "_ssm_bwd_kernel" or lc.config.get("STORE_STATES")) else head_fwd
        lc.meta["all_archs"] = pair == head and lc.config["n"] == 16
        out.append(lc)
    for lc in scan.selective_scan_launches("bf16", ns=(16,)):
        if lc.kernel == "_ssm_fwd_kernel" and not lc.config.get("STORE_STATES") and \
                (lc.config["BLOCK_L"], lc.config["BLOCK_D"], lc.num_warps) in scan.ssm_forward_configs(torch.bfloat16):
            lc.meta["all_archs"] = True
            out.append(lc)
    head = rk4.pick_config(1024, 2, 64)
    for cfg in rk4.choosable_configs():
        for lc in rk4.static_launches(cfg):
            lc.meta["all_archs"] = cfg == head
            out.append(lc)
    return out


# ----------------------------------------------------------------------------- compile and read


def _attrs(fn, signature: dict) -> dict:
    """Pointers 16-byte aligned (as torch allocations are) and integer sizes divisible by 16,
    the specialisation Triton gives the headline shapes at run time."""
    names = list(signature)
    return {(names.index(k),): [["tt.divisibility", 16]] for k, v in signature.items()
            if v.startswith("*") or v == "i32"}


def compile_launch(launch: Launch, arch: int) -> dict:
    """Compile ``launch`` for ``sm_<arch>``; registers, spills, shared memory and PTX counts.
    A configuration that Triton cannot compile for that target reports ``error``."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_launch needs TRITON_INTERPRET unset (the interpreter replaces the compiler)")
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mod = importlib.import_module(f"{__package__}.{launch.module}")
    fn = getattr(mod, launch.kernel)
    src = ASTSource(fn, dict(launch.signature), constexprs=dict(launch.constexprs),
                    attrs=_attrs(fn, launch.signature))
    row = {"kernel": launch.kernel, "config": launch.config, "num_warps": launch.num_warps,
           "dtype": launch.dtype, "arch": arch, "key": launch.key(), **launch.meta}
    try:
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": launch.num_warps})
    except Exception as e:  # noqa: BLE001 - an unsupported target is a result, not a crash
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        return row
    ptx = k.asm["ptx"]
    row["shared_bytes"] = int(k.metadata.shared)
    row.update(_ptxas(ptx, arch))
    counts = ptx_counts(ptx)
    row["ptx"] = counts
    loop = counts["main_loop"]
    if loop and launch.elements:
        row["per_element"] = {k_: loop[k_] / launch.elements for k_ in ("ex2", "shfl", "bar", "instructions")}
        row["per_element"]["elements_per_thread_per_trip"] = launch.elements
    return row


def _ptxas(ptx: str, arch: int) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run([get_ptxas(arch).path, "-v", "--gpu-name", gpu, src, "-o", os.path.join(tmp, "k.o")],
                             capture_output=True, text=True, check=True)
    log = out.stdout + out.stderr

    def grab(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    return {"registers": grab(r"Used (\d+) registers"), "spill_stores": grab(r"(\d+) bytes spill stores"),
            "spill_loads": grab(r"(\d+) bytes spill loads"), "stack_bytes": grab(r"(\d+) bytes stack frame")}


_OPS = {"ex2": re.compile(r"^\s*(@!?%p\d+\s+)?ex2\."), "shfl": re.compile(r"^\s*(@!?%p\d+\s+)?shfl\.sync"),
        "bar": re.compile(r"^\s*(@!?%p\d+\s+)?(bar\.sync|barrier\.sync)"),
        "ld_global": re.compile(r"^\s*(@!?%p\d+\s+)?ld\.global"), "st_global": re.compile(r"^\s*(@!?%p\d+\s+)?st\.global")}
_LABEL = re.compile(r"^(\$L__\w+):")
_BRANCH = re.compile(r"\bbra(\.uni)?\s+(\$L__\w+);")


def ptx_counts(ptx: str) -> dict:
    """Static counts of ex2, shfl, bar, global loads/stores and instructions in the whole PTX
    and in its main loop (innermost loop — a backward branch's span that holds no other — with
    the most instructions)."""
    lines = ptx.splitlines()
    is_instr = [ln.strip().endswith(";") and not ln.strip().startswith((".", "//")) for ln in lines]

    def count(lo, hi):
        c = {k: 0 for k in _OPS}
        c["instructions"] = 0
        for ln, instr in zip(lines[lo:hi + 1], is_instr[lo:hi + 1]):
            if not instr:
                continue
            c["instructions"] += 1
            for k, rx in _OPS.items():
                if rx.match(ln):
                    c[k] += 1
        return c

    labels = {}
    loops = []
    for i, ln in enumerate(lines):
        m = _LABEL.match(ln.strip())
        if m:
            labels[m.group(1)] = i
        m = _BRANCH.search(ln)
        if m and m.group(2) in labels and labels[m.group(2)] < i:
            loops.append((labels[m.group(2)], i))
    inner = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    main = max((count(*lp) for lp in inner), key=lambda c: c["instructions"], default=None)
    return {"total": count(0, len(lines) - 1), "main_loop": main, "loops": len(loops)}


# ----------------------------------------------------------------------------- for the chapters


def load_table(path=None) -> dict:
    """The stored table ``results/static/kernels.json`` (written by
    ``benchmarks/static_kernels.py``), or ``{}`` when it is absent."""
    import json
    from pathlib import Path

    path = Path(path) if path else Path(__file__).resolve().parents[2] / "results" / "static" / "kernels.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def summary_rows(kernel_prefix: str, table: dict | None = None) -> list[dict]:
    """Flat rows "compiled, not timed" for a chapter's table: one per (launch, arch) whose
    kernel name starts with ``kernel_prefix`` (``"_ssm"``, ``"_rk4"``, ``"_linear"``): key,
    arch, registers, spilled bytes, shared memory, exp / shuffles / instructions per element."""
    table = load_table() if table is None else table
    out = []
    for r in table.get("rows", []):
        if not r["kernel"].startswith(kernel_prefix):
            continue
        per = r.get("per_element", {})
        out.append({"launch": r["key"], "arch": f"sm_{r['arch']}", "registers": r.get("registers"),
                    "spill_bytes": r.get("spill_stores"), "shared_bytes": r.get("shared_bytes"),
                    "exp_per_element": per.get("ex2"), "shuffles_per_element": per.get("shfl"),
                    "instructions_per_element": per.get("instructions"), "error": r.get("error")})
    return out
