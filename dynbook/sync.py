"""Synchronous, local-SGD and asynchronous (Hogwild) training on real ``torch.distributed``
processes, instrumented for what synchronization costs.

One small problem (teacher–student regression with a one-hidden-layer MLP, parameters held
in one flat vector ``theta`` so that a gradient, an average or a shared-memory update is one
tensor) is trained by ``P`` worker processes in three regimes:

* ``sync``    – the gradient is averaged by an all-reduce every step (data-parallel SGD);
* ``local``   – every worker takes ``period`` (H) SGD steps on its own shard, then the
  parameters are averaged by an all-reduce (local SGD / periodic averaging);
* ``hogwild`` – every worker reads and writes one shared-memory ``theta`` without locks
  (Recht et al. 2011); no collective at all while training.

Each collective is instrumented (:class:`Collectives`): the call count (``sync_count``), the
bytes handed to it, the time spent waiting for the slowest peer (a barrier just before the
all-reduce) and the time in the all-reduce itself. A ring all-reduce moves about
``2 (P - 1) / P`` times the tensor's bytes in and out of each worker; the counted figure is the
tensor's bytes (:func:`ring_bytes` converts).

Processes: :func:`dynbook.processes.launch` spawns the workers (start method ``spawn``: safe inside a Jupyter
kernel, so worker functions live in this module), rendezvous through a TCP store that the
parent hosts on a free localhost port, with timeouts on the rendezvous and every collective;
the parent collects results from a queue under a deadline and, in a ``finally`` block,
terminates and then kills whatever is still alive. Workers also exit when their parent dies.

Across machines the same worker code runs under ``torchrun`` (see :func:`main`)::

    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m dynbook.sync --regime local --period 8
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Sequence

import numpy as np
import torch

from .processes import BACKENDS, check_positive, launch, resolve_backend

REGIMES = ("sync", "local", "hogwild")


# ----------------------------------------------------------------------------- the problem


@dataclass(frozen=True)
class Problem:
    """Teacher–student regression ``y = f(theta_T, x) + noise * eps`` with
    ``f(theta, x) = tanh(x W1^T + b1) w2 + b2``, ``x: (n, d)``, hidden width ``h``.

    ``theta`` packs ``W1 (h, d), b1 (h), w2 (h), b2 ()`` into one vector of ``n_params``.
    The loss is ``0.5 * mean((f - y)^2)``; its floor is about ``noise^2 / 2``.
    """

    n_features: int = 16
    hidden: int = 32
    n_samples: int = 4096
    noise: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("n_features", "hidden", "n_samples"):
            check_positive(name, getattr(self, name))
        check_positive("noise", self.noise, allow_zero=True)

    @property
    def n_params(self) -> int:
        return self.hidden * self.n_features + 2 * self.hidden + 1

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``theta: (n_params,)``, ``x: (n, d)`` → ``(n,)``."""
        h, d = self.hidden, self.n_features
        w1 = theta[: h * d].view(h, d)
        b1 = theta[h * d: h * d + h]
        w2 = theta[h * d + h: h * d + 2 * h]
        return torch.tanh(x @ w1.T + b1) @ w2 + theta[-1]

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.forward(theta, x) - y).pow(2).mean()

    def _random_theta(self, gen: torch.Generator, dtype) -> torch.Tensor:
        h, d = self.hidden, self.n_features
        return torch.cat([torch.randn(h * d, generator=gen, dtype=dtype) / d ** 0.5,
                          torch.zeros(h, dtype=dtype),
                          torch.randn(h, generator=gen, dtype=dtype) / h ** 0.5,
                          torch.zeros(1, dtype=dtype)])

    def data(self, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole data set ``(x: (n_samples, d), y: (n_samples,))``, same in every process."""
        gen = torch.Generator().manual_seed(_derive_seed(self.seed, 0))
        teacher = self._random_theta(gen, torch.float64) * 2.0  # a teacher that is not linear
        x = torch.randn(self.n_samples, self.n_features, generator=gen, dtype=torch.float64)
        y = self.forward(teacher, x) + self.noise * torch.randn(self.n_samples, generator=gen,
                                                                dtype=torch.float64)
        return x.to(dtype), y.to(dtype)

    def init(self, dtype=torch.float32) -> torch.Tensor:
        """The initial ``theta`` (the same on every worker)."""
        gen = torch.Generator().manual_seed(_derive_seed(self.seed, 1))
        return self._random_theta(gen, torch.float64).to(dtype)  # randn's stream depends on dtype


def _derive_seed(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


@dataclass(frozen=True)
class Training:
    """SGD settings shared by all regimes: ``n_steps`` steps per worker, mini-batch
    ``batch_size`` per worker, ``step_size`` η, the loss logged every ``log_every`` steps."""

    n_steps: int = 300
    batch_size: int = 32
    step_size: float = 0.1
    log_every: int = 20

    def __post_init__(self):
        for name in ("n_steps", "batch_size", "log_every"):
            check_positive(name, getattr(self, name))
        check_positive("step_size", self.step_size)


@dataclass(frozen=True)
class Regime:
    """How workers coordinate. ``period`` is H for ``local`` (1 for the others); a
    ``straggler_rank`` sleeps ``straggler_delay`` seconds in every step (an injected slow worker)."""

    kind: str = "sync"
    period: int = 1
    straggler_rank: int | None = None
    straggler_delay: float = 0.0

    def __post_init__(self):
        if self.kind not in REGIMES:
            raise ValueError(f"kind={self.kind!r} is not allowed: expected one of {REGIMES}")
        check_positive("period", self.period)
        if self.kind != "local" and self.period != 1:
            raise ValueError(f"period={self.period!r} is not allowed for kind={self.kind!r}: expected 1")
        check_positive("straggler_delay", self.straggler_delay, allow_zero=True)

    @property
    def name(self) -> str:
        base = f"local_h{self.period}" if self.kind == "local" else self.kind
        return base + ("_straggler" if self.straggler_delay > 0 and self.straggler_rank is not None else "")


def batch_indices(problem: Problem, rank: int, world_size: int, seed: int):
    """Generator of this rank's mini-batch indices into the full data set: rank ``r`` owns the
    samples ``r, r + P, r + 2P, ...`` and draws with replacement from its own stream."""
    shard = torch.arange(rank, problem.n_samples, world_size)
    gen = torch.Generator().manual_seed(_derive_seed(seed, 2, rank))

    def draw(batch_size: int) -> torch.Tensor:
        return shard[torch.randint(len(shard), (batch_size,), generator=gen)]

    return draw


def ring_bytes(tensor_bytes: float, world_size: int) -> float:
    """Bytes each worker sends (and receives) in a ring all-reduce of ``tensor_bytes``."""
    return 2 * (world_size - 1) / world_size * tensor_bytes


# ----------------------------------------------------------------------------- instrumentation


class Collectives:
    """Averaging all-reduce that counts what synchronization costs on this worker.

    ``wait_s`` is the time spent in a barrier just before each all-reduce (waiting for the
    slowest peer), ``transfer_s`` the time in the all-reduce after everyone has arrived.
    """

    def __init__(self, world_size: int, device: torch.device, *, split_wait: bool = True):
        self.world_size, self.device, self.split_wait = world_size, device, split_wait
        self.sync_count = 0
        self.bytes = 0
        self.wait_s = 0.0
        self.transfer_s = 0.0

    def _sync_device(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def average_(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        self._sync_device()
        t0 = time.perf_counter()
        if self.split_wait:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()
        t1 = time.perf_counter()
        dist.all_reduce(tensor)  # SUM: ReduceOp.AVG exists for NCCL only
        tensor.div_(self.world_size)
        self._sync_device()
        t2 = time.perf_counter()
        self.sync_count += 1
        self.bytes += tensor.numel() * tensor.element_size()
        self.wait_s += t1 - t0
        self.transfer_s += t2 - t1
        return tensor


def _energy_meter(device: torch.device):
    from .energy import EnergyMeter

    if device.type == "cuda":
        return EnergyMeter("cuda", idle_seconds=0, gpu_index=device.index or 0)
    return EnergyMeter("cpu", idle_seconds=0)


# ----------------------------------------------------------------------------- workers


def _sgd_step(problem, theta, x, y, idx):
    """Mini-batch gradient of the loss at ``theta`` (``theta`` is left without grad)."""
    theta.requires_grad_(True)
    (grad,) = torch.autograd.grad(problem.loss(theta, x[idx], y[idx]), theta)
    theta.requires_grad_(False)
    return grad


def run_regime(rank: int, world_size: int, problem: Problem, training: Training, regime: Regime,
               device: torch.device, *, seed: int = 0, meter_energy: bool = True) -> dict:
    """Train with ``sync`` or ``local`` on this rank inside an initialised process group.

    Returns this rank's counters; rank 0 also returns the loss log ``[(step, seconds, loss)]``
    (seconds exclude loss evaluation) and the final ``theta``.
    """
    import torch.distributed as dist

    if regime.kind == "hogwild":
        raise ValueError("kind='hogwild' is not allowed in run_regime: use train_hogwild")
    x, y = (t.to(device) for t in problem.data())
    theta = problem.init().to(device)
    draw = batch_indices(problem, rank, world_size, seed)
    comm = Collectives(world_size, device)
    slow = regime.straggler_rank == rank and regime.straggler_delay > 0
    meter = _energy_meter(device) if meter_energy and (rank == 0 or device.type == "cuda") else None
    log, compute_s, eval_s = [], 0.0, 0.0

    def evaluate(step):
        nonlocal eval_s
        t_e = time.perf_counter()
        elapsed = t_e - t0 - eval_s  # the clock excludes loss evaluation
        # every rank evaluates (same cost everywhere) so logging makes no one wait
        with torch.no_grad():
            value = float(problem.loss(theta, x, y))
        eval_s += time.perf_counter() - t_e
        log.append((step, elapsed, value))

    dist.barrier()
    if meter is not None:
        meter.__enter__()
    t0 = time.perf_counter()
    evaluate(0)
    for step in range(1, training.n_steps + 1):
        tc = time.perf_counter()
        grad = _sgd_step(problem, theta, x, y, draw(training.batch_size).to(device))
        if slow:
            time.sleep(regime.straggler_delay)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compute_s += time.perf_counter() - tc
        if regime.kind == "sync":
            theta.sub_(training.step_size * comm.average_(grad))
            synced = True
        else:
            theta.sub_(training.step_size * grad)
            synced = step % regime.period == 0 or step == training.n_steps
            if synced:
                comm.average_(theta)
        if synced and (step % training.log_every == 0 or step == training.n_steps
                       or (regime.kind == "local" and regime.period >= training.log_every)):
            evaluate(step)
    wall = time.perf_counter() - t0 - eval_s
    joules = None
    if meter is not None:
        meter.__exit__(None, None, None)
        joules = meter.reading.joules
        meter.close()
    out = {"rank": rank, "regime": regime.name, "kind": regime.kind, "period": regime.period,
           "steps": training.n_steps, "wall_s": wall, "compute_s": compute_s,
           "wait_s": comm.wait_s, "transfer_s": comm.transfer_s, "sync_count": comm.sync_count,
           "bytes": comm.bytes, "joules": joules, "straggler": slow,
           "energy_reason": "" if meter is None else meter.reason}
    if rank == 0:
        out["log"] = log
        out["final_loss"] = log[-1][2]
        out["theta"] = theta.cpu().numpy()
    return out


def _suite_worker(rank, world_size, problem, training, regimes, device_kind, seed):
    device = torch.device("cuda", rank) if device_kind == "cuda" else torch.device("cpu")
    return [run_regime(rank, world_size, problem, training, r, device, seed=seed) for r in regimes]


def _hogwild_worker(rank, world_size, problem, training, regimes, shared_thetas, seed):
    """Lock-free SGD on each shared-memory ``theta`` in turn (one per regime). The process
    group serves only for a start and an end barrier around each run, outside the clock."""
    import torch.distributed as dist

    x, y = problem.data()
    # P workers each apply their own gradient: η/P makes one round of P updates move like one
    # synchronous step (which applies the average of P gradients with η)
    step_size = training.step_size / world_size
    meter = _energy_meter(torch.device("cpu")) if rank == 0 else None
    outs = []
    for regime, theta in zip(regimes, shared_thetas):
        draw = batch_indices(problem, rank, world_size, seed)
        slow = regime.straggler_rank == rank and regime.straggler_delay > 0
        snapshots, compute_s = [(0, 0.0, theta.clone())], 0.0  # before anyone has moved it
        dist.barrier()
        if meter is not None:
            meter.__enter__()
        t0 = time.perf_counter()
        for step in range(1, training.n_steps + 1):
            tc = time.perf_counter()
            grad = _sgd_step(problem, theta, x, y, draw(training.batch_size))
            if slow:
                time.sleep(regime.straggler_delay)
            theta.sub_(step_size * grad)  # no lock: the other workers read and write meanwhile
            compute_s += time.perf_counter() - tc
            if rank == 0 and (step % training.log_every == 0 or step == training.n_steps):
                snapshots.append((step, time.perf_counter() - t0, theta.clone()))
        wall = time.perf_counter() - t0
        dist.barrier()  # rank 0's energy reading covers the run until the last worker is done
        joules = None
        if meter is not None:
            meter.__exit__(None, None, None)
            joules = meter.reading.joules
        out = {"rank": rank, "regime": regime.name, "kind": "hogwild", "period": 1,
               "steps": training.n_steps, "wall_s": wall, "compute_s": compute_s, "wait_s": 0.0,
               "transfer_s": 0.0, "sync_count": 0, "bytes": 0, "joules": joules, "straggler": slow,
               "energy_reason": "" if meter is None else meter.reason}
        if rank == 0:
            out["snapshots"] = [(s, t, th.numpy()) for s, t, th in snapshots]
        outs.append(out)
    if meter is not None:
        meter.close()
    return outs


# ----------------------------------------------------------------------------- public runs


@dataclass
class RunResult:
    """One regime's run: per-rank counters, the loss log (rank 0) and the final ``theta``."""

    regime: Regime
    world_size: int
    ranks: list = field(default_factory=list)
    log: list = field(default_factory=list)  # [(step per worker, seconds, loss)]
    theta: np.ndarray | None = None

    @property
    def final_loss(self) -> float:
        return self.log[-1][2]

    @property
    def sync_count(self) -> int:
        return self.ranks[0]["sync_count"]

    @property
    def bytes(self) -> int:
        """Tensor bytes passed to collectives by one worker (ring traffic: :func:`ring_bytes`)."""
        return self.ranks[0]["bytes"]

    @property
    def wall_s(self) -> float:
        return max(r["wall_s"] for r in self.ranks)

    @property
    def wait_s(self) -> float:
        """Barrier waiting time of the worker that waited most."""
        return max(r["wait_s"] for r in self.ranks)

    @property
    def transfer_s(self) -> float:
        return max(r["transfer_s"] for r in self.ranks)

    @property
    def updates_per_s(self) -> float:
        """Sum over workers of each worker's own SGD-step rate (what the system delivers)."""
        return sum(r["steps"] / r["wall_s"] for r in self.ranks)

    @property
    def slowest_step_s(self) -> float:
        """Per-step compute time (injected delay included) of the slowest worker."""
        return max(r["compute_s"] / r["steps"] for r in self.ranks)

    @property
    def joules(self) -> float | None:
        js = [r["joules"] for r in self.ranks if r["joules"] is not None]
        return sum(js) if js else None


def train_distributed(problem: Problem, training: Training, regimes: Sequence[Regime],
                      world_size: int = 2, *, device: str = "cpu", backend: str = "auto",
                      seed: int = 0, timeout: float = 300.0) -> list[RunResult]:
    """Run the ``sync``/``local`` ``regimes`` one after another in one launch of ``world_size``
    processes (one process start for all of them); returns one :class:`RunResult` each."""
    for r in regimes:
        if r.kind == "hogwild":
            raise ValueError("kind='hogwild' is not allowed in train_distributed: use train_hogwild")
        if r.straggler_rank is not None and not 0 <= r.straggler_rank < world_size:
            raise ValueError(f"straggler_rank={r.straggler_rank!r} is not allowed: expected 0..{world_size - 1}")
    backend = resolve_backend(backend, device, world_size)
    device_kind = "cuda" if backend == "nccl" else "cpu"
    per_rank = launch(_suite_worker, world_size, (problem, training, list(regimes), device_kind, seed),
                      backend=backend, timeout=timeout)
    out = []
    for i, regime in enumerate(regimes):
        ranks = [per_rank[r][i] for r in range(world_size)]
        out.append(RunResult(regime, world_size, ranks, ranks[0]["log"], ranks[0]["theta"]))
    return out


def train_hogwild(problem: Problem, training: Training, regimes: Sequence[Regime] = (Regime("hogwild"),),
                  world_size: int = 2, *, seed: int = 0, timeout: float = 300.0) -> list[RunResult]:
    """Hogwild: ``world_size`` processes update one shared-memory ``theta`` without locks,
    once per regime (one process start for all). The loss log comes from snapshots rank 0
    takes (evaluated here, after the run); its steps are rank 0's steps. Not reproducible
    bit for bit: the interleaving of reads and writes is the point."""
    for r in regimes:
        if r.kind != "hogwild":
            raise ValueError(f"regime kind={r.kind!r} is not allowed in train_hogwild: expected 'hogwild'")
        if r.straggler_rank is not None and not 0 <= r.straggler_rank < world_size:
            raise ValueError(f"straggler_rank={r.straggler_rank!r} is not allowed: expected 0..{world_size - 1}")
    thetas = [problem.init().share_memory_() for _ in regimes]
    per_rank = launch(_hogwild_worker, world_size, (problem, training, list(regimes), thetas, seed),
                      backend="gloo", timeout=timeout)
    x, y = problem.data()
    out = []
    for i, (regime, theta) in enumerate(zip(regimes, thetas)):
        ranks = [per_rank[r][i] for r in range(world_size)]
        with torch.no_grad():
            log = [(s, t, float(problem.loss(torch.from_numpy(th), x, y)))
                   for s, t, th in ranks[0].pop("snapshots")]
            log.append((training.n_steps, max(r["wall_s"] for r in ranks), float(problem.loss(theta, x, y))))
        out.append(RunResult(regime, world_size, ranks, log, theta.numpy().copy()))
    return out


def reference_sgd(problem: Problem, training: Training, world_size: int,
                  regime: Regime = Regime("sync"), *, seed: int = 0,
                  dtype=torch.float64) -> torch.Tensor:
    """Data-parallel SGD computed in one process, each rank's batch stream replayed: ``sync``
    averages the ``world_size`` gradients every step, ``local`` averages the parameters every
    ``period`` steps (and after the last). What the all-reduce versions must reproduce."""
    if regime.kind not in ("sync", "local"):
        raise ValueError(f"regime.kind={regime.kind!r} is not allowed: expected 'sync' or 'local'")
    x, y = problem.data(dtype)
    draws = [batch_indices(problem, r, world_size, seed) for r in range(world_size)]
    thetas = [problem.init(dtype) for _ in range(world_size)]
    for step in range(1, training.n_steps + 1):
        grads = [_sgd_step(problem, th, x, y, d(training.batch_size)) for th, d in zip(thetas, draws)]
        if regime.kind == "sync":
            thetas = [th - training.step_size * torch.stack(grads).mean(0) for th in thetas]
        else:
            thetas = [th - training.step_size * g for th, g in zip(thetas, grads)]
            if step % regime.period == 0 or step == training.n_steps:
                thetas = [torch.stack(thetas).mean(0)] * world_size
    return thetas[0]


# ----------------------------------------------------------------------------- torchrun


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Entry point for ``torchrun ... -m dynbook.sync``: the same worker code as
    :func:`train_distributed`, with the rendezvous from torchrun's environment (``env://``).
    Rank 0 prints one JSON line with the run's counters and final loss."""
    import torch.distributed as dist

    parser = argparse.ArgumentParser(prog="python -m dynbook.sync", description=main.__doc__)
    parser.add_argument("--regime", choices=("sync", "local"), default="sync")
    parser.add_argument("--period", type=int, default=1)
    parser.add_argument("--steps", type=int, default=Training.n_steps)
    parser.add_argument("--batch-size", type=int, default=Training.batch_size)
    parser.add_argument("--step-size", type=float, default=Training.step_size)
    parser.add_argument("--hidden", type=int, default=Problem.hidden)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--timeout", type=float, default=60.0)
    a = parser.parse_args(argv)
    torch.set_num_threads(1)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = a.backend in ("auto", "nccl") and torch.cuda.is_available()
    backend = a.backend if a.backend != "auto" else ("nccl" if wants_cuda else "gloo")
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=a.timeout))
    try:
        rank = dist.get_rank()
        regime = Regime(a.regime, a.period if a.regime == "local" else 1)
        problem = Problem(hidden=a.hidden, seed=a.seed)
        training = Training(a.steps, a.batch_size, a.step_size)
        res = run_regime(rank, world_size, problem, training, regime, device, seed=a.seed)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        summary = {k: v for k, v in res.items() if k not in ("log", "theta")}
        summary.update(world_size=world_size, backend=backend, problem=asdict(problem),
                       training=asdict(training))
        print(json.dumps(summary))
        return summary
    return None


if __name__ == "__main__":
    main()
