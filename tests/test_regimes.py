"""dynbook.sync.regimes: worker processes compute what one process computes, counters add up, and
every failure mode (error, crash, hang, a peer that never joins) ends without orphans."""

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

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


def _failing_worker(rank, world_size):
    if rank == 1:
        raise ValueError("boom from rank 1")
    time.sleep(30)  # the healthy peer must be killed, not awaited


def _crashing_worker(rank, world_size):
    if rank == 0:
        os._exit(7)
    time.sleep(30)


def _hanging_worker(rank, world_size):
    time.sleep(60)


def _absent_peer_worker(rank, world_size):
    import torch.distributed as dist

    if rank == 0:
        dist.all_reduce(torch.ones(3))  # rank 1 never joins: gloo's timeout must fire
    return rank


def _pid_worker(rank, world_size):
    return os.getpid()


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
    with pytest.raises(ValueError, match="world_size=0"):
        processes.launch(_pid_worker, 0)
    with pytest.raises(ValueError, match="backend='mpi'"):
        processes.resolve_backend("mpi", "cpu", 2)
    with pytest.raises(ValueError, match="straggler_rank=5"):
        sync.train_distributed(TINY, sync.Training(n_steps=2), [sync.Regime("sync", straggler_rank=5, straggler_delay=0.1)], 2)


def test_backend_resolution_without_gpus():
    assert processes.resolve_backend("auto", "cpu", 2) == "gloo"
    if torch.cuda.device_count() < 64:
        with pytest.raises(ValueError, match="nccl"):
            processes.resolve_backend("nccl", "cuda", 64)


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


def test_distributed_sgd_equals_one_process_replay():
    training = sync.Training(n_steps=20, batch_size=6, step_size=0.2, log_every=5)
    regimes = [sync.Regime("sync"), sync.Regime("local", 3),
               sync.Regime("local", 3, straggler_rank=1, straggler_delay=0.001)]
    runs = sync.train_distributed(TINY, training, regimes, 2, seed=5, timeout=120)
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


def test_hogwild_learns_without_collectives():
    training = sync.Training(n_steps=60, batch_size=8, step_size=0.2, log_every=20)
    (run,) = sync.train_hogwild(TINY, training, world_size=2, timeout=120)
    x, y = TINY.data()
    assert run.log[0][0] == 0 and run.log[0][2] == pytest.approx(float(TINY.loss(TINY.init(), x, y)))
    assert run.final_loss < 0.9 * run.log[0][2]
    assert run.sync_count == 0 and run.bytes == 0
    assert processes.live_workers() == []


def test_worker_error_is_reported_and_peers_are_killed():
    t0 = time.monotonic()
    with pytest.raises(processes.WorkerError, match="boom from rank 1"):
        processes.launch(_failing_worker, 2, timeout=60)
    assert time.monotonic() - t0 < 30
    assert processes.live_workers() == []


def test_worker_crash_without_result_is_reported():
    with pytest.raises(processes.WorkerError, match="7"):
        processes.launch(_crashing_worker, 2, timeout=60)
    assert processes.live_workers() == []


def test_hanging_workers_time_out_and_are_killed():
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="timeout=3"):
        processes.launch(_hanging_worker, 2, backend=None, timeout=3)
    assert time.monotonic() - t0 < 20
    assert processes.live_workers() == []


def test_collective_with_absent_peer_fails_instead_of_hanging():
    t0 = time.monotonic()
    with pytest.raises((processes.WorkerError, TimeoutError)):
        processes.launch(_absent_peer_worker, 2, timeout=40, init_timeout=3)
    assert time.monotonic() - t0 < 40
    assert processes.live_workers() == []


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
        sleeps = rng.random((20000, workers, n_steps)) < 0.25
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


def test_jitter_alone_and_hogwild_budget_on_worker_processes():
    training = sync.Training(n_steps=24, batch_size=6, step_size=0.2, log_every=8)
    jobs = [sync.Job(TINY, training, sync.Regime("alone"), 3),
            sync.Job(TINY, training, sync.Regime("sync", jitter_prob=0.5, jitter_delay=0.002), 3),
            sync.Job(TINY, training, sync.Regime("sync", straggler_rank=1, straggler_delay=0.003), 3),
            sync.Job(TINY, training, sync.Regime("hogwild", straggler_rank=1, straggler_delay=0.003), 3)]
    alone, jittered, slowed, hog = sync.run_jobs(jobs, 2, timeout=120)
    ref = sync.reference_sgd(TINY, training, 2, sync.Regime("alone"), seed=3)
    assert sync.relative_difference(alone.theta, ref) < 1e-4 and alone.sync_count == alone.expected_sync_count == 0
    assert all(k["delay_s"] > 0 for k in jittered.ranks)  # every worker sleeps sometimes
    assert jittered.idle_per_delay >= 1.0  # a barrier cannot idle less than the largest sleep
    assert slowed.ranks[1]["delay_s"] >= 24 * 0.003 and slowed.ranks[0]["delay_s"] == 0
    assert slowed.bound_ratio <= 1.0 + 1e-9
    assert hog.total_updates == 2 * 24 and hog.sync_count == 0
    assert hog.ranks[0]["steps"] > hog.ranks[1]["steps"]  # the fast worker took more of the budget
    assert processes.live_workers() == []


def test_shutdown_skips_a_process_that_never_started():
    """A spawn that fails before start (e.g. run from an unguarded __main__) must surface its
    own error, not an AssertionError from joining a process that never started."""
    import torch.multiprocessing as mp

    never = mp.get_context("spawn").Process(target=time.sleep, args=(1,))
    processes._shutdown([never])
    assert never.pid is None
