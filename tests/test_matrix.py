"""Roofline arithmetic and the measurement helpers of chapter 1."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dynbook import matrix as mx
from dynbook.measure import SavedTensorBytes, loglog_fit


@pytest.mark.parametrize("m,n,k", [(1, 7, 13), (37, 53, 29), (128, 64, 256)])
def test_gemm_flops_match_pytorch_counter(m, n, k):
    with FlopCounterMode(display=False) as c:
        torch.randn(m, k) @ torch.randn(k, n)
    assert c.get_total_flops() == mx.gemm_flops(m, n, k)


def test_intensity_and_roofline():
    # a GEMV with N = K: 2NK FLOP over 4(K + NK + N) bytes → just under 0.5 FLOP/B in fp32
    i = mx.intensity(1, 4096, 4096, 4)
    assert i == pytest.approx(2 * 4096 * 4096 / (4 * (4096 + 4096 * 4096 + 4096)))
    assert mx.intensity(1024, 4096, 4096, 4) > 100 * i
    peak, bw = 100e12, 2e12
    assert mx.ridge_intensity(peak, bw) == 50
    r = mx.roofline([1, 50, 1000], peak, bw)
    assert np.allclose(r, [2e12, 100e12, 100e12])


def test_gemm_point_derived_quantities():
    p = mx.GemmPoint("fp32", 2, 3, 4, seconds=0.5)
    assert p.flops == 48 and p.bytes == 4 * (8 + 12 + 6) and p.flops_per_s == 96
    assert p.pj_per_flop is None


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="dtype='fp8' is not allowed"):
        mx.gemm_sweep([1], 8, 8, dtype="fp8")
    with pytest.raises(ValueError, match="dtype='tf32' is not allowed on device 'cpu'"):
        mx.check_dtype("tf32", "cpu")
    with pytest.raises(ValueError, match="batch m=0 is not allowed"):
        mx.gemm_sweep([0], 8, 8)
    with pytest.raises(ValueError, match="nbytes=10 is not allowed"):
        mx.measure_copy_bandwidth("cpu", 10)


def test_sweep_runs_small():
    pts = mx.gemm_sweep([1, 3], 16, 24, min_run_time=0.01)
    assert [p.m for p in pts] == [1, 3] and all(p.seconds > 0 for p in pts)


def test_saved_tensor_bytes_counts_activations_exactly():
    lin = torch.nn.Linear(8, 8, bias=False)
    x = torch.randn(5, 8)
    with SavedTensorBytes() as s:
        torch.relu(lin(x)).sum()
    # Linear saves its input (5×8) for the weight gradient (not its weight: x needs no
    # gradient); relu saves its output (5×8); float32
    assert s.bytes == 4 * (5 * 8 + 5 * 8)
    x.requires_grad_(True)
    with SavedTensorBytes() as s:
        torch.relu(lin(x)).sum()
    assert s.bytes == 4 * (5 * 8 + 8 * 8 + 5 * 8)  # now the weight is kept for x's gradient


def test_training_memory_is_affine_in_depth():
    pts = mx.training_cost([1, 2, 3], width=16, batch=4, min_run_time=0.01)
    saved = [p.saved_bytes for p in pts]
    assert saved[2] - saved[1] == saved[1] - saved[0] > 0


def test_loglog_fit_recovers_exponent():
    x = np.array([1, 2, 4, 8.0])
    slope, intercept = loglog_fit(x, 3 * x**1.5)
    assert slope == pytest.approx(1.5) and np.exp(intercept) == pytest.approx(3)
    with pytest.raises(ValueError):
        loglog_fit([1], [1])
