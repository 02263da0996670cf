"""dynbook.kernels.scan: Triton kernels (interpreted on a CPU) and the PyTorch parallel scan
against float64 sequential references, on small irregular shapes."""

import pytest
import torch

from dynbook.kernels import linear_scan, resolve_impl, selective_scan, triton_available
from dynbook.kernels.scan import (LINEAR_SCAN_CONFIGS, linear_scan_parallel, linear_scan_reference,
                                  selective_scan_bytes, selective_scan_parallel,
                                  selective_scan_reference)

needs_triton = pytest.mark.skipif(not triton_available(), reason="needs triton")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _ab(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = (2 * torch.rand(shape, generator=g, dtype=torch.float64) - 1)  # |a| < 1, both signs
    b = torch.randn(shape, generator=g, dtype=torch.float64)
    return a.to(DEV, dtype), b.to(DEV, dtype)


def _selective_inputs(b, l, d, n, dtype=torch.float64, seed=0, with_D=True):
    g = torch.Generator().manual_seed(seed)
    f = dict(generator=g, dtype=torch.float64)
    u = torch.randn(b, l, d, **f)
    delta = 0.05 + 0.5 * torch.rand(b, l, d, **f)
    A = -torch.exp(torch.randn(d, n, **f))
    B, C = torch.randn(b, l, n, **f), torch.randn(b, l, n, **f)
    D = torch.randn(d, **f) if with_D else None
    return [None if x is None else x.to(DEV, dtype) for x in (u, delta, A, B, C, D)]


def _loop64(a, b):
    """The plainest possible float64 recurrence, independent of the module."""
    a, b = a.double().cpu(), b.double().cpu()
    h, out = torch.zeros(b.shape[:-1], dtype=torch.float64), []
    for t in range(b.shape[-1]):
        h = a[..., t] * h + b[..., t]
        out.append(h)
    return torch.stack(out, -1)


# ----------------------------------------------------------------------------- linear_scan


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 37), (2, 3, 129), (1, 300)])
def test_parallel_and_reference_match_loop(shape):
    a, b = _ab(shape)
    want = _loop64(a, b)
    torch.testing.assert_close(linear_scan_reference(a, b).cpu(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(linear_scan_parallel(a, b).cpu(), want, rtol=1e-12, atol=1e-12)


def test_parallel_scan_complex_and_broadcast():
    g = torch.Generator().manual_seed(3)
    a = torch.exp(torch.complex(-torch.rand(4, 1, dtype=torch.float64, generator=g),
                                torch.randn(4, 1, dtype=torch.float64, generator=g)))
    b = torch.randn(2, 4, 45, dtype=torch.complex128, generator=g)
    want = linear_scan_reference(a.expand(4, 45), b)
    torch.testing.assert_close(linear_scan_parallel(a, b), want, rtol=1e-12, atol=1e-12)
    h = b[..., 0]
    torch.testing.assert_close(want[..., 0], h)
    for t in range(1, 45):
        h = a[:, 0] * h + b[..., t]
    torch.testing.assert_close(want[..., -1], h)


@needs_triton
@pytest.mark.parametrize("shape,block_l", [((5,), None), ((3, 37), 16), ((2, 3, 129), 32),
                                           ((1, 300), None), ((4, 1), 8), ((7, 64), 64)])
def test_triton_linear_scan_float64(shape, block_l):
    a, b = _ab(shape, seed=len(shape))
    got = linear_scan(a, b, impl="triton", _block_l=block_l)
    torch.testing.assert_close(got.cpu(), _loop64(a, b), rtol=1e-12, atol=1e-12)


@needs_triton
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_triton_linear_scan_low_precision(dtype, tol):
    a, b = _ab((3, 77), dtype=dtype, seed=5)
    got = linear_scan(a, b, impl="triton", _block_l=16)
    assert got.dtype == dtype
    want = _loop64(a, b)  # from the rounded inputs: the kernel accumulates in float32
    scale = want.abs().max()
    assert (got.double().cpu() - want).abs().max() <= tol * scale


@needs_triton
def test_triton_linear_scan_gradcheck():
    a, b = _ab((2, 11), seed=7)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: linear_scan(a, b, impl="triton", _block_l=4), (a, b),
                                    fast_mode=True)  # checks a random projection of the Jacobian


@needs_triton
@pytest.mark.parametrize("shape,block_l", [((3, 53), 16), ((2, 2, 20), 32)])
def test_triton_linear_scan_grad_matches_reference(shape, block_l):
    a, b = _ab(shape, seed=11)
    g = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(DEV)
    grads = []
    for impl in ("torch", "triton"):
        a_, b_ = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        h = linear_scan(a_, b_, impl=impl, _block_l=block_l) if impl == "triton" else linear_scan(a_, b_, impl=impl)
        h.backward(g)
        grads.append((a_.grad, b_.grad))
    for want, got in zip(grads[0], grads[1]):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


@needs_triton
def test_triton_linear_scan_broadcast_a():
    a, _ = _ab((4, 1), seed=1)
    _, b = _ab((2, 4, 33), seed=2)
    a = a.requires_grad_(True)
    h = linear_scan(a, b, impl="triton", _block_l=8)
    torch.testing.assert_close(h.cpu(), _loop64(a.detach().expand(2, 4, 33), b), rtol=1e-12, atol=1e-12)
    h.sum().backward()
    a2 = a.detach().clone().requires_grad_(True)
    linear_scan_reference(a2, b).sum().backward()
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-11, atol=1e-11)


