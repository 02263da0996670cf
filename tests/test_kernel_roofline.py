"""dynbook.kernels.roofline: floor times from bytes, exp and shuffles on named GPUs, checked
against hand arithmetic and against the review's numbers for the old selective_scan design."""

import math

import pytest

from dynbook.kernels import roofline as rf

HEAD = dict(b=8, l=4096, d=1024, n=16)


def test_gpu_figures_are_the_datasheets():
    h100, h200, a100, t4 = (rf.GPUS[k] for k in ("H100", "H200", "A100", "T4"))
    assert (h100.dram_Bps, h100.sm_count, h100.arch) == (3.35e12, 132, 90)
    assert (h200.dram_Bps, h200.sm_count, h200.clock_hz) == (4.8e12, 132, 1.98e9)
    assert (a100.dram_Bps, a100.sm_count, a100.arch) == (2.039e12, 108, 80)
    assert (t4.dram_Bps, t4.sm_count, t4.arch) == (320e9, 40, 75)
    assert all(g.source and 0.5 < g.copy_fraction <= 1 for g in rf.GPUS.values())
    assert rf.GPUS["H100"].with_copy(3.0e12).copy_Bps == pytest.approx(3.0e12)


def test_floor_by_hand():
    g = rf.GPU("toy", 90, dram_Bps=1e9, sm_count=2, clock_hz=1e6, copy_fraction=0.5)
    w = rf.Work("k", bytes=1e6, exp=64e6, shuffles=32e6, fma=0)
    f = rf.floor(w, g)
    # bytes 1e6 / 5e8 = 2 ms; exp 64e6 / (16·2·1e6) = 2 s; shuffles 32e6 / (32·2·1e6) = 0.5 s
    assert f["seconds"]["bytes"] == pytest.approx(2e-3)
    assert f["seconds"]["exp"] == pytest.approx(2.0)
    assert f["seconds"]["shuffles"] == pytest.approx(0.5)
    assert f["bound"] == "exp" and f["floor_s"] == pytest.approx(2.0)
    assert f["fraction_of_copy"] == pytest.approx(1e-3)
    mem = rf.floor(rf.Work("m", bytes=1e9), g)
    assert mem["bound"] == "bytes" and mem["fraction_of_copy"] == 1.0


def test_old_selective_scan_design_is_shuffle_bound_as_the_review_found():
    """4 shuffles per (b, l, d, n) element: 407 MB, 537 M exp, 2.1 G shuffles; ≈ 37 % of copy on
    an H200 and ≤ 47 % on an H100 even at the datasheet bandwidth."""
    w = rf.selective_scan_work(**HEAD, shuffles_per_element=4)
    assert w.bytes == pytest.approx(407e6, rel=0.01)
    assert w.exp == 8 * 4096 * 1024 * 16 == pytest.approx(537e6, rel=0.01)
    assert w.shuffles == pytest.approx(2.15e9, rel=0.01)
    h200 = rf.floor(w, "H200")
    assert h200["bound"] == "shuffles" and 0.35 < h200["fraction_of_copy"] < 0.39
    h100_peak = rf.floor(w, rf.GPUS["H100"].with_copy(3.35e12))
    assert h100_peak["fraction_of_copy"] == pytest.approx(0.47, abs=0.01)


def test_new_selective_scan_design_reaches_the_target_on_h100():
    """One exp and ≤ 1 shuffle per element leaves the forward memory-bound (≥ 70 % of copy)."""
    w = rf.selective_scan_work(**HEAD, exp_per_element=1, shuffles_per_element=1)
    f = rf.floor(w, "H100")
    assert f["bound"] == "bytes" and f["fraction_of_copy"] >= 0.7
    bwd = rf.selective_scan_backward_work(**HEAD, chunk=256)
    assert bwd.bytes == pytest.approx(0.68e9 + 4 * 8 * 1024 * 16 * 16, rel=0.01)


def test_linear_and_rk4_work():
    assert rf.linear_scan_work(10, 4).bytes == 120
    assert rf.linear_scan_work(10, 2, backward=True).bytes == 100
    w = rf.rk4_mlp_work(1024, 2, 64, 100)
    assert w.exp == 4 * 100 * 1024 * 64 and w.fma == 4 * 100 * 1024 * 2 * 2 * 64
    lo, hi = rf.rk4_mlp_latency(100, 100, "H100")
    assert lo == pytest.approx(1e4 / 1.98e9) and hi == pytest.approx(2 * lo)


def test_table_rows():
    rows = rf.table([rf.linear_scan_work(1 << 20)], gpus=("H100", "T4"))
    assert [r["gpu"] for r in rows] == ["H100", "T4"]
    assert rows[1]["bytes_us"] == pytest.approx(3 * 4 * (1 << 20) / (320e9 * 0.8) * 1e6)
    assert all(math.isfinite(r["floor_us"]) for r in rows)


def test_issue_floor():
    """All instructions, 4 warp instructions per SM per clock: 18 per element at the headline
    shape is ≈ 289 µs on an H100, more than its bytes take."""
    w = rf.selective_scan_work(**HEAD, instructions_per_element=18)
    f = rf.floor(w, "H100")
    assert f["seconds"]["issue"] == pytest.approx(18 * 8 * 4096 * 1024 * 16 / (32 * 4 * 132 * 1.98e9))
    assert f["bound"] == "issue" and f["fraction_of_copy"] < 0.5
