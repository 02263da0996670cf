"""Roofline arithmetic and the measurement helpers of chapter 1."""

import numpy as np
import pytest
import torch

from dynbook.models import matrix as mx
from fakes import ConstantPowerMeter


def test_gemm_point_derived_quantities():
    p = mx.GemmPoint("fp32", 2, 3, 4, seconds=0.5)
    assert p.flops == 48 and p.bytes == 4 * (8 + 12 + 6) and p.flops_per_s == 96


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


def test_flop_ratio_guard_makes_a_time_beyond_the_arithmetic_inconclusive():
    import dynbook

    est = dynbook.Estimate(3.0, 2.6, 3.4)
    assert mx.flop_ratio_guard(est, 2.4, 8) is est  # batch 8 in 2.4× the time: bytes can explain it
    wide = mx.flop_ratio_guard(est, 50.3, 8)  # issue 9's two-thread run
    assert (wide.value, wide.lo, wide.hi) == (3.0, 1.0, 8.0) and "widened" in wide.method
    rule = dynbook.at_least(2, band=0.25)
    assert rule.decide(est) == "supported" and rule.decide(wide) == "inconclusive"


# ----------------------------------------------------------------------------- chapter 1's experiments

MiB = 2**20


def test_plan_sizes_follow_the_last_level_cache():
    caches = {"L1": 32 * 1024, "L2": MiB, "last": 48 * MiB}
    s = mx.plan("cpu", max_batch=256, mlp_width=1024, caches=caches)
    assert (s.dtypes, s.headline, s.itemsize, s.llc) == (("fp32",), "fp32", 4, 48 * MiB)
    assert s.n == 4096 and s.depth == 24  # 64 MiB ≥ 1.25 × 48 MiB; 24 × 4 MiB = 2 × 48 MiB
    assert s.m_control == 16 and s.batches == [1, 4, 16, 64, 256]
    assert mx.plan("cpu", max_batch=256, mlp_width=1024, caches=caches, min_matrix_size=8192).n == 8192
    fixed = mx.plan("cpu", max_batch=100, mlp_width=64, caches=caches, matrix_size=96, mlp_depth=3)
    assert (fixed.n, fixed.depth, fixed.width) == (96, 3, 64)
    assert fixed.batches == [1, 4, 6, 16, 64, 100]  # powers of 4, the control 100 // 16, the largest
    # a machine that does not say: 32 MiB assumed; the depth is capped at 512 layers
    bare = mx.plan("cpu", max_batch=4, mlp_width=16, caches={})
    assert bare.llc == 32 * MiB and bare.n == 4096 and bare.depth == 512 and bare.batches == [1, 4]
    assert "N = K = 4096 (64 MiB of fp32 weights)" in s.describe() and "L2 1 MiB" in s.describe()


def test_plan_rejects_bad_inputs_by_name():
    with pytest.raises(ValueError, match="dtype='fp8' is not allowed"):
        mx.plan("cpu", max_batch=4, mlp_width=16, dtypes=["fp8"], caches={})
    with pytest.raises(ValueError, match="dtype='tf32' is not allowed on device 'cpu'"):
        mx.plan("cpu", max_batch=4, mlp_width=16, dtypes=["tf32"], caches={})
    with pytest.raises(ValueError, match="max_batch=0 is not allowed"):
        mx.plan("cpu", max_batch=0, mlp_width=16, caches={})
    with pytest.raises(ValueError, match="mlp_width=2.5 is not allowed"):
        mx.plan("cpu", max_batch=4, mlp_width=2.5, caches={})
    with pytest.raises(ValueError, match="cache_bytes=0 is not allowed"):
        mx.size_past_cache(0)


def test_matmul_error_against_float64():
    fp32 = mx.matmul_error("fp32", "cpu")
    bf16 = mx.matmul_error("bf16", "cpu")
    assert fp32 < mx.MATMUL_TOLERANCE["fp32"]
    # bf16 keeps 8 bits of mantissa: its error is far above fp32's, within its own tolerance
    assert 1e-4 < bf16 < mx.MATMUL_TOLERANCE["bf16"] and bf16 > 100 * fp32
    with pytest.raises(ValueError, match="dtype='int8' is not allowed"):
        mx.matmul_error("int8", "cpu")


