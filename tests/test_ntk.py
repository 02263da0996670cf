"""dynbook.models.ntk: the empirical NTK against explicit Jacobians, the standard
parametrization against autograd on its own weights, the Θ_0 factor study, and the closed-form
infinite-width kernels (arc-cosine, arcsine) against Monte Carlo and wide networks."""

import math

import pytest
import torch

from dynbook.models import ntk

F64 = torch.float64


def tiny(activation="erf", depth=2, width=7, d_in=2, **kw):
    cfg = ntk.MLPConfig(width=width, depth=depth, activation=activation, d_in=d_in, **kw)
    gen = torch.Generator().manual_seed(1)
    return cfg, ntk.init_params(cfg, generator=gen)


def explicit_jacobian(fn, params, x):
    """(N, P) Jacobian row by row with torch.autograd.grad: the reference."""
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    out = fn(leaves, x)
    rows = []
    for i in range(out.shape[0]):
        g = torch.autograd.grad(out[i], list(leaves.values()), retain_graph=True)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


@pytest.mark.parametrize("activation", ["relu", "erf"])
@pytest.mark.parametrize("method", ["jacobian", "ntk_vp"])
def test_empirical_ntk_equals_explicit_jacobian_product(activation, method):
    cfg, params = tiny(activation, weight_std=1.3, bias_std=0.4)
    gen = torch.Generator().manual_seed(2)
    x1 = torch.randn(5, 2, generator=gen, dtype=F64)
    x2 = torch.randn(3, 2, generator=gen, dtype=F64)
    fn = ntk.network(cfg)
    j1, j2 = explicit_jacobian(fn, params, x1), explicit_jacobian(fn, params, x2)
    got = ntk.empirical_ntk(fn, params, x1, x2, method=method)
    assert got.shape == (5, 3)
    torch.testing.assert_close(got, j1 @ j2.T, rtol=1e-12, atol=1e-12)
    sym = ntk.empirical_ntk(fn, params, x1, method=method)
    torch.testing.assert_close(sym, sym.T, rtol=1e-12, atol=1e-12)
    assert torch.linalg.eigvalsh(sym).min() > -1e-10  # a Gram matrix


def test_ensemble_ntk_matches_members_with_their_own_scales():
    cfg = ntk.MLPConfig(width=9, depth=1, activation="relu", bias_std=0.3)
    params = ntk.init_params(cfg, 4, generator=torch.Generator().manual_seed(3))
    scales = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=F64)
    x = torch.linspace(-1, 1, 6, dtype=F64)[:, None]
    got = ntk.ensemble_ntk(cfg, params, x, weight_std=scales)
    for b in range(4):
        member = {k: v[b] for k, v in params.items()}
        fn = lambda p, xx, s=scales[b]: ntk.mlp(p, xx, activation="relu", weight_std=s,  # noqa: E731
                                                 bias_std=0.3)
        torch.testing.assert_close(got[b], ntk.empirical_ntk(fn, member, x), rtol=1e-12, atol=1e-12)


def test_ntk_parametrization_converges_with_width():
    # Θ has a width-independent limit: its spread over seeds shrinks as the width grows
    x = torch.ones(1, 1, dtype=F64)
    spread = []
    for width in (16, 1024):
        cfg = ntk.MLPConfig(width=width, depth=1, activation="erf")
        params = ntk.init_params(cfg, 16, generator=torch.Generator().manual_seed(4))
        th = ntk.ensemble_ntk(cfg, params, x)[:, 0, 0]
        spread.append((th.std() / th.mean()).item())
    assert spread[1] < spread[0] / 3


def test_ntk_is_differentiable_in_the_inputs():
    cfg, params = tiny("erf", depth=1, width=4, d_in=1)
    fn = ntk.network(cfg)
    x1 = torch.randn(3, 1, dtype=F64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    x2 = torch.randn(2, 1, dtype=F64, generator=torch.Generator().manual_seed(6))
    assert torch.autograd.gradcheck(lambda a: ntk.empirical_ntk(fn, params, a, x2), (x1,))


@pytest.mark.parametrize("kwargs, name", [
    ({"width": 0, "depth": 1}, "width"),
    ({"width": 4, "depth": -1}, "depth"),
    ({"width": 4, "depth": 1, "activation": "tanh"}, "activation"),
    ({"width": 4, "depth": 1, "weight_std": 0.0}, "weight_std"),
    ({"width": 4, "depth": 1, "bias_std": -0.1}, "bias_std"),
    ({"width": 2.5, "depth": 1}, "width"),
])
def test_config_validation_names_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=f"{name}=.*not allowed"):
        ntk.MLPConfig(**kwargs)


def test_bad_arguments_raise_value_errors():
    cfg, params = tiny()
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="method='svd'.*'jacobian', 'ntk_vp'"):
        ntk.empirical_ntk(ntk.network(cfg), params, x, method="svd")
    with pytest.raises(ValueError, match=r"x1, x2 must be \(N, d_in\)"):
        ntk.empirical_ntk(ntk.network(cfg), params, torch.zeros(3, dtype=F64))


