"""dynbook.sync.processes: workers are started, their results returned in rank order, and every
failure mode (error, crash, hang, a peer that never joins, a start that never happened) ends
with a clear error and without orphans."""

import os
import time

import pytest
import torch

from dynbook.sync import processes

# every test here starts worker processes: in make test, not in make test-fast
pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- workers used below
# (module level: spawned children import them from here)


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


def test_bad_inputs_name_the_parameter():
    with pytest.raises(ValueError, match="world_size=0"):
        processes.launch(_pid_worker, 0)
    with pytest.raises(ValueError, match="backend='mpi'"):
        processes.resolve_backend("mpi", "cpu", 2)
    with pytest.raises(ValueError, match="timeout=0"):
        processes.launch(_pid_worker, 2, timeout=0)


def test_backend_resolution_without_gpus():
    assert processes.resolve_backend("auto", "cpu", 2) == "gloo"
    if torch.cuda.device_count() < 64:
        with pytest.raises(ValueError, match="nccl"):
            processes.resolve_backend("nccl", "cuda", 64)


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
    with pytest.raises(TimeoutError, match="timeout=1"):
        processes.launch(_hanging_worker, 2, backend=None, timeout=1)
    assert time.monotonic() - t0 < 20
    assert processes.live_workers() == []


def test_collective_with_absent_peer_fails_instead_of_hanging():
    t0 = time.monotonic()
    with pytest.raises((processes.WorkerError, TimeoutError)):
        processes.launch(_absent_peer_worker, 2, timeout=40, init_timeout=3)
    assert time.monotonic() - t0 < 40
    assert processes.live_workers() == []


def test_shutdown_skips_a_process_that_never_started():
    """A spawn that fails before start (e.g. run from an unguarded __main__) must surface its
    own error, not an AssertionError from joining a process that never started."""
    import torch.multiprocessing as mp

    never = mp.get_context("spawn").Process(target=time.sleep, args=(1,))
    processes._shutdown([never])
    assert never.pid is None