def test_ceilings_measure_peak_copy_and_each_cache_but_the_first_and_last():
    s = mx.plan("cpu", max_batch=4, mlp_width=16, caches={"L1": 32 * 1024, "L2": 256 * 1024, "last": MiB})
    roofs = mx.measure_ceilings(s, peak_size=64, copy_bytes=MiB, min_run_time=0.002)
    assert set(roofs.peak) == {"fp32"} and roofs.peak["fp32"] > 0 and roofs.copy > 0
    assert set(roofs.caches) == {"L2"} and roofs.copy_bytes == 4 * MiB  # at least 4 × the last level
    assert roofs.last_cache_bandwidth() == roofs.caches["L2"]
    assert mx.Ceilings({"fp32": 1.0}, 5.0, {}, {}, MiB).last_cache_bandwidth() == 5.0
    big = mx.Ceilings({}, 1.0, {"L2": 7.0, "L3": 3.0}, {"L2": MiB, "L3": 8 * MiB}, MiB)
    assert big.last_cache_bandwidth() == 3.0  # the largest level, not the fastest
    with pytest.raises(ValueError, match="min_run_time=0 is not allowed"):
        mx.measure_ceilings(s, peak_size=64, copy_bytes=MiB, min_run_time=0)


def test_batch_study_times_every_batch_and_gives_c1_its_two_ratios():
    s = mx.plan("cpu", max_batch=64, mlp_width=16, matrix_size=48, caches={})
    study = mx.batch_study(s, min_run_time=0.002, repeats=3)
    assert [p.m for p in study.sweep["fp32"]] == [1, 4, 16, 64]
    assert study.gemv.m == 1 and study.largest.m == 64 and study.by_m[4].n == study.by_m[4].k == 48
    assert all(len(p.times) == 3 for p in study.sweep["fp32"])
    assert study.gain.value == pytest.approx(mx.efficiency_ratio(study.gemv, study.largest).value)
    assert study.gain_control.value == pytest.approx(mx.efficiency_ratio(study.by_m[4], study.largest).value)
    assert study.gain.lo <= study.gain.value <= study.gain.hi


def test_reuse_study_guards_batch_one_and_keeps_its_controls_unguarded():
    study = mx.reuse_study(depth=2, width=8, device="cpu", dtype="fp32", control_batch=16,
                           copy_bytes=4096, min_run_time=0.002, repeats=3)
    assert sorted(study.distinct) == [1, 8, 16, 32] and sorted(study.shared) == [1, 8, 32]
    assert study.twin.batch == 1 and study.copy.weight_bytes == 8192
    d1 = study.distinct[1]
    assert study.batch8_ratio == pytest.approx(study.distinct[8].seconds / d1.seconds)
    want = mx.flop_ratio_guard(mx.streaming_fraction(d1, study.copy), study.batch8_ratio, 8)
    assert (study.stream.value, study.stream.lo, study.stream.hi) == pytest.approx((want.value, want.lo, want.hi))
    assert study.stream_control.value == pytest.approx(
        mx.streaming_fraction(study.distinct[16], study.copy).value)
    assert study.reuse_control.value == pytest.approx(mx.reuse_ratio(d1, study.twin).value)
    with pytest.raises(ValueError, match="control_batch=0 is not allowed"):
        mx.reuse_study(depth=2, width=8, device="cpu", dtype="fp32", control_batch=0,
                       copy_bytes=4096, min_run_time=0.002, repeats=3)


@pytest.fixture(scope="module")
def depth_study():
    return mx.depth_study([1, 2, 3], width=16, batch=4, device="cpu", min_run_time=0.002,
                          repeats=2, free_bytes=2**30)


