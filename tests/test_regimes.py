"""dynbook.sync.regimes: worker processes compute what one process computes, counters add up,
times inferred from arrival stamps are right, and the chapter's study analyses its own runs
(the launcher's failure modes are in test_processes.py)."""

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dynbook.measure.fits import relative_error
from dynbook.sync import processes, regimes as sync

TINY = sync.Problem(n_features=5, hidden=7, n_samples=203, seed=3)


# ----------------------------------------------------------------------------- workers used below
# (module level: spawned children import them from here)


def _average_worker(rank, world_size, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(100 + rank), dtype=torch.float64)
    comm = sync.Collectives(world_size, torch.device("cpu"))
    if rank == 1:
        time.sleep(0.2)  # arrives late: the others' inferred wait must see it
    comm.average_(x)
    return x, comm.sync_count, comm.bytes, comm.arrivals, comm.departures


# ----------------------------------------------------------------------------- plain checks


def test_bad_inputs_name_the_parameter():
    with pytest.raises(ValueError, match="hidden=0"):
        sync.Problem(hidden=0)
    with pytest.raises(ValueError, match="kind='ring'"):
        sync.Regime("ring")
    with pytest.raises(ValueError, match="period=0"):
        sync.Regime("local", 0)
    with pytest.raises(ValueError, match="period=4.*kind='sync'"):
        sync.Regime("sync", 4)
    with pytest.raises(ValueError, match="step_size=-0.1"):
        sync.Training(step_size=-0.1)
    with pytest.raises(ValueError, match="straggler_rank=5"):
        sync.train_distributed(TINY, sync.Training(n_steps=2), [sync.Regime("sync", straggler_rank=5, straggler_delay=0.1)], 2)
    with pytest.raises(ValueError, match="kind='sync'"):
        sync.train_hogwild(TINY, sync.Training(n_steps=2), [sync.Regime("sync")])
    with pytest.raises(ValueError, match="jitter_prob=1.5"):
        sync.Regime("sync", jitter_prob=1.5)
    with pytest.raises(ValueError, match="workers=1"):
        sync.sync_study(1, seeds=[0], jitter_seeds=[0], sizes=[4, 8], period=2, n_steps=4, delay_s=0.001)
    with pytest.raises(ValueError, match="period=8"):
        sync.sync_study(2, seeds=[0], jitter_seeds=[0], sizes=[4, 8], period=8, n_steps=4, delay_s=0.001)
    with pytest.raises(ValueError, match="delay_s=0"):
        sync.sync_study(2, seeds=[0], jitter_seeds=[0], sizes=[4, 8], period=2, n_steps=4, delay_s=0)


def test_ring_bytes():
    assert sync.ring_bytes(1000, 2) == 1000
    assert sync.ring_bytes(1000, 4) == 1500
    assert sync.ring_bytes(1000, 1) == 0


def test_problem_data_is_deterministic_and_dtype_independent():
    x32, y32 = TINY.data()
    x64, y64 = TINY.data(torch.float64)
    assert x32.shape == (203, 5) and y32.shape == (203,)
    torch.testing.assert_close(x32.double(), x64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(TINY.init().double(), TINY.init(torch.float64), rtol=1e-6, atol=1e-7)
    assert TINY.init().numel() == TINY.n_params == 7 * 5 + 2 * 7 + 1


def test_reference_local_sgd_with_period_one_is_sync():
    training = sync.Training(n_steps=13, batch_size=5, step_size=0.3)
    a = sync.reference_sgd(TINY, training, 3, sync.Regime("sync"))
    b = sync.reference_sgd(TINY, training, 3, sync.Regime("local", 1))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    c = sync.reference_sgd(TINY, training, 3, sync.Regime("local", 4))
    assert (a - c).abs().max() > 1e-6  # a longer period is a different algorithm


# ----------------------------------------------------------------------------- processes


def test_all_reduce_average_equals_single_process_mean():
    shape = (37, 3)
    out = processes.launch(_average_worker, 3, (shape,), timeout=120)
    expected = torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(100 + r),
                                        dtype=torch.float64) for r in range(3)]).mean(0)
    for x, count, nbytes, arrivals, departures in out:
        torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)
        assert count == 1 and nbytes == 37 * 3 * 8
        assert len(arrivals) == len(departures) == 1 and departures[0] >= arrivals[0]
    ranks = [{"arrivals": a, "departures": d} for *_, a, d in out]
    waits = sync.RunResult(sync.Regime("sync"), 3, ranks).waits()
    assert waits[1] == pytest.approx(0.0, abs=1e-9)  # the late one waits for no one
    assert waits[0] > 0.15 and waits[2] > 0.15  # the others waited out its 0.2 s
    assert processes.live_workers() == []


