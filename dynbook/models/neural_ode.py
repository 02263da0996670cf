"""Neural ODEs: an autonomous MLP vector field integrated by a named solver, the classifiers
built on it, and the experiments of Chapter 3 (each one call that returns its data).

Glossary (code ↔ maths): ``MLPField`` = f_θ(z) = tanh(z W1 + b1) W2 + b2 (autonomous); an
``ODENet`` maps x ∈ R² → z(0) = [x, 0] ∈ R^d → z(t1) → logit; a ``ResNet`` of depth L takes L
steps z ← z + f_{θ_l}(z)/L, one parameter set θ_l per layer (forward Euler of a field whose
parameters change with depth); ``ResNet(tied=True)`` reuses one θ at every step (forward Euler of
the ODE-Net's autonomous field). ``nfe`` = number of field evaluations.

Solvers (``solver=``, the registry :data:`SOLVERS`, name → callable): ``"rk4_mlp"`` is
classical RK4 through :func:`dynbook.kernels.rk4.rk4_mlp` (fused Triton kernel on CUDA, PyTorch
loop elsewhere); every other name is a torchdiffeq method, fixed-grid (:data:`FIXED`:
``n_steps`` equal steps) or adaptive (:data:`ADAPTIVE`: ``rtol``, ``atol``).

How this module and :mod:`dynbook.models.ode` split the work (they share no code on
purpose): ``ode`` is Chapter 2's *discretisation* study — time-dependent fields
(``KnotField``, weights interpolated between knots) in float64, ResNets as Euler/RK4
integrators of any Butcher tableau, orders of convergence, stability. This module is Chapter
3's *learning* study — one autonomous field in the fused kernel's weight layout (``w1 (d, h)``,
the layout :mod:`dynbook.kernels.rk4` reads), counted evaluations, classifiers trained with
validation selection, the adjoint's memory, adaptive solvers' cost and the kernel's baselines.

On a CPU the experiments run single-threaded (:func:`dynbook.measure.timing.num_threads`): the
models are tiny, and a second intra-op thread only adds synchronisation (and, on a shared
machine, stalls).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import torch
from torch import nn

from dynbook import _checks
from dynbook.kernels.rk4 import mlp_field, rk4_mlp, rk4_mlp_reference

#: Fixed-step solvers: name → field evaluations per step (torchdiffeq's rk4 is the 3/8 rule;
#: ``rk4_mlp`` is classical RK4 through the kernel module).
FIXED = {"euler": 1, "midpoint": 2, "rk4": 4, "rk4_mlp": 4}
#: Adaptive torchdiffeq solvers (``rtol``, ``atol``).
ADAPTIVE = ("adaptive_heun", "bosh3", "dopri5", "dopri8", "fehlberg2")
#: Order of convergence of each fixed-step solver.
ORDER = {"euler": 1, "midpoint": 2, "rk4": 4, "rk4_mlp": 4}


def _single_threaded(device):
    """One intra-op thread on a CPU (see the module docstring); nothing on a GPU."""
    from dynbook.measure.timing import num_threads

    return num_threads(1) if torch.device(device).type == "cpu" else contextlib.nullcontext()


# ----------------------------------------------------------------------------- models


class MLPField(nn.Module):
    """f(t, z) = tanh(z W1 + b1) W2 + b2 with ``W1 (d, h)``, ``W2 (h, d)``; counts calls in
    ``nfe`` (torchdiffeq calls it once per stage)."""

    def __init__(self, d: int, h: int, *, gain: float = 1.0):
        super().__init__()
        _checks.positive_int("d", d)
        _checks.positive_int("h", h)
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


def _rk4_kernel(f: MLPField, z0, t1: float, *, n_steps: int, adjoint: bool, impl: str, **_):
    if adjoint:
        raise ValueError("solver='rk4_mlp' backpropagates through its steps (adjoint=False); "
                         "use solver='rk4' with adjoint=True")
    f.nfe += 4 * n_steps
    return rk4_mlp(z0, *f.weights(), t1=t1, n_steps=n_steps, impl=impl)


def _torchdiffeq(method: str, f: MLPField, z0, t1: float, *, n_steps, rtol: float, atol: float,
                 adjoint: bool, **_):
    from torchdiffeq import odeint, odeint_adjoint

    t = torch.tensor([0.0, t1], dtype=z0.dtype, device=z0.device)
    if method in FIXED:
        kw = {"method": method, "options": {"grid_constructor": _even_grid(n_steps)}}
    else:
        kw = {"method": method, "rtol": rtol, "atol": atol}
    if adjoint:
        kw["adjoint_params"] = tuple(f.parameters())
    return (odeint_adjoint if adjoint else odeint)(f, z0, t, **kw)[-1]


#: Every solver by name: ``SOLVERS[name](field, z0, t1, n_steps=, rtol=, atol=, adjoint=, impl=)``.
SOLVERS: dict[str, Callable] = {
    "rk4_mlp": _rk4_kernel,
    **{m: partial(_torchdiffeq, m) for m in FIXED if m != "rk4_mlp"},
    **{m: partial(_torchdiffeq, m) for m in ADAPTIVE},
}


def integrate(f: MLPField, z0, *, t1: float = 1.0, solver: str = "rk4_mlp",
              n_steps: int | None = None, rtol: float = 1e-3, atol: float = 1e-4,
              adjoint: bool = False, impl: str = "auto"):
    """z(t1) for dz/dt = f(z), z(0) = z0 ``(batch, d)``.

    Fixed-step solvers need ``n_steps``; adaptive ones use ``rtol``/``atol``. ``adjoint=True``
    differentiates by torchdiffeq's ``odeint_adjoint`` (solve the adjoint ODE backwards
    instead of keeping the forward graph). ``f.nfe`` counts the evaluations either way."""
    _checks.one_of("solver", solver, SOLVERS)
    if solver in FIXED and (n_steps is None or isinstance(n_steps, bool) or not isinstance(n_steps, int)
                            or n_steps < 1):
        raise ValueError(f"n_steps={n_steps!r} is not allowed for fixed-step solver {solver!r}: "
                         "expected an integer >= 1")
    return SOLVERS[solver](f, z0, t1, n_steps=n_steps, rtol=rtol, atol=atol, adjoint=adjoint,
                           impl=impl)


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
        _checks.positive_int("depth", depth)
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


#: The models of Chapter 3's capacity comparison, all with the same field form, padding and
#: read-out, by family: ``MODELS[family](d, h, n_steps)``.
#:
#: * ``"ode"`` — ODE-Net, one field of width ``h``, ``n_steps`` classical RK4 steps
#:   (``4 n_steps`` evaluations);
#: * ``"resnet"`` — ``n_steps`` untied residual blocks of width ``h`` (``n_steps`` evaluations);
#: * ``"tied_resnet"`` — one block of width ``h`` applied ``n_steps`` times (forward Euler).
MODELS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "ode": lambda d, h, n: ODENet(d, h, n_steps=n),
    "resnet": lambda d, h, n: ResNet(d, h, depth=n),
    "tied_resnet": lambda d, h, n: ResNet(d, h, depth=n, tied=True),
}
FAMILIES = tuple(MODELS)


def make_model(family: str, d: int, h: int, *, n_steps: int) -> nn.Module:
    """``MODELS[family](d, h, n_steps)``; an unknown family is an error naming it."""
    return MODELS[_checks.one_of("family", family, MODELS)](d, h, n_steps)


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
        if s["solver"] not in FIXED:
            raise ValueError(f"solver {s['solver']!r} is adaptive: its evaluations are counted in field.nfe")
        return FIXED[s["solver"]] * s["n_steps"]
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
class Spirals:
    """Training, validation (as many points) and test (four times as many) spirals."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def spirals(n_train: int, *, seed: int, device="cpu") -> Spirals:
    """:func:`two_spirals` split in that order from one generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    n = _checks.positive_int("n_train", n_train)
    parts = [t.to(device) for m in (n, n, 4 * n) for t in two_spirals(m, generator=g)]
    return Spirals(*parts)


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
    _checks.positive_int("iterations", iterations)
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


# ----------------------------------------------------------------------------- memory (C1)


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
    gradient's relative difference (2-norm), the field evaluations of one training step
    (forward and backward: the adjoint's price in compute, counted rather than timed), and
    the log–log slopes of peak bytes against steps (``backprop_slope``, ``adjoint_slope``)."""
    from dynbook.measure.fits import loglog_fit, relative_error

    out = {"steps": list(steps), "backprop_bytes": [], "adjoint_bytes": [], "grad_rel_err": [],
           "backprop_nfe": [], "adjoint_nfe": []}
    saved = dict(model.solve)
    try:
        with _single_threaded(device):
            for n in steps:
                grads = {}
                for mode in ("backprop", "adjoint"):
                    model.solve.update(solver="rk4", n_steps=n, adjoint=mode == "adjoint")
                    model.field.nfe = 0
                    nbytes, grads[mode] = training_memory(model, x, y, device=device)
                    out[f"{mode}_nfe"].append(model.field.nfe)
                    out[f"{mode}_bytes"].append(nbytes)
                out["grad_rel_err"].append(relative_error(grads["adjoint"], grads["backprop"], norm="fro"))
    finally:
        model.solve.clear()
        model.solve.update(saved)
    if len(out["steps"]) >= 2:
        for mode in ("backprop", "adjoint"):
            out[f"{mode}_slope"] = loglog_fit(out["steps"], out[f"{mode}_bytes"])[0]
    return out


