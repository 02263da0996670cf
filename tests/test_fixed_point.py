"""Dynamic fixed point: the scale rule, rounding, integer GEMMs forward and backward, training."""

import math

import pytest
import torch

from dynbook.measure.timing import num_threads
from dynbook.models import fixed_point as fx

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shared_exponent_and_scale_rule():
    assert fx.shared_exponent(torch.tensor([0.3, -0.7])) == 0  # 0.7 < 2^0
    assert fx.shared_exponent(torch.tensor([1.0])) == 1  # strictly above: 2^1
    assert fx.shared_exponent(torch.tensor([5.0])) == 3
    assert fx.shared_exponent(torch.zeros(3)) == 0
    assert fx.dfp_scale(torch.tensor([5.0, 1.0]), 16) == 2.0 ** (3 - 15)
    assert fx.dfp_scale(torch.tensor([0.001]), 8) == 2.0 ** (-9 - 7)
    assert fx.dfp_scale(torch.zeros(4), 8) == 1.0


@pytest.mark.parametrize("bits", [4, 8, 16])
def test_quantize_range_and_error(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(1000, 17, generator=g) * 3
    q, s = fx.quantize(x, bits)
    top = 2 ** (bits - 1) - 1
    assert float(q.abs().max()) <= top and torch.equal(q, q.round())
    # the largest magnitude uses the top bit: max|q| ≥ 2^{b−2}
    assert float(q.abs().max()) >= 2 ** (bits - 2)
    assert float((q * s - x.double()).abs().max()) <= s / 2 + 1e-12
    # powers of two at the top do not overflow
    q2, _ = fx.quantize(torch.tensor([-4.0, 4.0, 1.0]), bits)
    assert float(q2.abs().max()) <= top


def test_stochastic_rounding_is_unbiased():
    x = torch.full((200000,), 0.3) * torch.tensor(1.0)
    x[0] = 1.0  # sets the scale: s = 2^(1−7) for 8 bits
    q, s = fx.quantize(x, 8, rounding="stochastic", generator=torch.Generator().manual_seed(0))
    mean = float((q[1:] * s).mean())
    assert abs(mean - 0.3) < 1e-3
    qn, _ = fx.quantize(x, 8)
    assert abs(float(qn[1:].mean() * s) - 0.3) > 2e-3  # nearest is biased here (0.3/s = 19.2 → 19)


def test_int_matmul_exact_on_integer_grid():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-100, 101, (13, 29), generator=g).float()
    b = torch.randint(-100, 101, (29, 7), generator=g).float()
    a[0, 0], b[0, 0] = 127.0, 127.0  # scale 1 at 8 bits: e = 7, 2^(7−7) = 1
    assert torch.equal(fx.int_matmul(a, b, 8), a @ b)


@pytest.mark.parametrize("bits,tol", [(16, 2e-4), (8, 5e-2)])
def test_dfp_gradients_match_float64(bits, tol):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(31, 9, generator=g, requires_grad=True)
    w = torch.randn(5, 9, generator=g, requires_grad=True)
    up = torch.randn(31, 5, generator=g)
    y = fx.DFPMatmul.apply(x, w, bits, bits, "nearest", None)
    (y * up).sum().backward()
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ((xd @ wd.t()) * up.double()).sum().backward()
    for got, want in ((y.detach().double(), xd.detach() @ wd.detach().t()), (x.grad, xd.grad), (w.grad, wd.grad)):
        assert float((got.double() - want).norm() / want.norm()) < tol


def test_error_falls_by_2_per_bit():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
    exact = a.double() @ b.double()
    errs = [float((fx.int_matmul(a, b, bits).double() - exact).norm() / exact.norm()) for bits in (6, 8, 10, 12)]
    rates = [errs[i] / errs[i + 1] for i in range(3)]
    assert all(3.0 < r < 5.5 for r in rates), rates  # two bits per step: ×4


def test_training_int16_tracks_fp32_and_int4_does_not():
    data = fx.teacher_task(0, d_in=8, n_classes=4, n_train=600, n_test=600)
    with num_threads(1):
        models = {name: fx.train_mlp(data, width=16, steps=120, batch=64, seed=0, **kw)
                  for name, kw in (("fp32", {}), ("int16", {"arithmetic": "dfp", "bits": 16}),
                                   ("int4", {"arithmetic": "dfp", "bits": 4}))}
    acc = {k: fx.accuracy(m, data["x_test"], data["y_test"]) for k, m in models.items()}
    assert acc["fp32"] > 0.5  # 4 classes: chance is about 0.25
    assert abs(acc["fp32"] - acc["int16"]) < 0.03
    assert acc["fp32"] - acc["int4"] > 0.03


def test_same_seed_same_model():
    data = fx.teacher_task(3, n_train=300, n_test=100)
    with num_threads(1):
        m1, m2 = (fx.train_mlp(data, width=8, steps=20, seed=3, arithmetic="dfp", bits=8,
                               grad_rounding="stochastic") for _ in range(2))
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_argument_errors_name_the_parameter():
    with pytest.raises(ValueError, match="bits=1"):
        fx.quantize(torch.ones(3), 1)
    with pytest.raises(ValueError, match="rounding='down'"):
        fx.quantize(torch.ones(3), 8, rounding="down")
    with pytest.raises(ValueError, match="arithmetic='int'"):
        fx.make_mlp(2, 3, 2, arithmetic="int")
    with pytest.raises(ValueError, match="n_train=1"):
        fx.teacher_task(0, n_train=1)
    with pytest.raises(ValueError, match="NaN"):
        fx.shared_exponent(torch.tensor([math.nan]))
