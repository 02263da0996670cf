"""Measurement helpers: interleaved timing, affine fits and slope ratios, caches, memory."""

import numpy as np
import pytest
import torch

from dynbook import measure


def test_interleaved_times_alternate_the_callables():
    order = []
    fns = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    times = measure.interleaved_times(fns, device="cpu", min_run_time=0.001, repeats=3, warmup=1)
    assert set(times) == {"a", "b"} and all(len(v) == 3 for v in times.values())
    # warm-up once each, then every repeat runs a's calls before b's: the repeats interleave
    assert order[:2] == ["a", "b"]
    runs = [order[0]]
    for x in order[1:]:
        if x != runs[-1]:
            runs.append(x)
    assert runs == ["a", "b"] * 4
    with pytest.raises(ValueError, match="repeats=0"):
        measure.interleaved_times(fns, device="cpu", repeats=0)


def test_least_median_seconds_is_the_least_repeat():
    out = measure.least_median_seconds({"x": lambda: sum(range(100))}, device="cpu", min_run_time=0.001, repeats=2)
    assert out["x"] > 0


def test_affine_fit_recovers_slope_and_intercept_where_loglog_does_not():
    depth = np.array([2, 4, 8, 16, 32.0])
    t = 5.0 + 0.25 * depth  # a fixed overhead plus a cost per layer
    slope, intercept = measure.affine_fit(depth, t)
    assert slope == pytest.approx(0.25) and intercept == pytest.approx(5.0)
    exponent, _ = measure.loglog_fit(depth, t)
    assert exponent < 0.8  # the overhead bends the log–log exponent away from 1
    with pytest.raises(ValueError):
        measure.affine_fit([1, 1], [2, 3])


def test_slope_ratio_recovers_a_known_ratio_with_an_interval():
    rng = np.random.default_rng(1)
    depth = np.array([2, 4, 8, 16.0])
    fwd = 1.0 + 0.1 * depth
    step = 2.0 + 0.3 * depth  # three times the forward cost per layer
    noise = lambda: 1 + 0.05 * rng.random((6, depth.size))  # load only adds time
    est = measure.slope_ratio(depth, step * noise(), fwd * noise())
    assert est.lo <= est.value <= est.hi
    assert 2.5 < est.value < 3.5 and 2.0 < est.lo and est.hi < 4.0
    exact = measure.slope_ratio(depth, np.tile(step, (3, 1)), np.tile(fwd, (3, 1)))
    assert exact.value == pytest.approx(3.0) and exact.lo == pytest.approx(3.0) and exact.hi == pytest.approx(3.0)
    with pytest.raises(ValueError):
        measure.slope_ratio(depth, step[None], fwd[None])


def test_cache_bytes_reads_sysfs(tmp_path):
    for i, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"),
                                               (2, "Unified", "1280K"), (3, "Unified", "49152K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    c = measure.cache_bytes("cpu", sysfs=str(tmp_path))
    assert c == {"L1": 48 * 2**10, "L2": 1280 * 2**10, "L3": 48 * 2**20, "last": 48 * 2**20}
    assert measure.cache_bytes("cpu", sysfs=str(tmp_path / "none")) == {}


def test_free_memory_is_positive():
    assert measure.free_memory_bytes("cpu") > 2**20


def test_saved_tensor_bytes_excludes_parameters():
    lin = torch.nn.Linear(8, 8, bias=False)
    x = torch.randn(5, 8, requires_grad=True)
    with measure.SavedTensorBytes(exclude=lin.parameters()) as s:
        torch.relu(lin(x)).sum()
    assert s.bytes == 4 * (5 * 8 + 5 * 8) and s.excluded_bytes == 4 * 8 * 8


def test_num_threads_restores():
    before = torch.get_num_threads()
    with measure.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_thread_clock_does_not_charge_sleep():
    import time

    wall = measure.time_it(lambda: time.sleep(0.002), min_run_time=0.01, clock="wall")
    cpu = measure.time_it(lambda: time.sleep(0.002), min_run_time=0.01, clock="thread")
    assert wall >= 0.0018 and cpu < 0.0005  # the sleeping thread used (almost) no CPU
    t = measure.interleaved_times({"s": lambda: time.sleep(0.03)}, device="cpu", min_run_time=0.01,
                                  repeats=2, clock="thread")
    assert max(t["s"]) < 0.005
    with pytest.raises(ValueError, match="clock='thread' is not allowed on device 'cuda'"):
        measure.time_it(lambda: None, device="cuda", clock="thread")
    with pytest.raises(ValueError, match="clock='gpu'"):
        measure.time_it(lambda: None, clock="gpu")