def memory_records(mem: dict, *, measure: str) -> list[dict]:
    """What Chapter 3 records of :func:`memory_vs_steps`, as keyword arguments of
    :func:`dynbook.record`: bytes and gradient error per step count, then the slopes, the
    adjoint's share of memory and its price in evaluations at the most steps (claim C1), and
    the most steps."""
    out = []
    for i, n in enumerate(mem["steps"]):
        labels = {"n_steps": n, "measure": measure}
        out += [{"name": f"backprop_bytes_{n}", "value": mem["backprop_bytes"][i], "unit": "bytes"},
                {"name": f"adjoint_bytes_{n}", "value": mem["adjoint_bytes"][i], "unit": "bytes"},
                {"name": f"adjoint_grad_rel_err_{n}", "value": mem["grad_rel_err"][i]}]
        for r in out[-3:]:
            r["labels"] = labels
    n = mem["steps"][-1]
    slope = "d log bytes / d log steps"
    out += [
        {"name": "backprop_memory_slope", "value": mem["backprop_slope"], "unit": slope},
        {"name": "adjoint_memory_slope", "value": mem["adjoint_slope"], "unit": slope},
        {"name": "adjoint_memory_ratio", "value": mem["adjoint_bytes"][-1] / mem["backprop_bytes"][-1],
         "unit": "adjoint / backprop peak bytes", "labels": {"n_steps": n, "measure": measure}},
        {"name": "adjoint_grad_rel_err", "value": mem["grad_rel_err"][-1], "unit": "relative L2",
         "labels": {"n_steps": n}},
        {"name": "adjoint_nfe_ratio", "value": mem["adjoint_nfe"][-1] / mem["backprop_nfe"][-1],
         "unit": "adjoint / backprop field evaluations per training step"},
    ]
    for r in out:
        r["claim"] = "C1"
    return out + [{"name": "memory_max_steps", "value": n, "unit": "steps", "claim": None}]


