"""Saxe et al.'s closed forms (depth 2, and the implicit depth-3 solution) against ODE integration
and against gradient descent, in float64."""

import math

import pytest
import torch
from scipy.integrate import solve_ivp

from dynbook.models import deep_linear as dl


def test_closed_form_matches_mode_ode():
    s, u0 = torch.tensor([3.0, 1.0, 0.4], dtype=torch.float64), 1e-3
    t = torch.linspace(0, 15, 61, dtype=torch.float64)
    sol = solve_ivp(lambda _, u: dl.mode_rhs(torch.as_tensor(u), s, 2).numpy(), (0, 15),
                    [u0] * 3, t_eval=t.numpy(), rtol=1e-11, atol=1e-14)
    closed = dl.saxe_mode(t[:, None], s, u0)
    assert torch.allclose(torch.as_tensor(sol.y.T), closed, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("u0", [1e-3, 0.3, 4.0])  # small, O(1), and above s for two modes
def test_depth_three_closed_form_matches_mode_ode(u0):
    s = torch.tensor([3.0, 1.0, 0.4], dtype=torch.float64)
    t = torch.linspace(0, 40, 81, dtype=torch.float64)
    sol = solve_ivp(lambda _, u: dl.mode_rhs(torch.as_tensor(u), s, 3).numpy(), (0, 40),
                    [u0] * 3, t_eval=t.numpy(), rtol=1e-12, atol=1e-15, method="DOP853")
    closed = dl.deep_mode(t[:, None], s, u0, 3)
    assert torch.allclose(torch.as_tensor(sol.y.T), closed, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("depth", [2, 3])
def test_mode_time_inverts_deep_mode_and_rhs_is_its_derivative(depth):
    s, u0 = torch.tensor([2.0, 0.7], dtype=torch.float64), 0.01
    t = torch.tensor([[0.5], [1.5], [3.0]], dtype=torch.float64)  # before u rounds to s
    u = dl.deep_mode(t, s, u0, depth)
    assert torch.allclose(dl.mode_time(u, s, u0, depth), t.expand_as(u), rtol=1e-10)
    h = 1e-6  # dt/du = 1/u̇, by central differences of the closed form
    dtdu = (dl.mode_time(u + h, s, u0, depth) - dl.mode_time(u - h, s, u0, depth)) / (2 * h)
    assert torch.allclose(dtdu * dl.mode_rhs(u, s, depth), torch.ones_like(u), rtol=1e-6)
    start = dl.deep_mode(0.0, s, u0, depth)
    assert torch.allclose(start, torch.full((2,), u0, dtype=torch.float64))


def test_hand_gradient_matches_autograd_and_a_batch_trains_each_network_alone():
    g = torch.Generator().manual_seed(5)
    m = torch.randn(2, 5, 5, generator=g, dtype=torch.float64)
    ws = [torch.randn(2, 5, 5, generator=g, dtype=torch.float64) / 3 for _ in range(3)]
    batch = dl.train(ws, m, lr=0.01, n_steps=1, every=1)
    for b in range(2):
        one = [w[b].clone().requires_grad_() for w in ws]
        loss = 0.5 * (m[b] - dl.product(one)).pow(2).sum()
        grads = torch.autograd.grad(loss, one)
        step = [(w - 0.01 * gr).detach() for w, gr in zip(one, grads)]
        alone = dl.train([w[b] for w in ws], m[b], lr=0.01, n_steps=1, every=1)
        want = 0.5 * (m[b] - dl.product(step)).pow(2).sum().item()
        assert alone["loss"][1].item() == pytest.approx(want, rel=1e-12)
    total = sum(dl.train([w[b] for w in ws], m[b], lr=0.01, n_steps=1)["loss"][1]
                for b in range(2))
    assert batch["loss"][1].item() == pytest.approx(total.item(), rel=1e-12)


def test_depth_ratio_threshold_is_the_midpoint_to_logarithmic_growth():
    assert dl.depth_ratio_threshold([2, 8]) == pytest.approx(0.5 * math.log2(3), rel=1e-12)
    assert dl.depth_ratio_threshold([8, 4, 2]) == dl.depth_ratio_threshold([2, 8])


def test_learning_time_is_half_strength():
    s, u0 = torch.tensor([2.0, 0.5], dtype=torch.float64), 1e-4
    t = dl.learning_time(s, u0)
    assert torch.allclose(dl.saxe_mode(t, s, u0), s / 2, rtol=1e-12)


@pytest.mark.parametrize("depth, seed, n, t_end, tol", [(2, 0, 5, 6.0, 0.05), (3, 4, 4, 12.0, 0.1)])
def test_gradient_descent_follows_closed_form_at_order_one(depth, seed, n, t_end, tol):
    """Depth 2 against Saxe's sigmoid, depth 3 against the implicit closed form t(u)."""
    g = torch.Generator().manual_seed(seed)
    tch = dl.teacher(n, [2.0, 1.0], generator=g)
    w = dl.init_weights("decoupled", n, depth, scale=1e-2, tch=tch, generator=g)
    errs = []
    for lr in (0.02, 0.01):
        run = dl.train(w, tch["M"], lr=lr, n_steps=round(t_end / lr), every=1, tch=tch)
        t = run["t"][:, None]
        closed = dl.saxe_mode(t, tch["s"], 1e-2) if depth == 2 else dl.deep_mode(t, tch["s"], 1e-2, depth)
        errs.append((run["u"] - closed).abs().max())
    assert errs[1] < tol and 1.6 < errs[0] / errs[1] < 2.4  # the gap is first order in η


def test_decoupled_start_sets_mode_strengths_at_any_depth():
    g = torch.Generator().manual_seed(1)
    tch = dl.teacher(6, [3.0, 2.0, 1.0], generator=g)
    for depth in (2, 3, 5):
        w = dl.init_weights("decoupled", 6, depth, scale=0.01, tch=tch, generator=g)
        assert torch.allclose(dl.mode_strengths(w, tch), torch.full((3,), 0.01, dtype=torch.float64))


def test_teacher_has_its_singular_values_and_haar_is_orthogonal():
    g = torch.Generator().manual_seed(2)
    tch = dl.teacher(7, [3.0, 1.5, 0.2], generator=g)
    sv = torch.linalg.svdvals(tch["M"])[:3]
    assert torch.allclose(sv, tch["s"], atol=1e-12)
    q = dl.haar(9, g)
    assert torch.allclose(q.T @ q, torch.eye(9, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("call, name", [
    (lambda: dl.saxe_mode(1.0, 1.0, -0.1), "u0"),
    (lambda: dl.teacher(2, [1.0, 1.0, 1.0]), "singular_values"),
    (lambda: dl.init_weights("uniform", 4, 2, scale=1.0), "kind"),
    (lambda: dl.init_weights("decoupled", 4, 2, scale=1.0), "tch"),
    (lambda: dl.mode_rhs(torch.ones(1), 1.0, 1), "depth"),
    (lambda: dl.learning_time(1.0, 0.1, fraction=1.5), "fraction"),
    (lambda: dl.deep_mode(1.0, 1.0, 0.1, 4), "depth"),
    (lambda: dl.depth_ratio_threshold([4, 4]), "depths"),
    (lambda: dl.mode_time(0.5, 1.0, 0.0, 3), "u0"),
    (lambda: dl.mode_study(4, [1.0], u0=0.1, lr=0.1, t_end=1.0, control_scale=1.0, seeds=[0],
                           depth=5), "depth"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()
