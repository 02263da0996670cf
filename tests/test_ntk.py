"""dynbook.models.ntk: the empirical NTK against explicit Jacobians, the vmapped heavy ball against
torch.optim.SGD, and the heavy ball's continuous limit by its order of convergence."""

import math

import pytest
import torch

from dynbook.models import ntk
from dynbook.measure.fits import loglog_fit

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


def test_heavy_ball_ensemble_equals_torch_sgd_with_momentum():
    cfg = ntk.MLPConfig(width=11, depth=2, activation="relu")
    x = torch.linspace(-1, 1, 5, dtype=F64)[:, None]
    params = ntk.init_params(cfg, 3, generator=torch.Generator().manual_seed(7))
    lr = torch.tensor([0.05, 0.01, 0.002], dtype=F64)
    mu = torch.tensor([0.0, 0.5, 0.9], dtype=F64)
    hyper = {"weight_std": torch.ones(3, dtype=F64), "target": torch.full((3, 5), 0.7, dtype=F64),
             "power": torch.tensor([2.0, 4.0, 2.0], dtype=F64)}
    f, end = ntk.heavy_ball(ntk.output_loss(cfg, x), params, lr=lr, momentum=mu, n_steps=25,
                            hyper=hyper)
    assert f.shape == (26, 3, 5)
    for b in range(3):
        member = {k: v[b].clone().requires_grad_() for k, v in params.items()}
        opt = torch.optim.SGD(member.values(), lr=lr[b].item(), momentum=mu[b].item())
        for _ in range(25):
            opt.zero_grad()
            out = ntk.mlp(member, x, activation="relu")
            ((out - 0.7) ** hyper["power"][b]).mean().backward()
            opt.step()
        for k in member:
            torch.testing.assert_close(end[k][b], member[k].detach(), rtol=1e-11, atol=1e-12)


def test_train_ensemble_shapes_and_target():
    cfg = ntk.MLPConfig(width=8, depth=1)
    x = torch.linspace(-0.5, 0.5, 4, dtype=F64)[:, None]
    out = ntk.train_ensemble(cfg, x, weight_std=1.0, lr=[0.01, 0.02], momentum=0.5, power=2,
                             target_shift=0.3, n_steps=5,
                             generator=torch.Generator().manual_seed(8))
    assert out["f"].shape == (6, 2, 4) and out["ntk0"].shape == (2, 4, 4)
    torch.testing.assert_close(out["target"][:, 0], out["f0"].mean(1) + 0.3)
    torch.testing.assert_close(out["f"][0], out["f0"])


def test_heavy_ball_ode_matches_damped_oscillator():
    # L = k θ²/2: c θ̈ + γ θ̇ + k θ = 0 has a closed form (underdamped)
    k, gamma, mass = 3.0, 0.7, 0.8
    theta0 = torch.tensor([1.3, -0.4], dtype=F64)
    t = torch.linspace(0, 6, 41, dtype=F64)
    got = ntk.heavy_ball_ode(lambda th: 0.5 * k * (th ** 2).sum(), theta0, t, friction=gamma,
                             mass=mass)
    a = gamma / (2 * mass)
    w = math.sqrt(k / mass - a ** 2)
    exact = torch.exp(-a * t)[:, None] * (torch.cos(w * t) + a / w * torch.sin(w * t))[:, None] * theta0
    torch.testing.assert_close(got, exact, rtol=1e-7, atol=1e-8)


def quartic_loss(th):
    a = torch.tensor([0.5, -1.0], dtype=F64)
    return 0.25 * ((th - a) ** 4).sum() + 0.5 * (th[0] * th[1]) ** 2 + 0.3 * (th ** 2).sum()


@pytest.mark.parametrize("convention, order", [("leading", 0.5), ("next", 1.0)])
def test_heavy_ball_converges_to_its_continuous_limit_at_the_predicted_order(convention, order):
    lrs = [1e-2, 3e-3, 1e-3, 3e-4]
    theta0 = torch.tensor([1.5, 0.8], dtype=F64)
    gaps = ntk.continuum_gap(quartic_loss, theta0, friction=1.5, t_end=4.0, lrs=lrs,
                             convention=convention)
    slope, _ = loglog_fit(lrs, gaps.numpy())
    assert abs(slope - order) < 0.12, (convention, slope, gaps)


def test_continuum_conventions():
    assert ntk.continuum(0.5, "leading") == (1.0, 0.0)
    assert ntk.continuum(0.5, "next") == (0.75, 0.5)
    with pytest.raises(ValueError, match="convention='midpoint'"):
        ntk.continuum(0.5, "midpoint")


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
    stacked = {k: v[None] for k, v in params.items()}
    loss = ntk.output_loss(cfg, x)
    hyper = {"weight_std": torch.ones(1, dtype=F64), "target": torch.zeros(1, 2, dtype=F64),
             "power": torch.full((1,), 2.0, dtype=F64)}
    with pytest.raises(ValueError, match=r"momentum=1\.0 is not allowed.*\[0, 1\)"):
        ntk.heavy_ball(loss, stacked, lr=0.1, momentum=1.0, n_steps=1, hyper=hyper)
    with pytest.raises(ValueError, match="lr=-0.1 is not allowed"):
        ntk.heavy_ball(loss, stacked, lr=-0.1, momentum=0.0, n_steps=1, hyper=hyper)
    with pytest.raises(ValueError, match="n_steps=-1 is not allowed"):
        ntk.heavy_ball(loss, stacked, lr=0.1, momentum=0.0, n_steps=-1, hyper=hyper)
    with pytest.raises(ValueError, match="outside \\[0, 1\\)"):
        ntk.continuum_gap(quartic_loss, torch.zeros(2, dtype=F64), friction=20.0, t_end=1.0,
                          lrs=[0.1])


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


def test_continuum_gap_with_the_wrong_friction_does_not_converge():
    lrs = [1e-2, 3e-3, 1e-3]
    theta0 = torch.tensor([1.5, 0.8], dtype=F64)
    gaps = ntk.continuum_gap(quartic_loss, theta0, friction=1.5, t_end=4.0, lrs=lrs,
                             ode_friction=3.0)
    slope, _ = loglog_fit(lrs, gaps.numpy())
    assert abs(slope) < 0.1 and gaps.min() > 0.05


def test_flat_output_loss_and_experiment_generator():
    cfg = ntk.MLPConfig(width=5, depth=1, activation="erf")
    params = ntk.init_params(cfg, generator=ntk.experiment_generator(3, 1))
    again = ntk.init_params(cfg, generator=ntk.experiment_generator(3, 1))
    other = ntk.init_params(cfg, generator=ntk.experiment_generator(3, 2))
    assert all(torch.equal(params[k], again[k]) for k in params)
    assert not torch.equal(params["W0"], other["W0"])
    x = torch.tensor([[0.2], [0.9]], dtype=F64)
    theta0, loss = ntk.flat_output_loss(cfg, params, x, target_shift=0.5, power=2)
    f = ntk.network(cfg)(params, x)
    expected = ((f - f.mean() - 0.5) ** 2).mean()  # the target sits Δ above the mean output
    assert loss(theta0).item() == pytest.approx(expected.item(), rel=1e-12)
    assert expected.item() > 0.25  # the spread of the outputs adds to Δ²
    with pytest.raises(ValueError, match="seed=-1"):
        ntk.experiment_generator(-1, 0)
