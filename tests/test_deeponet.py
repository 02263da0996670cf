"""DeepONet on the antiderivative operator (dynbook.models.deeponet)."""

import math

import pytest
import torch

from dynbook.models import deeponet as don

pytestmark = pytest.mark.usefixtures("one_thread")


def test_antiderivative_is_exact_on_known_functions_and_second_order():
    errs = []
    for g in (65, 129, 257):
        x = torch.linspace(0, 1, g, dtype=torch.float64)
        v = torch.stack([torch.cos(3 * x), 2 * x])
        ref = torch.stack([torch.sin(3 * x) / 3, x * x])
        out = don.antiderivative(x, v)
        assert (out[1] - ref[1]).abs().max() < 1e-14  # the trapezoid rule is exact on linear v
        errs.append(float((out[0] - ref[0]).abs().max()))
    assert 3.8 < errs[0] / errs[1] < 4.2 and 3.8 < errs[1] / errs[2] < 4.2


def test_grf_has_the_kernel_covariance():
    x, v = don.grf(4000, 0.3, torch.Generator().manual_seed(0), grid_size=33)
    cov = v.T @ v / v.shape[0]
    k = torch.exp(-(x[:, None] - x[None]) ** 2 / (2 * 0.3**2))
    assert (cov - k).abs().max() < 0.1  # 4000 samples: standard error ≈ √2/√4000 ≈ 0.02


def test_data_shapes_and_targets():
    data = don.antiderivative_data(5, 7, 3, 0.2, seed=1)
    assert data.inputs.shape == (5, 7) and data.points.shape == (5, 3, 1) and data.targets.shape == (5, 3)
    assert math.isclose(float(data.sensors[0]), 0.0) and math.isclose(float(data.sensors[-1]), 1.0)
    model = don.DeepONet(7, width=8, latent=4)
    assert model(data.inputs, data.points).shape == (5, 3)


def test_trunk_on_distinct_points_is_the_plain_product():
    data = don.antiderivative_data(20, 6, 30, 0.2, seed=4)  # 600 query points, many repeated
    assert torch.unique(data.points).numel() < data.points.numel()
    torch.manual_seed(0)
    model = don.DeepONet(6, width=8, latent=5)
    with torch.no_grad():
        plain = torch.einsum("nk,nqk->nq", model.branch(data.inputs), model.trunk(data.points)) + model.bias
        assert torch.allclose(model(data.inputs, data.points), plain, rtol=1e-6, atol=1e-7)


def test_grf_factor_is_computed_once_and_not_shared_out():
    don.grf(2, 0.25, grid_size=17)
    x, _ = don.grf(2, 0.25, grid_size=17)
    x += 1  # the caller's grid is its own
    assert float(don.grf(2, 0.25, grid_size=17)[0][0]) == 0.0
    assert don._grf_factor.cache_info().hits >= 2


def test_training_learns_and_shuffled_targets_do_not():
    train = don.antiderivative_data(60, 16, 10, 0.3, seed=2)
    test = don.antiderivative_data(50, 16, 20, 0.3, seed=3)
    learned = don.train(train, steps=150, lr=1e-2, seed=0, width=24, latent=24)
    shuffled = don.train(train, steps=150, lr=1e-2, seed=0, width=24, latent=24, shuffle_targets=True)
    assert don.relative_error(learned, test) < 0.5 * don.relative_error(shuffled, test)


@pytest.mark.parametrize("call, name", [
    (lambda: don.grf(3, 0.0), "length_scale"),
    (lambda: don.antiderivative_data(3, 1, 2, 0.2, seed=0), "n_sensors"),
    (lambda: don.DeepONet(4, width=0), "width"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()