REPLAY = sync.Training(n_steps=20, batch_size=6, step_size=0.2, log_every=5)
REPLAYED = [sync.Regime("sync"), sync.Regime("local", 3),
            sync.Regime("local", 3, straggler_rank=1, straggler_delay=0.001)]
MIXED = sync.Training(n_steps=24, batch_size=6, step_size=0.2, log_every=8)
HOGWILD = sync.Training(n_steps=60, batch_size=8, step_size=0.2, log_every=20)
MIXED_JOBS = [sync.Job(TINY, HOGWILD, sync.Regime("hogwild"), 0),
              sync.Job(TINY, MIXED, sync.Regime("alone"), 3),
              sync.Job(TINY, MIXED, sync.Regime("sync", jitter_prob=0.5, jitter_delay=0.002), 3),
              sync.Job(TINY, MIXED, sync.Regime("sync", straggler_rank=1, straggler_delay=0.003), 3),
              sync.Job(TINY, MIXED, sync.Regime("hogwild", straggler_rank=1, straggler_delay=0.003), 3)]


@pytest.fixture(scope="module")
def launched():
    """The replay and mixed-regime runs below, in one launch of two worker processes (a launch
    costs seconds: every worker imports torch)."""
    runs = sync.run_jobs([sync.Job(TINY, REPLAY, r, 5) for r in REPLAYED] + MIXED_JOBS, 2, timeout=120)
    return runs[:len(REPLAYED)], runs[len(REPLAYED) + 1:], runs[len(REPLAYED)]


def test_distributed_sgd_equals_one_process_replay(launched):
    training, regimes, runs = REPLAY, REPLAYED, launched[0]
    for run, regime in zip(runs, regimes):
        ref = sync.reference_sgd(TINY, training, 2, regime, seed=5)
        torch.testing.assert_close(torch.from_numpy(run.theta).double(), ref, rtol=1e-4, atol=1e-5)
        x, y = TINY.data(torch.float64)
        assert run.final_loss == pytest.approx(float(TINY.loss(ref, x, y)), rel=1e-4)
    sync_run, local_run, slowed = runs
    assert sync_run.sync_count == 20 and local_run.sync_count == math.ceil(20 / 3) == slowed.sync_count
    assert local_run.bytes == 7 * TINY.n_params * 4
    assert [s for s, _, _ in sync_run.log] == [0, 5, 10, 15, 20]
    assert slowed.ranks[1]["straggler"] and not slowed.ranks[0]["straggler"]
    assert slowed.slowest_step_s >= 0.001
    assert processes.live_workers() == []


def test_hogwild_learns_without_collectives(launched):
    run = launched[2]
    x, y = TINY.data()
    assert run.log[0][0] == 0 and run.log[0][2] == pytest.approx(float(TINY.loss(TINY.init(), x, y)))
    assert run.final_loss < 0.9 * run.log[0][2]
    assert run.sync_count == 0 and run.bytes == 0
    assert processes.live_workers() == []


