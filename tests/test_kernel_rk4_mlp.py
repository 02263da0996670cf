"""dynbook.kernels.rk4_mlp (module dynbook/kernels/rk4.py): the fused RK4 kernel against float64 references and torchdiffeq.

Without a GPU the Triton kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1),
so every launch configuration the public function can pick is exercised on the kernel source.
Sizes stay small: the interpreter runs each program in NumPy."""

import importlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from dynbook.kernels.rk4 import (MAX_D, MAX_H, ROWS_CHOICES, check_cases, check_kernel,
                                 compiled_launches, float64_error, kernel_vs_float64, pick_config,
                                 rk4_mlp, rk4_mlp_flops, rk4_mlp_inputs, rk4_mlp_reference,
                                 triton_unsupported)
from dynbook.measure.fits import relative_error as rel


def problem(batch, d, h, *, seed=0, dtype=torch.float32, device="cpu"):
    """The shared builder with biases of 0.3: |f| = O(1), and bias gradients matter."""
    return rk4_mlp_inputs(batch, d, h, seed=seed, bias=0.3, dtype=dtype, device=device)


def exact(args, t1=1.0):
    """A float64 solution accurate to ~1e-12: torchdiffeq dopri5 at tight tolerance."""
    from torchdiffeq import odeint

    from dynbook.kernels.rk4 import mlp_field

    y0, *w = [a.double() for a in args]
    t = torch.tensor([0.0, t1], dtype=torch.float64)
    return odeint(lambda t, y: mlp_field(y, *w), y0, t, method="dopri5", rtol=1e-12, atol=1e-12)[-1]


def torchdiffeq_rk4(args, n_steps, t1=1.0):
    """torchdiffeq's fixed-step rk4 (Kutta's 3/8 rule) on exactly ``n_steps`` equal steps."""
    from dynbook.models import neural_ode as node

    with torch.no_grad():
        return node.rk4_runners(*args, n_steps=n_steps, t1=t1)["torchdiffeq"]()


# ----------------------------------------------------------------------------- reference


def test_reference_converges_at_order_four():
    args = problem(5, 3, 17, dtype=torch.float64)
    truth = exact(args)
    steps = [4, 8, 16, 32]
    errs = [float((rk4_mlp_reference(*args, n_steps=n) - truth).abs().max()) for n in steps]
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]
    assert all(3.6 < s < 4.6 for s in slopes[1:]), (errs, slopes)


def test_reference_and_torchdiffeq_rk4_agree_to_fourth_order():
    """Classical RK4 and the 3/8 rule are different 4th-order tableaus: they differ by O(dt^4)."""
    args = problem(13, 3, 37, dtype=torch.float64)
    diffs = [float((rk4_mlp_reference(*args, n_steps=n) - torchdiffeq_rk4(args, n)).abs().max())
             for n in (8, 16, 32)]
    orders = [math.log2(diffs[i] / diffs[i + 1]) for i in range(2)]
    assert all(3.5 < o < 4.7 for o in orders), (diffs, orders)
    assert diffs[-1] < 1e-6


