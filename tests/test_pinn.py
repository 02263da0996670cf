"""PINN residuals, the sampled-dimension Laplacian and the finite-difference baseline
(dynbook.models.pinn), in float64 against known solutions."""

import itertools

import pytest
import torch

from dynbook.measure import fits
from dynbook.models import pinn

pytestmark = pytest.mark.usefixtures("one_thread")


class Exact:
    """A 'network' whose output is u*/B, so that u_θ = u* exactly (θ is ignored)."""

    def __init__(self, problem, net):
        self.problem, self.net = problem, net
        self.shapes, self.depth = net.shapes, net.depth


@pytest.mark.parametrize("problem", [pinn.sine_poisson(1, 1), pinn.sine_poisson(2, 3), pinn.ball_poisson(5)],
                         ids=lambda p: p.name)
def test_residual_of_the_exact_solution_is_zero(problem):
    # −Δu* − f at random interior points, with Δu* by torch.func on u* itself
    x = problem.sample(64, torch.Generator().manual_seed(0)) * 0.98 + 0.01 * (problem.domain == "cube")
    hess = torch.func.vmap(torch.func.hessian(lambda p: problem.solution(p[None])[0]))(x)
    r = -hess.diagonal(dim1=1, dim2=2).sum(-1) - problem.source(x)
    assert r.abs().max() < 1e-10 * problem.source(x).abs().max()


@pytest.mark.parametrize("problem", [pinn.sine_poisson(2, 1), pinn.ball_poisson(4)], ids=lambda p: p.name)
def test_closed_form_derivatives_equal_torch_func(problem):
    net = pinn.TanhMLP(problem.dim, 8, depth=2)
    theta = net.init(torch.Generator().manual_seed(1))
    x = problem.sample(16, torch.Generator().manual_seed(2))
    torch.testing.assert_close(pinn.laplacian(net, theta, problem, x),
                               pinn.laplacian_torch_func(net, theta, problem, x), rtol=1e-12, atol=1e-12)
    grad = torch.func.vmap(torch.func.grad(lambda p: pinn.trial(net, theta, problem, p[None])[0]))(x)
    torch.testing.assert_close(pinn.gradient_x(net, theta, problem, x), grad, rtol=1e-12, atol=1e-12)


def test_sampled_laplacian_is_unbiased():
    # the mean over all subsets of size s (each equally likely) is the full Laplacian, exactly
    problem = pinn.ball_poisson(5)
    net = pinn.TanhMLP(5, 8)
    theta = net.init(torch.Generator().manual_seed(3))
    x = problem.sample(8, torch.Generator().manual_seed(4))
    full = pinn.laplacian(net, theta, problem, x)
    for s in (1, 2, 3):
        subsets = list(itertools.combinations(range(5), s))
        mean = sum(pinn.laplacian(net, theta, problem, x, torch.tensor(c)) for c in subsets) / len(subsets)
        torch.testing.assert_close(mean, full, rtol=1e-12, atol=1e-12)
    one = pinn.laplacian(net, theta, problem, x, torch.tensor([0]))
    assert (one - full).abs().max() > 1e-3  # a single subset is not the full Laplacian
    unscaled = pinn.laplacian(net, theta, problem, x, torch.tensor([0]), rescale=False)
    torch.testing.assert_close(unscaled * 5, one)  # the control drops exactly the factor d/|S|


@pytest.mark.parametrize("rescale", [True, False])
def test_sampled_loss_in_one_pass_equals_two_residuals(rescale):
    # residual_loss stacks its two subsets into one pass; d = 3, |S| = 2: they always overlap
    problem = pinn.ball_poisson(3)
    net = pinn.TanhMLP(3, 8)
    theta = net.init(torch.Generator().manual_seed(5))
    x = problem.sample(16, torch.Generator().manual_seed(6))
    for seed in range(4):
        loss = pinn.residual_loss(net, theta, problem, x, 2, torch.Generator().manual_seed(seed), rescale=rescale)
        gen = torch.Generator().manual_seed(seed)
        ra, rb = (pinn.residual(net, theta, problem, x, pinn.random_dims(3, 2, gen), rescale) for _ in range(2))
        torch.testing.assert_close(loss, (ra * rb).mean(), rtol=1e-13, atol=0)


def test_energy_is_minimised_by_the_exact_solution():
    # E(u*) = −½∫ f u*; any other admissible u has larger energy
    problem = pinn.sine_poisson(1, 1)
    net = pinn.TanhMLP(1, 8)
    x = (torch.arange(4000, dtype=torch.float64)[:, None] + 0.5) / 4000
    theta = net.init(torch.Generator().manual_seed(5))
    assert float(pinn.energy(net, theta, problem, x)) > float(pinn.exact_energy(problem, x)) + 1e-3
    assert abs(float(pinn.exact_energy(problem, x)) + torch.pi**2 / 4) < 1e-6


def test_finite_differences_converge_at_order_two():
    for problem in (pinn.sine_poisson(1, 2), pinn.sine_poisson(2, 1)):
        ns = [8, 16, 32, 64]
        slope = fits.loglog_slope([1 / n for n in ns], [pinn.fd_error(problem, n) for n in ns])
        assert abs(slope.value - 2) < 0.05, (problem.name, slope)


def test_training_reduces_the_error():
    problem = pinn.sine_poisson(1, 1)
    out = pinn.train(pinn.TanhMLP(1, 8), problem, steps=150, lr=1e-2, n_points=32, seed=0, log_every=50)
    assert out.errors[-1] < 0.2 * out.errors[0]
    sampled = pinn.train(pinn.TanhMLP(3, 8), pinn.ball_poisson(3), steps=5, lr=1e-2, n_points=16, seed=0,
                         dims_per_step=1)
    assert torch.isfinite(sampled.theta).all()


@pytest.mark.parametrize("call, name", [
    (lambda: pinn.TanhMLP(0, 8), "in_dim"),
    (lambda: pinn.sine_poisson(2, 0), "frequency"),
    (lambda: pinn.random_dims(3, 4), "size"),
    (lambda: pinn.laplacian(pinn.TanhMLP(2, 4), pinn.TanhMLP(2, 4).init(), pinn.sine_poisson(2),
                            torch.rand(3, 2), torch.tensor([0, 0])), "dims"),
    (lambda: pinn.fd_poisson(pinn.ball_poisson(2), 8), "problem"),
    (lambda: pinn.train(pinn.TanhMLP(1, 4), pinn.sine_poisson(1), steps=1, lr=1e-2, n_points=4, seed=0,
                        optimizer="lbfgs"), "optimizer"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()
