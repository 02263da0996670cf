"""Start P worker processes with a torch.distributed process group, and always stop them.

:func:`launch` spawns ``world_size`` processes (``torch.multiprocessing``, start method
"spawn", so it works from a Jupyter kernel), gives them a process group on a free localhost
port, returns each rank's result, and on an error, a crash, a hang past ``timeout`` or an
interrupt terminates and then kills every worker: no orphans, no hung test. Workers also exit
when the parent dies. Across machines the same worker functions run under ``torchrun`` (see
``python -m dynbook.sync.regimes --help``).
"""

from __future__ import annotations

import os
import pickle
import queue as queue_mod
import threading
import time
import traceback
from datetime import timedelta
from typing import Callable, Sequence

import torch

from dynbook._checks import one_of, positive, positive_int

BACKENDS = ("auto", "gloo", "nccl")


class WorkerError(RuntimeError):
    """A worker process raised; the message carries its traceback."""


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:  # re-parented: the launcher is gone, do not linger
            os._exit(3)


def _entry(rank, world_size, port, backend, init_timeout, parent_pid, fn, args, results):
    try:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
        torch.set_num_threads(1)  # P processes on few cores: one thread each avoids oversubscription
        if backend is not None:
            import torch.distributed as dist

            timeout = timedelta(seconds=init_timeout)
            store = dist.TCPStore("127.0.0.1", port, world_size, is_master=False, timeout=timeout)
            kwargs = {"device_id": torch.device("cuda", rank)} if backend == "nccl" else {}
            if backend == "nccl":
                torch.cuda.set_device(rank)
            dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                                    timeout=timeout, **kwargs)
        try:
            value = fn(rank, world_size, *args)
        finally:
            if backend is not None:
                dist.destroy_process_group()
        # by value (plain pickle): torch's queue pickler would share tensors through file
        # descriptors that vanish when this process exits before the parent reads them
        results.put(("ok", rank, pickle.dumps(value)))
        code = 0
    except BaseException:  # noqa: BLE001 - report everything, including KeyboardInterrupt
        results.put(("error", rank, traceback.format_exc()))
        code = 1
    # flush the queue, then skip interpreter teardown (seconds of torch clean-up per worker)
    results.close()
    results.join_thread()
    os._exit(code)


def _shutdown(procs, grace: float = 2.0) -> None:
    procs = [p for p in procs if p.pid is not None]  # a start that failed left nothing to stop
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(timeout=grace)


def resolve_backend(backend: str, device: str, world_size: int) -> str:
    """``auto`` → ``nccl`` when ``device == 'cuda'`` and there is one GPU per worker, else ``gloo``."""
    one_of("backend", backend, BACKENDS)
    enough_gpus = device == "cuda" and torch.cuda.is_available() and torch.cuda.device_count() >= world_size
    if backend == "nccl" and not enough_gpus:
        raise ValueError(f"backend='nccl' needs device='cuda' and {world_size} GPUs (one per worker); "
                         f"this machine has {torch.cuda.device_count()}")
    if backend == "auto":
        return "nccl" if enough_gpus else "gloo"
    return backend


_STARTED: list = []  # every worker process launch() started, to prove none outlives it


def live_workers() -> list[int]:
    """PIDs of worker processes started by :func:`launch` that are still alive (should be [])."""
    return [p.pid for p in _STARTED if p.is_alive()]


def launch(fn: Callable, world_size: int, args: Sequence = (), *, backend: str | None = "gloo",
           timeout: float = 120.0, init_timeout: float = 30.0) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes and return
    their results in rank order.

    ``fn`` must be importable (defined in a module, not a notebook). With a ``backend``
    the workers join one process group (rendezvous on a free localhost port; ``init_timeout``
    bounds the rendezvous and every collective); ``backend=None`` starts plain processes.
    Raises :class:`WorkerError` if a worker fails, ``TimeoutError`` after ``timeout`` seconds;
    in every case (also ``KeyboardInterrupt``) all workers are gone when this returns.
    """
    import torch.distributed as dist
    import torch.multiprocessing as mp

    positive_int("world_size", world_size)
    positive("timeout", timeout)
    positive("init_timeout", init_timeout)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    store = port = None
    if backend is not None:
        # the parent hosts the rendezvous store: port 0 lets the OS pick a free port, no race
        store = dist.TCPStore("127.0.0.1", 0, world_size + 1, is_master=True,
                              timeout=timedelta(seconds=init_timeout), wait_for_workers=False)
        port = store.port
    procs = [ctx.Process(target=_entry, daemon=True,
                         args=(rank, world_size, port, backend, init_timeout, os.getpid(), fn,
                               tuple(args), results))
             for rank in range(world_size)]
    values: dict[int, object] = {}
    try:
        for p in procs:
            p.start()
            _STARTED.append(p)
        deadline = time.monotonic() + timeout
        while len(values) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"launch: {world_size - len(values)} of {world_size} workers "
                                   f"gave no result within timeout={timeout} s")
            try:
                status, rank, value = results.get(timeout=min(0.2, remaining))
            except queue_mod.Empty:
                dead = [(i, p.exitcode) for i, p in enumerate(procs)
                        if p.exitcode not in (None, 0) and i not in values]
                if dead:
                    try:  # a failing worker reports before it exits: give its message a moment
                        status, rank, value = results.get(timeout=1.0)
                    except queue_mod.Empty:
                        raise WorkerError(f"workers (rank, exit code) {dead} died without a result") from None
                else:
                    continue
            if status == "error":
                raise WorkerError(f"worker rank {rank} failed:\n{value}")
            values[rank] = pickle.loads(value)
        for p in procs:
            p.join(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        _shutdown(procs)
        results.cancel_join_thread()
        results.close()
        del store
    return [values[r] for r in range(world_size)]
