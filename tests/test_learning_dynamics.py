"""Learning dynamics: lazy-training kernels and gradients, power iteration, the OU
prediction and GD against its flow, in float64."""

from functools import partial

import pytest
import torch
from torch.func import grad, jacrev

from dynbook.models import learning_dynamics as ld
from dynbook.models import ntk


def test_two_layer_kernel_and_gradient_match_jacrev():
    g = torch.Generator().manual_seed(2)
    p = {"W": torch.randn(1, 7, 2, generator=g, dtype=torch.float64),
         "b": torch.randn(1, 7, generator=g, dtype=torch.float64),
         "v": torch.randn(1, 7, generator=g, dtype=torch.float64)}
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    y = torch.randn(3, generator=g, dtype=torch.float64)
    for par in ld.PARAMETRIZATIONS:
        one = {k: v[0] for k, v in p.items()}
        fn = partial(ld.two_layer, parametrization=par)
        jac = jacrev(fn)(one, x)
        explicit = sum(j.flatten(1) @ j.flatten(1).T for j in jac.values())
        assert torch.allclose(ntk.empirical_ntk(fn, one, x), explicit, atol=1e-12)
        _, grads = ld._two_layer_step(p, x, 3, y, par, "tanh")
        auto = grad(lambda q: 0.5 * (fn(q, x[:3]) - y).pow(2).mean())(one)
        for k in auto:
            assert torch.allclose(grads[k][0], auto[k], atol=1e-12)


def test_power_iteration_matches_eigvalsh_of_full_hessian():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64)
    loss, n = ld.mlp_loss(x, torch.sin(x[:, 0]), [2, 4, 1])
    theta = torch.randn(n, generator=g, dtype=torch.float64)
    hess = torch.func.hessian(loss)(theta)
    top = torch.linalg.eigvalsh(hess)
    lam, _ = ld.sharpness(loss, theta, n_iter=300, generator=g)
    exact = top[-1] if top[-1] >= -top[0] else top[0]  # the largest in magnitude
    assert abs(lam - exact.item()) < 1e-6 * abs(exact.item())


def test_ou_prediction_on_a_one_dimensional_quadratic():
    h, c, lr = 2.0, 0.5, 0.01
    one = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    assert ld.ou_excess_loss(one(h), one(c), lr) == \
        pytest.approx(0.5 * h * lr * c / (2 * h), rel=1e-12)  # S = ηc/(2h)
    # SGD on data whose per-sample gradients at the minimum have variance c: the simulated
    # fluctuation is the discrete chain's, ηc/(h(2 − ηh)), within Monte Carlo error.
    pb = ld.regression_problem(1, 400, noise=0.7, seed=0)
    m = ld.sgd_excess_loss(pb, lr=lr, batch=1, n_chains=512, n_steps=1500, burn_in=500, seed=0)
    hh, cc = pb["H"].item(), pb["C"].item()
    discrete = 0.5 * hh * lr * cc / (hh * (2 - lr * hh))
    assert m == pytest.approx(discrete, rel=0.1)
    assert ld.ou_excess_loss(pb["H"], pb["C"], lr) == pytest.approx(discrete, rel=0.02)


def test_gd_approaches_gradient_flow_at_first_order():
    a = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
    loss = lambda th: 0.5 * th @ a @ th + 0.1 * th.pow(4).sum()  # noqa: E731
    out = ld.gd_flow_gap(loss, torch.tensor([1.0, -1.0], dtype=torch.float64),
                         lrs=(0.04, 0.02, 0.01), t_end=1.0)
    assert abs(out["order"].value - 1) < 0.1


@pytest.mark.parametrize("call, name", [
    (lambda: ld.regression_problem(3, 3, noise=0.1, seed=0), "n_data"),
    (lambda: ld.ou_excess_loss(torch.eye(1), torch.eye(1), -1.0), "temperature"),
    (lambda: ld.lazy_training(8, x_train=torch.zeros(2, 1), y_train=torch.zeros(2),
                              x_test=torch.zeros(1, 1), lr=0.1, n_steps=1, n_seeds=1,
                              parametrization="standard"), "parametrization"),
    (lambda: ld.ntk_width_study([8, 16, 32], n_seeds=1, x=ld.circle_inputs(3)), "n_seeds"),
    (lambda: ld.sharpness(lambda t: t.pow(2).sum(), torch.ones(2), n_iter=0), "n_iter"),
    (lambda: ld.ou_tolerance([1.0], [1], n_features=4, n_data=200), "lrs"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_ou_tolerance_follows_the_exact_one_dimensional_chain():
    # In 1-D the discrete chain's stationary excess loss is the OU one times
    # 2h/(2h − ηh² − η(κ − 1)h²/B), κ = E[x⁴]/h²; Gaussian inputs (κ = 3) give 1/(1 − x) with
    # x = ηh(½ + 1/B), the worst case ou_tolerance bounds. Checked against simulated SGD.
    pb = ld.regression_problem(1, 4000, noise=0.7, seed=1)
    x = pb["X"][:, 0]
    h = pb["H"].item()
    kappa = x.pow(4).mean().item() / h ** 2
    for lr, batch in ((0.2, 1), (0.3, 2)):
        m = ld.sgd_excess_loss(pb, lr=lr, batch=batch, n_chains=2048, n_steps=400, burn_in=100,
                               seed=0)
        exact = 2 * h / (2 * h - lr * h ** 2 - lr * (kappa - 1) * h ** 2 / batch)
        assert m / ld.ou_excess_loss(pb["H"], pb["C"], lr / batch) == pytest.approx(exact, rel=0.04)
    lam = 2.0 * (1 + (1 / 50) ** 0.5) ** 2
    xx = 0.1 * lam * (0.5 + 1 / 2)
    assert ld.ou_tolerance([0.05, 0.1], [2, 4], n_features=1, n_data=50) == \
        pytest.approx(xx / (1 - xx), rel=1e-12)


def test_eigen_rates_are_exact_for_a_fixed_kernel():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(2, 5, 5, generator=g, dtype=torch.float64)
    kernel = a @ a.transpose(1, 2) + 0.1 * torch.eye(5, dtype=torch.float64)
    step = 0.5 / torch.linalg.eigvalsh(kernel / 5).max().item()
    r0 = torch.randn(2, 5, generator=g, dtype=torch.float64)
    prop = torch.eye(5, dtype=torch.float64) - step * kernel / 5
    res = [r0]
    for _ in range(200):
        res.append(torch.einsum("bij,bj->bi", prop, res[-1]))
    run = {"residual": torch.stack(res), "ntk0": kernel, "step": step, "every": 1}
    out = ld.eigen_rates(run, n_modes=3, min_share=0.0)
    assert torch.allclose(out["measured"], out["predicted"], rtol=1e-8)
    assert max(out["log_ratio"]) < 1e-8
    lam = torch.linalg.eigvalsh(kernel).flip(-1)[:, :3] / 5
    assert torch.allclose(out["predicted"], -torch.log(1 - step * lam) / step, rtol=1e-12)
