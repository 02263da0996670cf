"""Synchronous, local-SGD and asynchronous (Hogwild) training on real ``torch.distributed``
processes, instrumented for what synchronization costs.

One small problem (teacher–student regression with a one-hidden-layer MLP, parameters held
in one flat vector ``theta`` so that a gradient, an average or a shared-memory update is one
tensor) is trained by ``P`` worker processes in three regimes:

* ``sync``    – the gradient is averaged by an all-reduce every step (data-parallel SGD);
* ``local``   – every worker takes ``period`` (H) SGD steps on its own shard, then the
  parameters are averaged by an all-reduce (local SGD / periodic averaging);
* ``hogwild`` – every worker reads and writes one shared-memory ``theta`` without locks
  (Recht et al. 2011); no collective at all while training. The workers share one budget of
  updates (``P × n_steps``): a fast worker takes more of them than a slow one;
* ``alone``   – every worker trains on its own shard and never communicates; the result is
  rank 0's model (the limit of local SGD with no averaging at all).

Instrumentation (:class:`Collectives`) adds no collective of its own: every worker stamps the
moment it *arrives* at each all-reduce and the moment it *leaves* it, on the host's monotonic
clock (``time.perf_counter``, shared by all processes of one Linux host). Afterwards
(:class:`RunResult`) the waiting is inferred from the arrival stamps: a worker that arrives at
``a_p`` waits ``max_q a_q − a_p`` for the last peer, and the all-reduce proper lasts from the
last arrival to the departure. A ring all-reduce moves about ``2 (P - 1) / P`` times the
tensor's bytes in and out of each worker; the counted figure is the tensor's bytes
(:func:`ring_bytes` converts); :func:`fit_alpha_beta` fits the latency–bandwidth model
``t = α + β s`` to all-reduce times against bytes.

Delays are injected (:class:`Regime`): a *persistent* slow worker sleeps a constant time in
every step, and *jitter* makes every worker sleep ``jitter_delay`` with probability
``jitter_prob`` in each step, independently (its own random stream). The slept time is
measured, so :attr:`RunResult.idle_per_delay` can say how much of it a regime turned into
idle time across the workers.

Processes: :func:`dynbook.sync.processes.launch` spawns the workers (start method ``spawn``: safe
inside a Jupyter kernel, so worker functions live in this module), rendezvous through a TCP
store that the parent hosts on a free localhost port, with timeouts on the rendezvous and every
collective; all regimes of :func:`run_jobs` share one launch. Across machines the same worker
code runs under ``torchrun`` (see :func:`main`; the waiting inference then needs synchronised
clocks, which separate hosts do not have)::

    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m dynbook.sync.regimes --regime local --period 8

The synchronization chapter's experiment is one call, :func:`sync_study`: every run it needs
(replay checks, a model-size sweep, local SGD against synchronous SGD, random delays and a
persistently slow worker) in one launch, returned as a :class:`SyncStudy` whose analyses give
the per-seed quantities its claims are decided on, the metrics it records and its tables;
:func:`plot_share`, :func:`plot_losses` and :func:`plot_delays` draw its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Sequence

import numpy as np
import torch

from dynbook._checks import one_of, positive, positive_int, probability
from dynbook.measure.fits import relative_error
from dynbook.sync.processes import BACKENDS, launch, resolve_backend
from dynbook.sync.relaxation import _metric

REGIMES = ("sync", "local", "hogwild", "alone")
SHARDINGS = ("iid", "sorted")


# ----------------------------------------------------------------------------- the problem


@dataclass(frozen=True)
class Problem:
    """Teacher–student regression ``y = f(theta_T, x) + noise * eps`` with
    ``f(theta, x) = tanh(x W1^T + b1) w2 + b2``, ``x: (n, d)``, hidden width ``h``.

    ``theta`` packs ``W1 (h, d), b1 (h), w2 (h), b2 ()`` into one vector of ``n_params``.
    The loss is ``0.5 * mean((f - y)^2)``; on fresh data (:meth:`test_data`) its floor is
    ``noise^2 / 2`` (:attr:`noise_floor`). The teacher has ``teacher_hidden`` units (the
    student's width by default) with weights scaled by ``teacher_scale`` (larger: less linear).
    ``sharding`` says how the samples are split among workers: ``"iid"`` interleaved (every
    shard looks like the whole), ``"sorted"`` contiguous blocks of the samples sorted along
    the teacher's dominant hidden unit (:meth:`teacher_field`): heterogeneous shards, each
    worker sees one side of the teacher's nonlinearity and never the other.
    """

    n_features: int = 16
    hidden: int = 32
    n_samples: int = 4096
    noise: float = 0.1
    seed: int = 0
    teacher_hidden: int | None = None
    teacher_scale: float = 2.0
    sharding: str = "iid"

    def __post_init__(self):
        for name in ("n_features", "hidden", "n_samples"):
            positive_int(name, getattr(self, name))
        positive("noise", self.noise, allow_zero=True)
        positive("teacher_scale", self.teacher_scale)
        if self.teacher_hidden is not None:
            positive_int("teacher_hidden", self.teacher_hidden)
        one_of("sharding", self.sharding, SHARDINGS)

    @property
    def n_params(self) -> int:
        return self.hidden * self.n_features + 2 * self.hidden + 1

    @property
    def noise_floor(self) -> float:
        """Expected loss of the teacher itself on fresh data: ``noise² / 2``."""
        return 0.5 * self.noise ** 2

    def forward(self, theta: torch.Tensor, x: torch.Tensor, hidden: int | None = None) -> torch.Tensor:
        """``theta: (n_params,)``, ``x: (n, d)`` → ``(n,)``."""
        h, d = hidden or self.hidden, self.n_features
        w1 = theta[: h * d].view(h, d)
        b1 = theta[h * d: h * d + h]
        w2 = theta[h * d + h: h * d + 2 * h]
        return torch.tanh(x @ w1.T + b1) @ w2 + theta[-1]

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.forward(theta, x) - y).pow(2).mean()

    def _random_theta(self, gen: torch.Generator, dtype, hidden: int | None = None) -> torch.Tensor:
        h, d = hidden or self.hidden, self.n_features
        return torch.cat([torch.randn(h * d, generator=gen, dtype=dtype) / d ** 0.5,
                          torch.zeros(h, dtype=dtype),
                          torch.randn(h, generator=gen, dtype=dtype) / h ** 0.5,
                          torch.zeros(1, dtype=dtype)])

    def teacher(self) -> tuple[torch.Tensor, int]:
        """The teacher's parameters (float64, packed like ``theta``) and its hidden width."""
        th = self.teacher_hidden or self.hidden
        gen = torch.Generator().manual_seed(_derive_seed(self.seed, 0))
        return self._random_theta(gen, torch.float64, th) * self.teacher_scale, th

    def _samples(self, stream: int, n: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        teacher, th = self.teacher()
        gen = torch.Generator().manual_seed(_derive_seed(self.seed, stream))
        x = torch.randn(n, self.n_features, generator=gen, dtype=torch.float64)
        y = self.forward(teacher, x, th) + self.noise * torch.randn(n, generator=gen, dtype=torch.float64)
        return x.to(dtype), y.to(dtype)

    def teacher_field(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-activation ``w_j · x`` of the teacher's dominant hidden unit ``j`` (largest
        ``|w2_j| ‖W1_j‖``) at ``x: (n, d)``: the direction along which ``sorted`` sharding
        splits the samples, so that each worker sees one side of that unit's tanh."""
        teacher, th = self.teacher()
        d = self.n_features
        w1, w2 = teacher[: th * d].view(th, d), teacher[th * d + th: th * d + 2 * th]
        j = int(torch.argmax(w2.abs() * w1.norm(dim=1)))
        return x.to(torch.float64) @ w1[j]

    def data(self, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set ``(x: (n_samples, d), y: (n_samples,))``, same in every process."""
        return self._samples(4, self.n_samples, dtype)

    def test_data(self, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh samples of the same teacher (``n_samples`` of them), never trained on."""
        return self._samples(5, self.n_samples, dtype)

    def test_floor(self) -> float:
        """The teacher's own loss on :meth:`test_data` (the noise it cannot predict): the
        floor that no student can beat on that test set, in expectation :attr:`noise_floor`."""
        gen = torch.Generator().manual_seed(_derive_seed(self.seed, 5))
        torch.randn(self.n_samples, self.n_features, generator=gen, dtype=torch.float64)
        eps = torch.randn(self.n_samples, generator=gen, dtype=torch.float64)
        return float(0.5 * (self.noise * eps).pow(2).mean())

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
            positive_int(name, getattr(self, name))
        positive("step_size", self.step_size)


@dataclass(frozen=True)
class Regime:
    """How workers coordinate, and the delays injected into them.

    ``period`` is H for ``local`` (1 for the others). A ``straggler_rank`` sleeps
    ``straggler_delay`` seconds in every step (a persistently slow worker); with
    ``jitter_prob > 0`` every worker sleeps ``jitter_delay`` seconds with that probability in
    each step, drawn independently per worker and step (delays that move between workers)."""

    kind: str = "sync"
    period: int = 1
    straggler_rank: int | None = None
    straggler_delay: float = 0.0
    jitter_prob: float = 0.0
    jitter_delay: float = 0.0

    def __post_init__(self):
        one_of("kind", self.kind, REGIMES)
        positive_int("period", self.period)
        if self.kind != "local" and self.period != 1:
            raise ValueError(f"period={self.period!r} is not allowed for kind={self.kind!r}: expected 1")
        positive("straggler_delay", self.straggler_delay, allow_zero=True)
        positive("jitter_delay", self.jitter_delay, allow_zero=True)
        probability("jitter_prob", self.jitter_prob)

    @property
    def slowed(self) -> bool:
        return self.straggler_delay > 0 and self.straggler_rank is not None

    @property
    def jittered(self) -> bool:
        return self.jitter_prob > 0 and self.jitter_delay > 0

    @property
    def name(self) -> str:
        base = f"local_h{self.period}" if self.kind == "local" else self.kind
        return base + ("_straggler" if self.slowed else "") + ("_jitter" if self.jittered else "")


@dataclass(frozen=True)
class Job:
    """One training run: ``problem`` trained with ``training`` under ``regime``; ``seed`` sets
    the mini-batch and delay streams (the problem's own seed sets data, teacher and init)."""

    problem: Problem
    training: Training
    regime: Regime
    seed: int = 0


def batch_indices(problem: Problem, rank: int, world_size: int, seed: int):
    """Generator of this rank's mini-batch indices into the training set, drawn with
    replacement from the rank's own shard and its own stream. ``iid`` sharding: rank ``r``
    owns samples ``r, r + P, r + 2P, ...``; ``sorted``: the ``r``-th contiguous block of the
    samples ordered along the teacher's dominant hidden unit."""
    if problem.sharding == "iid":
        shard = torch.arange(rank, problem.n_samples, world_size)
    else:
        order = torch.argsort(problem.teacher_field(problem.data(torch.float64)[0]))
        shard = order.tensor_split(world_size)[rank]
    gen = torch.Generator().manual_seed(_derive_seed(seed, 2, rank))

    def draw(batch_size: int) -> torch.Tensor:
        return shard[torch.randint(len(shard), (batch_size,), generator=gen)]

    return draw


def ring_bytes(tensor_bytes: float, world_size: int) -> float:
    """Bytes each worker sends (and receives) in a ring all-reduce of ``tensor_bytes``."""
    return 2 * (world_size - 1) / world_size * tensor_bytes


def fit_alpha_beta(nbytes: Sequence[float], seconds: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of the latency–bandwidth model ``t = α + β s`` (``s`` in bytes).
    Returns ``(α seconds, β seconds per byte)``; needs at least two distinct sizes."""
    s = np.asarray(nbytes, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    if s.shape != t.shape or s.ndim != 1 or len(np.unique(s)) < 2:
        raise ValueError(f"fit_alpha_beta: need equal-length 1-D sizes and times with ≥ 2 distinct sizes, "
                         f"got {s.tolist()} and {t.tolist()}")
    beta, alpha = np.polyfit(s, t, 1)
    return float(alpha), float(beta)


# ----------------------------------------------------------------------------- instrumentation


class Collectives:
    """Averaging all-reduce that stamps, on this worker, when it arrives at each collective
    and when it leaves (``arrivals``, ``departures``: host monotonic seconds), and counts the
    calls (``sync_count``) and the tensor bytes handed over. It adds no collective of its own:
    the waiting for the slowest peer is inferred afterwards from all workers' arrival stamps
    (:class:`RunResult`)."""

    def __init__(self, world_size: int, device: torch.device):
        self.world_size, self.device = world_size, device
        self.sync_count = 0
        self.bytes = 0
        self.arrivals: list[float] = []
        self.departures: list[float] = []

    def _sync_device(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def collective_s(self) -> float:
        """Seconds this worker spent inside collectives (waiting and transferring)."""
        return float(sum(d - a for a, d in zip(self.arrivals, self.departures)))

    def average_(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        self._sync_device()
        arrive = time.perf_counter()
        dist.all_reduce(tensor)  # SUM: ReduceOp.AVG exists for NCCL only
        tensor.div_(self.world_size)
        self._sync_device()
        self.departures.append(time.perf_counter())
        self.arrivals.append(arrive)
        self.sync_count += 1
        self.bytes += tensor.numel() * tensor.element_size()
        return tensor


class _Delays:
    """The sleeps a regime injects into one worker; ``total_s`` is the time actually slept."""

    def __init__(self, regime: Regime, rank: int, seed: int):
        self.constant = regime.straggler_delay if regime.slowed and regime.straggler_rank == rank else 0.0
        self.regime = regime
        self.rng = random.Random(_derive_seed(seed, 3, rank)) if regime.jittered else None
        self.total_s = 0.0

    def __call__(self) -> None:
        d = self.constant
        if self.rng is not None and self.rng.random() < self.regime.jitter_prob:
            d += self.regime.jitter_delay
        if d > 0:
            t = time.perf_counter()
            time.sleep(d)
            self.total_s += time.perf_counter() - t


def _energy_meter(device: torch.device):
    from dynbook.measure.energy import EnergyMeter

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


def _test_loss(problem: Problem, theta: torch.Tensor) -> float:
    xt, yt = problem.test_data()
    with torch.no_grad():
        return float(problem.loss(theta.detach().cpu().float(), xt, yt))


def run_regime(rank: int, world_size: int, problem: Problem, training: Training, regime: Regime,
               device: torch.device, *, seed: int = 0, meter_energy: bool = True) -> dict:
    """Train with ``sync`` or ``local`` on this rank inside an initialised process group.

    Returns this rank's counters: ``start_t``/``end_t`` (host monotonic seconds around the
    training loop), ``eval_s`` (loss evaluation inside it), ``compute_s`` (gradients),
    ``delay_s`` (injected sleep), the collectives' ``arrivals``/``departures``; rank 0 also
    returns the loss log ``[(step, seconds, loss)]`` (seconds exclude loss evaluation), the
    final ``theta`` and the ``test_loss`` on fresh data.
    """
    import torch.distributed as dist

    if regime.kind == "hogwild":
        raise ValueError("kind='hogwild' is not allowed in run_regime: use train_hogwild")
    x, y = (t.to(device) for t in problem.data())
    theta = problem.init().to(device)
    draw = batch_indices(problem, rank, world_size, seed)
    comm = Collectives(world_size, device)
    delays = _Delays(regime, rank, seed)
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
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        compute_s += time.perf_counter() - tc
        delays()
        eta = training.step_size
        if regime.kind == "sync":
            theta.sub_(eta * comm.average_(grad))
            synced = True
        elif regime.kind == "alone":
            theta.sub_(eta * grad)
            synced = True
        else:
            theta.sub_(eta * grad)
            synced = step % regime.period == 0 or step == training.n_steps
            if synced:
                comm.average_(theta)
        if synced and (step % training.log_every == 0 or step == training.n_steps
                       or (regime.kind == "local" and regime.period >= training.log_every)):
            evaluate(step)
    end = time.perf_counter()
    joules = None
    if meter is not None:
        meter.__exit__(None, None, None)
        joules = meter.reading.joules
        meter.close()
    out = {"rank": rank, "regime": regime.name, "kind": regime.kind, "period": regime.period,
           "steps": training.n_steps, "start_t": t0, "end_t": end, "eval_s": eval_s,
           "compute_s": compute_s, "delay_s": delays.total_s, "arrivals": comm.arrivals,
           "departures": comm.departures, "sync_count": comm.sync_count, "bytes": comm.bytes,
           "joules": joules, "straggler": delays.constant > 0,
           "energy_reason": "" if meter is None else meter.reason}
    if rank == 0:
        out["log"] = log
        out["final_loss"] = log[-1][2]
        out["theta"] = theta.cpu().numpy()
        out["test_loss"] = _test_loss(problem, theta)
    return out


def _hogwild_run(rank, world_size, job: Job, theta: torch.Tensor, budget) -> dict:
    """Lock-free SGD on the shared-memory ``theta`` until the shared ``budget`` of updates is
    spent (only the ticket counter is locked, never ``theta``). The process group serves only
    for a start and an end barrier, outside the clock."""
    import torch.distributed as dist

    problem, training, regime = job.problem, job.training, job.regime
    x, y = problem.data()
    # P workers each apply their own gradient: η/P makes one round of P updates move like one
    # synchronous step (which applies the average of P gradients with η)
    step_size = training.step_size / world_size
    draw = batch_indices(problem, rank, world_size, job.seed)
    delays = _Delays(regime, rank, job.seed)
    meter = _energy_meter(torch.device("cpu")) if rank == 0 else None
    snapshots, compute_s, steps = [(0, 0.0, theta.clone())], 0.0, 0  # before anyone has moved it
    dist.barrier()
    if meter is not None:
        meter.__enter__()
    t0 = time.perf_counter()
    while True:
        with budget.get_lock():
            if budget.value <= 0:
                break
            budget.value -= 1
        steps += 1
        tc = time.perf_counter()
        grad = _sgd_step(problem, theta, x, y, draw(training.batch_size))
        compute_s += time.perf_counter() - tc
        delays()
        theta.sub_(step_size * grad)  # no lock: the other workers read and write meanwhile
        if rank == 0 and steps % training.log_every == 0:
            snapshots.append((steps, time.perf_counter() - t0, theta.clone()))
    end = time.perf_counter()
    dist.barrier()  # rank 0's energy reading covers the run until the last worker is done
    joules = None
    if meter is not None:
        meter.__exit__(None, None, None)
        joules = meter.reading.joules
        meter.close()
    out = {"rank": rank, "regime": regime.name, "kind": "hogwild", "period": 1, "steps": steps,
           "start_t": t0, "end_t": end, "eval_s": 0.0, "compute_s": compute_s,
           "delay_s": delays.total_s, "arrivals": [], "departures": [], "sync_count": 0, "bytes": 0,
           "joules": joules, "straggler": delays.constant > 0,
           "energy_reason": "" if meter is None else meter.reason}
    if rank == 0:
        out["snapshots"] = [(s, t, th.numpy()) for s, t, th in snapshots]
    return out


def _suite_worker(rank, world_size, jobs, shared, device_kind):
    device = torch.device("cuda", rank) if device_kind == "cuda" else torch.device("cpu")
    outs = []
    for job, sh in zip(jobs, shared):
        if job.regime.kind == "hogwild":
            outs.append(_hogwild_run(rank, world_size, job, *sh))
        else:
            outs.append(run_regime(rank, world_size, job.problem, job.training, job.regime, device,
                                   seed=job.seed))
    return outs


# ----------------------------------------------------------------------------- public runs


@dataclass
class RunResult:
    """One regime's run: per-rank counters, the loss log (rank 0) and the final ``theta``.

    Times come from per-rank stamps on the host's monotonic clock: the run lasts from the
    first worker's start to the last worker's end (:attr:`wall_s`), and the waiting at each
    collective is inferred from when the workers arrived at it (:meth:`waits`)."""

    regime: Regime
    world_size: int
    ranks: list = field(default_factory=list)
    log: list = field(default_factory=list)  # [(step per worker, seconds, loss)]
    theta: np.ndarray | None = None
    job: Job | None = None

    @property
    def final_loss(self) -> float:
        return self.log[-1][2]

    @property
    def test_loss(self) -> float | None:
        return self.ranks[0].get("test_loss")

    @property
    def excess_test_loss(self) -> float:
        """Test loss above the teacher's own loss on the same samples (:meth:`Problem.test_floor`)."""
        return self.test_loss - self.job.problem.test_floor()

    @property
    def sync_count(self) -> int:
        return self.ranks[0]["sync_count"]

    @property
    def expected_sync_count(self) -> int:
        """Collectives the regime must make: one per step (sync), ``ceil(T / H)`` (local),
        none (alone, hogwild)."""
        steps = self.ranks[0]["steps"]
        return {"sync": steps, "local": -(-steps // self.regime.period)}.get(self.regime.kind, 0)

    @property
    def bytes(self) -> int:
        """Tensor bytes passed to collectives by one worker (ring traffic: :func:`ring_bytes`)."""
        return self.ranks[0]["bytes"]

    @property
    def total_updates(self) -> int:
        return int(sum(r["steps"] for r in self.ranks))

    def rank_wall(self, k: dict) -> float:
        """One worker's own clocked time (loss evaluation excluded)."""
        return k["end_t"] - k["start_t"] - k["eval_s"]

    @property
    def wall_s(self) -> float:
        """From the first worker's start to the last worker's end (loss evaluation excluded)."""
        return (max(r["end_t"] for r in self.ranks) - min(r["start_t"] for r in self.ranks)
                - max(r["eval_s"] for r in self.ranks))

    def _stamps(self) -> tuple[np.ndarray, np.ndarray]:
        arrive = np.array([r["arrivals"] for r in self.ranks], dtype=np.float64).reshape(self.world_size, -1)
        depart = np.array([r["departures"] for r in self.ranks], dtype=np.float64).reshape(self.world_size, -1)
        return arrive, depart

    def waits(self) -> np.ndarray:
        """``(P,)`` seconds each worker waited for the last peer to arrive, summed over the
        collectives: ``Σ_k (max_q a_qk − a_pk)``."""
        arrive, _ = self._stamps()
        return (arrive.max(0, initial=-np.inf) - arrive).sum(1) if arrive.size else np.zeros(self.world_size)

    def transfers(self) -> np.ndarray:
        """``(P,)`` seconds from the last arrival to this worker's departure, summed: the
        all-reduce proper."""
        arrive, depart = self._stamps()
        return (depart - arrive.max(0)).sum(1) if arrive.size else np.zeros(self.world_size)

    def collective_times(self) -> np.ndarray:
        """``(n_collectives,)`` seconds of each all-reduce proper: last arrival to last departure."""
        arrive, depart = self._stamps()
        return depart.max(0) - arrive.max(0)

    @property
    def wait_s(self) -> float:
        """Inferred waiting of the worker that waited most."""
        return float(self.waits().max())

    @property
    def transfer_s(self) -> float:
        return float(self.transfers().max())

    @property
    def collective_share(self) -> float:
        """Mean over workers of the fraction of their wall time spent in collectives
        (waiting for peers plus the all-reduce itself)."""
        w, t = self.waits(), self.transfers()
        return float(np.mean([(w[i] + t[i]) / self.rank_wall(k) for i, k in enumerate(self.ranks)]))

    @property
    def wait_share(self) -> float:
        w = self.waits()
        return float(np.mean([w[i] / self.rank_wall(k) for i, k in enumerate(self.ranks)]))

    @property
    def updates_per_s(self) -> float:
        """SGD updates applied by all workers together ÷ the run's wall time."""
        return self.total_updates / self.wall_s

    @property
    def slowest_step_s(self) -> float:
        """Seconds per step (gradient plus injected delay) of the slowest worker."""
        return max((r["compute_s"] + r["delay_s"]) / r["steps"] for r in self.ranks)

    @property
    def bound_ratio(self) -> float:
        """Delivered updates per second ÷ the slowest-worker bound ``P / t_slow``."""
        return self.updates_per_s / (self.world_size / self.slowest_step_s)

    @property
    def idle_per_delay(self) -> float:
        """Idle time the workers had (injected sleep plus inferred waiting), averaged over the
        workers, ÷ the largest injected sleep of any worker. Every regime that cannot absorb
        the delays gives ≥ 1: a persistently slow worker (every peer waits out its delay) gives
        1 exactly; independent jitter under a per-step barrier gives ``E[max_p d] / E[d]``."""
        delay = np.array([r["delay_s"] for r in self.ranks])
        if delay.max() <= 0:
            raise ValueError(f"idle_per_delay: regime {self.regime.name!r} injected no delay")
        return float((delay + self.waits()).mean() / delay.max())

    @property
    def joules(self) -> float | None:
        js = [r["joules"] for r in self.ranks if r["joules"] is not None]
        return sum(js) if js else None


def _check_jobs(jobs: Sequence[Job], world_size: int) -> None:
    for j in jobs:
        if not isinstance(j, Job):
            raise ValueError(f"jobs must be dynbook.sync.regimes.Job, got {type(j).__name__}")
        r = j.regime
        if r.straggler_rank is not None and not 0 <= r.straggler_rank < world_size:
            raise ValueError(f"straggler_rank={r.straggler_rank!r} is not allowed: expected 0..{world_size - 1}")


def run_jobs(jobs: Sequence[Job], world_size: int = 2, *, device: str = "cpu", backend: str = "auto",
             timeout: float = 300.0) -> list[RunResult]:
    """Run every job one after another in one launch of ``world_size`` processes (one
    process start for all of them); returns one :class:`RunResult` per job, in order.
    Hogwild jobs run on CPU shared memory (with gloo, in a second launch if the others use
    NCCL). Hogwild is not reproducible bit for bit: the interleaving of reads and writes is
    the point."""
    import torch.multiprocessing as mp

    jobs = list(jobs)
    _check_jobs(jobs, world_size)
    backend = resolve_backend(backend, device, world_size)
    groups = [(backend, [i for i, j in enumerate(jobs) if backend == "gloo" or j.regime.kind != "hogwild"])]
    if backend == "nccl":
        groups.append(("gloo", [i for i, j in enumerate(jobs) if j.regime.kind == "hogwild"]))
    ctx = mp.get_context("spawn")
    results: dict[int, RunResult] = {}
    for group_backend, idx in groups:
        if not idx:
            continue
        shared = []
        for i in idx:
            job = jobs[i]
            if job.regime.kind == "hogwild":
                shared.append((job.problem.init().share_memory_(),
                               ctx.Value("q", job.training.n_steps * world_size)))
            else:
                shared.append(None)
        device_kind = "cuda" if group_backend == "nccl" else "cpu"
        per_rank = launch(_suite_worker, world_size, ([jobs[i] for i in idx], shared, device_kind),
                          backend=group_backend, timeout=timeout)
        for n, i in enumerate(idx):
            ranks = [per_rank[r][n] for r in range(world_size)]
            job = jobs[i]
            if job.regime.kind == "hogwild":
                theta = shared[n][0]
                x, y = job.problem.data()
                with torch.no_grad():
                    log = [(s, t, float(job.problem.loss(torch.from_numpy(th), x, y)))
                           for s, t, th in ranks[0].pop("snapshots")]
                    log.append((ranks[0]["steps"], max(r["end_t"] for r in ranks) - min(r["start_t"] for r in ranks),
                                float(job.problem.loss(theta, x, y))))
                ranks[0]["test_loss"] = _test_loss(job.problem, theta)
                results[i] = RunResult(job.regime, world_size, ranks, log, theta.numpy().copy(), job)
            else:
                results[i] = RunResult(job.regime, world_size, ranks, ranks[0]["log"], ranks[0]["theta"], job)
    return [results[i] for i in range(len(jobs))]


def train_distributed(problem: Problem, training: Training, regimes: Sequence[Regime],
                      world_size: int = 2, *, device: str = "cpu", backend: str = "auto",
                      seed: int = 0, timeout: float = 300.0) -> list[RunResult]:
    """Run the ``sync``/``local`` ``regimes`` of one problem in one launch (:func:`run_jobs`)."""
    for r in regimes:
        if r.kind == "hogwild":
            raise ValueError("kind='hogwild' is not allowed in train_distributed: use train_hogwild")
    return run_jobs([Job(problem, training, r, seed) for r in regimes], world_size, device=device,
                    backend=backend, timeout=timeout)


def train_hogwild(problem: Problem, training: Training, regimes: Sequence[Regime] = (Regime("hogwild"),),
                  world_size: int = 2, *, seed: int = 0, timeout: float = 300.0) -> list[RunResult]:
    """Hogwild runs of one problem (:func:`run_jobs`): ``world_size`` processes update one
    shared-memory ``theta`` without locks, sharing a budget of ``world_size × n_steps`` updates."""
    for r in regimes:
        if r.kind != "hogwild":
            raise ValueError(f"regime kind={r.kind!r} is not allowed in train_hogwild: expected 'hogwild'")
    return run_jobs([Job(problem, training, r, seed) for r in regimes], world_size, timeout=timeout)


def reference_sgd(problem: Problem, training: Training, world_size: int,
                  regime: Regime = Regime("sync"), *, seed: int = 0,
                  dtype=torch.float64) -> torch.Tensor:
    """Data-parallel SGD computed in one process, each rank's batch stream replayed: ``sync``
    averages the ``world_size`` gradients every step, ``local`` averages the parameters every
    ``period`` steps (and after the last), ``alone`` never averages (rank 0's model is
    returned). What the all-reduce versions must reproduce."""
    if regime.kind not in ("sync", "local", "alone"):
        raise ValueError(f"regime.kind={regime.kind!r} is not allowed: expected 'sync', 'local' or 'alone'")
    x, y = problem.data(dtype)
    draws = [batch_indices(problem, r, world_size, seed) for r in range(world_size)]
    thetas = [problem.init(dtype) for _ in range(world_size)]
    for step in range(1, training.n_steps + 1):
        grads = [_sgd_step(problem, th, x, y, d(training.batch_size)) for th, d in zip(thetas, draws)]
        eta = training.step_size
        if regime.kind == "sync":
            thetas = [th - eta * torch.stack(grads).mean(0) for th in thetas]
        elif regime.kind == "alone":
            thetas = [th - eta * g for th, g in zip(thetas, grads)]
        else:
            thetas = [th - eta * g for th, g in zip(thetas, grads)]
            if step % regime.period == 0 or step == training.n_steps:
                thetas = [torch.stack(thetas).mean(0)] * world_size
    return thetas[0]


def expected_idle_per_delay(prob: float, world_size: int, period: int, n_steps: int) -> float:
    """What :attr:`RunResult.idle_per_delay` must be, in expectation, under pure Bernoulli
    jitter (each worker sleeps ``d`` with probability ``prob`` per step) when only the delays
    make workers differ: a round of ``period`` steps ends when the worker with the most sleeps
    arrives, so the idle time per round is ``d · E[max_p B_p]``, ``B_p ~ Binomial(period, prob)``;
    divided by the mean sleep ``d · period · prob``. (Rounds are ``period`` long, the last one
    ``n_steps mod period``.) 1 would mean no amplification; ``period = 1`` is the per-step
    barrier of synchronous SGD."""
    from scipy import stats

    if not 0 < prob <= 1:
        raise ValueError(f"prob={prob!r} is not allowed: expected in (0, 1]")

    def e_max(h: int) -> float:
        k = np.arange(h + 1)
        cdf = stats.binom.cdf(k, h, prob)
        # E[max] = Σ_k P(max > k) = Σ_k (1 − F(k)^P)
        return float(np.sum(1 - cdf[:-1] ** world_size))

    full, rest = divmod(n_steps, period)
    idle = full * e_max(period) + (e_max(rest) if rest else 0.0)
    return idle / (n_steps * prob)


# ----------------------------------------------------------------------------- the chapter's study

SMALL = dict(n_features=8, hidden=16, teacher_hidden=2, teacher_scale=2.0)  # learnable to the floor


@dataclass
class SyncStudy:
    """Every distributed run of the synchronization chapter, from one launch of ``workers``
    processes (:func:`sync_study`), and the quantities its claims are decided on.

    ``runs`` maps a key to its :class:`RunResult`: ``("check", name)`` (replay checks),
    ``("sweep", seed, hidden, kind)`` (collective share against model size),
    ``("local", seed, sharding, name)`` (local SGD's result), ``("slow", seed, kind)`` (one
    persistently slow worker) and ``("jitter", seed, period)`` (random delays; period 0 is
    synchronous SGD). Each analysis returns a dict with the per-seed quantities, ``metrics``
    (what the chapter records: keyword arguments of :func:`dynbook.record`) and, where the
    chapter shows one, ``table`` (header and rows for :func:`dynbook.show.table`)."""

    runs: dict
    workers: int
    seeds: list
    jitter_seeds: list
    sizes: list
    period: int
    jitter_steps: int
    jitter_prob: float
    delay_s: float
    n_steps: int
    backend: str
    check_problem: Problem
    check_training: Training
    seed: int = 0

    def metrics(self) -> list[dict]:
        """What the study was: workers, steps, period, backend, cores, seeds and runs."""
        import multiprocessing

        return [_metric("world_size", self.workers, "processes"), _metric("n_steps_per_worker", self.n_steps, "steps"),
                _metric("period_h", self.period, "steps"), _metric("backend", self.backend),
                _metric("cpu_count", multiprocessing.cpu_count(), "cores"), _metric("seeds", self.seeds),
                _metric("n_seeds_used", len(self.seeds), "seeds"),
                _metric("n_jitter_seeds", len(self.jitter_seeds), "seeds"),
                _metric("n_runs", len(self.runs), "training runs")]

    @property
    def slow_rank(self) -> int:
        return self.workers - 1  # rank 0 logs the loss; the slow one is another

    @property
    def sweep_steps(self) -> int:
        """Steps of each run of the model-size sweep."""
        return self.runs[("sweep", self.seeds[0], self.sizes[0], "sync")].job.training.n_steps

    def checks(self) -> dict:
        """The identities the runs must satisfy: float64 one-process replays of sync SGD
        (``sync_error``), local SGD with H = 1 against sync (``h1_error``) and with H = period
        (``local_error``), and the collective counters (``counts_ok`` over ``n_counted`` runs)."""
        r, H = self.runs, self.period
        ref = reference_sgd(self.check_problem, self.check_training, self.workers, seed=self.seed)
        local_ref = reference_sgd(self.check_problem, self.check_training, self.workers,
                                  Regime("local", H), seed=self.seed)
        counted = [v for v in r.values() if v.regime.kind != "hogwild"]
        return {"sync_error": relative_error(r[("check", "sync")].theta, ref),
                "h1_error": relative_error(r[("check", "local_h1")].theta, r[("check", "sync")].theta),
                "local_error": relative_error(r[("check", f"local_h{H}")].theta, local_ref),
                "counts_ok": all(v.sync_count == v.expected_sync_count
                                 and v.bytes == v.sync_count * v.job.problem.n_params * 4 for v in counted),
                "n_counted": len(counted)}

    def share_sweep(self) -> dict:
        """Per hidden width: ``share`` and ``wait_share`` (per seed, synchronous SGD),
        ``alone`` (per seed, smallest and largest width), ``params``, ``allreduce_s`` (median
        all-reduce after the last arrival), the latency–bandwidth fit ``alpha``, ``beta``,
        and ``growth`` (``growth_alone``): largest − smallest share per seed."""
        r, seeds, sizes = self.runs, self.seeds, self.sizes
        share = {h: [r[("sweep", s, h, "sync")].collective_share for s in seeds] for h in sizes}
        wait = {h: [r[("sweep", s, h, "sync")].wait_share for s in seeds] for h in sizes}
        alone = {h: [r[("sweep", s, h, "alone")].collective_share for s in seeds] for h in (sizes[0], sizes[-1])}
        params = {h: Problem(hidden=h).n_params for h in sizes}
        coll = {h: float(np.median(np.concatenate([r[("sweep", s, h, "sync")].collective_times() for s in seeds])))
                for h in sizes}
        alpha, beta = fit_alpha_beta([4 * params[h] for h in sizes], [coll[h] for h in sizes])
        big, small = sizes[-1], sizes[0]
        metrics = [_metric("sweep_steps", self.sweep_steps, "steps"),
                   _metric("sweep_widths", ", ".join(map(str, sizes)))]
        for h in sizes:
            metrics += [_metric(f"share_h{h}", float(np.mean(share[h])), "fraction of wall time", "C1a",
                                {"hidden": h, "n_params": params[h], "per_seed": share[h]}),
                        _metric(f"allreduce_s_h{h}", coll[h], "s (median all-reduce after last arrival)", "C1a")]
        metrics += [_metric("alpha_us", alpha * 1e6, "µs (fitted latency)", "C1a"),
                    _metric("beta_gbps", (1 / beta / 1e9) if beta > 0 else None, "GB/s (fitted 1/β)", "C1a"),
                    _metric("share_largest", float(np.mean(share[big])), "fraction", "C1a"),
                    _metric("wait_share_largest", float(np.mean(wait[big])), "fraction", "C1a"),
                    _metric("share_smallest", float(np.mean(share[small])), "fraction", "C1d"),
                    _metric("params_largest", params[big], "parameters"),
                    _metric("params_smallest", params[small], "parameters")]
        table = (["hidden", "parameters", "share in collectives (per seed)", "of which waiting",
                  "median all-reduce µs", "α + βs µs"],
                 [(h, params[h], ", ".join(f"{v:.2f}" for v in share[h]), f"{np.mean(wait[h]):.2f}",
                   f"{coll[h] * 1e6:.0f}", f"{(alpha + beta * 4 * params[h]) * 1e6:.0f}") for h in sizes])
        return {"share": share, "wait_share": wait, "alone": alone, "params": params, "allreduce_s": coll,
                "alpha": alpha, "beta": beta, "growth": [a - b for a, b in zip(share[big], share[small])],
                "growth_alone": [a - b for a, b in zip(alone[big], alone[small])],
                "metrics": metrics, "table": table}

    def local_sgd(self) -> dict:
        """Excess test loss (above the teacher's own) of local SGD ÷ synchronous SGD per seed:
        ``iid`` shards, ``sorted`` shards, and workers ``alone`` on sorted shards; the sync
        runs' ``test``/``floor`` losses, and how many fewer collectives local SGD made."""
        from scipy.stats import gmean

        r, H = self.runs, self.period
        sync_runs = [r[("local", s, "iid", "sync")] for s in self.seeds]
        ratio = {k: [r[("local", s, *key)].excess_test_loss / b.excess_test_loss
                     for s, b in zip(self.seeds, sync_runs)]
                 for k, key in (("iid", ("iid", f"local_h{H}")), ("sorted", ("sorted", f"local_h{H}")),
                                ("alone", ("sorted", "alone")))}
        test = [b.test_loss for b in sync_runs]
        floor = [b.job.problem.test_floor() for b in sync_runs]
        reduction = sync_runs[0].sync_count / r[("local", self.seeds[0], "iid", f"local_h{H}")].sync_count
        unit = "× sync (geometric mean)"
        metrics = [_metric("sync_test_over_floor", float(np.mean(np.divide(test, floor))), "× floor", "C1b"),
                   *(_metric(name, float(gmean(ratio[k])), unit, "C1b", {"per_seed": ratio[k]})
                     for name, k in (("excess_ratio_local", "iid"), ("excess_ratio_sorted_local", "sorted"),
                                     ("excess_ratio_alone_sorted", "alone"))),
                   _metric("sync_count_reduction", reduction, "×", "C1b")]
        table = (["seed", "sync test loss", "floor", "local/sync excess (iid)", "local/sync excess (split)",
                  "alone/sync excess (split)"],
                 [(s, f"{t:.5f}", f"{f:.5f}", f"{a:.2f}", f"{b:.2f}", f"{c:.3g}") for s, t, f, a, b, c
                  in zip(self.seeds, test, floor, ratio["iid"], ratio["sorted"], ratio["alone"])])
        return {**ratio, "test": test, "floor": floor, "sync_reduction": reduction, "metrics": metrics,
                "table": table}

    def energy_ratios(self):
        """Joules of local SGD ÷ synchronous SGD per seed, and of local SGD with H = 1 ÷
        synchronous SGD under the same random delays (the control); ``None`` and the reason
        when no energy counter was readable."""
        H, r = self.period, self.runs
        local = [(r[("local", s, "iid", f"local_h{H}")].joules, r[("local", s, "iid", "sync")].joules)
                 for s in self.seeds]
        ctl = [(r[("jitter", s, 1)].joules, r[("jitter", s, 0)].joules) for s in self.jitter_seeds]
        if any(j is None for pair in local + ctl for j in pair):
            reason = r[("local", self.seeds[0], "iid", "sync")].ranks[0]["energy_reason"] or "not metered"
            return None, reason
        return ([a / b for a, b in local], [a / b for a, b in ctl]), ""

    def delays(self) -> dict:
        """Random delays: ``idle`` per unit delay per seed by period (0: synchronous) with its
        ``expected`` value from the delays alone, the ratios local ÷ sync (``ratio_local``) and
        H = 1 ÷ sync (``ratio_h1``). A slow worker: ``bound`` (updates/s ÷ P / t_slow) per seed
        for sync and Hogwild, the slow worker's ``slow_share`` of Hogwild's updates and
        Hogwild's final loss ÷ synchronous SGD's (``loss_ratio``)."""
        r, seeds, H, T = self.runs, self.jitter_seeds, self.period, self.jitter_steps
        idle = {p: [r[("jitter", s, p)].idle_per_delay for s in seeds] for p in (0, 1, H, T)}
        expected = {p: expected_idle_per_delay(self.jitter_prob, self.workers, max(p, 1), T) for p in idle}
        bound = {k: [r[("slow", s, k)].bound_ratio for s in seeds] for k in ("sync", "hogwild")}
        hog = [r[("slow", s, "hogwild")] for s in seeds]
        slow_share = [h.ranks[self.slow_rank]["steps"] / h.total_updates for h in hog]
        loss_ratio = [h.final_loss / r[("slow", s, "sync")].final_loss for h, s in zip(hog, seeds)]
        metrics = [_metric("slow_rank", self.slow_rank), _metric("delay_ms", self.delay_s * 1e3, "ms"),
                   *(_metric(f"idle_per_delay_h{p}", float(np.mean(v)), "× injected delay", "C2a",
                             {"period": p or "sync", "per_seed": v, "expected": expected[p]})
                     for p, v in idle.items()),
                   *(_metric(f"bound_ratio_{k}", float(np.mean(v)), "× P/t_slow", "C2c") for k, v in bound.items()),
                   _metric("hogwild_slow_share", float(np.mean(slow_share)), "fraction of updates", "C2c"),
                   _metric("hogwild_loss_ratio", float(np.mean(loss_ratio)), "× sync loss (same total updates)",
                           "C2c", {"timing_dependent": True})]
        table = (["regime (random delays)", "idle ÷ injected delay, per seed", "expected from the delays alone"],
                 [("synchronous" if p == 0 else f"local H = {p}", ", ".join(f"{x:.2f}" for x in v),
                   f"{expected[p]:.2f}") for p, v in idle.items()])
        return {"idle": idle, "expected": expected, "ratio_local": [a / b for a, b in zip(idle[H], idle[0])],
                "ratio_h1": [a / b for a, b in zip(idle[1], idle[0])], "bound": bound, "slow_share": slow_share,
                "loss_ratio": loss_ratio, "metrics": metrics, "table": table}


def sync_study(workers: int, *, seeds: Sequence[int], jitter_seeds: Sequence[int], sizes: Sequence[int],
               period: int, n_steps: int, delay_s: float, jitter_steps: int = 128, jitter_prob: float = 0.25,
               seed: int = 0, device: str = "cpu", timeout: float = 300.0) -> SyncStudy:
    """All runs of the synchronization chapter in one launch of ``workers`` processes:

    * replay checks at ``seed`` (sync, local H = 1, local H = ``period``; 60 steps);
    * per seed of ``seeds``: synchronous SGD at each hidden width of ``sizes`` and workers
      alone at the smallest and largest (60 steps), and local SGD against synchronous SGD for
      ``n_steps`` on the learnable problem (:data:`SMALL`), identically distributed and split
      shards;
    * per seed of ``jitter_seeds``: a persistently slow worker (sync and Hogwild, 32 steps)
      and random delays of ``delay_s`` with probability ``jitter_prob`` per step (sync, local
      H = 1, ``period`` and ``jitter_steps``; ``jitter_steps`` steps)."""
    positive_int("workers", workers, minimum=2)
    positive_int("period", period)
    positive_int("n_steps", n_steps)
    positive_int("jitter_steps", jitter_steps)
    positive("delay_s", delay_s)
    probability("jitter_prob", jitter_prob)
    if period > n_steps:
        raise ValueError(f"period={period!r} is not allowed: expected at most n_steps={n_steps}")
    sizes = sorted(sizes)
    jobs = {}
    check_training = Training(n_steps=60, batch_size=16, step_size=0.5, log_every=20)
    check_problem = Problem(**SMALL, seed=seed)
    for reg in (Regime("sync"), Regime("local", 1), Regime("local", period)):
        jobs[("check", reg.name)] = Job(check_problem, check_training, reg, seed)
    sweep = Training(n_steps=60, batch_size=32, step_size=0.05, log_every=60)
    local = Training(n_steps=n_steps, batch_size=64, step_size=0.5, log_every=max(1, n_steps // 10))
    jittered = Training(n_steps=jitter_steps, batch_size=32, step_size=0.5, log_every=jitter_steps)
    slow = Training(n_steps=32, batch_size=32, step_size=0.5, log_every=32)
    jitter = dict(jitter_prob=jitter_prob, jitter_delay=delay_s)
    slowed = dict(straggler_rank=workers - 1, straggler_delay=delay_s)
    for s in seeds:
        for h in sizes:
            pb = Problem(hidden=h, seed=s)
            jobs[("sweep", s, h, "sync")] = Job(pb, sweep, Regime("sync"), s)
            if h in (sizes[0], sizes[-1]):
                jobs[("sweep", s, h, "alone")] = Job(pb, sweep, Regime("alone"), s)
        for sharding, kinds in (("iid", ("sync", "local")), ("sorted", ("local", "alone"))):
            pb = Problem(**SMALL, seed=s, sharding=sharding)
            for reg in (Regime(k, period if k == "local" else 1) for k in kinds):
                jobs[("local", s, sharding, reg.name)] = Job(pb, local, reg, s)
    for s in jitter_seeds:
        pb = Problem(**SMALL, seed=s)
        for reg in (Regime("sync", **slowed), Regime("hogwild", **slowed)):
            jobs[("slow", s, reg.kind)] = Job(pb, slow, reg, s)
        for reg in (Regime("sync", **jitter), Regime("local", 1, **jitter),
                    Regime("local", period, **jitter), Regime("local", jitter_steps, **jitter)):
            jobs[("jitter", s, reg.period if reg.kind == "local" else 0)] = Job(pb, jittered, reg, s)
    keys = list(jobs)
    backend = resolve_backend("auto", device, workers)
    runs = dict(zip(keys, run_jobs([jobs[k] for k in keys], workers, device=device, backend=backend,
                                   timeout=timeout)))
    return SyncStudy(runs, workers, list(seeds), list(jitter_seeds), sizes, period, jitter_steps,
                     jitter_prob, delay_s, n_steps, backend, check_problem, check_training, seed)


def plot_share(axes, study: SyncStudy, sweep: dict) -> None:
    """Left: share of wall time in collectives against parameters (sync per seed, alone);
    right: median all-reduce time against bytes with the fitted ``α + β s``."""
    ax1, ax2 = axes
    params, n = sweep["params"], len(study.seeds)
    for h in study.sizes:
        ax1.plot([params[h]] * n, sweep["share"][h], "o", color="C0",
                 label="synchronous" if h == study.sizes[0] else None)
    for h, v in sweep["alone"].items():
        ax1.plot([params[h]] * n, v, "s", color="C2", label="alone" if h == study.sizes[0] else None)
    ax1.set(xscale="log", xlabel="parameters", ylabel="share of wall time in collectives", ylim=(-0.02, 1))
    ax1.legend()
    nb = np.array([4 * params[h] for h in study.sizes], dtype=float)
    ax2.plot(nb, [sweep["allreduce_s"][h] * 1e6 for h in study.sizes], "o", label="measured (median)")
    grid = np.geomspace(nb[0], nb[-1], 50)
    ax2.plot(grid, (sweep["alpha"] + sweep["beta"] * grid) * 1e6, "k--", label=r"$\alpha + \beta s$")
    ax2.set(xscale="log", yscale="log", xlabel="bytes reduced", ylabel="µs per all-reduce")
    ax2.legend()


def plot_losses(ax, study: SyncStudy) -> None:
    """Training loss against steps (first seed): sync, local SGD on iid and split shards,
    workers alone on split shards; the noise floor dotted."""
    s0, H = study.seeds[0], study.period
    for key, label, style in [(("iid", "sync"), "synchronous", "-"),
                              (("iid", f"local_h{H}"), f"local H = {H}", "--"),
                              (("sorted", f"local_h{H}"), f"local H = {H}, split shards", "-."),
                              (("sorted", "alone"), "alone, split shards", ":")]:
        log = np.array(study.runs[("local", s0, *key)].log)
        ax.plot(log[:, 0], log[:, 2], style, label=label)
    ax.axhline(study.runs[("local", s0, "iid", "sync")].job.problem.noise_floor, color="k", lw=0.8, ls=":")
    ax.set(xlabel="SGD steps per worker", ylabel="training loss", yscale="log")
    ax.legend()


def plot_delays(axes, study: SyncStudy, delays: dict) -> None:
    """Left: idle per unit of random delay against the period (dots per seed) and its
    expectation from the delays alone; right: throughput ÷ the slowest-worker bound."""
    ax1, ax2 = axes
    T = study.jitter_steps
    hs = np.unique(np.geomspace(1, T, 24).round().astype(int))
    ax1.plot(hs, [expected_idle_per_delay(study.jitter_prob, study.workers, int(h), T) for h in hs],
             "k-", lw=1, label="expected (delays alone)")
    for p, v in delays["idle"].items():
        ax1.plot([max(p, 1)] * len(v), v, "o", color="C0" if p == 0 else "C1",
                 label=("synchronous" if p == 0 else "local SGD") if p in (0, study.period) else None)
    ax1.set(xscale="log", xlabel="averaging period H", ylabel="idle ÷ injected delay")
    ax1.legend()
    for i, k in enumerate(("sync", "hogwild")):
        ax2.plot([i] * len(delays["bound"][k]), delays["bound"][k], "o", color=f"C{i}")
    ax2.axhline(1.0, color="k", ls="--", lw=0.8)
    ax2.set_xticks([0, 1], ["synchronous", "Hogwild"])
    ax2.set(ylabel="updates/s ÷ (P / t_slow)", xlim=(-0.5, 1.5))


# ----------------------------------------------------------------------------- torchrun


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Entry point for ``torchrun ... -m dynbook.sync.regimes``: the same worker code as
    :func:`train_distributed`, with the rendezvous from torchrun's environment (``env://``).
    Rank 0 prints one JSON line with the run's counters and final loss."""
    import torch.distributed as dist

    parser = argparse.ArgumentParser(prog="python -m dynbook.sync.regimes", description=main.__doc__)
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
        summary = {k: v for k, v in res.items() if k not in ("log", "theta", "arrivals", "departures")}
        summary.update(world_size=world_size, backend=backend, problem=asdict(problem),
                       training=asdict(training), collective_s=float(sum(
                           d - a for a, d in zip(res["arrivals"], res["departures"]))))
        print(json.dumps(summary))
        return summary
    return None


if __name__ == "__main__":
    main()
