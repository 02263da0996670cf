"""Saxe et al.'s closed form against ODE integration and against gradient descent, in float64."""

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


def test_learning_time_is_half_strength():
    s, u0 = torch.tensor([2.0, 0.5], dtype=torch.float64), 1e-4
    t = dl.learning_time(s, u0)
    assert torch.allclose(dl.saxe_mode(t, s, u0), s / 2, rtol=1e-12)


def test_gradient_descent_follows_closed_form_at_order_one():
    g = torch.Generator().manual_seed(0)
    tch = dl.teacher(5, [2.0, 1.0], generator=g)
    w = dl.init_weights("decoupled", 5, 2, scale=1e-2, tch=tch, generator=g)
    errs = []
    for lr in (0.02, 0.01):
        run = dl.train(w, tch["M"], lr=lr, n_steps=round(6 / lr), every=1, tch=tch)
        errs.append((run["u"] - dl.saxe_mode(run["t"][:, None], tch["s"], 1e-2)).abs().max())
    assert errs[1] < 0.05 and 1.6 < errs[0] / errs[1] < 2.4  # the gap is first order in η


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
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()
