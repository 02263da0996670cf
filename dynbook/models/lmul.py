"""L-Mul: a floating-point multiply approximated by one integer addition (Luo & Sun 2024).

Glossary (paper → code). A normal float is ``x = (−1)^s (1 + x_m) 2^{x_e}`` with the
mantissa fraction ``x_m ∈ [0, 1)`` held in ``k`` bits. The exact product is
``(1 + x_m + y_m + x_m y_m) 2^{x_e + y_e}``; L-Mul drops the term ``x_m y_m`` and adds a
constant offset instead:

    L-Mul(x, y) = (−1)^{s_x ⊕ s_y} (1 + x_m + y_m + 2^{−l(k)}) 2^{x_e + y_e},
    l(k) = k if k ≤ 3,  3 if k = 4,  4 if k > 4          (the paper's rule, :func:`offset_bits`)

On the bit patterns this is one integer addition: ``|x|_bits + |y|_bits − bias + offset``
(exponent and mantissa fields added together, ``bias = 127 · 2^23`` for float32, offset
``2^{23 − l(k)}`` in units of the last float32 mantissa bit), with the sign an XOR. Because the
fields are added as one integer, a mantissa sum ``s = x_m + y_m + 2^{−l} ≥ 1`` carries into the
exponent: the result is ``(1 + s − c) 2^{x_e + y_e + c}`` with ``c = ⌊s⌋`` (``c = 1``: the value
``2 s 2^{x_e + y_e}``; ``c = 2`` is reached for ``k ≥ 4`` when both mantissas are near full). That
is what an integer adder gives; the paper's formula read without renormalisation would give
``(1 + s) 2^{x_e + y_e}``. :func:`lmul_reference` is the scalar statement of the adder.

Defined behaviour here (:func:`lmul`):

* operands are float32; each is first reduced to ``k`` mantissa bits (``rounding="truncate"``
  drops the low bits, ``"nearest"`` rounds to nearest, ties to even on the bit pattern — for
  ``k = 0`` the last kept bit is the exponent's lowest; a round-up may carry into the exponent);
* **subnormals are flushed to zero**, on input and on output (an exponent field ≤ 0 after the
  addition gives a signed zero), as flush-to-zero hardware does;
* zero × finite = signed zero; NaN × anything = NaN; ∞ × 0 = NaN (also when the 0 is a flushed
  subnormal); ∞ × nonzero = signed ∞; an exponent field ≥ 255 after the addition is signed ∞;
* the sign of every result (zeros and infinities included) is ``s_x ⊕ s_y``.

Also here: rounding to fp8 (e4m3, e5m2), bf16 and fp16 through torch casts
(:func:`round_to`), the product in such a format (:func:`format_multiply`), the L-Mul GEMM
(:func:`lmul_matmul`, emulated and chunked over K) with a choice of accumulator, the error
studies of the chapter, and the per-operation energy arithmetic of the paper's 95 % / 80 %
claims (:func:`lmul_savings`) and of the free-multiply bound (:func:`multiply_share`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from dynbook import _checks
from dynbook.measure import costs
from dynbook.measure.energy import HOROWITZ_45NM_PJ, EnergyModel

MANTISSA_BITS = 23
EXPONENT_BIAS = 127
_BIAS_BITS = EXPONENT_BIAS << MANTISSA_BITS
_ABS_MASK = 0x7FFFFFFF

#: Formats reached by a torch cast: name → (dtype, mantissa bits).
FORMATS = {
    "fp32": (torch.float32, 23),
    "bf16": (torch.bfloat16, 7),
    "fp16": (torch.float16, 10),
    "e4m3": (torch.float8_e4m3fn, 3),
    "e5m2": (torch.float8_e5m2, 2),
}

def offset_bits(k: int) -> int:
    """The paper's offset exponent ``l(k)``: ``k`` for ``k ≤ 3``, 3 for ``k = 4``, 4 for ``k > 4``
    (the offset added to the mantissa sum is ``2^{−l(k)}``)."""
    k = _mantissa_arg(k)
    return k if k <= 3 else 3 if k == 4 else 4


def _mantissa_arg(k, name: str = "mantissa_bits") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= MANTISSA_BITS:
        raise ValueError(f"{name}={k!r} is not allowed: expected an integer in [0, {MANTISSA_BITS}]")
    return int(k)


def _as_float32(name: str, x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dtype != torch.float32:
        if not x.is_floating_point():
            raise ValueError(f"{name} has dtype {x.dtype}, which is not allowed: expected a float tensor")
        x = x.to(torch.float32)
    return x


def _reduce_bits(mag: torch.Tensor, k: int, rounding: str) -> torch.Tensor:
    """Magnitude bit patterns (int64, sign cleared) with the mantissa cut to ``k`` bits."""
    drop = MANTISSA_BITS - k
    if drop == 0:
        return mag
    if rounding == "truncate":
        return (mag >> drop) << drop
    half = 1 << (drop - 1)
    # round to nearest, ties to even: add half − 1 plus the bit that will become the last
    return ((mag + (half - 1) + ((mag >> drop) & 1)) >> drop) << drop


def reduce_mantissa(x, mantissa_bits: int, *, rounding: str = "truncate") -> torch.Tensor:
    """``x`` (float32) with its mantissa cut to ``mantissa_bits`` bits (exponent range of
    float32 kept; NaN and ∞ pass through; a round-up past the largest finite value is ∞)."""
    k = _mantissa_arg(mantissa_bits)
    _checks.one_of("rounding", rounding, ("truncate", "nearest"))
    x = _as_float32("x", x)
    bits = x.contiguous().view(torch.int32).to(torch.int64)
    sign, mag = bits & ~_ABS_MASK & 0xFFFFFFFF, bits & _ABS_MASK
    special = mag >= (255 << MANTISSA_BITS)
    out = torch.where(special, mag, _reduce_bits(mag, k, rounding).clamp(max=255 << MANTISSA_BITS))
    return _to_float32(sign | out)


def _to_float32(bits: torch.Tensor) -> torch.Tensor:
    bits = torch.where(bits >= 1 << 31, bits - (1 << 32), bits)  # two's complement of the sign
    return bits.to(torch.int32).view(torch.float32)


def _split(x: torch.Tensor, k: int, rounding: str):
    """(sign bit as 0/1, reduced magnitude bits, is-zero after flush, is-inf, is-nan)."""
    bits = x.contiguous().view(torch.int32).to(torch.int64)
    sign = (bits >> 31) & 1
    mag = bits & _ABS_MASK
    exp = mag >> MANTISSA_BITS
    nan = (exp == 255) & ((mag & 0x7FFFFF) != 0)
    inf = mag == (255 << MANTISSA_BITS)
    zero = exp == 0  # zeros and subnormals (flushed)
    mag = torch.where(nan | inf | zero, mag, _reduce_bits(mag, k, rounding))
    inf = inf | (~nan & ~zero & (mag >= (255 << MANTISSA_BITS)))  # rounded past the top
    return sign, mag, zero, inf, nan


def _combine(sx, mx, zx, ix, nx, sy, my, zy, iy, ny, offset: int) -> torch.Tensor:
    sign = (sx ^ sy) << 31
    mag = mx + my - _BIAS_BITS + offset
    underflow = mag < (1 << MANTISSA_BITS)  # exponent field ≤ 0: flushed to zero
    overflow = mag >= (255 << MANTISSA_BITS)
    inf = ix | iy | overflow
    zero = zx | zy | underflow
    nan = nx | ny | ((ix | iy) & (zx | zy))
    mag = torch.where(zero, torch.zeros_like(mag), mag)
    mag = torch.where(inf, torch.full_like(mag, 255 << MANTISSA_BITS), mag)
    mag = torch.where(nan, torch.full_like(mag, 0x7FC00000), mag)
    return _to_float32(sign | mag)


def lmul(x, y, mantissa_bits: int = 4, *, rounding: str = "truncate") -> torch.Tensor:
    """Elementwise L-Mul of float32 tensors ``x`` and ``y`` (broadcast) with ``mantissa_bits``
    (= k) mantissa bits per operand: one integer addition of the bit patterns (module
    docstring; subnormals flushed to zero). Returns float32 whose mantissa has at most k bits."""
    k = _mantissa_arg(mantissa_bits)
    _checks.one_of("rounding", rounding, ("truncate", "nearest"))
    x, y = _as_float32("x", x), _as_float32("y", y)
    x, y = torch.broadcast_tensors(x, y)
    offset = 1 << (MANTISSA_BITS - offset_bits(k))
    return _combine(*_split(x, k, rounding), *_split(y, k, rounding), offset)


def lmul_reference(x: float, y: float, mantissa_bits: int = 4, *, rounding: str = "truncate") -> float:
    """Scalar L-Mul in plain Python floats, case by case (the statement :func:`lmul` is tested
    against): decompose, cut the mantissas, apply the formula and the adder's carry."""
    k = _mantissa_arg(mantissa_bits)
    sign = -1.0 if (math.copysign(1.0, x) < 0) != (math.copysign(1.0, y) < 0) else 1.0
    if math.isnan(x) or math.isnan(y):
        return math.nan
    tiny = 2.0 ** -126

    def parts(v):
        v = abs(v)
        if v < tiny:
            return None  # zero or subnormal: flushed
        if math.isinf(v):
            return "inf"
        m, e = math.frexp(v)  # v = m 2^e, m ∈ [0.5, 1)
        frac, e = 2 * m - 1, e - 1
        scaled = frac * 2 ** k
        if rounding == "truncate":
            q = math.floor(scaled)
        elif k == 0 and scaled == 0.5:  # a tie with no mantissa bit: the last kept bit is the exponent's
            q = (e + EXPONENT_BIAS) % 2
        else:
            q = _round_half_even(scaled)
        frac = q / 2 ** k
        if frac >= 1:  # rounding carried into the exponent
            frac, e = 0.0, e + 1
        return frac, e

    px, py = parts(x), parts(y)
    if px == "inf" or py == "inf":
        return math.nan if px is None or py is None else sign * math.inf
    if (px is not None and px[1] > 127) or (py is not None and py[1] > 127):
        return math.nan if px is None or py is None else sign * math.inf
    if px is None or py is None:
        return sign * 0.0
    s = px[0] + py[0] + 2.0 ** -offset_bits(k)
    e = px[1] + py[1]
    carry = math.floor(s)  # the mantissa sum carries into the exponent field (up to 2 for k ≥ 4)
    s, e = s - carry, e + carry
    if e < -126:
        return sign * 0.0
    if e > 127:
        return sign * math.inf
    return sign * (1 + s) * 2.0 ** e


