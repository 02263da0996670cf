"""Roofline arithmetic and the measurement helpers of chapter 1."""

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dynbook.models import matrix as mx
from dynbook.measure.timing import SavedTensorBytes


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
    pts = mx.gemm_sweep([1, 3], 16, 24, min_run_time=0.002, repeats=3)
    assert all(len(p.times) == 3 and p.seconds == min(p.times) for p in pts)


def test_timing_runs_on_one_cpu_thread():
    before = torch.get_num_threads()
    with mx.timing_threads("cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


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


def test_training_memory_is_affine_in_depth_and_excludes_weights():
    width, batch = 16, 4
    pts = mx.training_cost([1, 2, 3], width=width, batch=batch, min_run_time=0.005, repeats=2)
    saved = [p.saved_bytes for p in pts]
    # one activation (batch × width float32) per added layer: the ReLU output that is also
    # the next Linear's input, one storage counted once; the weights are not counted
    assert saved[2] - saved[1] == saved[1] - saved[0] == 4 * batch * width
    # Linear ℓ ≥ 2 keeps its weight for the input gradient: counted apart, one matrix each
    assert [p.saved_parameter_bytes for p in pts] == [0, 4 * width * width, 8 * width * width]
    # checkpointing keeps the input and the output only, whatever the depth
    assert len({p.checkpointed_bytes for p in pts}) == 1
    assert all(len(p.step_times) == 2 and len(p.frozen_times) == 2 for p in pts)


def test_shared_mlp_ties_one_matrix():
    d = mx.make_mlp(4, 8)
    s = mx.make_mlp(4, 8, shared=True)
    assert mx.weight_bytes(d) == 4 * mx.weight_bytes(s) == 4 * 4 * 64
    linears = [m for m in s if isinstance(m, torch.nn.Linear)]
    assert all(m.weight is linears[0].weight for m in linears)
    x = torch.randn(3, 8)
    w = linears[0].weight
    ref = x
    for i in range(4):
        ref = ref @ w.T
        if i < 3:
            ref = torch.relu(ref)
    assert torch.allclose(s(x), ref)


def test_reuse_comparison_times_both_nets_interleaved():
    res = mx.reuse_comparison([1, 4], depth=3, width=8, min_run_time=0.002, repeats=3)
    assert set(res) == {"distinct", "shared"}
    d1, s1 = res["distinct"][0], res["shared"][0]
    assert d1.batch == s1.batch == 1 and d1.flops == s1.flops == 3 * 2 * 64
    assert d1.weight_bytes == 3 * s1.weight_bytes
    assert len(d1.times) == 3 and d1.seconds == min(d1.times)
    est = mx.reuse_ratio(d1, s1)
    assert est.lo <= est.value <= est.hi
    with pytest.raises(ValueError):
        mx.reuse_ratio(res["distinct"][0], res["shared"][1])
    with pytest.raises(ValueError, match="kinds"):
        mx.reuse_comparison({"tied": [1]}, depth=2, width=4)


def test_reuse_plan_with_copy_and_an_independent_twin():
    res = mx.reuse_comparison({"distinct": [1, 16], "distinct_copy": [1]}, depth=2, width=8,
                              min_run_time=0.002, repeats=3, copy_bytes=4096)
    assert [p.batch for p in res["distinct"]] == [1, 16] and len(res["distinct_copy"]) == 1
    copy = res["copy"][0]
    assert copy.weight_bytes == 8192 and len(copy.times) == 3
    frac = mx.streaming_fraction(res["distinct"][0], copy)
    assert frac.lo <= frac.value <= frac.hi
    # the fraction is (weight bytes / pass time) / (copy bytes / copy time)
    p = res["distinct"][0]
    assert frac.value == pytest.approx((p.weight_bytes / p.seconds) / (copy.weight_bytes / copy.seconds))


def test_efficiency_ratio_scales_by_flops():
    small = mx.GemmPoint("fp32", 1, 8, 8, 1.0, times=(1.0, 1.1, 1.2))
    large = mx.GemmPoint("fp32", 16, 8, 8, 2.0, times=(2.0, 2.1, 2.2))
    est = mx.efficiency_ratio(small, large)
    # 16 × the FLOPs in twice the time: 8 × the FLOP/s
    assert est.value == pytest.approx(8.0)
    assert est.lo <= 8.0 <= est.hi


def test_sizing_from_cache_and_memory():
    assert mx.size_past_cache(48 * 2**20, 4) == 4096  # 64 MiB ≥ 1.25 × 48 MiB
    assert mx.size_past_cache(56 * 2**20, 4) == 8192  # 64 MiB < 70 MiB
    assert mx.size_past_cache(48 * 2**20, 2) == 8192
    assert mx.size_past_cache(1, 4, factor=1) == 1
    assert mx.depth_past_cache(1024, 48 * 2**20) == 24
    assert mx.depth_past_cache(8192, 1) == 2
    big = mx.training_bytes(128, width=4096, batch=1024)
    assert big > 20 * 2**30  # the full profile's deepest net (issue 9)
    kept = mx.depths_that_fit([2, 4, 8, 16, 32, 64, 128], width=4096, batch=1024, free_bytes=20 * 2**30)
    assert kept == [2, 4, 8, 16]  # all kept nets (and frozen twins) plus one step within 10 GiB
    per_layer = 4096 * 4096 * 4
    resident = sum(2 * d * per_layer for d in kept)
    assert resident + mx.training_bytes(16, width=4096, batch=1024) <= 10 * 2**30
    assert resident + 2 * 32 * per_layer + mx.training_bytes(32, width=4096, batch=1024) > 10 * 2**30
    assert mx.depths_that_fit([8, 2, 4], width=16, batch=4, free_bytes=2**30) == [2, 4, 8]


def test_gemm_points_record_exact_call_counts(tmp_path):
    from dynbook.measure.energy import EnergyReading

    p = mx.GemmPoint("fp32", 2, 3, 4, seconds=0.5, calls=10,
                     energy=EnergyReading("rapl", 7.3, joules=48e-12 * 10 + 2.0, idle_watts=2.0 / 7.3))
    # 10 calls of 48 FLOP cost 480 pJ net: 1 pJ/FLOP whatever the seconds say
    assert p.pj_per_flop == pytest.approx(1.0)
    assert mx.GemmPoint("fp32", 2, 3, 4, 0.5, energy=p.energy, calls=0).pj_per_flop is None


def test_flop_ratio_guard_makes_a_time_beyond_the_arithmetic_inconclusive():
    import dynbook

    est = dynbook.Estimate(3.0, 2.6, 3.4)
    assert mx.flop_ratio_guard(est, 2.4, 8) is est  # batch 8 in 2.4× the time: bytes can explain it
    wide = mx.flop_ratio_guard(est, 50.3, 8)  # issue 9's two-thread run
    assert (wide.value, wide.lo, wide.hi) == (3.0, 1.0, 8.0) and "widened" in wide.method
    rule = dynbook.at_least(2, band=0.25)
    assert rule.decide(est) == "supported" and rule.decide(wide) == "inconclusive"