def plot_memory(ax, mem: dict, *, measure: str = "") -> None:
    """Peak bytes against RK4 steps, backpropagation and adjoint (:func:`memory_vs_steps`)."""
    import matplotlib.pyplot as plt

    ax.loglog(mem["steps"], mem["backprop_bytes"], "o-", label="backprop through the solver")
    ax.loglog(mem["steps"], mem["adjoint_bytes"], "s-", label="adjoint (odeint_adjoint)")
    ax.set(xlabel="RK4 steps", ylabel=f"peak bytes ({measure})" if measure else "peak bytes")
    ax.set_xticks(mem["steps"], [str(n) for n in mem["steps"]], minor=False)
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.legend()


# ----------------------------------------------------------------------------- capacity (C2)


@dataclass
class Trained:
    """One trained classifier of the capacity comparison and what it scored."""

    model: nn.Module
    test: float  # test accuracy at the checkpoint selected on validation data
    val: float  # that checkpoint's validation accuracy
    best_iteration: int | None
    params: int
    nfe: int  # field evaluations per forward pass


def capacity_study(specs, data: Spirals, seeds, *, d: int, iterations: int, lr: float = 2e-2,
                   device="cpu") -> dict[tuple, list[Trained]]:
    """Train each model of ``specs`` — ``(family, width, n_steps)`` triples of :data:`MODELS`,
    state dimension ``d`` — from each seed (``torch.manual_seed(seed)`` before building it;
    seeds outer, specs inner), selecting checkpoints on the validation split and scoring them
    on the test split. Returns ``{spec: [Trained per seed]}``."""
    runs = {tuple(spec): [] for spec in specs}
    if len(runs) != len(specs):
        raise ValueError(f"specs={specs!r} is not allowed: expected distinct (family, width, n_steps)")
    with _single_threaded(device):
        for s in seeds:
            for family, h, n in runs:
                torch.manual_seed(s)
                model = make_model(family, d, h, n_steps=n).to(device)
                hist = train(model, data.x_train, data.y_train, iterations=iterations, lr=lr,
                             x_val=data.x_val, y_val=data.y_val)
                runs[(family, h, n)].append(Trained(
                    model, accuracy(model, data.x_test, data.y_test),
                    max(a for _, a in hist.val_accuracy), hist.best_iteration,
                    count_parameters(model), function_evaluations(model)))
    return runs