def _round_half_even(v: float) -> int:
    f = math.floor(v)
    r = v - f
    if r > 0.5 or (r == 0.5 and f % 2 == 1):
        return f + 1
    return f


# ----------------------------------------------------------------------------- formats


def round_to(x, fmt: str) -> torch.Tensor:
    """``x`` rounded to ``fmt`` ("fp32", "bf16", "fp16", "e4m3", "e5m2") by a torch cast
    (round to nearest even; e4m3 saturates at ±448 in torch's cast, e5m2 overflows to ∞),
    returned as float32."""
    _checks.one_of("fmt", fmt, FORMATS)
    x = _as_float32("x", x)
    return x.to(FORMATS[fmt][0]).to(torch.float32)


def format_multiply(x, y, fmt: str) -> torch.Tensor:
    """The product a ``fmt`` multiplier returns: operands rounded to ``fmt``, multiplied
    exactly (two significands of ≤ 11 bits fit float32's 24), the product rounded to ``fmt``."""
    return round_to(round_to(x, fmt) * round_to(y, fmt), fmt)


def log_uniform_operands(n: int, *, octaves: float = 3.0, generator=None) -> torch.Tensor:
    """``n`` float32 values ``±2^u``, ``u`` uniform in ``[−octaves, octaves)``, random signs:
    mantissas spread as in real data (log-uniform), magnitudes such that every pairwise
    product of the default range, ``[2^−6, 2^6)``, is a normal e4m3 number."""
    n = _checks.positive_int("n", n)
    _checks.positive("octaves", octaves)
    u = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * octaves
    s = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64) * 2 - 1
    return (s * torch.exp2(u)).to(torch.float32)


