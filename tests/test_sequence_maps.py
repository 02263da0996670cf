"""One LTI sequence map as a dense Toeplitz matrix, an FFT convolution and a scan
(dynbook.models.sequence_maps), in float64 against the sequential recurrence."""

import pytest
import torch

from dynbook.models import sequence_maps as sm

pytestmark = pytest.mark.usefixtures("one_thread")


def test_toeplitz_matrix_structure():
    K = torch.arange(1.0, 5.0)[None]
    T = sm.toeplitz_matrix(K)[0]
    expected = torch.tensor([[1.0, 0, 0, 0], [2, 1, 0, 0], [3, 2, 1, 0], [4, 3, 2, 1]])
    assert torch.equal(T, expected)


@pytest.mark.parametrize("width, d_state, length, batch", [(1, 2, 1, 1), (3, 8, 77, 5), (5, 16, 301, 2)])
def test_three_forms_agree_with_the_recurrence(width, d_state, length, batch):
    layer = sm.make_layer(width, d_state, seed=width)
    dev = sm.agreement(layer, length=length, batch=batch, seed=1)
    assert max(dev.values()) < 1e-12


def test_apply_float32_agrees_loosely():
    layer = sm.make_layer(2, 8, seed=0)
    ops = sm.operators(layer, 129)
    u = torch.randn(2, 3, 129, generator=torch.Generator().manual_seed(0))
    ref = sm.apply(ops, u, "recurrence")
    for f in ("toeplitz", "fft", "scan"):
        assert (sm.apply(ops, u, f) - ref).abs().max() < 1e-4 * ref.abs().max()


def test_cost_sweep_and_crossover():
    layer = sm.make_layer(2, 4, seed=0)
    sw = sm.cost_sweep(layer, [8, 16], [1, 2], repeats=2, min_time=1e-4)
    assert set(sw["least"]) == {(f, b) for f in ("toeplitz", "fft", "scan") for b in (1, 2)}
    assert all(len(v) == 2 for v in sw["least"].values())
    est = sm.log2_ratio(sw, "toeplitz", "fft", 16, 1)
    assert est.lo <= est.value <= est.hi


def test_crossover_interpolates_the_sign_change():
    sweep = {"lengths": [10, 100, 1000], "least": {("m", 1): [1.0, 4.0, 100.0], ("o", 1): [2.0, 2.0, 2.0]}}
    # log ratio −log 2 at 10, +log 2 at 100: crossover at the geometric midpoint
    assert sm.crossover(sweep, "m", "o", 1) == pytest.approx(10 ** 1.5)
    sweep["least"][("o", 1)] = [200.0] * 3
    assert sm.crossover(sweep, "m", "o", 1) is None


@pytest.mark.parametrize("call, match", [
    (lambda: sm.apply(sm.operators(sm.make_layer(2, 4), 8), torch.zeros(2, 1, 9), "fft"), "u must be"),
    (lambda: sm.apply(sm.operators(sm.make_layer(2, 4), 8), torch.zeros(2, 1, 8), "dense"), "form"),
    (lambda: sm.make_layer(0, 4), "width"),
    (lambda: sm.toeplitz_matrix(torch.zeros(3)), "kernel must be"),
])
def test_errors_name_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()