def capacity_rows(runs: dict) -> list[list]:
    """One table row per model of :func:`capacity_study`: family, width, steps, parameters,
    field evaluations, and the mean, least and largest test accuracy over seeds."""
    rows = []
    for (family, h, n), rs in runs.items():
        acc = [r.test for r in rs]
        rows.append([family, h, n, rs[0].params, rs[0].nfe, sum(acc) / len(acc), min(acc), max(acc)])
    return rows


def paired_difference(a: list[Trained], b: list[Trained]):
    """Test accuracy of ``a`` minus ``b``, paired by seed: the mean over seeds with its
    Student-t interval (:func:`dynbook.book.stats.over_seeds`)."""
    from dynbook.book.stats import over_seeds

    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} runs against {len(b)}: expected one per seed each")
    return over_seeds([x.test - y.test for x, y in zip(a, b)])


def plot_capacity(ax, runs: dict) -> None:
    """Test accuracy against parameter count, one dot per initialisation (slightly jittered
    along x so that models of equal size stay apart)."""
    names = {"ode": "ODE-Net (RK4)", "resnet": "untied ResNet", "tied_resnet": "tied ResNet"}
    for i, ((family, h, n), rs) in enumerate(runs.items()):
        jitter = 1 + 0.02 * (i - 2)
        unit = "blocks" if family == "resnet" else "steps"
        ax.plot([r.params * jitter for r in rs], [r.test for r in rs], "o", ms=6, alpha=0.8,
                label=f"{names[family]}, width {h}, {n} {unit}")
    ax.set(xscale="log", xlabel="parameters", ylabel="test accuracy")
    ax.legend(fontsize="small")


# ----------------------------------------------------------------------------- cost per sample (C3)


def per_sample_cost(models: dict, x, *, device: str, meter=None, readings: int = 3,
                    min_seconds: float | None = None) -> dict:
    """Seconds and, where ``meter`` (an :class:`~dynbook.measure.energy.EnergyMeter`) can be
    read, net picojoules per sample of inference ``model(x)`` for each of ``models`` (name →
    module), by :func:`dynbook.measure.metered.metered`: interleaved readings of at least
    ``min_seconds`` each (default 1 s with a readable meter, energy counters tick slowly;
    0.1 s for time alone), without autograd.

    Returns ``{name: Metered}``; :func:`net_fraction` says how much of the gross energy the
    models themselves drew."""
    from dynbook.measure.metered import metered

    available = meter is not None and meter.available
    if min_seconds is None:
        min_seconds = 1.0 if available else 0.1
    fns = {name: partial(m, x) for name, m in models.items()}
    with torch.no_grad(), _single_threaded(device):
        return metered(fns, units=x.shape[0], meter=meter, device=device, readings=readings,
                       min_seconds=min_seconds)


def net_fraction(costs: dict) -> float | None:
    """The smallest net ÷ gross energy over every reading of :func:`per_sample_cost`'s
    result (``None`` without energy readings): a small fraction means idle power, not the
    models, dominates the reading."""
    pairs = [(n, g) for m in costs.values() if m.picojoules is not None and m.gross_picojoules
             for n, g in zip(m.picojoules, m.gross_picojoules)]
    if not pairs or any(n is None or not g for n, g in pairs):
        return None
    return min(n / g for n, g in pairs)


def energy_status(costs: dict, meter) -> tuple[float | None, str]:
    """``(net fraction, what the energy reading was)`` for :func:`per_sample_cost`'s result:
    the fraction is ``None`` when there is no usable energy reading, and the text then says
    why (the meter's reason)."""
    frac = net_fraction(costs)
    if frac is None:
        reason = next((m.reason for m in costs.values() if m.reason), "")
        return None, reason or "the energy counter gave no net reading"
    return frac, f"{meter.source}, idle {meter.idle_watts:.3g} W subtracted"


