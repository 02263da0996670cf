"""L-Mul bit cases against the scalar reference, the format helpers against torch casts, the
L-Mul GEMM against elementwise L-Mul, and the energy-model arithmetic."""

import math
import struct

import numpy as np
import pytest
import torch

from dynbook.models import lmul as L

pytestmark = pytest.mark.usefixtures("one_thread")


def f32(v: float) -> float:
    return struct.unpack("f", struct.pack("f", v))[0]


def from_bits(b: int) -> float:
    return struct.unpack("f", struct.pack("I", b & 0xFFFFFFFF))[0]


def same(a: float, b: float) -> bool:
    """Equal as floats, NaN equal to NaN, and the sign of zero and infinity checked."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1, a) == math.copysign(1, b)


def test_offset_rule_is_the_papers():
    assert [L.offset_bits(k) for k in range(0, 9)] == [0, 1, 2, 3, 3, 4, 4, 4, 4]
    assert L.offset_bits(23) == 4


@pytest.mark.parametrize("k", [0, 1, 3, 4, 5, 7, 23])
@pytest.mark.parametrize("rounding", ["truncate", "nearest"])
def test_every_exponent_and_mantissa_case_matches_reference(k, rounding):
    # every exponent field 0..255 paired with a spread of partners, mantissas at their edges
    g = np.random.default_rng(k)
    exps = np.arange(256)
    mants = [0, 1, 0x400000, 0x7FFFFF, 0x3FFFFF, 0x0C0000, 0x7C0000]
    xs = [from_bits(int(e) << 23 | int(g.choice(mants)) | (int(g.integers(2)) << 31)) for e in exps]
    partners = [1.0, -1.0, 1.5, 1.9999999, 0.75, 2.0 ** -100, -(2.0 ** 100), 3.3e38, 0.0, -0.0,
                float("inf"), float("nan"), 1e-40, -1e-45]
    x = torch.tensor([a for a in xs for _ in partners], dtype=torch.float32)
    y = torch.tensor([b for _ in xs for b in partners], dtype=torch.float32)
    got = L.lmul(x, y, k, rounding=rounding).tolist()
    for a, b, r in zip(x.tolist(), y.tolist(), got):
        want = f32(L.lmul_reference(a, b, k, rounding=rounding))
        assert same(r, want), (a, b, k, rounding, r, want)


@pytest.mark.parametrize("k", [1, 3, 4, 8])
def test_random_operands_match_reference(k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(3000, generator=g) * torch.exp2(torch.randint(-40, 40, (3000,), generator=g).float())
    y = torch.randn(3000, generator=g) * torch.exp2(torch.randint(-40, 40, (3000,), generator=g).float())
    for rounding in ("truncate", "nearest"):
        got = L.lmul(x, y, k, rounding=rounding).tolist()
        for a, b, r in zip(x.tolist(), y.tolist(), got):
            assert same(r, f32(L.lmul_reference(a, b, k, rounding=rounding)))


def test_special_values():
    inf, nan = float("inf"), float("nan")
    cases = [((0.0, 2.0), 0.0), ((-0.0, 2.0), -0.0), ((2.0, -0.0), -0.0), ((inf, 2.0), inf),
             ((-inf, 2.0), -inf), ((inf, 0.0), nan), ((1e-40, inf), nan), ((nan, 1.0), nan),
             ((1e-40, 3.0), 0.0), ((-1e-40, 3.0), -0.0), ((3e38, 3e38), inf), ((1e-30, -1e-30), -0.0),
             ((-inf, -inf), inf)]
    for (a, b), want in cases:
        assert same(float(L.lmul(torch.tensor(a), torch.tensor(b), 4)), want), (a, b)


def test_powers_of_two_and_the_carry():
    # x_m = y_m = 0: the product is (1 + 2^-l) 2^{e_x + e_y}
    for k in (0, 1, 2, 3, 4, 7):
        assert float(L.lmul(torch.tensor(4.0), torch.tensor(0.5), k)) == 2.0 * (1 + 2.0 ** -L.offset_bits(k))
    # 1.5 × 1.5 with k = 4: x_m + y_m + 2^-3 = 1.125 ≥ 1 carries: 2 · 1.125 = 2.25 (exact 2.25)
    assert float(L.lmul(torch.tensor(1.5), torch.tensor(1.5), 4)) == 2.25
    # 1.75 × 1.75, k = 2: 0.75 + 0.75 + 0.25 = 1.75 → 2 · 1.75 = 3.5 (exact 3.0625)
    assert float(L.lmul(torch.tensor(1.75), torch.tensor(1.75), 2)) == 3.5
    # the sign is an XOR
    assert float(L.lmul(torch.tensor(-3.0), torch.tensor(-5.0), 23)) > 0


def test_result_has_k_mantissa_bits():
    x = L.log_uniform_operands(5000, generator=torch.Generator().manual_seed(1))
    for k in (1, 3, 4):
        r = L.lmul(x, x.flip(0), k).view(torch.int32)
        assert int((r & ((1 << (23 - k)) - 1)).abs().max()) == 0


def test_reduce_mantissa():
    x = torch.tensor([1.0 + 3 / 16, 1.0 + 5 / 32, 1.0 + 3 / 32, -(1.0 + 31 / 32), 3.4e38])
    t = L.reduce_mantissa(x, 4, rounding="truncate")
    n = L.reduce_mantissa(x, 4, rounding="nearest")
    assert t.tolist()[:4] == [1.1875, 1.125, 1.0625, -1.9375]
    # 5/32 = 0.15625 lies halfway between 2/16 and 3/16: ties to even → 2/16
    assert n.tolist()[:4] == [1.1875, 1.125, 1.125, -2.0]
    assert math.isinf(n[4]) and not math.isinf(t[4])
    assert torch.equal(L.reduce_mantissa(x, 23), x)


@pytest.mark.parametrize("fmt,dtype", [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2),
                                       ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_round_to_matches_torch_casts(fmt, dtype):
    x = torch.randn(4096, generator=torch.Generator().manual_seed(3)) * 4
    got = L.round_to(x, fmt)
    assert torch.equal(got, x.to(dtype).to(torch.float32))
    # away from the format's range ends the cast is round-to-nearest-even of the mantissa
    mb = L.FORMATS[fmt][1]
    normal = x.abs() > {"e4m3": 2.0 ** -6, "e5m2": 2.0 ** -14, "bf16": 1e-30, "fp16": 2.0 ** -14}[fmt]
    assert torch.equal(got[normal], L.reduce_mantissa(x, mb, rounding="nearest")[normal])


def test_format_multiply_is_rounded_exact_product():
    x, y = torch.tensor([1.3, -2.7, 0.4]), torch.tensor([0.9, 1.1, -3.3])
    got = L.format_multiply(x, y, "e4m3")
    want = (L.round_to(x, "e4m3").double() * L.round_to(y, "e4m3").double()).float().to(torch.float8_e4m3fn).float()
    assert torch.equal(got, want)


@pytest.mark.parametrize("shape", [(7, 13, 5), (33, 70, 19), (1, 257, 3)])
def test_lmul_matmul_equals_elementwise_lmul(shape):
    m, k, n = shape
    g = torch.Generator().manual_seed(m)
    a = torch.randn(m, k, generator=g)
    b = torch.randn(k, n, generator=g)
    a[a.abs() < 0.2] = 0.0  # zeros, as after a ReLU
    ref = (L.lmul(a[:, :, None], b[None, :, :], 4).double()).sum(1)
    got = L.lmul_matmul(a, b, 4, chunk=11)
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-5)
    # the int32 fast path and the general path give identical products
    assert torch.equal(L.lmul_matmul(a, b, 4, chunk=k), L.lmul_matmul(a, b, 4, chunk=k))


def test_lmul_matmul_general_path_for_specials():
    a = torch.tensor([[1.0, float("inf")], [2.0, 1.0]])
    b = torch.tensor([[1.0], [1.0]])
    got = L.lmul_matmul(a, b, 4)
    assert math.isinf(got[0, 0]) and got[1, 0] == pytest.approx(3.375, rel=0.1)
    big = torch.tensor([[3e38]])
    assert math.isinf(L.lmul_matmul(big, big, 4)[0, 0])


def test_fast_path_equals_general_path():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(20, 30, generator=g), torch.randn(30, 10, generator=g)
    a[0, :5] = 0.0
    a[1, :3] = 1e-41
    pa, pb = L._split(a, 3, "nearest"), L._split(b, 3, "nearest")
    off = 1 << (23 - L.offset_bits(3))
    fa, fb = L._fast_operands(pa, pb, off)
    fast = L._fast_products(tuple(t[:, :, None] for t in fa), tuple(t[None] for t in fb))
    slow = L._combine(*(t[:, :, None] for t in pa), *(t[None] for t in pb), off)
    assert torch.equal(fast.view(torch.int32), slow.view(torch.int32))


def test_low_precision_accumulation_loses_more_at_large_k():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 512, generator=g), torch.randn(512, 8, generator=g)
    exact = a.double() @ b.double()
    e32 = (L.lmul_matmul(a, b, 4).double() - exact).norm() / exact.norm()
    e8 = (L.lmul_matmul(a, b, 4, accumulate="e4m3").double() - exact).norm() / exact.norm()
    assert e8 > 2 * e32


def test_product_errors_orders():
    e = {k: float(v.mean()) for k, v in L.product_errors(20000, lmul_bits=(1, 2, 4), seed=0).items()}
    assert e["fp16"] < e["bf16"] < e["e4m3"] < e["e5m2"]
    assert e["lmul4"] < e["lmul2"] < e["lmul1"]
    # each fewer mantissa bit roughly doubles a rounding format's error
    assert 1.6 < e["e5m2"] / e["e4m3"] < 2.4


def test_log_uniform_operands_stay_in_normal_e4m3_products():
    x = L.log_uniform_operands(10000, generator=torch.Generator().manual_seed(0))
    assert float(x.abs().min()) >= 2 ** -3 and float(x.abs().max()) < 2 ** 3


def test_lmul_forward_equals_plain_model_at_full_precision_shape():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    x = torch.randn(11, 5)
    out = L.lmul_forward(model, x, 23)
    with torch.no_grad():
        ref = model(x)
    assert out.shape == ref.shape
    # 23 mantissa bits: the only error is the offset 2^-4 against x_m y_m, a few per cent
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.2


def test_energy_arithmetic():
    s = L.lmul_savings()
    assert s["elementwise"] == pytest.approx(1 - 0.1 / 3.7)
    assert s["dot"] == pytest.approx(1 - 1.0 / 4.6)
    assert abs(s["elementwise"] - 0.95) < 0.03 and abs(s["dot"] - 0.80) < 0.03
    assert s["elementwise_fp16"] == pytest.approx(1 - 0.06 / 1.1)


def test_multiply_share():
    # GEMV 1024 × 1024 fp32: 2^20 multiplies of 3.7 pJ, 4 (2^20 + 2048) bytes from DRAM
    r = L.multiply_share(1, 1024, 1024)
    macs = 1024 * 1024
    dram = 4 * (macs + 2048) / 8 * 1300.0
    arith = 2 * macs * (3.7 + 0.9) / 2
    assert r["saving"] == pytest.approx(macs * 3.7 / (arith + dram))
    assert r["movement_share"] == pytest.approx(dram / (arith + dram))
    # an L-Mul at 0.1 pJ saves less than a free multiply
    assert L.multiply_share(1, 1024, 1024, multiply_pj=0.1)["saving"] < r["saving"]
    e = L.share_interval(1, 1024, 1024)
    assert e.lo < e.value == e.hi
    assert L.share_interval(4096, 1024, 1024).value > 10 * e.value


def test_argument_errors_name_the_parameter():
    with pytest.raises(ValueError, match="mantissa_bits=24"):
        L.lmul(torch.ones(2), torch.ones(2), 24)
    with pytest.raises(ValueError, match="rounding='up'"):
        L.lmul(torch.ones(2), torch.ones(2), 4, rounding="up")
    with pytest.raises(ValueError, match="fmt='e3m4'"):
        L.round_to(torch.ones(2), "e3m4")
    with pytest.raises(ValueError, match="accumulate='int8'"):
        L.lmul_matmul(torch.ones(2, 2), torch.ones(2, 2), accumulate="int8")
    with pytest.raises(ValueError, match="shapes"):
        L.lmul_matmul(torch.ones(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="batch=0"):
        L.multiply_share(0, 4, 4)
    with pytest.raises(ValueError, match="dtype"):
        L.lmul(torch.ones(2, dtype=torch.int32), torch.ones(2), 4)
