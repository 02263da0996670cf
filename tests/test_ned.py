"""Neural Energy Descent (dynbook.models.ned): M and F against their definitions on a tiny
network, the energy as a Lyapunov function of the exact flow."""

import numpy as np
import pytest
import torch

from dynbook.models import ned, pinn

PROBLEM = pinn.sine_poisson(1, 1)
NET = pinn.TanhMLP(1, 3)

pytestmark = pytest.mark.usefixtures("one_thread")


def gauss_legendre(n):
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.tensor((x + 1) / 2)[:, None], torch.tensor(w / 2)


def test_mass_matrix_is_the_gram_matrix_of_the_parameter_derivatives():
    theta = NET.init(torch.Generator().manual_seed(0))
    x = PROBLEM.sample(32, torch.Generator().manual_seed(1))
    eps = 1e-6
    jac = torch.stack([(pinn.trial(NET, theta + eps * e, PROBLEM, x) - pinn.trial(NET, theta - eps * e, PROBLEM, x))
                       / (2 * eps) for e in torch.eye(NET.n_params, dtype=torch.float64)], 1)
    torch.testing.assert_close(ned.mass_matrix(NET, theta, PROBLEM, x), jac.T @ jac / 32, rtol=1e-7, atol=1e-9)


def test_force_is_the_projected_l2_gradient_flow():
    # F = ∫ ∇_θu (Δu + f) (definition) equals −∇_θE (what ned.force computes) once the
    # integrals are exact: Gauss–Legendre quadrature, u_θ = 0 at both ends
    theta = NET.init(torch.Generator().manual_seed(2))
    x, w = gauss_legendre(48)
    jac = torch.func.jacrev(lambda t: pinn.trial(NET, t, PROBLEM, x))(theta)
    flow = pinn.laplacian(NET, theta, PROBLEM, x) + PROBLEM.source(x)
    definition = (jac * (w * flow)[:, None]).sum(0)
    t = theta.clone().requires_grad_(True)
    _, du, _ = pinn.derivatives(NET, t, PROBLEM, x)
    e = (w * (0.5 * du[:, 0] ** 2 - PROBLEM.source(x) * pinn.trial(NET, t, PROBLEM, x))).sum()
    (g,) = torch.autograd.grad(e, t)
    torch.testing.assert_close(-g, definition, rtol=1e-9, atol=1e-11)
    # ned.force with equal weights is the same expression on its points
    xm = (torch.arange(64, dtype=torch.float64)[:, None] + 0.5) / 64
    tm = theta.clone().requires_grad_(True)
    (gm,) = torch.autograd.grad(pinn.energy(NET, tm, PROBLEM, xm), tm)
    torch.testing.assert_close(ned.force(NET, theta, PROBLEM, xm), -gm)


def test_velocity_solves_the_regularised_system():
    theta = NET.init(torch.Generator().manual_seed(3))
    x = PROBLEM.sample(32, torch.Generator().manual_seed(4))
    v = ned.velocity(NET, theta, PROBLEM, x, regularisation=1e-3)
    m = ned.mass_matrix(NET, theta, PROBLEM, x)
    m = m + 1e-3 * torch.diagonal(m).mean() * torch.eye(NET.n_params, dtype=torch.float64)
    torch.testing.assert_close(m @ v, ned.force(NET, theta, PROBLEM, x), rtol=1e-8, atol=1e-10)


def test_energy_does_not_rise_along_the_exact_flow():
    # fixed quadrature points and a small plain Euler step: dE = −dt θ̇ᵀ(M + εI)θ̇ + O(dt²) < 0
    x = (torch.arange(64, dtype=torch.float64)[:, None] + 0.5) / 64
    _, energies = ned.train(NET, PROBLEM, steps=30, dt=0.01, regularisation=1e-3, n_points=64, seed=0,
                            log_every=1, points=x, halvings=0, n_test=16)
    assert np.all(np.diff(energies) <= 1e-12)
    assert energies[-1] < energies[0] - 0.5


@pytest.mark.parametrize("call, name", [
    (lambda: ned.train(NET, PROBLEM, steps=1, dt=-1.0, regularisation=1e-3, n_points=8, seed=0), "dt"),
    (lambda: ned.train(NET, PROBLEM, steps=1, dt=0.1, regularisation=0.0, n_points=8, seed=0), "regularisation"),
    (lambda: ned.one_step("LBFGS", NET, PROBLEM, n_points=8, seed=0, dt=0.1, regularisation=1e-3, lr=1e-2),
     "method"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()