@dataclass
class EnergyComparison:
    """Per-sample cost of a model against a baseline, and of a control against it:
    ``time_ratio`` (seconds per sample, model ÷ baseline), and when the energy counter gave
    usable readings, ``energy_ratio`` and ``energy_control`` (net joules per sample ÷
    baseline's); otherwise ``reason`` says why not. ``status`` says what the reading was."""

    costs: dict
    time_ratio: object
    status: str
    net_fraction: float | None
    energy_ratio: object = None
    energy_control: object = None
    reason: str = ""


def energy_comparison(ode_net: ODENet, baseline: nn.Module, x, *, control_steps: int,
                      device: str, meter, readings: int = 3, min_net_fraction: float = 0.25,
                      min_seconds: float | None = None) -> EnergyComparison:
    """Cost per sample of a trained ODE-Net against ``baseline`` on ``x``, both run by eager
    PyTorch code (the ODE-Net through :func:`~dynbook.kernels.rk4.rk4_mlp_reference`, never
    the fused kernel, on a copy), and of the control — the same ODE-Net with
    ``control_steps`` RK4 steps — against the same baseline: :func:`per_sample_cost` and
    :func:`dynbook.measure.metered.ratio`. Energy is used only when the net (above idle)
    energy is at least ``min_net_fraction`` of the gross in every reading: below that, idle
    power, not the models, dominates the reading. ``min_seconds``: the length of each
    reading (:func:`per_sample_cost`'s default)."""
    from dynbook.measure.metered import ratio

    _checks.probability("min_net_fraction", min_net_fraction)
    _checks.positive_int("control_steps", control_steps)
    model = copy.deepcopy(ode_net)
    model.solve.update(impl="torch")
    control = copy.deepcopy(model)
    control.solve.update(n_steps=control_steps)
    costs = per_sample_cost({"model": model, "control": control, "baseline": baseline}, x,
                            device=device, meter=meter, readings=readings, min_seconds=min_seconds)
    fraction, status = energy_status(costs, meter)
    out = EnergyComparison(costs, ratio(costs["model"], costs["baseline"]), status, fraction)
    if fraction is None:
        out.reason = status
    elif fraction < min_net_fraction:
        out.reason = (f"net joules only {fraction:.0%} of gross: idle power, not the models, "
                      "dominates the reading")
    else:
        out.energy_ratio = ratio(costs["model"], costs["baseline"], what="energy")
        out.energy_control = ratio(costs["control"], costs["baseline"], what="energy")
    return out


# ----------------------------------------------------------------------------- adaptive NFE (C4)


def adaptive_nfe_study(d: int, h: int, x, y, seeds, *, iterations: int, lr: float = 2e-2,
                       tol: float = 1e-3, device="cpu") -> dict:
    """ODE-Nets of width ``h`` integrated by ``dopri5`` (rtol = atol = ``tol``), trained from
    each seed with the field learning (``"trained"``) and frozen (``"frozen"``: only the
    read-out learns, the control). Returns ``{case: [{"model", "nfe", "loss", "growth"}]}``,
    one entry per seed; ``nfe`` is the forward evaluations of every iteration."""
    runs = {"trained": [], "frozen": []}
    with _single_threaded(device):
        for s in seeds:
            for case in ("trained", "frozen"):
                torch.manual_seed(s)
                model = ODENet(d, h, solver="dopri5", n_steps=None, rtol=tol, atol=tol).to(device)
                model.field.requires_grad_(case == "trained")
                hist = train(model, x, y, iterations=iterations, lr=lr)
                runs[case].append({"model": model, "nfe": hist.nfe, "loss": hist.loss,
                                   "growth": nfe_growth(hist.nfe)})
    return runs


def plot_nfe(ax, runs: dict, seeds) -> None:
    """Forward evaluations per iteration, one line per seed; dashed, the frozen control."""
    for i, (r, c) in enumerate(zip(runs["trained"], runs["frozen"])):
        ax.plot(r["nfe"], c=f"C{i}", label=f"seed {seeds[i]}")
        ax.plot(c["nfe"], c=f"C{i}", ls="--", lw=1)
    ax.set(xlabel="iteration", ylabel="forward function evaluations")
    ax.legend()