def test_standard_parametrization_ntk_equals_autograd_on_standard_weights():
    # Θ_0 of the same network written with W_std = σ_w W/√fan_in, b_std = σ_b b as leaves
    cfg = ntk.MLPConfig(width=13, depth=2, activation="erf", weight_std=1.3, bias_std=0.4)
    x0 = torch.full((1, 1), 0.7, dtype=F64)
    params = ntk.init_params(cfg, 2, generator=torch.Generator().manual_seed(11))
    parts = ntk.ensemble_ntk0_parts(cfg, params, x0)
    torch.testing.assert_close(sum(parts.values()), ntk.ensemble_ntk(cfg, params, x0)[:, 0, 0])
    got = ntk.standard_ntk0(cfg, parts)
    for b in range(2):
        std = {}
        for name, v in params.items():
            scale = (cfg.weight_std / math.sqrt(v.shape[-1])) if name.startswith("W") else cfg.bias_std
            std[name] = (v[b] * scale).clone().requires_grad_()
        h = x0
        for layer in range(cfg.depth + 1):
            h = h @ std[f"W{layer}"].T + std[f"b{layer}"]
            if layer < cfg.depth:
                h = torch.erf(h)
        grads = torch.autograd.grad(h.sum(), list(std.values()))
        torch.testing.assert_close(got[b], sum(g.pow(2).sum() for g in grads))


def test_standard_parametrization_grows_with_width_and_ntk_does_not():
    x0 = torch.ones(1, 1, dtype=F64)
    th = {}
    for width in (64, 1024):
        cfg = ntk.MLPConfig(width=width, depth=1, activation="relu", bias_std=0.5)
        params = ntk.init_params(cfg, 8, generator=torch.Generator().manual_seed(12))
        parts = ntk.ensemble_ntk0_parts(cfg, params, x0)
        th[width] = (sum(parts.values()).mean().item(), ntk.standard_ntk0(cfg, parts).mean().item())
    assert 0.7 < th[1024][0] / th[64][0] < 1.4
    assert th[1024][1] / th[64][1] > 8
    with pytest.raises(ValueError, match="parametrization='mean_field'"):
        ntk.ntk_grid([4], [1], ["relu"], [1.0], 1, parametrization="mean_field")


def test_ntk_grid_both_returns_the_ntk_grid_from_the_same_draws():
    args = ([8, 16], [1, 2], ["relu", "erf"], [0.5, 1.0], 2)
    plain = ntk.ntk_grid(*args, bias_std=0.3, generator=torch.Generator().manual_seed(13))
    both = ntk.ntk_grid(*args, bias_std=0.3, generator=torch.Generator().manual_seed(13),
                        parametrization="both")
    torch.testing.assert_close(both["ntk"], plain)
    assert both["standard"].shape == plain.shape and torch.all(both["standard"] > 0)


def test_experiment_generator():
    cfg = ntk.MLPConfig(width=5, depth=1, activation="erf")
    params = ntk.init_params(cfg, generator=ntk.experiment_generator(3, 1))
    again = ntk.init_params(cfg, generator=ntk.experiment_generator(3, 1))
    other = ntk.init_params(cfg, generator=ntk.experiment_generator(3, 2))
    assert all(torch.equal(params[k], again[k]) for k in params)
    assert not torch.equal(params["W0"], other["W0"])
    with pytest.raises(ValueError, match="seed=-1"):
        ntk.experiment_generator(-1, 0)


def test_theta0_study_is_the_grid_of_its_generators_and_ranks_the_factors():
    args = ([8, 16], [1, 2], ["relu", "erf"], [0.5, 2.0])
    study = ntk.theta0_study(*args, 2, x0=1.0, bias_std=0.3, seed=4)
    ref = ntk.ntk_grid(*args, 2, bias_std=0.3, generator=ntk.experiment_generator(4, 2))
    torch.testing.assert_close(study["ntk"], ref)
    assert study["narrow"].shape == (2, 2, 2, 2, 2) and study["narrow_stds"] == [0.999, 1.001]
    # σ_w from 0.5 to 2 moves Θ_0 by far more than the NTK-parametrized width does
    assert all(v > 0 for v in study["std_lead"]["ntk"])
    assert all(v < 0 for v in study["std_lead"]["narrow"])
    assert all(v < 0 for v in study["width_lead"]["ntk"])
    assert study["wins"].shape == (2, 2, 2, 2)
    torch.testing.assert_close(study["wins"], (study["ntk"][1] > study["ntk"][0]).double())


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_gauss_expectations_match_monte_carlo(activation):
    g = torch.Generator().manual_seed(0)
    s11, s22, s12 = 1.3, 0.7, 0.5
    k, kdot = ntk.gauss_expectations(activation, *(torch.tensor(v, dtype=F64)
                                                   for v in (s11, s22, s12)))
    mk, mkdot = ntk.monte_carlo_expectations(activation, s11, s22, s12, n=400_000, generator=g)
    assert abs(k.item() - mk) < 0.01 and abs(kdot.item() - mkdot) < 0.01


def test_infinite_ntk_is_the_mean_of_wide_networks():
    a = torch.arange(4, dtype=F64) * math.pi / 2 + 0.3
    x = torch.stack([torch.cos(a), torch.sin(a)], dim=1)
    cfg = ntk.MLPConfig(width=4096, depth=1, activation="relu", d_in=2)
    params = ntk.init_params(cfg, 8, generator=torch.Generator().manual_seed(1))
    mean = ntk.ensemble_ntk(cfg, params, x).mean(0)
    limit = ntk.infinite_ntk(x, activation="relu")
    assert (mean - limit).norm() / limit.norm() < 0.02


def test_infinite_ntk_rejects_an_activation_without_closed_form():
    with pytest.raises(ValueError, match="activation"):
        ntk.gauss_expectations("tanh", 1, 1, 0)
