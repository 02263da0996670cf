"""Dynamic fixed point (DFP): integer GEMMs in training, after Das et al. (ICLR 2018).

A tensor ``x`` is held as integers ``q`` with one shared exponent (one scale per tensor):

    e = ⌊log₂ max|x|⌋ + 1,   scale = 2^{e − (b − 1)},   q = clamp(round(x / scale), −(2^{b−1} − 1), 2^{b−1} − 1)

so the largest magnitude uses the top bit of a ``b``-bit signed integer and nothing overflows
(``max|x| / scale < 2^{b−1}``; the clamp only acts on the rounding of that largest value). An
all-zero tensor gets scale 1. ``round`` is to nearest (ties to even), or stochastic
(``⌊v + U⌋``, ``U ~ U[0, 1)``, unbiased) where asked — for the gradients, where most entries
are far below the largest.

:class:`DFPMatmul` is the autograd function of a linear layer ``y = x Wᵀ + b`` whose three
GEMMs — forward ``x Wᵀ``, backward ``g W`` and ``gᵀ x`` — multiply integer tensors: each
operand quantised with its own scale, the integer products accumulated exactly (float64
holds integer sums exactly below 2^53: with ``b ≤ 16`` and ``K < 2^22`` no product sum
reaches it; this is an int64 accumulator, wider than Das et al.'s int32, whose overflow
handling is not modelled), and the sum rescaled by the two scales. The bias, the activation
functions, the loss and the SGD update on float32 master weights stay in float32.

:func:`teacher_task` makes the generated data (a random teacher network's classes) and
:func:`train_mlp` / :func:`training_study` train the same MLP in float32 and in DFP.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from dynbook import _checks

ROUNDINGS = ("nearest", "stochastic")


def _bits_arg(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 24:
        raise ValueError(f"bits={bits!r} is not allowed: expected an integer in [2, 24]")
    return int(bits)


def shared_exponent(x: torch.Tensor) -> int:
    """``⌊log₂ max|x|⌋ + 1`` (0 for an all-zero tensor): the exponent of the smallest power
    of two strictly above every magnitude of ``x``."""
    m = float(x.detach().abs().max()) if x.numel() else 0.0
    if not math.isfinite(m):
        raise ValueError("shared_exponent: x contains NaN or infinity")
    if m == 0.0:
        return 0
    return math.frexp(m)[1]  # m = f 2^e with f ∈ [0.5, 1): ⌊log₂ m⌋ + 1 = e


def dfp_scale(x: torch.Tensor, bits: int) -> float:
    """The scale ``2^{e − (bits − 1)}`` of ``x`` in ``bits``-bit dynamic fixed point (1 for an
    all-zero tensor)."""
    bits = _bits_arg(bits)
    if x.numel() == 0 or float(x.detach().abs().max()) == 0.0:
        return 1.0
    return math.ldexp(1.0, shared_exponent(x) - (bits - 1))


def quantize(x: torch.Tensor, bits: int, *, rounding: str = "nearest", generator=None):
    """``(q, scale)``: ``x ≈ q · scale`` with ``q`` integer-valued (float64) in
    ``[−(2^{bits−1} − 1), 2^{bits−1} − 1]`` (module docstring)."""
    bits = _bits_arg(bits)
    _checks.one_of("rounding", rounding, ROUNDINGS)
    scale = dfp_scale(x, bits)
    v = x.detach().to(torch.float64) / scale
    if rounding == "nearest":
        q = torch.round(v)
    else:
        q = torch.floor(v + torch.rand(v.shape, generator=generator, dtype=torch.float64))
    top = float(2 ** (bits - 1) - 1)
    return q.clamp(-top, top), scale


def dequantize(x: torch.Tensor, bits: int, *, rounding: str = "nearest", generator=None) -> torch.Tensor:
    """``x`` rounded to ``bits``-bit dynamic fixed point, back in ``x``'s dtype."""
    q, s = quantize(x, bits, rounding=rounding, generator=generator)
    return (q * s).to(x.dtype)


def int_matmul(a: torch.Tensor, b: torch.Tensor, bits: int, *, rounding: str = "nearest",
               generator=None) -> torch.Tensor:
    """``a @ b`` through ``bits``-bit DFP: both operands quantised (own scales), integer
    products summed exactly, the sum rescaled; float32 result."""
    qa, sa = quantize(a, bits, rounding=rounding, generator=generator)
    qb, sb = quantize(b, bits, rounding=rounding, generator=generator)
    return ((qa @ qb) * (sa * sb)).to(torch.float32)