def test_auto_on_cpu_is_reference():
    a, b = _ab((2, 9))
    if not a.is_cuda:
        assert resolve_impl("auto", a) == "torch"
        torch.testing.assert_close(linear_scan(a, b), linear_scan_reference(a, b), rtol=0, atol=0)


def test_linear_scan_bad_inputs():
    a, b = _ab((2, 9))
    with pytest.raises(ValueError, match="impl='fast'"):
        linear_scan(a, b, impl="fast")
    with pytest.raises(ValueError, match=r"a\.shape = \(2, 8\).*broadcast"):
        linear_scan(a[:, :8], b)
    with pytest.raises(ValueError, match=r"b\.dtype = torch\.int64"):
        linear_scan(a, b.long(), impl="torch")
    with pytest.raises(ValueError, match="b = list"):
        linear_scan(a, [1.0, 2.0], impl="torch")


@needs_triton
def test_triton_rejects_complex():
    b = torch.randn(3, 5, dtype=torch.complex64, device=DEV)
    with pytest.raises(ValueError, match="complex64.*impl='triton'"):
        linear_scan(b, b, impl="triton")


# ----------------------------------------------------------------------------- selective_scan


def _selective_loop64(u, delta, A, B, C, D):
    u, delta, A, B, C = (x.double().cpu() for x in (u, delta, A, B, C))
    b, l, d = u.shape
    h = torch.zeros(b, d, A.shape[1], dtype=torch.float64)
    y = torch.zeros(b, l, d, dtype=torch.float64)
    for t in range(l):
        h = torch.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * B[:, t, None, :] * u[:, t, :, None]
        y[:, t] = (h * C[:, t, None, :]).sum(-1)
    return y if D is None else y + D.double().cpu() * u


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 13, 5, 3), (1, 40, 3, 16)])
def test_selective_reference_and_parallel(shape):
    args = _selective_inputs(*shape, seed=sum(shape))
    want = _selective_loop64(*args)
    torch.testing.assert_close(selective_scan_reference(*args).cpu(), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(selective_scan_parallel(*args).cpu(), want, rtol=1e-12, atol=1e-12)


@needs_triton
@pytest.mark.parametrize("shape,blocks,with_D", [((1, 1, 1, 1), None, True), ((2, 37, 5, 3), None, True),
                                                 ((1, 50, 11, 17), (64, 16), False),
                                                 ((1, 33, 4, 16), (8, 4), True)])
def test_triton_selective_scan_float64(shape, blocks, with_D):
    args = _selective_inputs(*shape, seed=len(shape) + shape[1], with_D=with_D)
    got = selective_scan(*args, impl="triton", _blocks=blocks)
    torch.testing.assert_close(got.cpu(), _selective_loop64(*args), rtol=1e-11, atol=1e-11)


@needs_triton
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_triton_selective_scan_low_precision(dtype, tol):
    args = _selective_inputs(2, 29, 6, 5, seed=4)
    low = [args[0].to(dtype), args[1].to(dtype), args[2].float(), args[3].to(dtype), args[4].to(dtype),
           args[5].float()]
    got = selective_scan(*low, impl="triton")
    assert got.dtype == dtype
    want = _selective_loop64(*low)
    assert (got.double().cpu() - want).abs().max() <= tol * want.abs().max()


@needs_triton
def test_triton_selective_scan_gradcheck():
    args = _selective_inputs(1, 5, 2, 2, seed=9)
    args = [x.requires_grad_(True) for x in args]
    assert torch.autograd.gradcheck(lambda *xs: selective_scan(*xs, impl="triton"), tuple(args),
                                    fast_mode=True)


@needs_triton
def test_triton_selective_scan_grad_matches_reference():
    args = _selective_inputs(2, 21, 3, 4, seed=12)
    g = torch.randn(2, 21, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).to(DEV)
    grads = []
    for impl in ("torch", "triton"):
        xs = [x.clone().requires_grad_(True) for x in args]
        selective_scan(*xs, impl=impl).backward(g)
        grads.append([x.grad for x in xs])
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_selective_bad_inputs():
    u, delta, A, B, C, D = _selective_inputs(2, 7, 3, 4)
    with pytest.raises(ValueError, match=r"delta\.shape = \(2, 6, 3\)"):
        selective_scan(u, delta[:, :6], A, B, C, D, impl="torch")
    with pytest.raises(ValueError, match=r"A\.shape = \(4, 4\).*\(3, n\)"):
        selective_scan(u, delta, torch.zeros(4, 4, dtype=u.dtype), B, C, D)
    with pytest.raises(ValueError, match=r"C\.shape = \(2, 7, 3\).*\(2, 7, 4\)"):
        selective_scan(u, delta, A, B, C[..., :3], D)
    with pytest.raises(ValueError, match=r"D\.shape = \(2,\)"):
        selective_scan(u, delta, A, B, C, D[:2])
    with pytest.raises(ValueError, match=r"u\.shape = \(7, 3\).*3 dimensions"):
        selective_scan(u[0], delta, A, B, C, D)
    with pytest.raises(ValueError, match="impl='cuda'"):
        selective_scan(u, delta, A, B, C, D, impl="cuda")


def test_selective_scan_bytes():
    # u, Δ, y: 3·b·l·d; B, C: 2·b·l·n; A: d·n; D: d; at 4 bytes each
    assert selective_scan_bytes(2, 3, 4, 5, 4) == 4 * (3 * 24 + 2 * 30 + 20 + 4)
    assert selective_scan_bytes(2, 3, 4, 5, 2, has_D=False) == 2 * (3 * 24 + 2 * 30 + 20)


@needs_triton
def test_triton_on_cpu_without_interpret_env():
    """A CPU tensor runs the kernels in Triton's interpreter even when TRITON_INTERPRET was
    not set at import (the chapter relies on this)."""
    import os
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("the interpreter path is for CPU tensors")
    code = ("import torch; from dynbook.kernels import linear_scan, selective_scan; "
            "from dynbook.kernels.scan import linear_scan_reference, selective_scan_reference; "
            "a = torch.rand(2, 19, dtype=torch.float64); b = torch.randn(2, 19, dtype=torch.float64); "
            "assert torch.allclose(linear_scan(a, b, impl='triton'), linear_scan_reference(a, b)); "
            "u = torch.randn(1, 9, 3, dtype=torch.float64); B = torch.randn(1, 9, 2, dtype=torch.float64); "
            "A = -torch.rand(3, 2, dtype=torch.float64); "
            "assert torch.allclose(selective_scan(u, u.abs(), A, B, B, impl='triton'), "
            "selective_scan_reference(u, u.abs(), A, B, B)); print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("chunk", [1, 7, 16, 500])
def test_selective_chunked_matches_loop(chunk):
    from dynbook.kernels.scan import selective_scan_chunked

    args = _selective_inputs(2, 45, 3, 4, seed=chunk)
    torch.testing.assert_close(selective_scan_chunked(*args, chunk=chunk).cpu(), _selective_loop64(*args),
                               rtol=1e-12, atol=1e-12)


def test_selective_chunked_gradients_and_errors():
    from dynbook.kernels.scan import selective_scan_chunked

    args = _selective_inputs(1, 23, 2, 3, seed=3)
    g = torch.randn(1, 23, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(DEV)
    grads = []
    for fn in (selective_scan_reference, lambda *xs: selective_scan_chunked(*xs, chunk=5)):
        xs = [x.clone().requires_grad_(True) for x in args]
        fn(*xs).backward(g)
        grads.append([x.grad for x in xs])
    for want, got in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)
    with pytest.raises(ValueError, match="chunk = 0"):
        selective_scan_chunked(*args, chunk=0)


# ----------------------------------------------------------------------------- linear_scan backward


def _adjoint64(a, b, g):
    """float64 adjoint of h_t = a_t h_{t−1} + b_t by the plainest loop, independent of the
    module: λ_t = g_t + a_{t+1} λ_{t+1}; ∂L/∂b_t = λ_t; ∂L/∂a_t = λ_t h_{t−1}."""
    a, b, g = a.double().cpu(), b.double().cpu(), g.double().cpu()
    h = _loop64(a, b)
    lam = torch.zeros_like(b)
    nxt = torch.zeros(b.shape[:-1], dtype=torch.float64)
    for t in reversed(range(b.shape[-1])):
        a_next = a[..., t + 1] if t + 1 < b.shape[-1] else torch.ones_like(nxt)
        nxt = g[..., t] + a_next * nxt
        lam[..., t] = nxt
    h_prev = torch.cat([torch.zeros_like(h[..., :1]), h[..., :-1]], -1)
    return lam * h_prev, lam


_SMALL_TILES = [((1,), (1, 4)), ((3, 1), (2, 8)), ((5, 13), (4, 16)), ((2, 3, 129), (1, 64)),
                ((2, 3, 129), (4, 16)), ((5, 13), (1, 4))]
_TUNED_TILES = [((3, 37), c[:2]) for c in LINEAR_SCAN_CONFIGS]  # the autotuner's choices


@needs_triton
@pytest.mark.parametrize("shape,config", _SMALL_TILES + _TUNED_TILES, ids=str)
def test_triton_linear_scan_backward_reversed_index(shape, config):
    """The backward walks the sequence from its end by reversing the index (no
    ``associative_scan(reverse=True)``): float64 forward and gradients at every forced
    (BLOCK_R, BLOCK_L) — the autotuner's list included — and lengths that leave partial chunks."""
    a, b = _ab(shape, seed=sum(shape) + config[1])
    g = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(len(shape))).to(DEV)
    a_, b_ = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    h = linear_scan(a_, b_, impl="triton", _block_l=config)
    h.backward(g)
    torch.testing.assert_close(h.detach().cpu(), _loop64(a, b), rtol=1e-12, atol=1e-12)
    da, db = _adjoint64(a, b, g)
    torch.testing.assert_close(a_.grad.cpu(), da, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(b_.grad.cpu(), db, rtol=1e-11, atol=1e-11)


def test_linear_scan_kernel_has_no_reverse_associative_scan():
    """triton#4362: a reverse associative_scan with a non-commutative combine miscompiles;
    the kernels must not use it (the interpreter would not notice)."""
    import ast
    import inspect

    from dynbook.kernels import scan

    for node in ast.walk(ast.parse(inspect.getsource(scan))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "associative_scan":
            assert not any(k.arg == "reverse" for k in node.keywords), ast.unparse(node)


# ----------------------------------------------------------------------------- selective_scan redesign


def _grads64(args, g, fn):
    xs = [None if x is None else x.clone().requires_grad_(True) for x in args]
    y = fn(*xs)
    y.backward(g)
    return y.detach(), [None if x is None else x.grad for x in xs]


@needs_triton
@pytest.mark.parametrize("config", sorted({*__import__("dynbook.kernels.scan", fromlist=["x"]).SSM_FWD_CONFIGS,
                                            *__import__("dynbook.kernels.scan", fromlist=["x"]).SSM_FWD_CONFIGS_SMALL}),
                         ids=str)
def test_triton_selective_scan_every_autotune_config(config):
    """Every configuration the forward's autotuner may choose, float64, partial chunks and
    partial channel blocks."""
    args = _selective_inputs(1, 37, 5, 3, seed=config[0] + config[1])
    got = selective_scan(*args, impl="triton", _blocks=config)
    torch.testing.assert_close(got.cpu(), _selective_loop64(*args), rtol=1e-11, atol=1e-11)


@needs_triton
@pytest.mark.parametrize("config", list(__import__("dynbook.kernels.scan", fromlist=["x"]).SSM_BWD_CONFIGS),
                         ids=str)
def test_triton_selective_scan_fused_backward_every_config(config):
    """The fused backward (recomputing inside each chunk from the saved chunk-start states)
    at every configuration ssm_backward_config can return: all six gradients in float64
    against autograd through the sequential reference; l spans several chunks."""
    # two chunks (the second partial); two channel blocks (the second partial) and two batches
    # only for the smallest channel block, where ∂B, ∂C are summed over blocks (cheap in the interpreter)
    l = config[0] + 5
    b, d = (2, config[1] + 3) if config[1] == 8 else (1, 5)
    args = _selective_inputs(b, l, d, 2, seed=config[0] + config[1], with_D=config[1] != 16)
    g = torch.randn(b, l, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(DEV)
    y_ref, want = _grads64(args, g, selective_scan_reference)
    y, got = _grads64(args, g, lambda *xs: selective_scan(*xs, impl="triton", _blocks=config))
    torch.testing.assert_close(y, y_ref, rtol=1e-11, atol=1e-11)
    for name, w, gt in zip("u delta A B C D".split(), want, got):
        if w is None:
            assert gt is None
            continue
        torch.testing.assert_close(gt, w, rtol=1e-10, atol=1e-10, msg=lambda m: f"d{name}: {m}")


@needs_triton
def test_triton_selective_scan_large_state_loops_over_n():
    """n = 64 runs in a loop over states (registers do not grow with n), its backward through the
    chunked PyTorch scan (n > SSM_BWD_MAX_N); n > MAX_N is refused by impl='triton' with a clear
    error."""
    from dynbook.kernels.scan import MAX_N

    args = _selective_inputs(1, 9, 2, 64, seed=4)
    g = torch.randn(1, 9, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(DEV)
    y_ref, want = _grads64(args, g, selective_scan_reference)
    y, got = _grads64(args, g, lambda *xs: selective_scan(*xs, impl="triton", _blocks=(8, 2)))
    torch.testing.assert_close(y.cpu(), _selective_loop64(*args), rtol=1e-11, atol=1e-11)
    for w, gt in zip(want, got):
        torch.testing.assert_close(gt, w, rtol=1e-10, atol=1e-10)
    big = _selective_inputs(1, 3, 2, MAX_N + 1, seed=5)
    with pytest.raises(ValueError, match=rf"n = {MAX_N + 1} is outside the Triton kernel's range"):
        selective_scan(*big, impl="triton")


def test_selective_scan_saved_memory_is_per_chunk():
    """What the fused backward keeps: the chunk-start states, b·⌈l/BLOCK_L⌉·n·d values, not
    (b, l, d, n) tensors (the headline shape keeps 67 MB in float32 instead of ~13 GB)."""
    from dynbook.kernels.scan import ssm_backward_config

    bl, bd, w = ssm_backward_config(4096, 1024)
    states = 8 * (4096 // bl) * 16 * 1024 * 4
    assert (bl, bd, w) == (32, 32, 8) and states <= 70e6


@needs_triton
def test_selective_scan_error_against_float64(monkeypatch):
    """The one kernel-vs-float64 check the chapter (K3) and benchmarks share: float32 errors of
    the kernel and of the PyTorch loop are rounding-sized; a wrong implementation is not."""
    from dynbook.kernels import scan

    y_err, g_err = scan.selective_scan_error(1, 11, 3, 2, seed=3)
    assert 0 < y_err < 1e-5 and 0 < g_err < 1e-4
    y_ref, g_ref = scan.selective_scan_error(1, 11, 3, 2, impl="torch", seed=3)
    assert y_ref < 1e-5 and g_ref < 1e-4
    right = scan.selective_scan
    monkeypatch.setattr(scan, "selective_scan", lambda *xs, impl: right(*xs, impl=impl) * 1.01)
    assert scan.selective_scan_error(1, 11, 3, 2, seed=3)[0] > 5e-3
