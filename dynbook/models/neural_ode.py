"""Neural ODEs: an MLP vector field integrated by torchdiffeq or by the fused RK4 kernel, the
ResNet it is the continuous limit of, and the measurements of Chapter 3.

Glossary (code ↔ maths): ``MLPField`` = f_θ(z) = tanh(z W1 + b1) W2 + b2 (autonomous); an
``ODENet`` maps x ∈ R² → z(0) = [x, 0] ∈ R^d → z(t1) → logit; a ``ResNet`` of depth L takes L
steps z ← z + f_{θ_l}(z)/L, one parameter set θ_l per layer (forward Euler of a field whose
parameters change with depth); ``ResNet(tied=True)`` reuses one θ at every step (forward Euler of
the ODE-Net's autonomous field). ``nfe`` = number of field evaluations.

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

from dynbook.kernels.rk4 import mlp_field, rk4_mlp, rk4_mlp_reference

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
    """x → [x, 0] → L residual blocks z ← z + f_l(z)/L → linear logit.

    Untied (default): each block has its own parameters θ_l. ``tied=True``: one block applied
    L times, i.e. L forward-Euler steps of dz/dt = f(z; θ) on [0, 1] — the parameters of one
    ODE-Net field, with L evaluations of it."""

    def __init__(self, d: int, h: int, *, depth: int, tied: bool = False):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth={depth!r} is not allowed: expected an integer >= 1")
        self.d = d
        self.depth = depth
        self.tied = tied
        self.blocks = nn.ModuleList(MLPField(d, h) for _ in range(1 if tied else depth))
        self.readout = nn.Linear(d, 1)

    def forward(self, x):
        z = augment(x, self.d)
        for l in range(self.depth):
            z = z + self.blocks[0 if self.tied else l](None, z) / self.depth
        return self.readout(z).squeeze(-1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


FAMILIES = ("ode", "resnet", "tied_resnet")


def make_model(family: str, d: int, h: int, *, n_steps: int) -> nn.Module:
    """One model of Chapter 3's capacity comparison, all with the same field form, padding
    and read-out:

    * ``"ode"`` — ODE-Net, one field of width ``h``, ``n_steps`` classical RK4 steps
      (``4 n_steps`` evaluations);
    * ``"resnet"`` — ``n_steps`` untied residual blocks of width ``h`` (``n_steps`` evaluations);
    * ``"tied_resnet"`` — one block of width ``h`` applied ``n_steps`` times (forward Euler).
    """
    if family == "ode":
        return ODENet(d, h, n_steps=n_steps)
    if family in ("resnet", "tied_resnet"):
        return ResNet(d, h, depth=n_steps, tied=family == "tied_resnet")
    raise ValueError(f"family={family!r} is not allowed: expected one of {', '.join(FAMILIES)}")


def field_parameters(d: int, h: int) -> int:
    """Parameters of one field f(z) = tanh(z W1 + b1) W2 + b2 on R^d with width h."""
    return 2 * d * h + h + d


def matched_resnet_width(d: int, h: int, *, depth: int) -> int:
    """The block width whose untied ResNet of ``depth`` blocks has the parameter count closest
    to an ODE-Net with one field of width ``h`` (the wider on a tie, at least 1): the untied
    ResNet then spends its parameters on ``depth`` thin fields instead of one wide one."""
    target = field_parameters(d, h)
    widths = range(1, h + 1)
    return min(widths, key=lambda w: (abs(depth * field_parameters(d, w) - target), -w))


def function_evaluations(model: nn.Module) -> int:
    """Field (block) evaluations of one forward pass of a fixed-step model."""
    if isinstance(model, ODENet):
        s = model.solve
        per_step = {"euler": 1, "midpoint": 2, "rk4": 4, "rk4_mlp": 4}
        if s["solver"] not in per_step:
            raise ValueError(f"solver {s['solver']!r} is adaptive: its evaluations are counted in field.nfe")
        return per_step[s["solver"]] * s["n_steps"]
    return model.depth


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
    val_accuracy: list = field(default_factory=list)  # (iteration, accuracy) at each evaluation
    best_iteration: int | None = None  # the checkpoint kept (validation selection), else None


def train(model: nn.Module, x, y, *, iterations: int, lr: float = 1e-2, x_val=None, y_val=None,
          eval_every: int = 25) -> History:
    """Full-batch Adam (cosine schedule) on the logistic loss of the parameters that require
    grad (none: the model is only evaluated); records loss and forward NFE per iteration.

    With validation data ``x_val, y_val`` the model's accuracy on it is measured every
    ``eval_every`` iterations and after the last, and the model is left at the checkpoint with
    the best validation accuracy (the earliest among ties): model selection never sees the
    test set."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if params else None
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations) if params else None
    hist = History()
    f = getattr(model, "field", None)
    best = None  # (validation accuracy, iteration, state) of the checkpoint kept

    def checkpoint(it):
        nonlocal best
        acc = accuracy(model, x_val, y_val)
        hist.val_accuracy.append((it, acc))
        if best is None or acc > best[0]:
            best = (acc, it, {k: v.detach().clone() for k, v in model.state_dict().items()})

    t0 = time.perf_counter()
    for it in range(iterations):
        if x_val is not None and it % eval_every == 0 and it > 0:
            checkpoint(it)
        if f is not None:
            f.nfe = 0
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        if f is not None:
            hist.nfe.append(f.nfe)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        hist.loss.append(float(loss.detach()))
    if x_val is not None:
        checkpoint(iterations)
        hist.best_iteration = best[1]
        model.load_state_dict(best[2])
    hist.seconds = time.perf_counter() - t0
    return hist