def relative_errors(approx: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``|approx − x y| / |x y|`` per element, against the exact product in float64."""
    exact = x.to(torch.float64) * y.to(torch.float64)
    return ((approx.to(torch.float64) - exact).abs() / exact.abs())


def product_errors(n: int, *, lmul_bits: Sequence[int] = (1, 2, 3, 4), formats=("e4m3", "e5m2", "bf16", "fp16"),
                   rounding: str = "nearest", seed: int = 0) -> dict[str, np.ndarray]:
    """Relative errors of ``n`` products of :func:`log_uniform_operands` pairs, per arithmetic:
    ``"lmul<k>"`` for each ``k`` and each format's multiplier (:func:`format_multiply`).
    Returns ``{name: errors (n,)}`` as float64 numpy arrays."""
    g = torch.Generator().manual_seed(int(seed))
    x, y = log_uniform_operands(n, generator=g), log_uniform_operands(n, generator=g)
    out = {f"lmul{k}": relative_errors(lmul(x, y, k, rounding=rounding), x, y).numpy() for k in lmul_bits}
    out.update({f: relative_errors(format_multiply(x, y, f), x, y).numpy() for f in formats})
    return out


# ----------------------------------------------------------------------------- GEMMs


def lmul_matmul(a, b, mantissa_bits: int = 4, *, rounding: str = "truncate", accumulate: str = "fp32",
                chunk: int | None = None, max_elements: int = 1 << 21) -> torch.Tensor:
    """``a @ b`` (``(m, K) @ (K, n)``, float32) with every product an L-Mul of ``mantissa_bits``
    bits. Products are summed in float32 (``accumulate="fp32"``: a chunk's products summed by
    torch, chunks added in order), or one by one in order with the running sum rounded to
    ``accumulate`` ("bf16", "fp16", "e4m3", "e5m2") after every addition, as a
    low-precision accumulator would. K is processed in chunks of ``chunk`` (default: as many
    as keep ``m · chunk · n ≤ max_elements``), so memory stays bounded."""
    k = _mantissa_arg(mantissa_bits)
    _checks.one_of("rounding", rounding, ("truncate", "nearest"))
    _checks.one_of("accumulate", accumulate, FORMATS)
    a, b = _as_float32("a", a), _as_float32("b", b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"lmul_matmul shapes {tuple(a.shape)} @ {tuple(b.shape)} are not allowed: "
                         "expected (m, K) @ (K, n)")
    m, kk = a.shape
    n = b.shape[1]
    if chunk is None:
        chunk = max(1, _checks.positive_int("max_elements", max_elements) // max(1, m * n))
    chunk = _checks.positive_int("chunk", chunk)
    offset = 1 << (MANTISSA_BITS - offset_bits(k))
    pa = _split(a, k, rounding)
    pb = _split(b, k, rounding)
    fast = _fast_operands(pa, pb, offset)
    acc = torch.zeros(m, n, dtype=torch.float32)
    for start in range(0, kk, chunk):
        sl = slice(start, min(kk, start + chunk))
        if fast is not None:
            prod = _fast_products(tuple(t[:, sl, None] for t in fast[0]), tuple(t[None, sl, :] for t in fast[1]))
        else:
            prod = _combine(*(t[:, sl, None] for t in pa), *(t[None, sl, :] for t in pb), offset)
        if accumulate == "fp32":
            acc = acc + prod.sum(1)
        else:
            for j in range(prod.shape[1]):
                acc = round_to(acc + prod[:, j, :], accumulate)
    return acc


_ZERO_SENTINEL = -(1 << 30)


def _fast_operands(pa, pb, offset: int):
    """int32 operands for the common case — no NaN or ∞, and no exponent sum that can
    overflow: ``a`` holds sign·2^31 | magnitude (a flushed zero's magnitude replaced by
    −2^30, which drives every sum below the smallest normal), ``b`` its magnitude minus the
    bias plus the offset. Then one int32 addition per product gives the magnitude and a
    second (an XOR of the sign bits) the sign. ``None`` when the general path is needed."""
    sa, ma, za, ia, na = pa
    sb, mb, zb, ib, nb = pb
    if bool(ia.any() | na.any() | ib.any() | nb.any()):
        return None
    ma = torch.where(za, torch.full_like(ma, _ZERO_SENTINEL), ma)
    mb = torch.where(zb, torch.full_like(mb, _ZERO_SENTINEL), mb - _BIAS_BITS + offset)
    if int(ma.max()) + int(mb.max()) >= 255 << MANTISSA_BITS:
        return None  # a product could overflow to ∞: take the general path
    return (ma.to(torch.int32), sa.to(torch.int32) << 31), (mb.to(torch.int32), sb.to(torch.int32) << 31)


def _fast_products(fa, fb) -> torch.Tensor:
    (ma, sa), (mb, sb) = fa, fb
    mag = ma + mb  # within int32: |sum| < 2^31 by the sentinel's and the bias's sizes
    mag = torch.where(mag < (1 << MANTISSA_BITS), 0, mag)
    return (mag | (sa ^ sb)).view(torch.float32)


def format_matmul(a, b, fmt: str) -> torch.Tensor:
    """``a @ b`` with both operands rounded to ``fmt`` and the products (exact) accumulated in
    float32, the way fp8/bf16 tensor cores accumulate; the result stays float32."""
    a, b = round_to(a, fmt), round_to(b, fmt)
    return a @ b


def gemm_error_study(ks: Sequence[int], *, m: int = 32, n: int = 32, mantissa_bits: int = 4,
                     control_accumulate: str = "e4m3", formats=("e4m3", "e5m2", "bf16"),
                     rounding: str = "nearest", seeds: Sequence[int] = (0,)) -> dict:
    """Relative Frobenius error ‖C − AB‖/‖AB‖ against float64 of ``(m, K) @ (K, n)`` GEMMs of
    standard normal matrices, for each ``K`` in ``ks`` and each seed: the L-Mul GEMM with
    float32 accumulation (``"lmul"``), the same products accumulated in
    ``control_accumulate`` (``"lmul_acc"``), and each format's GEMM. Returns
    ``{name: array (len(seeds), len(ks))}``, plus the fitted log-log exponents in K of the
    per-K mean (``exponent``: name → Estimate)."""
    from dynbook.measure.fits import loglog_slope

    ks = [_checks.positive_int("K", int(k)) for k in ks]
    names = ["lmul", "lmul_acc", *formats]
    err = {name: np.zeros((len(seeds), len(ks))) for name in names}
    for i, s in enumerate(seeds):
        g = torch.Generator().manual_seed(int(s))
        for j, kk in enumerate(ks):
            a = torch.randn(m, kk, generator=g)
            b = torch.randn(kk, n, generator=g)
            exact = a.double() @ b.double()
            norm = exact.norm()
            got = {"lmul": lmul_matmul(a, b, mantissa_bits, rounding=rounding),
                   "lmul_acc": lmul_matmul(a, b, mantissa_bits, rounding=rounding,
                                           accumulate=control_accumulate)}
            got.update({f: format_matmul(a, b, f) for f in formats})
            for name, c in got.items():
                err[name][i, j] = float((c.double() - exact).norm() / norm)
    exponent = {name: loglog_slope(ks, e.mean(0)) for name, e in err.items()}
    return {"ks": ks, "error": err, "exponent": exponent}


# ----------------------------------------------------------------------------- networks


def lmul_linear(x, weight, bias=None, mantissa_bits: int = 4, *, rounding: str = "nearest",
                max_elements: int = 1 << 21) -> torch.Tensor:
    """``x @ weight.T + bias`` with every multiplication an L-Mul (float32 accumulation; the
    bias added in float32). ``x: (batch, in)``, ``weight: (out, in)``."""
    y = lmul_matmul(x, weight.t().contiguous(), mantissa_bits, rounding=rounding, max_elements=max_elements)
    return y if bias is None else y + bias


def lmul_forward(model: torch.nn.Sequential, x, mantissa_bits: int, *, rounding: str = "nearest") -> torch.Tensor:
    """Run ``model`` (a ``Sequential`` of ``Linear`` layers and elementwise activations) with
    each ``Linear``'s multiplications replaced by L-Mul; other modules run as they are."""
    if not isinstance(model, torch.nn.Sequential):
        raise ValueError(f"model of type {type(model).__name__} is not allowed: expected torch.nn.Sequential")
    h = _as_float32("x", x)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                h = lmul_linear(h, layer.weight, layer.bias, mantissa_bits, rounding=rounding)
            else:
                h = layer(h)
    return h


def network_study(runs, *, mantissa_bits: Sequence[int] = (4,), formats=("e4m3",),
                  rounding: str = "nearest") -> dict:
    """Evaluate trained float32 MLPs (``runs``: ``[(data, model)]`` as returned by
    :func:`dynbook.models.fixed_point.training_study`, data from its ``teacher_task``) on
    their test sets with exact fp32 products, with every multiplication an L-Mul of each
    ``mantissa_bits`` (``"lmul<k>"``), and with weights and activations rounded to each
    format (``formats``, products accumulated in float32). Returns ``{"fp32": [acc per run],
    name: [acc per run], "drop_<name>": [fp32 acc − acc per run]}``."""
    out: dict[str, list] = {"fp32": []}
    for data, model in runs:
        xt, yt = data["x_test"], data["y_test"]
        with torch.no_grad():
            base = float((model(xt).argmax(1) == yt).float().mean())
        out["fp32"].append(base)
        for k in mantissa_bits:
            acc = float((lmul_forward(model, xt, k, rounding=rounding).argmax(1) == yt).float().mean())
            out.setdefault(f"lmul{k}", []).append(acc)
            out.setdefault(f"drop_lmul{k}", []).append(base - acc)
        for f in formats:
            acc = float((_format_forward(model, xt, f).argmax(1) == yt).float().mean())
            out.setdefault(f, []).append(acc)
            out.setdefault(f"drop_{f}", []).append(base - acc)
    return out


def _format_forward(model: torch.nn.Sequential, x, fmt: str) -> torch.Tensor:
    h = x
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                h = format_matmul(h, layer.weight.t(), fmt) + layer.bias
            else:
                h = layer(h)
    return h


# ----------------------------------------------------------------------------- energy


def lmul_savings(table: dict | None = None) -> dict[str, float]:
    """The paper's energy arithmetic on Horowitz's 45 nm costs: an L-Mul replaces a float
    multiply by one integer add of the same width (an fp32 multiply by an int32 add).
    ``elementwise``: ``1 − int32_add / fp32_mult``; ``dot``: per multiply-accumulate,
    ``1 − (int32_add + fp32_add) / (fp32_mult + fp32_add)`` (the accumulation stays in fp32).
    The ``*_fp16`` entries do the same for fp16 with an int16 adder costed as two int8 adds."""
    t = {**HOROWITZ_45NM_PJ, **(table or {})}
    int16_add = 2 * t["int8_add"]
    return {
        "elementwise": 1 - t["int32_add"] / t["fp32_mult"],
        "dot": 1 - (t["int32_add"] + t["fp32_add"]) / (t["fp32_mult"] + t["fp32_add"]),
        "elementwise_fp16": 1 - int16_add / t["fp16_mult"],
        "dot_fp16": 1 - (int16_add + t["fp16_add"]) / (t["fp16_mult"] + t["fp16_add"]),
    }


def multiply_share(batch: int, n: int, k: int, *, dtype: str = "fp32", dram_pj_per_64bit: float | None = None,
                   multiply_pj: float = 0.0) -> dict[str, float]:
    """Modelled energy of one GEMM ``(batch, k) @ (k, n)`` (chapter 1's
    :class:`~dynbook.measure.energy.EnergyModel`: Horowitz arithmetic plus compulsory bytes
    read from DRAM at ``dram_pj_per_64bit``, default the table's 1.3 nJ) and the fraction a
    cheaper multiply saves: ``saving`` = (multiplies × (mult cost − ``multiply_pj``)) / total
    (``multiply_pj = 0``: a free multiply). Also returns ``total_pj``, ``arithmetic_pj`` and
    ``movement_share``."""
    batch, n, k = (_checks.positive_int(nm, v) for nm, v in (("batch", batch), ("n", n), ("k", k)))
    _checks.one_of("dtype", dtype, ("fp32", "fp16", "bf16"))
    dram = HOROWITZ_45NM_PJ["dram_read_64bit"] if dram_pj_per_64bit is None else \
        _checks.positive("dram_pj_per_64bit", dram_pj_per_64bit)
    _checks.positive("multiply_pj", multiply_pj, allow_zero=True)
    itemsize = 4 if dtype == "fp32" else 2
    c = costs.kernel_costs("gemm", itemsize=itemsize, n=n, k=k, batch=batch)
    model = EnergyModel(c["flops"], c["bytes"], dtype=dtype)
    dram_pj = model.dram_pj * dram / HOROWITZ_45NM_PJ["dram_read_64bit"]
    total = model.arithmetic_pj + dram_pj
    kind = "fp16" if dtype in ("fp16", "bf16") else "fp32"
    mults = c["flops"] / 2
    saving = mults * (HOROWITZ_45NM_PJ[f"{kind}_mult"] - multiply_pj) / total
    return {"saving": saving, "total_pj": total, "arithmetic_pj": model.arithmetic_pj,
            "movement_share": dram_pj / total}


def share_interval(batch: int, n: int, k: int, *, dtype: str = "fp32", multiply_pj: float = 0.0):
    """The saving of :func:`multiply_share` as an :class:`~dynbook.book.stats.Estimate` over
    the table's DRAM range (1.3–2.6 nJ per 64 bit): value and upper end at 1.3 nJ (the
    optimistic end for arithmetic), lower end at 2.6 nJ. A model range, not a sampling interval."""
    from dynbook.book.stats import Estimate

    hi = multiply_share(batch, n, k, dtype=dtype, multiply_pj=multiply_pj,
                        dram_pj_per_64bit=HOROWITZ_45NM_PJ["dram_read_64bit"])["saving"]
    lo = multiply_share(batch, n, k, dtype=dtype, multiply_pj=multiply_pj,
                        dram_pj_per_64bit=HOROWITZ_45NM_PJ["dram_read_64bit_high"])["saving"]
    return Estimate(hi, lo, hi, "Horowitz model over DRAM 1.3–2.6 nJ/64 bit", 2, (lo, hi))


# ----------------------------------------------------------------------------- timing


def gemm_timings(batches: Sequence[int], *, n: int = 512, k: int = 512, dtypes=("fp32", "bf16", "fp16"),
                 int8: bool = True, readings: int = 3, min_seconds: float = 0.05, device: str = "cpu",
                 meter=None) -> dict:
    """Seconds per FLOP of ``(batch, k) @ (k, n)`` GEMMs in each dtype (and int8 through
    ``torch._int_mm`` when it runs here, ``int8=True``; below 32 rows it runs padded to 32, and
    only the batch's own ``2·batch·n·k`` FLOPs count), by
    :func:`dynbook.measure.metered.metered` (interleaved readings; energy only where a counter
    can be read by ``meter``, an :class:`~dynbook.measure.energy.EnergyMeter`). Returns ``{(dtype, batch): Metered}`` and ``"int8_reason"`` when int8 is
    missing."""
    from dynbook.measure.metered import metered

    fns, units, reason = {}, {}, ""
    for bsz in batches:
        for dt in dtypes:
            x = torch.randn(bsz, k, device=device).to(FORMATS[dt][0])
            w = torch.randn(k, n, device=device).to(FORMATS[dt][0])
            fns[f"{dt}@{bsz}"] = (lambda x=x, w=w: x @ w)
            units[f"{dt}@{bsz}"] = 2.0 * bsz * n * k
        if int8:
            # torch._int_mm needs m > 16 on some backends: pad the batch to 32 rows
            rows = max(bsz, 32)
            xi = torch.randint(-127, 128, (rows, k), dtype=torch.int8, device=device)
            wi = torch.randint(-127, 128, (k, n), dtype=torch.int8, device=device)
            try:
                torch._int_mm(xi, wi)
                fns[f"int8@{bsz}"] = (lambda xi=xi, wi=wi: torch._int_mm(xi, wi))
                units[f"int8@{bsz}"] = 2.0 * bsz * n * k  # useful FLOPs: the padded rows are waste
            except (RuntimeError, AttributeError) as e:
                reason = f"torch._int_mm unavailable: {e}"
    got = metered(fns, units=units, readings=readings, min_seconds=min_seconds, device=device, meter=meter)
    return {"metered": got, "int8_reason": reason}