# ----------------------------------------------------------------------------- solvers (K2, K5)


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


@dataclass
class WorkPrecision:
    """Every solver on one field (float64): ``rows`` as :func:`solver_sweep` with ``error``
    relative to the largest |z(1)| and a ``tag`` naming the run; the two references'
    disagreement; measured orders of the fixed-step solvers; each solver's fewest evaluations
    to reach ``target`` (``None``: not reached); each adaptive solver's Spearman ρ of
    tolerance against error and against NFE."""

    rows: list[dict]
    reference_error: float
    orders: dict[str, float]
    target: float
    cheapest: dict[str, int | None]
    rank: dict[str, tuple[float, float]]

    def by_method(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for r in self.rows:
            out.setdefault(r["method"], []).append(r)
        return out


def work_precision(f: MLPField, z0, *, max_steps: int, min_tol: float, target: float = 1e-4,
                   t1: float = 1.0) -> WorkPrecision:
    """Work–precision of every solver on a float64 copy of ``f`` from ``z0``.

    Fixed steps 4, 8, …, ``max_steps``; tolerances 1e-2, 1e-3, …, ``min_tol``. The reference
    is ``dopri5`` at rtol = atol = 1e-12, itself compared with classical RK4 at 4 × ``max_steps``
    steps (``reference_error``). A fixed-step solver's order is minus the log–log slope of
    error against steps over its three finest runs whose error is above 10³ × that
    disagreement (below it the reference's own error would flatten the slope)."""
    from scipy.stats import spearmanr

    from dynbook.measure.fits import loglog_fit, relative_error

    _checks.positive_int("max_steps", max_steps, minimum=4)
    _checks.in_range("min_tol", min_tol, 1e-14, 1e-2)
    f64 = copy.deepcopy(f).double()
    z0 = z0.double()
    fixed_steps = [2**k for k in range(2, int(math.log2(max_steps)) + 1)]
    tols = [10.0**-k for k in range(2, round(-math.log10(min_tol)) + 1)]
    with torch.no_grad(), _single_threaded(z0.device):
        z_ref = integrate(f64, z0, t1=t1, solver="dopri5", rtol=1e-12, atol=1e-12)
        z_check = rk4_mlp_reference(z0, *f64.weights(), t1=t1, n_steps=4 * max_steps)
        rows = solver_sweep(f64, z0, t1=t1, fixed_steps=fixed_steps, tolerances=tols,
                            reference=z_ref)
    ref_err = relative_error(z_check, z_ref)
    scale = float(z_ref.abs().max())
    for r in rows:
        r["error"] /= scale
        r["tag"] = (f"{r['method']}_{r['setting']}" if r["kind"] == "fixed"
                    else f"{r['method']}_tol{-round(math.log10(r['setting']))}")
    wp = WorkPrecision(rows, ref_err, {}, target, {}, {})
    for m, rs in wp.by_method().items():
        hit = [r["nfe"] for r in rs if r["error"] <= target]
        wp.cheapest[m] = min(hit) if hit else None
        if m in ORDER:
            fit = [r for r in rs if r["error"] > 1e3 * ref_err][-3:]
            wp.orders[m] = -loglog_fit([r["setting"] for r in fit], [r["error"] for r in fit])[0]
        else:
            tol = [r["setting"] for r in rs]
            wp.rank[m] = (float(spearmanr(tol, [r["error"] for r in rs]).statistic),
                          float(spearmanr(tol, [r["nfe"] for r in rs]).statistic))
    return wp


def solver_records(wp: WorkPrecision) -> list[dict]:
    """What Chapter 3 records of :func:`work_precision`, as keyword arguments of
    :func:`dynbook.record`: the references' disagreement, error and NFE of every run,
    measured orders, evaluations to reach the target."""
    out = [{"name": "reference_rel_err", "value": wp.reference_error}]
    for r in wp.rows:
        labels = {"method": r["method"], "kind": r["kind"], "setting": r["setting"]}
        out += [{"name": f"solver_err_{r['tag']}", "value": r["error"], "labels": labels},
                {"name": f"solver_nfe_{r['tag']}", "value": r["nfe"], "unit": "evaluations",
                 "labels": labels}]
    out += [{"name": f"order_{m}", "value": o, "unit": "measured order"} for m, o in wp.orders.items()]
    out.append({"name": "solver_error_target", "value": wp.target})
    return out + [{"name": f"nfe_to_target_{m}", "value": n, "unit": "evaluations"}
                  for m, n in wp.cheapest.items()]


def plot_work_precision(ax, wp: WorkPrecision) -> None:
    """Relative error against evaluations: fixed-step solvers solid, adaptive ones dashed."""
    for m, rs in wp.by_method().items():
        style = "o-" if rs[0]["kind"] == "fixed" else "s--"
        ax.loglog([r["nfe"] for r in rs], [max(r["error"], 1e-16) for r in rs], style, label=m)
    ax.axhline(wp.target, c="gray", lw=1, ls=":")
    ax.set(xlabel="function evaluations", ylabel="relative error of z(1)")
    ax.legend(ncol=2)


# ----------------------------------------------------------------------------- kernel baselines (C6)


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


def rk4_timings(args, *, n_steps: int, device: str, readings: int = 3,
                min_seconds: float = 0.05) -> dict:
    """Seconds per solve of every :func:`rk4_runners` implementation available on
    ``device`` (``args`` = ``[y0, w1, b1, w2, b2]`` on it), by
    :func:`dynbook.measure.metered.metered`: ``{name: Metered}`` (units: one solve)."""
    from dynbook.measure.metered import metered

    with torch.no_grad(), _single_threaded(device):
        runners = rk4_runners(*args, n_steps=n_steps)
        return metered(runners, units=1, device=device, readings=readings, min_seconds=min_seconds)


def timing_records(timings: dict, *, batch: int, d: int, h: int, n_steps: int,
                   device: str) -> list[dict]:
    """What Chapter 3 records of :func:`rk4_timings` (claim C6a): each implementation's
    least reading and the matmul GFLOP/s it implies (:func:`~dynbook.kernels.rk4.rk4_mlp_flops`)."""
    from dynbook.kernels.rk4 import rk4_mlp_flops

    flops = rk4_mlp_flops(batch, d, h, n_steps)
    out = []
    for name, m in timings.items():
        t = min(m.seconds)
        labels = {"device": device, "batch": batch, "d": d, "h": h, "n_steps": n_steps,
                  "readings": list(m.seconds)}
        out += [{"name": f"rk4_seconds_{name}", "value": t, "unit": "s per solve (least reading)",
                 "labels": labels, "claim": "C6a"},
                {"name": f"rk4_gflops_{name}", "value": flops / t / 1e9, "unit": "GFLOP/s (matmul FLOPs)",
                 "claim": "C6a"}]
    return out


def tableau_order(args, *, steps=(4, 8)) -> dict:
    """Classical RK4 (:func:`rk4_mlp_reference`) against torchdiffeq's 3/8-rule ``rk4`` on
    ``args`` in float64 at two step counts: both are fourth order, so their largest difference
    must shrink ~2⁴ per halving of the step. Returns ``{"differences", "order"}``, the order
    being log₂ of the ratio of the two differences (steps must double)."""
    a, b = steps
    if b != 2 * a:
        raise ValueError(f"steps={steps!r} is not allowed: expected (n, 2n)")
    args = [t.double() for t in args]
    diffs = []
    with torch.no_grad(), _single_threaded(args[0].device):
        for n in steps:
            ref = rk4_mlp_reference(*args, n_steps=n)
            diffs.append(float((ref - rk4_runners(*args, n_steps=n)["torchdiffeq"]()).abs().max()))
    return {"differences": diffs, "order": math.log2(diffs[0] / diffs[1])}


def plot_timings(ax, timings: dict) -> None:
    """Seconds per solve of each implementation, one dot per reading, fastest at the bottom,
    its least reading annotated (``timings`` from :func:`rk4_timings`)."""
    best = {n: min(m.seconds) for n, m in timings.items()}
    names = sorted(best, key=best.get)
    for i, n in enumerate(names):
        ax.plot([t * 1e3 for t in timings[n].seconds], [i] * len(timings[n].seconds), "o", c="C0", alpha=0.7)
        ax.annotate(f"{best[n] * 1e3:.3g} ms", (best[n] * 1e3, i), textcoords="offset points", xytext=(8, 6))
    ax.set_yticks(range(len(names)), names)
    lo = min(best.values()) * 1e3
    hi = max(max(m.seconds) for m in timings.values()) * 1e3
    ax.set(xscale="log", xlabel="milliseconds per solve", xlim=(lo / 3, hi * 3), ylim=(-0.6, len(names) - 0.4))