def nfe_growth(nfe, *, fraction: float = 0.1) -> float:
    """Mean forward NFE over the last ``fraction`` of training ÷ mean over the first."""
    nfe = [float(n) for n in nfe]
    if not nfe or min(nfe) <= 0:
        raise ValueError("nfe_growth needs a non-empty list of positive evaluation counts")
    k = max(1, int(len(nfe) * fraction))
    return (sum(nfe[-k:]) / k) / (sum(nfe[:k]) / k)


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    return float(((model(x) > 0).float() == y).float().mean())


# ----------------------------------------------------------------------------- memory


def _flat_grad(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


def training_memory(model: ODENet, x, y, *, device: str) -> tuple[int, torch.Tensor]:
    """Peak memory of one forward + backward, above what was held before, and the gradient it
    gives: the CUDA allocator's peak on a GPU, :class:`~dynbook.measure.timing.TensorBytesPeak`
    (tensor storage materialised by ATen operators while it lives) on a CPU.

    The peak spans the backward pass on purpose: the adjoint method keeps nothing per step in
    its forward pass but builds a one-step graph for each step of its backward solve, and
    the gradients themselves are allocated there."""
    from dynbook.measure.timing import peak_bytes

    params = list(model.parameters())
    for p in params:
        p.grad = None

    def step():
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()

    nbytes = peak_bytes(step, device=device)
    return nbytes, _flat_grad(params).detach().clone()


def memory_vs_steps(model: ODENet, x, y, steps, *, device: str) -> dict:
    """Backprop-through-the-solver vs adjoint on the same model, fixed-step ``rk4`` with each
    count of ``steps``: peak bytes over forward and backward (:func:`training_memory`), the
    gradient's relative difference, and the field evaluations of one training step (forward
    and backward: the adjoint's price in compute, counted rather than timed)."""
    out = {"steps": list(steps), "backprop_bytes": [], "adjoint_bytes": [], "grad_rel_err": [],
           "backprop_nfe": [], "adjoint_nfe": []}
    saved = dict(model.solve)
    try:
        for n in steps:
            grads = {}
            for mode in ("backprop", "adjoint"):
                model.solve.update(solver="rk4", n_steps=n, adjoint=mode == "adjoint")
                model.field.nfe = 0
                nbytes, grads[mode] = training_memory(model, x, y, device=device)
                out[f"{mode}_nfe"].append(model.field.nfe)
                out[f"{mode}_bytes"].append(nbytes)
            err = (grads["adjoint"] - grads["backprop"]).norm() / grads["backprop"].norm()
            out["grad_rel_err"].append(float(err))
    finally:
        model.solve.clear()
        model.solve.update(saved)
    return out


# ----------------------------------------------------------------------------- per-sample cost


def interleaved_seconds(fns: dict, *, device: str, repeats: int = 3,
                        min_run_time: float = 0.05) -> dict:
    """``{name: [seconds per call, one per repeat]}``: the median of each callable
    (:func:`~dynbook.measure.timing.time_it`, synchronised on CUDA), the callables interleaved in
    every repeat so that a burst of load on a shared machine widens every series instead of
    biasing one. Feed two series to :func:`dynbook.book.stats.timing_ratio`."""
    from dynbook.measure.timing import time_it

    if repeats < 2:
        raise ValueError(f"repeats={repeats!r} is not allowed: an interval needs at least 2")
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            out[name].append(time_it(fn, device=device, min_run_time=min_run_time))
    return out


def energy_per_sample(models: dict, x, *, device: str, meter, repeats: int = 3,
                      min_seconds: float = 1.0) -> dict:
    """Joules per sample of inference ``model(x)`` for each of ``models`` (name → module),
    from ``meter`` (an :class:`~dynbook.measure.energy.EnergyMeter`), in ``repeats`` interleaved
    rounds of at least ``min_seconds`` each.

    Returns ``{"available", "reason", "gross": {name: [J/sample]}, "net": {name: [J/sample]},
    "net_fraction": smallest net/gross over all readings}``. Net is gross minus the meter's idle
    power × duration; a net share that is a small fraction of gross means idle power, not the
    model, dominates the reading (the caller decides how small is too small)."""
    from dynbook.measure.timing import time_it

    out = {"available": False, "reason": "", "gross": {n: [] for n in models},
           "net": {n: [] for n in models}, "net_fraction": None}
    if meter is None or not meter.available:
        out["reason"] = "no meter" if meter is None else meter.reason
        return out
    n = x.shape[0]
    with torch.no_grad():
        calls = {name: max(1, math.ceil(min_seconds / max(time_it(lambda m=m: m(x), device=device,
                                                                   min_run_time=0.1), 1e-9)))
                 for name, m in models.items()}
        if meter.idle_watts is None:
            meter.measure_idle()
        for _ in range(repeats):
            for name, m in models.items():
                with meter:
                    for _ in range(calls[name]):
                        m(x)
                r = meter.reading
                if not r.available or r.net_joules is None:
                    out["reason"] = r.describe()
                    return out
                out["gross"][name].append(r.joules / (calls[name] * n))
                out["net"][name].append(r.net_joules / (calls[name] * n))
    out["available"] = True
    out["reason"] = f"{meter.source}, idle {meter.idle_watts:.3g} W subtracted"
    out["net_fraction"] = min(nt / g for name in models
                              for nt, g in zip(out["net"][name], out["gross"][name]))
    return out


# ----------------------------------------------------------------------------- solvers


def _sync(t: torch.Tensor) -> None:
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


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
            _sync(z0)
            t0 = time.perf_counter()
            z = integrate(f, z0, t1=t1, solver=method, impl="torch", **kw)
            _sync(z0)  # CUDA runs asynchronously: read the clock after the work, not the launch
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