def test_depth_study_counts_one_activation_per_layer_and_none_when_checkpointed(depth_study):
    study = depth_study
    assert study.depths == [1, 2, 3] and study.activation_bytes == 4 * 4 * 16
    assert study.per_layer == study.activation_bytes and study.residual == 0.0
    assert (study.memory.value, study.memory_control.value) == (1.0, 0.0)
    assert study.times("step").shape == (2, 3) and study.bytes("saved").shape == (3,)
    assert study.cost.lo <= study.cost.value <= study.cost.hi
    with pytest.raises(ValueError, match="kind='backward' is not allowed"):
        study.times("backward")
    with pytest.raises(RuntimeError, match="lower train_width"):
        mx.depth_study([1, 2, 3], width=16, batch=4, device="cpu", min_run_time=0.002, repeats=2,
                       free_bytes=10_000)


def test_energy_study_splits_the_gemv_and_says_why_when_costs_are_unusable():
    kw = dict(device="cpu", dtype="fp32", n=64, m_large=16, copy_bytes=MiB, repeats=2, seconds=0.003)
    study = mx.energy_study(ConstantPowerMeter(10.0), **kw)
    assert len(study.pj_per_byte) == len(study.pj_per_flop) == 2 and study.reason == ""
    assert min(study.pj_per_byte) > 0 and min(study.pj_per_flop) > 0
    assert 0 < study.share.value < 1 and 0 < study.share_control.value < 1
    assert study.fit.value > 0 and study.fit.n == 2
    # a counter that never moves: zero costs, an infinite arithmetic-only ratio, no estimate
    dead = mx.energy_study(ConstantPowerMeter(0.0), **kw)
    assert dead.share is None and dead.fit_control is None and "not usable" in dead.reason


def test_chapter_figures_draw_what_the_studies_measured(depth_study):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dynbook.book.stats import exact
    from dynbook.measure.energy import EnergyModel

    pts = [mx.GemmPoint("fp32", m, 64, 64, 1e-3 * m ** 0.5, (1e-3,)) for m in (1, 4, 16)]
    batch = mx.BatchStudy({"fp32": pts}, "fp32", 16, 1, exact(4.0), exact(1.0))
    roofs = mx.Ceilings({"fp32": 1e11}, 1e10, {"L2": 5e10}, {"L2": MiB}, MiB)
    fig, ax = plt.subplots()
    mx.plot_roofline(ax, batch, roofs)
    gemm, dram, l2 = ax.lines
    assert list(gemm.get_ydata()) == pytest.approx([p.flops_per_s / 1e12 for p in pts])
    i, y = dram.get_xdata(), dram.get_ydata()
    assert y == pytest.approx(np.minimum(1e11, i * 1e10) / 1e12) and max(l2.get_ydata()) == pytest.approx(0.1)

    point = mx.ReusePoint(1, 2e-3, 2 * 64 * 64, 64 * 64 * 4 * 3, (2e-3, 3e-3))
    shared = mx.ReusePoint(1, 1e-3, 2 * 64 * 64, 64 * 64 * 4, (1e-3, 1e-3))
    reuse = mx.ReuseStudy({1: point}, {1: shared}, point, point, 16, 1.0, *[exact(1.0)] * 4)
    fig, ax = plt.subplots()
    mx.plot_reuse(ax, reuse, roofs, "fp32")
    # the shared net's floor: its weight bytes at the cache roof (its FLOPs take less)
    assert ax.lines[3].get_ydata()[0] == pytest.approx(max(shared.flops / 1e11, shared.weight_bytes / 5e10) * 1e3)

    fig, ax = plt.subplots()
    mx.plot_energy(ax, {"GEMV": pts[0], "GEMM": pts[2]}, "fp32")
    bars = [r.get_height() for r in ax.patches]
    models = [EnergyModel(p.flops, p.bytes, dtype="fp32") for p in (pts[0], pts[2])]
    assert bars[:2] == pytest.approx([m.arithmetic_pj / m.flops for m in models])
    assert bars[2:] == pytest.approx([m.dram_pj / m.flops for m in models])

    fig, (a1, a2) = plt.subplots(1, 2)
    mx.plot_depth(a1, a2, depth_study)
    assert list(a1.lines[0].get_ydata()) == pytest.approx(list(depth_study.bytes("saved") / 2**20))
    assert len(a2.lines) == 6  # three timings, each with its affine fit
    plt.close("all")