def test_reference_gradcheck():
    args = [a.requires_grad_() for a in problem(3, 2, 5, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda *a: rk4_mlp(*a, n_steps=3, t1=0.7, impl="torch"), args)


def test_flops_count():
    assert rk4_mlp_flops(1024, 2, 64, 100) == 100 * 4 * 1024 * 4 * 2 * 64


# ----------------------------------------------------------------------------- Triton kernel

# every rows choice, each with an irregular (d, h) so that together they cover the block
# families the launcher picks (BLOCK_D 2…16, BLOCK_H 16…256), and a batch that is not a
# multiple of rows (the masked last program)
FORWARD = [(1, 16, 256), (2, 2, 64), (4, 3, 37), (8, 9, 100), (16, 1, 1)]


@pytest.mark.parametrize("rows,d,h", FORWARD)
def test_triton_forward_matches_float64_reference(rows, d, h):
    batch = 2 * rows + 1
    args = problem(batch, d, h, seed=rows + d + h)
    out = rk4_mlp(*args, n_steps=2, t1=0.8, impl="triton", config={"rows": rows})
    assert out.dtype == torch.float32 and out.shape == (batch, d)
    assert float64_error(out, args, n_steps=2, t1=0.8) < 2e-6


@pytest.mark.parametrize("rows", ROWS_CHOICES)
def test_triton_gradients_match_float64_reference(rows):
    args = problem(rows + 3, 3, 21, seed=rows)
    err = kernel_vs_float64(args, n_steps=2, config={"rows": rows})
    assert set(err["grads"]) == {"y0", "w1", "b1", "w2", "b2"}
    assert err["y"] < 2e-6 and err["grad"] < 1e-5, err


def test_kernel_vs_float64_can_fail(monkeypatch):
    """The comparison is not vacuous: a wrong kernel (1 % off, so its gradients too), or a
    solve with too few steps, is caught."""
    kernel = importlib.import_module("dynbook.kernels.rk4")
    right = kernel.rk4_mlp
    with monkeypatch.context() as m:
        m.setattr(kernel, "rk4_mlp", lambda *a, **kw: right(*a, **kw) * 1.01)
        err = kernel_vs_float64(problem(5, 2, 16, seed=2), n_steps=2, impl="torch")
    assert err["y"] > 5e-3 and err["grad"] > 5e-3
    args = problem(5, 2, 16, seed=2)
    coarse = rk4_mlp_reference(*args, n_steps=1)
    assert float64_error(coarse, args, n_steps=4) > 1e-4
    err = kernel_vs_float64(args, n_steps=2, impl="torch", gout=torch.ones(5, 2))
    assert err["grad"] < 1e-5  # the fp32 reference's own rounding only
    assert kernel_vs_float64(args, n_steps=2, impl="torch", gradients=False)["grads"] == {}


def test_check_kernel_and_its_cases():
    assert check_cases(1024, 100, "cpu") == [(6, 3, {"rows": 1}), (9, 3, {"rows": 4}),
                                            (21, 3, {"rows": 16})]
    cuda = check_cases(1024, 100, "cuda")
    assert cuda[0] == (1024, 100, None) and [c[2]["rows"] for c in cuda[1:]] == list(ROWS_CHOICES)
    worst = check_kernel(d=2, h=16, cases=[(3, 2, {"rows": 2}), (5, 1, None)], seed=4)
    assert worst["cases"] == 2 and worst["where"] == "Triton interpreter"
    assert 0 < worst["y"] < 2e-6 and 0 < worst["grad"] < 1e-5


def test_inputs_builder():
    a, b = rk4_mlp_inputs(7, 3, 5, seed=1), rk4_mlp_inputs(7, 3, 5, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert [tuple(t.shape) for t in a] == [(7, 3), (3, 5), (5,), (5, 3), (3,)]
    g = torch.Generator().manual_seed(1)
    assert torch.equal(rk4_mlp_inputs(7, 3, 5, generator=g)[0], a[0])  # same draw order
    assert rk4_mlp_inputs(2, 1, 1, dtype=torch.float64)[0].dtype == torch.float64
    assert torch.equal(rk4_mlp_inputs(4, 2, 3, bias=0.0)[2], torch.zeros(3))
    with pytest.raises(ValueError, match="d=0"):
        rk4_mlp_inputs(4, 0, 3)
    with pytest.raises(ValueError, match="bias=-1"):
        rk4_mlp_inputs(4, 2, 3, bias=-1)


@pytest.mark.parametrize("rows", (1, 4))
def test_triton_backward_grid_stride(monkeypatch, rows):
    """With fewer backward programs than row blocks, each program loops over several blocks
    and sums their weight gradients (the path large batches take)."""
    # the module, not the function of the same name that dynbook.kernels exports
    kernel = importlib.import_module("dynbook.kernels.rk4")
    monkeypatch.setattr(kernel, "_MAX_BWD_PROGRAMS", 2)
    args = problem(3 * rows + 2, 2, 16, seed=11)
    assert kernel_vs_float64(args, n_steps=1, config={"rows": rows})["grad"] < 1e-5


def test_triton_matches_torchdiffeq_rk4_on_irregular_shape():
    args = problem(13, 3, 37, seed=7)
    out = rk4_mlp(*args, n_steps=12, impl="triton", config={"rows": 16})
    tdq = torchdiffeq_rk4([a.double() for a in args], 12)
    # different 4th-order tableaus: agreement to the discretisation error, not to rounding
    assert rel(out, tdq) < 1e-5
    assert rel(out, exact(args)) < 1e-5


def test_triton_padding_larger_than_needed():
    """Blocks wider than d and h (all-zero padding) must not change the result."""
    args = problem(6, 3, 20, seed=3)
    out = rk4_mlp(*args, n_steps=2, impl="triton",
                  config={"rows": 4, "block_d": 8, "block_h": 64, "num_warps": 2})
    assert float64_error(out, args, n_steps=2) < 2e-6


def test_triton_negative_and_zero_time():
    args = problem(5, 2, 16, seed=4)
    back = rk4_mlp(*args, n_steps=2, t1=-0.5, impl="triton")
    assert float64_error(back, args, n_steps=2, t1=-0.5) < 2e-6
    assert torch.equal(rk4_mlp(*args, n_steps=2, t1=0.0, impl="triton"), args[0])


def test_triton_empty_batch():
    args = problem(0, 3, 8)
    assert rk4_mlp(*args, n_steps=2, impl="triton").shape == (0, 3)


# ----------------------------------------------------------------------------- launch config


def test_pick_config_stays_in_tested_set():
    """Every configuration the launcher picks is one the tests above run: rows in ROWS_CHOICES,
    power-of-two blocks covering d and h, a tile within the register budget."""
    for batch in (1, 7, 100, 1024, 4099, 65536):
        for d in (1, 2, 3, 9, 16):
            for h in (1, 16, 37, 64, 100, 256):
                for n_sm in (1, 78, 132):
                    c = pick_config(batch, d, h, n_sm=n_sm)
                    assert c["rows"] in ROWS_CHOICES
                    assert c["block_d"] >= d and c["block_d"] in (2, 4, 8, 16)
                    assert c["block_h"] >= h and c["block_h"] in (16, 32, 64, 128, 256)
                    assert c["num_warps"] in (1, 2, 4, 8)
                    assert c["rows"] * c["block_d"] * c["block_h"] <= 4096


def test_pick_config_spreads_small_batches():
    assert pick_config(1024, 2, 64, n_sm=132)["rows"] <= 4  # ≥ 2 programs per SM
    assert pick_config(1 << 20, 2, 64, n_sm=132)["rows"] == 16


# ----------------------------------------------------------------------------- errors


def test_triton_range_errors_name_the_parameter():
    with pytest.raises(ValueError, match=r"d=17"):
        rk4_mlp(*problem(2, MAX_D + 1, 8), n_steps=1, impl="triton")
    with pytest.raises(ValueError, match=r"h=257"):
        rk4_mlp(*problem(2, 2, MAX_H + 1), n_steps=1, impl="triton")
    with pytest.raises(ValueError, match=r"dtype=torch.float64"):
        rk4_mlp(*problem(2, 2, 8, dtype=torch.float64), n_steps=1, impl="triton")
    assert "d=17" in triton_unsupported(*problem(2, 17, 8)[:2])
    assert triton_unsupported(*problem(2, 3, 8)[:2]) == ""


def test_auto_falls_back_to_torch_outside_the_range():
    args = problem(3, MAX_D + 1, 8)
    out = rk4_mlp(*args, n_steps=2, impl="auto")
    assert torch.equal(out, rk4_mlp_reference(*args, n_steps=2))


@pytest.mark.parametrize("kwargs,match", [
    ({"n_steps": 0}, "n_steps=0"),
    ({"n_steps": 2.0}, "n_steps=2.0"),
    ({"n_steps": 2, "t1": float("nan")}, "t1=nan"),
    ({"n_steps": 2, "impl": "cuda"}, "impl='cuda'"),
    ({"n_steps": 2, "config": {"rows": 3}}, r"config\['rows'\]=3"),
    ({"n_steps": 2, "config": {"block_h": 8}}, "block_h=8"),
    ({"n_steps": 2, "config": {"tile": 8}}, "unknown keys"),
])
def test_bad_arguments(kwargs, match):
    impl = kwargs.pop("impl", "triton")
    with pytest.raises(ValueError, match=match):
        rk4_mlp(*problem(3, 2, 16), impl=impl, **kwargs)


def test_bad_shapes_name_the_tensor():
    y0, w1, b1, w2, b2 = problem(3, 2, 16)
    with pytest.raises(ValueError, match="w2 must have shape"):
        rk4_mlp(y0, w1, b1, w2.t(), b2, n_steps=1)
    with pytest.raises(ValueError, match="y0 must have shape"):
        rk4_mlp(y0[0], w1, b1, w2, b2, n_steps=1)
    with pytest.raises(ValueError, match="b1 is torch.float64"):
        rk4_mlp(y0, w1, b1.double(), w2, b2, n_steps=1)


# ----------------------------------------------------------------------------- GPU

_CHILD = r"""
import importlib, json, sys
import torch

# 1. a module imported without TRITON_INTERPRET (as in a chapter on a CPU) still runs the
#    kernel in the interpreter for CPU tensors, forward and backward
from dynbook.kernels.rk4 import kernel_vs_float64, rk4_mlp_inputs
err = kernel_vs_float64(rk4_mlp_inputs(5, 2, 16, seed=0), n_steps=2, config={"rows": 4})
out = {"interpreter": err}

# 2. both kernels compile ahead of time for sm_90 (H100) without a GPU
import importlib.util
if importlib.util.find_spec("triton") is None or importlib.util.find_spec("triton.backends.nvidia") is None:
    out["compile"] = "no triton NVIDIA backend"
else:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = importlib.import_module("dynbook.kernels.rk4")
    INTS = ("batch", "d", "h", "n_steps", "n_blocks")
    sizes = []
    for name, constexprs, warps in json.loads(sys.argv[1]):
        fn = getattr(kernel, name)
        sig = {a: "constexpr" if a in constexprs else "fp32" if a == "dt" else "i32" if a in INTS
               else "*fp32" for a in fn.arg_names}
        k = triton.compile(ASTSource(fn, sig, constexprs), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": warps})
        sizes.append(len(k.asm["cubin"]))
    out["compile"] = sizes
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def child():
    """One subprocess without TRITON_INTERPRET (under it, jit functions are interpreter
    objects) for the two things only such a process shows."""
    cases = []
    for rows, bd, bh, warps, ones in [
        (16, 2, 64, 2, False),   # the 16-rows configuration of the bug report
        (1, 2, 16, 1, True),     # integer arguments equal to 1 arrive as constexpr
    ]:
        blocks = {"ROWS": rows, "BLOCK_D": bd, "BLOCK_H": bh}
        one = {"batch": 1, "d": 1, "n_steps": 1} if ones else {}
        cases.append(["_rk4_mlp_fwd_kernel", {**blocks, "STORE_TRAJ": True, **one}, warps])
        cases.append(["_rk4_mlp_bwd_kernel", {**blocks, **one, **({"n_blocks": 1} if ones else {})}, warps])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cases)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return {"cases": cases, **json.loads(res.stdout.strip().splitlines()[-1])}


def test_triton_runs_in_interpreter_without_env_flag(child):
    err = child["interpreter"]
    assert err["y"] < 2e-6 and err["grad"] < 1e-5, err


def test_kernels_compile_for_h100(child):
    """Compile both kernels ahead of time for sm_90 (H100) without a GPU: Triton's code
    generator, its MLIR passes and ptxas run — what the interpreter never exercises. The
    largest tiles and every other choosable configuration are compiled by
    ``dynbook.kernels.static`` (tests/test_kernel_static.py checks the stored table)."""
    pytest.importorskip("triton.backends.nvidia")
    sizes = child["compile"]
    assert isinstance(sizes, list), sizes
    assert len(sizes) == len(child["cases"]) and all(n > 0 for n in sizes)


def test_compiled_launches_table():
    """The chapter's "compiled, not timed" table: the issue's problem launches the forward
    kernel (with and without the trajectory) and the backward, each for three architectures."""
    c = compiled_launches(1024, 2, 64)
    assert c["config"] == pick_config(1024, 2, 64)
    if not c["all"]:
        pytest.skip("results/static/kernels.json is absent")
    kernels = {r["launch"].split("[")[0] for r in c["launches"]}
    assert kernels == {"_rk4_mlp_fwd_kernel", "_rk4_mlp_bwd_kernel"}
    assert {r["arch"] for r in c["launches"]} == {"sm_90", "sm_80", "sm_75"}
    assert len(c["launches"]) == 9 and c["max_spill_bytes"] == max(
        r["spill_bytes"] for r in c["all"] if r["spill_bytes"] is not None)
    assert {r["gpu"] for r in c["roofline"]} >= {"H100", "A100"}
    assert compiled_launches(1024, 2, 64, table={}) == {
        "config": c["config"], "launches": [], "all": [], "max_spill_bytes": None, "roofline": []}


@pytest.mark.parametrize("rows", ROWS_CHOICES)
def test_cuda_kernel_every_config(cuda_only, rows):
    args = problem(1024 + rows - 1, 2, 64, device="cuda")
    err = kernel_vs_float64(args, n_steps=100, config={"rows": rows})
    assert err["y"] < 1e-5 and err["grad"] < 1e-4, err


def test_cuda_auto_picks_triton(cuda_only):
    args = problem(4099, 5, 100, device="cuda")
    assert float64_error(rk4_mlp(*args, n_steps=10), args, n_steps=10) < 1e-5


def test_public_name_is_the_function():
    import dynbook.kernels as k

    assert callable(k.rk4_mlp) and k.rk4_mlp is rk4_mlp