class DFPMatmul(torch.autograd.Function):
    """``y = x Wᵀ`` with integer GEMMs forward and backward (module docstring).
    ``apply(x, weight, bits, grad_bits, grad_rounding, generator)``: activations and weights in
    ``bits``-bit DFP (to nearest), the incoming gradient in ``grad_bits``-bit DFP rounded by
    ``grad_rounding``; ``x: (batch, in)``, ``weight: (out, in)``."""

    @staticmethod
    def forward(ctx, x, weight, bits, grad_bits, grad_rounding, generator):
        ctx.save_for_backward(x, weight)
        ctx.cfg = (bits, grad_bits, grad_rounding, generator)
        return int_matmul(x, weight.t(), bits)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        bits, grad_bits, grad_rounding, generator = ctx.cfg
        qg, sg = quantize(grad, grad_bits, rounding=grad_rounding, generator=generator)
        qw, sw = quantize(weight, bits)
        qx, sx = quantize(x, bits)
        grad_x = ((qg @ qw) * (sg * sw)).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_w = ((qg.t() @ qx) * (sg * sx)).to(weight.dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None, None, None


class DFPLinear(torch.nn.Linear):
    """A ``Linear`` layer whose GEMMs run in dynamic fixed point (:class:`DFPMatmul`); the
    bias is added in float32."""

    def __init__(self, in_features: int, out_features: int, *, bits: int = 16, grad_bits: int | None = None,
                 grad_rounding: str = "nearest", generator=None):
        super().__init__(in_features, out_features)
        self.bits = _bits_arg(bits)
        self.grad_bits = _bits_arg(bits if grad_bits is None else grad_bits)
        self.grad_rounding = _checks.one_of("grad_rounding", grad_rounding, ROUNDINGS)
        self.generator = generator

    def forward(self, x):
        y = DFPMatmul.apply(x, self.weight, self.bits, self.grad_bits, self.grad_rounding, self.generator)
        return y + self.bias


# ----------------------------------------------------------------------------- data and training


def teacher_task(seed: int, *, d_in: int = 16, n_classes: int = 10, teacher_width: int = 32,
                 n_train: int = 4000, n_test: int = 2000) -> dict:
    """Classification data from a random teacher: ``x ~ N(0, I_{d_in})``, label = argmax of a
    random tanh network ``d_in → teacher_width → n_classes``. Returns ``x_train, y_train,
    x_test, y_test`` (float32, int64)."""
    for name, v in (("d_in", d_in), ("n_classes", n_classes), ("teacher_width", teacher_width),
                    ("n_train", n_train), ("n_test", n_test)):
        _checks.positive_int(name, v, minimum=2)
    g = torch.Generator().manual_seed(int(seed) + 7919)
    w1 = torch.randn(d_in, teacher_width, generator=g) / math.sqrt(d_in)
    w2 = torch.randn(teacher_width, n_classes, generator=g) / math.sqrt(teacher_width)
    x = torch.randn(n_train + n_test, d_in, generator=g)
    y = (torch.tanh(2 * x @ w1) @ w2).argmax(1)
    return {"x_train": x[:n_train], "y_train": y[:n_train], "x_test": x[n_train:], "y_test": y[n_train:]}


ARITHMETICS = ("fp32", "dfp")


def make_mlp(d_in: int, width: int, n_classes: int, *, arithmetic: str = "fp32", bits: int = 16,
             grad_bits: int | None = None, grad_rounding: str = "nearest", generator=None) -> torch.nn.Sequential:
    """``d_in → width → width → n_classes`` with ReLU, in float32 (``arithmetic="fp32"``) or
    with :class:`DFPLinear` layers (``"dfp"``)."""
    _checks.one_of("arithmetic", arithmetic, ARITHMETICS)
    if arithmetic == "fp32":
        lin = torch.nn.Linear
    else:
        def lin(i, o):
            return DFPLinear(i, o, bits=bits, grad_bits=grad_bits, grad_rounding=grad_rounding, generator=generator)
    return torch.nn.Sequential(lin(d_in, width), torch.nn.ReLU(), lin(width, width), torch.nn.ReLU(),
                               lin(width, n_classes))


def train_mlp(data: dict, *, width: int = 64, steps: int = 300, lr: float = 0.05, batch: int = 128,
              seed: int = 0, arithmetic: str = "fp32", bits: int = 16, grad_bits: int | None = None,
              grad_rounding: str = "nearest") -> torch.nn.Sequential:
    """Train :func:`make_mlp` by minibatch SGD with momentum 0.9 (float32 master weights) on
    ``data`` (:func:`teacher_task`) for ``steps`` steps; the same initial weights and batches
    for every arithmetic at one ``seed``."""
    steps = _checks.positive_int("steps", steps)
    batch = _checks.positive_int("batch", batch)
    _checks.positive("lr", lr)
    x, y = data["x_train"], data["y_train"]
    n_classes = int(max(int(data["y_train"].max()), int(data["y_test"].max()))) + 1
    torch.manual_seed(int(seed))
    g = torch.Generator().manual_seed(int(seed) + 1)
    model = make_mlp(x.shape[1], width, n_classes, arithmetic=arithmetic, bits=bits, grad_bits=grad_bits,
                     grad_rounding=grad_rounding, generator=torch.Generator().manual_seed(int(seed) + 2))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` whose argmax output is ``y``."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def training_study(seeds: Sequence[int], formats: dict, *, d_in: int = 16, width: int = 64, n_classes: int = 10,
                   n_train: int = 4000, n_test: int = 2000, steps: int = 300, lr: float = 0.05) -> dict:
    """Per seed, train the MLP in float32 and in each DFP format of ``formats`` (name →
    ``{"bits": b, "grad_bits": gb, "grad_rounding": r}``) from the same start on the same
    batches. Returns ``{"fp32": [test acc per seed], name: [...], "drop_<name>": [fp32 − name],
    "runs": [(data, fp32 model) per seed]}`` (the runs for later evaluation in other arithmetics)."""
    out: dict[str, list] = {"fp32": [], "runs": []}
    for s in seeds:
        data = teacher_task(int(s), d_in=d_in, n_classes=n_classes, n_train=n_train, n_test=n_test)
        model = train_mlp(data, width=width, steps=steps, lr=lr, seed=int(s))
        base = accuracy(model, data["x_test"], data["y_test"])
        out["fp32"].append(base)
        out["runs"].append((data, model))
        for name, cfg in formats.items():
            m = train_mlp(data, width=width, steps=steps, lr=lr, seed=int(s), arithmetic="dfp", **cfg)
            acc = accuracy(m, data["x_test"], data["y_test"])
            out.setdefault(name, []).append(acc)
            out.setdefault(f"drop_{name}", []).append(base - acc)
    return out
