"""dynbook.sync: worker processes compute what one process computes, counters add up, and
every failure mode (error, crash, hang, a peer that never joins) ends without orphans."""

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

from dynbook import processes, sync

TINY = sync.Problem(n_features=5, hidden=7, n_samples=203, seed=3)


# ----------------------------------------------------------------------------- workers used below
# (module level: spawned children import them from here)


def _average_worker(rank, world_size, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(100 + rank), dtype=torch.float64)
    comm = sync.Collectives(world_size, torch.device("cpu"))
    comm.average_(x)
    return x, comm.sync_count, comm.bytes, comm.wait_s, comm.transfer_s


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
    for x, count, nbytes, wait, transfer in out:
        torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)
        assert count == 1 and nbytes == 37 * 3 * 8
        assert wait >= 0 and transfer >= 0
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
           "-m", "dynbook.sync", "--regime", "local", "--period", "4", "--steps", "10", "--hidden", "8",
           "--timeout", "30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["sync_count"] == math.ceil(10 / 4)
    assert summary["backend"] in ("gloo", "nccl")
