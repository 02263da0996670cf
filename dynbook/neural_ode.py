"""Neural ODEs: an MLP vector field integrated by torchdiffeq or by the fused RK4 kernel, the
ResNet it is the continuous limit of, and the measurements of Chapter 3.

Glossary (code ↔ maths): ``MLPField`` = f_θ(z) = tanh(z W1 + b1) W2 + b2 (autonomous); an
``ODENet`` maps x ∈ R² → z(0) = [x, 0] ∈ R^d → z(t1) → logit; a ``ResNet`` of depth L takes L
steps z ← z + f_{θ_l}(z)/L, one parameter set θ_l per layer (forward Euler of a field whose
parameters change with depth). ``nfe`` = number of field evaluations.

Solvers (``solver=``): ``"rk4_mlp"`` is classical RK4 through :func:`dynbook.kernels.rk4_mlp`
(fused Triton kernel on CUDA, PyTorch loop elsewhere); any other name is a torchdiffeq method,
fixed-grid (``FIXED``: ``n_steps`` equal steps) or adaptive (``ADAPTIVE``: ``rtol``, ``atol``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .kernels.rk4 import mlp_field, rk4_mlp, rk4_mlp_reference

FIXED = ("euler", "midpoint", "rk4")  # torchdiffeq's rk4 is the 3/8 rule
ADAPTIVE = ("adaptive_heun", "bosh3", "dopri5", "dopri8", "fehlberg2")
SOLVERS = ("rk4_mlp", *FIXED, *ADAPTIVE)
ORDER = {"euler": 1, "midpoint": 2, "rk4": 4, "rk4_mlp": 4}


# ----------------------------------------------------------------------------- models


class MLPField(nn.Module):
    """f(t, z) = tanh(z W1 + b1) W2 + b2 with ``W1 (d, h)``, ``W2 (h, d)``; counts calls in
    ``nfe`` (torchdiffeq calls it once per stage)."""

    def __init__(self, d: int, h: int, *, gain: float = 1.0):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(d, h) * (gain / math.sqrt(d)))
        self.b1 = nn.Parameter(torch.zeros(h))
        self.w2 = nn.Parameter(torch.randn(h, d) * (gain / math.sqrt(h)))
        self.b2 = nn.Parameter(torch.zeros(d))
        self.nfe = 0

    def weights(self):
        return self.w1, self.b1, self.w2, self.b2

    def forward(self, t, z):
        self.nfe += 1
        return mlp_field(z, *self.weights())


def integrate(f: MLPField, z0, *, t1: float = 1.0, solver: str = "rk4_mlp",
              n_steps: int | None = None, rtol: float = 1e-3, atol: float = 1e-4,
              adjoint: bool = False, impl: str = "auto"):
    """z(t1) for dz/dt = f(z), z(0) = z0 ``(batch, d)``.

    Fixed-step solvers need ``n_steps``; adaptive ones use ``rtol``/``atol``. ``adjoint=True``
    differentiates by torchdiffeq's ``odeint_adjoint`` (solve the adjoint ODE backwards
    instead of keeping the forward graph). ``f.nfe`` counts the evaluations either way."""
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is not allowed: expected one of {', '.join(SOLVERS)}")
    fixed = solver == "rk4_mlp" or solver in FIXED
    if fixed and (n_steps is None or n_steps < 1):
        raise ValueError(f"n_steps={n_steps!r} is not allowed for fixed-step solver {solver!r}: "
                         "expected an integer >= 1")
    if solver == "rk4_mlp":
        if adjoint:
            raise ValueError("solver='rk4_mlp' backpropagates through its steps (adjoint=False); "
                             "use solver='rk4' with adjoint=True")
        f.nfe += 4 * n_steps
        return rk4_mlp(z0, *f.weights(), t1=t1, n_steps=n_steps, impl=impl)
    from torchdiffeq import odeint, odeint_adjoint

    t = torch.tensor([0.0, t1], dtype=z0.dtype, device=z0.device)
    if fixed:
        options = {"grid_constructor": _even_grid(n_steps)}
        kw = {"method": solver, "options": options}
    else:
        kw = {"method": solver, "rtol": rtol, "atol": atol}
    solve = odeint_adjoint if adjoint else odeint
    if adjoint:
        kw["adjoint_params"] = tuple(f.parameters())
    return solve(f, z0, t, **kw)[-1]


def _even_grid(n_steps: int):
    """torchdiffeq grid of ``n_steps`` equal steps between the first and last requested time
    (also for the adjoint's backward solve). ``step_size=t1/n`` can round to n+1 steps."""
    def grid(func, y0, t):
        return torch.linspace(float(t[0]), float(t[-1]), n_steps + 1, dtype=t.dtype,
                              device=t.device)
    return grid


def augment(x, d: int):
    """[x, 0]: pad ``x (batch, d_in)`` with zeros to ``(batch, d)`` (augmented Neural ODE)."""
    if d < x.shape[1]:
        raise ValueError(f"d={d} is smaller than the input dimension {x.shape[1]}")
    return torch.nn.functional.pad(x, (0, d - x.shape[1]))


class ODENet(nn.Module):
    """x → [x, 0] → z(t1) by one field reused at every time → linear logit."""

    def __init__(self, d: int, h: int, *, solver: str = "rk4_mlp", n_steps: int | None = 8,
                 rtol: float = 1e-3, atol: float = 1e-4, adjoint: bool = False,
                 impl: str = "auto", t1: float = 1.0):
        super().__init__()
        self.d = d
        self.field = MLPField(d, h)
        self.readout = nn.Linear(d, 1)
        self.solve = dict(solver=solver, n_steps=n_steps, rtol=rtol, atol=atol, adjoint=adjoint,
                          impl=impl, t1=t1)

    def flow(self, x):
        return integrate(self.field, augment(x, self.d), **self.solve)

    def forward(self, x):
        return self.readout(self.flow(x)).squeeze(-1)


class ResNet(nn.Module):
    """x → [x, 0] → L residual blocks z ← z + f_l(z)/L (own parameters each) → linear logit."""

    def __init__(self, d: int, h: int, *, depth: int):
        super().__init__()
        self.d = d
        self.blocks = nn.ModuleList(MLPField(d, h) for _ in range(depth))
        self.readout = nn.Linear(d, 1)

    def forward(self, x):
        z = augment(x, self.d)
        for block in self.blocks:
            z = z + block(None, z) / len(self.blocks)
        return self.readout(z).squeeze(-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- data, training


def two_spirals(n: int, *, noise: float = 0.05, turns: float = 1.25, generator=None):
    """``n`` points of two interleaved spirals in [-1, 1]²: ``x (n, 2)``, labels ``(n,)`` in {0, 1}.

    Class 0 at radius r ∈ (0.1, 1] and angle 2π·turns·r; class 1 is its point reflection."""
    g = generator
    r = 0.1 + 0.9 * torch.rand(n, generator=g)
    label = torch.randint(0, 2, (n,), generator=g)
    angle = 2 * math.pi * turns * r + math.pi * label
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
    x = x + noise * torch.randn(n, 2, generator=g)
    return x, label.float()


@dataclass
class History:
    loss: list = field(default_factory=list)
    nfe: list = field(default_factory=list)  # forward evaluations per iteration (ODE-Nets)
    seconds: float = 0.0


def train(model: nn.Module, x, y, *, iterations: int, lr: float = 1e-2) -> History:
    """Full-batch Adam on the logistic loss; records loss and forward NFE per iteration."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    hist = History()
    f = getattr(model, "field", None)
    t0 = time.perf_counter()
    for _ in range(iterations):
        if f is not None:
            f.nfe = 0
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        if f is not None:
            hist.nfe.append(f.nfe)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        hist.loss.append(float(loss.detach()))
    hist.seconds = time.perf_counter() - t0
    return hist


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    return float(((model(x) > 0).float() == y).float().mean())


# ----------------------------------------------------------------------------- memory


def _flat_grad(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


def training_memory(model: ODENet, x, y, *, device: str) -> tuple[int, torch.Tensor]:
    """Memory of one forward + backward and the gradient it gives.

    On CUDA: peak bytes allocated above the start (``cuda_peak_memory``); on a CPU, where no
    allocator reports a peak: bytes autograd saves for backward during the forward
    (``SavedTensorBytes``) — the part of training memory that grows with the graph."""
    from .measure import SavedTensorBytes, cuda_peak_memory

    params = list(model.parameters())
    for p in params:
        p.grad = None

    def step():
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()

    if device == "cuda":
        nbytes = cuda_peak_memory(step)
    else:
        with SavedTensorBytes() as saved:
            loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        nbytes = saved.bytes
    return nbytes, _flat_grad(params).detach().clone()


def memory_vs_steps(model: ODENet, x, y, steps, *, device: str) -> dict:
    """Backprop-through-the-solver vs adjoint on the same model, fixed-step ``rk4`` with each
    count of ``steps``: bytes, gradient relative error, seconds per forward+backward."""
    out = {"steps": list(steps), "backprop_bytes": [], "adjoint_bytes": [], "grad_rel_err": [],
           "backprop_seconds": [], "adjoint_seconds": []}
    saved = dict(model.solve)
    try:
        for n in steps:
            grads = {}
            for mode in ("backprop", "adjoint"):
                model.solve.update(solver="rk4", n_steps=n, adjoint=mode == "adjoint")
                t0 = time.perf_counter()
                nbytes, grads[mode] = training_memory(model, x, y, device=device)
                if device == "cuda":
                    torch.cuda.synchronize()
                out[f"{mode}_seconds"].append(time.perf_counter() - t0)
                out[f"{mode}_bytes"].append(nbytes)
            err = (grads["adjoint"] - grads["backprop"]).norm() / grads["backprop"].norm()
            out["grad_rel_err"].append(float(err))
    finally:
        model.solve.clear()
        model.solve.update(saved)
    return out


# ----------------------------------------------------------------------------- per-sample cost


def per_sample_cost(model: nn.Module, x, *, device: str, meter=None,
                    min_seconds: float = 1.0) -> dict:
    """Inference seconds per sample (median, ``time_it``) and joules per sample from
    ``meter`` (an :class:`~dynbook.energy.EnergyMeter`) over repeats lasting ``min_seconds``;
    ``joules_per_sample`` is None when the meter has no counter."""
    from .measure import time_it

    n = x.shape[0]
    with torch.no_grad():
        seconds = time_it(lambda: model(x), device=device, min_run_time=0.2)
        joules = None
        reason = "no meter" if meter is None else meter.reason
        if meter is not None and meter.available:
            repeat = max(1, math.ceil(min_seconds / max(seconds, 1e-9)))
            with meter:
                for _ in range(repeat):
                    model(x)
            r = meter.reading
            reason = r.describe()
            if r.available:  # net of idle power when the meter measured it
                j = r.net_joules if r.net_joules is not None else r.joules
                joules = j / (repeat * n)
    return {"seconds_per_sample": seconds / n, "joules_per_sample": joules, "energy": reason}


# ----------------------------------------------------------------------------- solvers


def solver_sweep(f: MLPField, z0, *, t1: float, fixed_steps, tolerances, reference,
                 fixed=("euler", "midpoint", "rk4", "rk4_mlp"),
                 adaptive=("adaptive_heun", "bosh3", "dopri5")) -> list[dict]:
    """Cost (NFE, seconds) and error (max |z(t1) − reference|) of every solver on one field.

    Fixed-step solvers at each ``n_steps`` in ``fixed_steps``; adaptive ones at
    ``rtol = atol = tol`` for each tol in ``tolerances``."""
    rows = []
    runs = [(m, "fixed", n) for m in fixed for n in fixed_steps]
    runs += [(m, "adaptive", tol) for m in adaptive for tol in tolerances]
    with torch.no_grad():
        for method, kind, setting in runs:
            kw = ({"n_steps": setting} if kind == "fixed" else {"rtol": setting, "atol": setting})
            f.nfe = 0
            t0 = time.perf_counter()
            z = integrate(f, z0, t1=t1, solver=method, impl="torch", **kw)
            seconds = time.perf_counter() - t0
            rows.append({"method": method, "kind": kind, "setting": setting, "nfe": f.nfe,
                         "seconds": seconds, "error": float((z - reference).abs().max())})
    return rows


# ----------------------------------------------------------------------------- kernel baselines


def rk4_runners(y0, w1, b1, w2, b2, *, n_steps: int, t1: float = 1.0) -> dict:
    """Callables that integrate the same problem ``n_steps`` RK4 steps, by name:

    * ``torchdiffeq`` — ``odeint(method="rk4")`` (3/8 rule) on an explicit grid;
    * ``torch_loop`` — :func:`rk4_mlp_reference` (eager PyTorch, ~30 kernels per step);
    * ``cuda_graph`` — the same loop captured once in a CUDA graph and replayed (CUDA only);
    * ``triton`` — the fused kernel (CUDA only: the interpreter's timing means nothing).
    """
    from torchdiffeq import odeint

    weights = (w1, b1, w2, b2)
    f = MLPField(y0.shape[1], w1.shape[1]).to(y0)
    with torch.no_grad():
        for p, w in zip(f.parameters(), weights):
            p.copy_(w)
    t = torch.tensor([0.0, t1], dtype=y0.dtype, device=y0.device)
    options = {"grid_constructor": _even_grid(n_steps)}
    runners = {
        "torchdiffeq": lambda: odeint(f, y0, t, method="rk4", options=options)[-1],
        "torch_loop": lambda: rk4_mlp_reference(y0, *weights, t1=t1, n_steps=n_steps),
    }
    if y0.is_cuda:
        runners["triton"] = lambda: rk4_mlp(y0, *weights, t1=t1, n_steps=n_steps, impl="triton")
        static_in = y0.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up off the default stream, as capture requires
            for _ in range(2):
                rk4_mlp_reference(static_in, *weights, t1=t1, n_steps=n_steps)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = rk4_mlp_reference(static_in, *weights, t1=t1, n_steps=n_steps)

        def replay():
            graph.replay()
            return static_out

        runners["cuda_graph"] = replay
    return runners