@pytest.mark.slow
def test_torchrun_entry_point():
    """The chapter's "across machines" command, on one machine (--standalone rendezvous)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "dynbook.sync.regimes", "--regime", "local", "--period", "4", "--steps", "10", "--hidden", "8",
           "--timeout", "30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["sync_count"] == math.ceil(10 / 4)
    assert summary["backend"] in ("gloo", "nccl")


# ----------------------------------------------------------------------------- timing from stamps


def _rank(start, end, steps, *, arrivals=(), departures=(), compute=0.0, delay=0.0, eval_s=0.0):
    return {"start_t": start, "end_t": end, "steps": steps, "arrivals": list(arrivals),
            "departures": list(departures), "compute_s": compute, "delay_s": delay, "eval_s": eval_s,
            "sync_count": len(arrivals), "bytes": 0, "joules": None}


def test_throughput_is_total_updates_over_the_run_wall_time():
    """Ranks that finish at different times: the old metric (each rank's steps over its own
    wall time, summed) says 100/1 + 100/10 = 110 updates/s; all updates ÷ the run's wall time
    is 200/10 = 20, and a persistently slow rank (10 s for 100 steps) bounds it at 2 × 10 = 20."""
    r = sync.RunResult(sync.Regime("hogwild"), 2, [_rank(5.0, 6.0, 100, compute=1.0),
                                                   _rank(5.0, 15.0, 100, compute=2.0, delay=8.0)])
    assert r.wall_s == pytest.approx(10.0)
    assert r.updates_per_s == pytest.approx(20.0)
    assert r.slowest_step_s == pytest.approx(0.1)
    assert r.bound_ratio == pytest.approx(1.0)
    # a shared budget lets the fast rank take more updates: 190 + 10 in 1 s beats the bound
    fast = sync.RunResult(sync.Regime("hogwild"), 2, [_rank(0.0, 1.0, 190, compute=0.95),
                                                      _rank(0.0, 1.0, 10, compute=0.2, delay=0.8)])
    assert fast.updates_per_s == pytest.approx(200.0) and fast.bound_ratio == pytest.approx(10.0)


def test_waits_and_transfers_are_inferred_from_arrival_stamps():
    ranks = [_rank(0.0, 2.0, 2, arrivals=[0.0, 1.0], departures=[0.6, 1.3]),
             _rank(0.0, 2.0, 2, arrivals=[0.5, 1.2], departures=[0.6, 1.3])]
    r = sync.RunResult(sync.Regime("sync"), 2, ranks)
    np.testing.assert_allclose(r.waits(), [0.5 + 0.2, 0.0])
    np.testing.assert_allclose(r.transfers(), [0.1 + 0.1, 0.1 + 0.1])
    np.testing.assert_allclose(r.collective_times(), [0.1, 0.1])
    assert r.collective_share == pytest.approx(np.mean([(0.7 + 0.2) / 2, 0.2 / 2]))
    assert r.wait_share == pytest.approx(0.7 / 2 / 2)


def test_idle_per_delay():
    # a persistently slow rank: it sleeps 1 s in total, the other waits that 1 s out → exactly 1
    slow = [_rank(0, 2, 4, arrivals=[0.25, 0.75, 1.25, 1.75], departures=[0.5, 1.0, 1.5, 2.0]),
            _rank(0, 2, 4, arrivals=[0.5, 1.0, 1.5, 2.0], departures=[0.5, 1.0, 1.5, 2.0], delay=1.0)]
    assert sync.RunResult(sync.Regime("sync"), 2, slow).idle_per_delay == pytest.approx(1.0)
    # delays that alternate between ranks under a barrier: each step someone sleeps 0.25 s and the
    # other waits it out; per rank 0.5 s slept and 0.5 s waited → idle 1.0 per rank ÷ 0.5 = 2
    barrier = [0.25, 0.5, 0.75, 1.0]  # rank 0 sleeps in steps 1 and 3, rank 1 in steps 2 and 4
    alt = [_rank(0, 1, 4, arrivals=[0.25, 0.25, 0.75, 0.75], departures=barrier, delay=0.5),
           _rank(0, 1, 4, arrivals=[0.0, 0.5, 0.5, 1.0], departures=barrier, delay=0.5)]
    assert sync.RunResult(sync.Regime("sync"), 2, alt).idle_per_delay == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no delay"):
        sync.RunResult(sync.Regime("sync"), 2, [_rank(0, 1, 1), _rank(0, 1, 1)]).idle_per_delay


def test_expected_idle_per_delay_matches_a_monte_carlo_of_the_delays():
    assert sync.expected_idle_per_delay(0.25, 2, 1, 100) == pytest.approx(1.75)  # (1 − ¾²) / ¼
    rng = np.random.default_rng(0)
    for period, n_steps, workers in [(16, 160, 2), (5, 23, 3), (160, 160, 2)]:
        sleeps = rng.random((8000, workers, n_steps)) < 0.25  # MC error ~0.3 %
        rounds = [sleeps[:, :, i:i + period].sum(-1).max(-1) for i in range(0, n_steps, period)]
        mc = np.sum(rounds, axis=0).mean() / (n_steps * 0.25)
        assert sync.expected_idle_per_delay(0.25, workers, period, n_steps) == pytest.approx(mc, rel=0.01)
    assert sync.expected_idle_per_delay(0.25, 2, 16, 160) < sync.expected_idle_per_delay(0.25, 2, 1, 160)


def test_fit_alpha_beta():
    s = np.array([1e3, 1e4, 1e5, 1e6])
    alpha, beta = sync.fit_alpha_beta(s, 20e-6 + s / 2e9)
    assert alpha == pytest.approx(20e-6, rel=1e-6) and beta == pytest.approx(0.5e-9, rel=1e-6)
    with pytest.raises(ValueError, match="distinct"):
        sync.fit_alpha_beta([8, 8], [1.0, 2.0])


def test_test_floor_is_the_teachers_own_test_loss():
    pb = sync.Problem(n_features=4, hidden=5, teacher_hidden=2, n_samples=301, noise=0.3, seed=7)
    teacher, th = pb.teacher()
    x, y = pb.test_data(torch.float64)
    own = 0.5 * float((pb.forward(teacher, x, th) - y).pow(2).mean())
    assert pb.test_floor() == pytest.approx(own, rel=1e-12)
    assert pb.test_floor() == pytest.approx(pb.noise_floor, rel=0.2)
    xtr, _ = pb.data(torch.float64)
    assert not torch.equal(x, xtr)  # fresh samples, never trained on


def test_sorted_shards_split_along_the_teacher():
    pb = sync.Problem(n_features=4, hidden=5, n_samples=203, sharding="sorted", seed=2)
    fieldv = pb.teacher_field(pb.data(torch.float64)[0])
    shards = []
    for rank in range(2):
        draw = sync.batch_indices(pb, rank, 2, seed=0)
        shards.append(torch.unique(torch.cat([draw(64) for _ in range(60)])))
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    assert fieldv[shards[0]].max() < fieldv[shards[1]].min()
    with pytest.raises(ValueError, match="sharding='blocks'"):
        sync.Problem(sharding="blocks")


def test_jitter_alone_and_hogwild_budget_on_worker_processes(launched):
    alone, jittered, slowed, hog = launched[1]
    ref = sync.reference_sgd(TINY, MIXED, 2, sync.Regime("alone"), seed=3)
    assert relative_error(alone.theta, ref) < 1e-4 and alone.sync_count == alone.expected_sync_count == 0
    assert all(k["delay_s"] > 0 for k in jittered.ranks)  # every worker sleeps sometimes
    assert jittered.idle_per_delay >= 1.0  # a barrier cannot idle less than the largest sleep
    assert slowed.ranks[1]["delay_s"] >= 24 * 0.003 and slowed.ranks[0]["delay_s"] == 0
    assert slowed.bound_ratio <= 1.0 + 1e-9
    assert hog.total_updates == 2 * 24 and hog.sync_count == 0
    assert hog.ranks[0]["steps"] > hog.ranks[1]["steps"]  # the fast worker took more of the budget
    assert processes.live_workers() == []


# ----------------------------------------------------------------------------- the chapter's study


@pytest.mark.slow
def test_sync_study_runs_every_regime_and_its_analyses_follow_the_runs():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = sync.sync_study(2, seeds=[0], jitter_seeds=[5], sizes=[8, 4], period=4, n_steps=16,
                            delay_s=0.002, jitter_steps=8, seed=1, timeout=120)
    assert processes.live_workers() == []
    assert study.sizes == [4, 8] and study.backend == "gloo" and len(study.runs) == 17
    k = study.checks()  # the chapter's K1–K4, from the same runs
    assert k["sync_error"] < 2e-4 and k["h1_error"] < 1e-5 and k["local_error"] < 2e-4
    assert k["counts_ok"] and k["n_counted"] == 16  # every run but the Hogwild one
    r = study.runs
    sw = study.share_sweep()
    assert sw["share"][8] == [r[("sweep", 0, 8, "sync")].collective_share]
    assert sw["growth"] == [sw["share"][8][0] - sw["share"][4][0]]
    assert all(0 <= v <= 1 for v in sw["share"][4] + sw["alone"][8])
    assert sw["alone"][4] == [0.0]  # workers alone wait for no one
    assert sw["params"] == {4: sync.Problem(hidden=4).n_params, 8: sync.Problem(hidden=8).n_params}
    loc = study.local_sgd()
    excess = {key: r[("local", 0, *key)].excess_test_loss
              for key in (("iid", "sync"), ("iid", "local_h4"), ("sorted", "alone"))}
    assert loc["iid"] == [excess[("iid", "local_h4")] / excess[("iid", "sync")]]
    assert loc["alone"] == [excess[("sorted", "alone")] / excess[("iid", "sync")]]
    assert loc["sync_reduction"] == 16 / 4
    dl = study.delays()
    assert set(dl["idle"]) == {0, 1, 4, 8} and min(dl["idle"][0]) >= 1.0
    assert dl["expected"][0] == sync.expected_idle_per_delay(0.25, 2, 1, 8)
    assert max(dl["bound"]["sync"]) <= 1 + 1e-9 and 0 < dl["slow_share"][0] < 0.5
    ratios, reason = study.energy_ratios()
    assert (ratios is None) == bool(reason)
    names = [m["name"] for m in study.metrics() + sw["metrics"] + loc["metrics"] + dl["metrics"]]
    assert len(names) == len(set(names)) and {"n_runs", "share_h8", "excess_ratio_local",
                                              "idle_per_delay_h0", "delay_ms"} <= set(names)
    assert len(sw["table"][1]) == 2 and len(dl["table"][1]) == 4
    fig, axes = plt.subplots(2, 3)
    sync.plot_share(axes[0, :2], study, sw)
    sync.plot_losses(axes[0, 2], study)
    sync.plot_delays(axes[1, :2], study, dl)
    assert all(ax.has_data() for ax in axes.flat[:5])
    plt.close(fig)
