"""dynbook.models.heavy_ball: the vmapped heavy ball against torch.optim.SGD, the ODE against
a closed-form damped oscillator, and the heavy ball's continuous limit by its order of
convergence (leading order 1/2, next order 1, a wrong friction 0)."""

import math

import pytest
import torch

from dynbook.measure.fits import loglog_fit
from dynbook.models import heavy_ball, ntk

F64 = torch.float64


def test_heavy_ball_ensemble_equals_torch_sgd_with_momentum():
    cfg = ntk.MLPConfig(width=11, depth=2, activation="relu")
    x = torch.linspace(-1, 1, 5, dtype=F64)[:, None]
    params = ntk.init_params(cfg, 3, generator=torch.Generator().manual_seed(7))
    lr = torch.tensor([0.05, 0.01, 0.002], dtype=F64)
    mu = torch.tensor([0.0, 0.5, 0.9], dtype=F64)
    hyper = {"weight_std": torch.ones(3, dtype=F64), "target": torch.full((3, 5), 0.7, dtype=F64),
             "power": torch.tensor([2.0, 4.0, 2.0], dtype=F64)}
    f, end = heavy_ball.heavy_ball(heavy_ball.output_loss(cfg, x), params, lr=lr, momentum=mu, n_steps=25,
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
    out = heavy_ball.train_ensemble(cfg, x, weight_std=1.0, lr=[0.01, 0.02], momentum=0.5, power=2,
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
    got = heavy_ball.heavy_ball_ode(lambda th: 0.5 * k * (th ** 2).sum(), theta0, t, friction=gamma,
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
    gaps = heavy_ball.continuum_gap(quartic_loss, theta0, friction=1.5, t_end=1.5, lrs=lrs,
                                    convention=convention)
    slope, _ = loglog_fit(lrs, gaps.numpy())
    assert abs(slope - order) < 0.12, (convention, slope, gaps)


def test_continuum_conventions():
    assert heavy_ball.continuum(0.5, "leading") == (1.0, 0.0)
    assert heavy_ball.continuum(0.5, "next") == (0.75, 0.5)
    with pytest.raises(ValueError, match="convention='midpoint'"):
        heavy_ball.continuum(0.5, "midpoint")


def test_continuum_gap_with_the_wrong_friction_does_not_converge():
    lrs = [1e-2, 3e-3, 1e-3]
    theta0 = torch.tensor([1.5, 0.8], dtype=F64)
    gaps = heavy_ball.continuum_gap(quartic_loss, theta0, friction=1.5, t_end=1.5, lrs=lrs,
                                    ode_friction=3.0)
    slope, _ = loglog_fit(lrs, gaps.numpy())
    assert abs(slope) < 0.1 and gaps.min() > 0.05


def test_bad_arguments_raise_value_errors():
    cfg = ntk.MLPConfig(width=7, depth=2, activation="erf", d_in=2)
    params = ntk.init_params(cfg, generator=torch.Generator().manual_seed(1))
    x = torch.zeros(2, 2, dtype=F64)
    stacked = {k: v[None] for k, v in params.items()}
    loss = heavy_ball.output_loss(cfg, x)
    hyper = {"weight_std": torch.ones(1, dtype=F64), "target": torch.zeros(1, 2, dtype=F64),
             "power": torch.full((1,), 2.0, dtype=F64)}
    with pytest.raises(ValueError, match=r"momentum=1\.0 is not allowed.*\[0, 1\)"):
        heavy_ball.heavy_ball(loss, stacked, lr=0.1, momentum=1.0, n_steps=1, hyper=hyper)
    with pytest.raises(ValueError, match="lr=-0.1 is not allowed"):
        heavy_ball.heavy_ball(loss, stacked, lr=-0.1, momentum=0.0, n_steps=1, hyper=hyper)
    with pytest.raises(ValueError, match="n_steps=-1 is not allowed"):
        heavy_ball.heavy_ball(loss, stacked, lr=0.1, momentum=0.0, n_steps=-1, hyper=hyper)
    with pytest.raises(ValueError, match="outside \\[0, 1\\)"):
        heavy_ball.continuum_gap(quartic_loss, torch.zeros(2, dtype=F64), friction=20.0,
                                 t_end=1.0, lrs=[0.1])
    with pytest.raises(ValueError, match="n_steps=-1 is not allowed"):
        heavy_ball.sgd_outputs(cfg, params, x, 0.0, lr=0.1, momentum=0.5, power=2, n_steps=-1)
    with pytest.raises(ValueError, match="mass=0.0 is not allowed"):
        heavy_ball.heavy_ball_ode(quartic_loss, torch.zeros(2, dtype=F64),
                                  torch.linspace(0, 1, 3, dtype=F64), friction=1.0, mass=0.0)


def test_flat_output_loss():
    cfg = ntk.MLPConfig(width=5, depth=1, activation="erf")
    params = ntk.init_params(cfg, generator=ntk.experiment_generator(3, 1))
    x = torch.tensor([[0.2], [0.9]], dtype=F64)
    theta0, loss = heavy_ball.flat_output_loss(cfg, params, x, target_shift=0.5, power=2)
    f = ntk.network(cfg)(params, x)
    expected = ((f - f.mean() - 0.5) ** 2).mean()  # the target sits Δ above the mean output
    assert loss(theta0).item() == pytest.approx(expected.item(), rel=1e-12)
    assert expected.item() > 0.25  # the spread of the outputs adds to Δ²


def test_sgd_outputs_is_the_heavy_ball_of_one_member():
    cfg = ntk.MLPConfig(width=6, depth=2, activation="erf", bias_std=0.5)
    x = torch.tensor([[0.3], [1.1]], dtype=F64)
    params = ntk.init_params(cfg, 2, generator=torch.Generator().manual_seed(5))
    run = heavy_ball.train_ensemble(cfg, x, weight_std=1.0, lr=0.05, momentum=0.7, power=4,
                                    target_shift=0.5, n_steps=30, params=params)
    ref = heavy_ball.sgd_outputs(cfg, {k: v[1] for k, v in params.items()}, x,
                                 run["target"][1, 0], lr=0.05, momentum=0.7, power=4, n_steps=30)
    assert ref.shape == (31, 2)
    torch.testing.assert_close(run["f"][:, 1], ref, rtol=1e-12, atol=1e-13)
    # a different momentum is another trajectory: the comparison can fail
    other = heavy_ball.sgd_outputs(cfg, {k: v[1] for k, v in params.items()}, x,
                                   run["target"][1, 0], lr=0.05, momentum=0.0, power=4,
                                   n_steps=30)
    assert (other - ref).abs().max() > 1e-3


def test_limit_study_orders_of_a_small_network():
    cfg = ntk.MLPConfig(width=4, depth=1, activation="erf", bias_std=0.5)
    params = ntk.init_params(cfg, generator=torch.Generator().manual_seed(2))
    res = heavy_ball.limit_study(cfg, params, 1.0, target_shift=1.0, power=2, friction=1.5,
                                 t_end=2.0, lrs=[0.005, 0.02, 0.01], rtol=1e-6, atol=1e-8)
    assert res["lrs"] == [0.02, 0.01, 0.005] and res["n_params"] == cfg.n_params == 13
    assert set(res["gaps"]) == {"leading", "next", "wrong friction"}
    assert abs(res["order"]["leading"].value - 0.5) < 0.15
    assert abs(res["order"]["next"].value - 1.0) < 0.2
    assert abs(res["order"]["wrong friction"].value) < 0.15
