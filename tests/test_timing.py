"""Measurement helpers: interleaved timing, affine fits and slope ratios, caches, memory."""

import numpy as np
import pytest
import torch

from dynbook.measure import timing as measure


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


def test_saved_tensor_bytes_counts_activations_exactly():
    lin = torch.nn.Linear(8, 8, bias=False)
    x = torch.randn(5, 8)
    with measure.SavedTensorBytes() as s:
        torch.relu(lin(x)).sum()
    # Linear saves its input (5×8) for the weight gradient (not its weight: x needs no
    # gradient); relu saves its output (5×8); float32
    assert s.bytes == 4 * (5 * 8 + 5 * 8)
    x.requires_grad_(True)
    with measure.SavedTensorBytes() as s:
        torch.relu(lin(x)).sum()
    assert s.bytes == 4 * (5 * 8 + 8 * 8 + 5 * 8)  # now the weight is kept for x's gradient


def test_steady_allocator_takes_effect_once_and_for_all():
    """On glibc (this machine) mallopt accepts both settings; calling again is a no-op."""
    import platform

    from dynbook.measure.timing import steady_allocator

    took = steady_allocator()
    assert took is steady_allocator()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert took is True
