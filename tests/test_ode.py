"""dynbook.models.ode: ResNets as Euler/RK4 integrators (orders against exact solutions, agreement
with torchdiffeq's fixed-grid solvers, gradients, reference-free orders, Richardson), ensembles
equal to separate fields, stable blocks (antisymmetric spectrum, leapfrog reversibility and
volume preservation), growth rates per unit time, the Euler stability condition on and off the
equilibrium, and Lyapunov exponents."""

import math

import numpy as np
import pytest
import torch
from torchdiffeq import odeint

from dynbook.measure.timing import num_threads
from dynbook.models import ode

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The problems are small: one intra-op thread, as the chapter runs them, is faster (and
    on a shared machine much faster) than two."""
    with num_threads(1):
        yield


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- linear ODE, exact solution


class LinearField:
    """dy/dt = cos(t) A y, exact solution y(T) = exp(sin(T) A) y0 (A commutes with itself)."""

    def __init__(self, dim=5, seed=0):
        self.A = torch.randn(dim, dim, generator=gen(seed), dtype=F64) / math.sqrt(dim)

    def __call__(self, t, y):
        return math.cos(float(t)) * (y @ self.A.T)

    def exact(self, y0, T):
        return y0 @ torch.linalg.matrix_exp(math.sin(T) * self.A).T


@pytest.mark.parametrize("scheme,depths,lo,hi", [
    ("euler", [64, 128, 256, 512, 1024], 0.95, 1.05),
    ("rk4", [8, 16, 32, 64], 3.8, 4.2),
])
def test_order_of_convergence_on_linear_ode(scheme, depths, lo, hi):
    f = LinearField()
    y0 = torch.randn(7, 5, generator=gen(1), dtype=F64)
    T = 1.3
    errors = ode.depth_errors(f, y0, T, depths, f.exact(y0, T), scheme=scheme)
    order, used = ode.convergence_order(depths, errors)
    assert used == depths
    assert lo <= order <= hi, (scheme, order, errors)


def test_three_eighths_rule_has_order_four_too():
    f = LinearField(seed=3)
    y0 = torch.randn(4, 5, generator=gen(2), dtype=F64)
    exact = f.exact(y0, 2.0)
    errors = [ode.rms(ode.resnet_rk4(f, y0, 2.0, L, rule="3/8"), exact) for L in (8, 16, 32, 64)]
    order, _ = ode.convergence_order([8, 16, 32, 64], errors)
    assert 3.8 <= order <= 4.2


def test_ode_flow_matches_exact_solution():
    f = LinearField(seed=4)
    y0 = torch.randn(3, 5, generator=gen(5), dtype=F64)
    assert ode.rms(ode.ode_flow(f, y0, 1.7), f.exact(y0, 1.7)) < 1e-8


# ----------------------------------------------------------------------------- against torchdiffeq


def test_resnets_equal_torchdiffeq_fixed_grid_solvers():
    f = ode.KnotField(3, 11, [0.0, 0.3, 0.55, 1.2], generator=gen(6))
    y0 = torch.randn(9, 3, generator=gen(7), dtype=F64)
    T, L = 1.2, 13
    grid = torch.linspace(0, T, L + 1, dtype=F64)
    with torch.no_grad():
        euler = odeint(f, y0, grid, method="euler")[-1]
        rk4 = odeint(f, y0, grid, method="rk4")[-1]  # torchdiffeq's rk4 is the 3/8 rule
        assert torch.allclose(ode.resnet_euler(f, y0, T, L), euler, rtol=0, atol=1e-13)
        assert torch.allclose(ode.resnet_rk4(f, y0, T, L, rule="3/8"), rk4, rtol=0, atol=1e-13)
        states = ode.resnet_euler(f, y0, T, L, return_states=True)
        assert states.shape == (L + 1, 9, 3)
        assert torch.allclose(states, odeint(f, y0, grid, method="euler"), rtol=0, atol=1e-13)


def test_knot_field_interpolates_linearly_and_untied_resnet_reads_its_layers():
    f = ode.KnotField(2, 4, [0.0, 1.0, 3.0], generator=gen(8))
    B1 = f.weights(1.0)[0]
    assert torch.equal(B1, f.w_in[1])
    assert torch.allclose(f.weights(2.0)[2], 0.5 * (f.w_out[1] + f.w_out[2]))
    assert torch.equal(f.weights(-5.0)[1], f.b_in[0]) and torch.equal(f.weights(9.0)[1], f.b_in[2])
    const = ode.KnotField(2, 4, [0.0], generator=gen(9))
    assert torch.equal(const.weights(0.7)[0], const.w_in[0])

    T, L = 2.0, 6
    untied = ode.KnotField(2, 5, ode.layer_times(T, L), generator=gen(10))
    y = y0 = torch.randn(4, 2, generator=gen(11), dtype=F64)
    for l in range(L):  # a textbook ResNet: layer l has its own weights
        hidden = torch.tanh(y @ untied.w_in[l].T + untied.b_in[l])
        y = y + (T / L) * (hidden @ untied.w_out[l].T + untied.b_out[l])
    assert torch.allclose(ode.resnet_euler(untied, y0, T, L), y, rtol=0, atol=1e-14)


def test_gradients_of_resnets_by_gradcheck():
    f = ode.KnotField(2, 2, [0.0, 0.4, 1.0], generator=gen(12))
    names = [n for n, _ in f.named_parameters()]

    def run(net, y0, *params):
        field = lambda t, y: torch.func.functional_call(f, dict(zip(names, params)), (t, y))  # noqa: E731
        return net(field, y0, 1.0, 5)

    y0 = torch.randn(2, 2, generator=gen(13), dtype=F64, requires_grad=True)
    params = [p.detach().clone().requires_grad_(True) for p in f.parameters()]
    assert torch.autograd.gradcheck(lambda y, *p: run(ode.resnet_euler, y, *p), (y0, *params))
    assert torch.autograd.gradcheck(lambda y, *p: run(ode.resnet_rk4, y, *p), (y0, *params))


def test_train_field_lowers_the_loss_deterministically():
    x = torch.randn(32, 2, generator=gen(14), dtype=F64)
    target = x @ torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64)
    runs = []
    for _ in range(2):
        f = ode.KnotField(2, 8, [0.0, 1.0], generator=gen(15))
        runs.append(ode.train_field(f, x, target, 1.0, 4, steps=30))
    assert runs[0] == runs[1]
    assert runs[0][-1] < 0.5 * runs[0][0]


def test_convergence_order_of_a_power_law_and_floor():
    depths = [4, 8, 16, 32, 64]
    errors = [3.0 * L**-2.0 for L in depths[:-1]] + [1e-16]
    order, used = ode.convergence_order(depths, errors, floor=1e-12)
    assert order == pytest.approx(2.0) and used == depths[:-1]
    with pytest.raises(ValueError, match="two depths"):
        ode.convergence_order(depths, errors, min_depth=64)


# ----------------------------------------------------------------------------- stable blocks


def test_antisymmetric_block_jacobian_has_real_part_minus_gamma():
    d, gamma = 8, 0.07
    W = torch.randn(d, d, generator=gen(16), dtype=F64)
    K = ode.antisymmetric(W, gamma)
    assert torch.allclose(K + K.T, -2 * gamma * torch.eye(d, dtype=F64))
    b = torch.randn(d, generator=gen(17), dtype=F64)
    net = ode.TiedResNet("antisymmetric", W, b, 0.1, gamma=gamma)
    y_star = torch.linalg.solve(K, -b)  # K y* + b = 0, where tanh' = 1
    J = torch.func.jacrev(net.vector_field)(y_star.detach())
    eig = torch.linalg.eigvals(J)
    assert torch.allclose(eig.real, torch.full((d,), -gamma, dtype=F64), atol=1e-12)
    # away from the equilibrium tanh' < 1 breaks the exact statement: the test can fail
    J_far = torch.func.jacrev(net.vector_field)(y_star.detach() + 1.0)
    assert not torch.allclose(torch.linalg.eigvals(J_far).real, torch.full((d,), -gamma, dtype=F64), atol=1e-3)


def test_leapfrog_is_reversible_and_volume_preserving():
    d = 5
    W = torch.randn(d, d, generator=gen(18), dtype=F64)
    b = torch.randn(d, generator=gen(19), dtype=F64)
    ham = ode.TiedResNet("hamiltonian", W, b, 0.2)
    x0 = torch.randn(6, 2 * d, generator=gen(20), dtype=F64)
    with torch.no_grad():
        assert torch.allclose(ham.inverse(ham(x0, 300), 300), x0, rtol=0, atol=1e-10)
    jac = torch.func.jacrev(lambda x: ham(x, 7))(x0[0].detach())
    sign, logdet = torch.linalg.slogdet(jac)
    assert sign == 1 and abs(float(logdet.detach())) < 1e-12
    plain = ode.TiedResNet("plain", W, b, 0.2)
    _, logdet_plain = torch.linalg.slogdet(torch.func.jacrev(lambda y: plain(y, 7))(x0[0, :d].detach()).detach())
    assert abs(float(logdet_plain)) > 1e-3  # a plain ResNet is not volume preserving
    with pytest.raises(ValueError, match="hamiltonian"):
        plain.inverse_step(x0[:, :d])


@pytest.mark.parametrize("kind", ode.KINDS)
def test_tangent_step_equals_torch_func_jvp_for_a_stack_of_networks(kind):
    n, d, B = 3, 6, 4
    W = torch.randn(n, d, d, generator=gen(21), dtype=F64)
    b = torch.randn(n, d, generator=gen(22), dtype=F64)
    net = ode.TiedResNet(kind, W, b, 0.3, gamma=0.1)
    width = 2 * d if kind == "hamiltonian" else d
    x = torch.randn(n, B, width, generator=gen(23), dtype=F64)
    v = torch.randn(n, B, width, generator=gen(24), dtype=F64)
    with torch.no_grad():
        ref = torch.func.jvp(net.step, (x,), (v,))
        got = net.tangent_step(x, v)
        # one network of the stack on its own gives the same layer
        single = ode.TiedResNet(kind, W[1], b[1], 0.3, gamma=0.1)
        assert torch.allclose(single.step(x[1]), ref[0][1], atol=1e-14)
    assert torch.allclose(got[0], ref[0], atol=1e-14) and torch.allclose(got[1], ref[1], atol=1e-13)


def test_perturbation_and_gradient_growth_at_the_equilibrium_are_matrix_powers():
    d, h, L = 6, 0.3, 40
    W = torch.randn(d, d, generator=gen(25), dtype=F64) / math.sqrt(d)
    b = torch.randn(d, generator=gen(26), dtype=F64)
    net = ode.TiedResNet("plain", W, b, h)
    y_star = torch.linalg.solve(W, -b)[None]  # the trajectory stays at y*, where J = I + h W
    v = torch.randn(1, d, generator=gen(27), dtype=F64)
    A = torch.eye(d, dtype=F64) + h * W
    growth = ode.perturbation_growth(net, y_star, L, v)
    assert len(growth) == L + 1 and growth[0] == 1.0
    exact = (v @ torch.linalg.matrix_power(A, L).T).norm() / v.norm()
    assert growth[L] == pytest.approx(float(exact), rel=1e-10)
    c = torch.randn(1, d, generator=gen(28), dtype=F64)
    (g,) = ode.gradient_growth(net, y_star, [L], c)
    assert g == pytest.approx(float((c @ torch.linalg.matrix_power(A, L)).norm() / c.norm()), rel=1e-8)


def test_euler_stable_step_formula():
    gamma, omega = 0.1, torch.tensor([0.5, 2.0], dtype=F64)
    lam = torch.cat([torch.complex(-gamma * torch.ones(2, dtype=F64), omega),
                     torch.complex(-gamma * torch.ones(2, dtype=F64), -omega)])
    assert ode.euler_stable_step(lam) == pytest.approx(2 * gamma / (gamma**2 + 4.0))
    assert ode.euler_stable_step(torch.tensor([1j, -1.0])) == 0.0  # pure rotation: never stable
    # the measured boundary at the equilibrium: test_equilibrium_stable_steps_equal_the_prediction


# ----------------------------------------------------------------------------- edge of chaos


def test_tanh_lyapunov_one_layer_equals_torch_func_jvp():
    N, s, sb = 7, 1.3, 0.2
    lam = ode.tanh_lyapunov(s, width=N, depth=1, bias_scale=sb, n_inputs=3, generator=gen(31), dtype=F64)
    g = gen(31)  # replay the draws in the function's order: x, v, W, b
    x = torch.randn(3, N, generator=g, dtype=F64)
    v = torch.randn(3, N, generator=g, dtype=F64)
    v = v / v.norm(dim=-1, keepdim=True)
    W = torch.randn(N, N, generator=g, dtype=F64) * (s / math.sqrt(N))
    b = torch.randn(N, generator=g, dtype=F64) * sb
    _, jv = torch.func.jvp(lambda x: torch.tanh(x @ W.T + b), (x,), (v,))
    assert lam == pytest.approx(float(jv.norm(dim=-1).log().mean()), rel=1e-12)


def test_tanh_lyapunov_agrees_with_mean_field_theory():
    q, chi = ode.mean_field_chi(0.5, 0.0)
    assert q < 1e-10 and chi == pytest.approx(0.25)
    for s, sb in [(0.5, 0.0), (2.5, 0.3)]:
        lam = ode.tanh_lyapunov(s, width=128, depth=60, bias_scale=sb, burn_in=20, generator=gen(32), dtype=F64)
        assert lam == pytest.approx(0.5 * math.log(ode.mean_field_chi(s, sb)[1]), abs=0.03)
    sc = ode.critical_weight_scale(0.3)
    assert ode.mean_field_chi(sc, 0.3)[1] == pytest.approx(1.0, abs=1e-9)
    assert 1.0 < sc < 2.0


# ----------------------------------------------------------------------------- reference-free orders, Richardson


def test_richardson_cancels_the_leading_rk4_error():
    f = LinearField(seed=33)
    y0 = torch.randn(4, 5, generator=gen(34), dtype=F64)
    exact = f.exact(y0, 1.5)
    coarse, fine = ode.resnet_rk4(f, y0, 1.5, 16), ode.resnet_rk4(f, y0, 1.5, 32)
    extrapolated = ode.richardson(fine, coarse, order=4)
    assert ode.rms(extrapolated, exact) < 0.1 * ode.rms(fine, exact)
    # with the wrong order the leading term is not cancelled
    assert ode.rms(ode.richardson(fine, coarse, order=1), exact) > ode.rms(extrapolated, exact)


def test_cauchy_differences_give_order_one_for_smooth_weights_and_one_half_for_untied():
    T, depths = 1.0, [16, 32, 64, 128, 256, 512]
    y0 = torch.randn(64, 3, generator=gen(35), dtype=F64)
    smooth = ode.KnotField(3, 8, [0.0, 0.5, 1.0], generator=gen(36))
    with torch.no_grad():
        p_smooth, _ = ode.convergence_order(depths[:-1], ode.cauchy_differences(
            [ode.resnet_euler(smooth, y0, T, L) for L in depths]))
        g = gen(37)  # a textbook ResNet drawn afresh at each depth: a random walk of L steps of size h
        p_untied, _ = ode.convergence_order(depths[:-1], ode.cauchy_differences(
            [ode.resnet_euler(ode.KnotField(3, 8, ode.layer_times(T, L), generator=g), y0, T, L) for L in depths]))
    assert p_smooth == pytest.approx(1.0, abs=0.05)
    assert 0.3 < p_untied < 0.7
    with pytest.raises(ValueError, match="two outputs"):
        ode.cauchy_differences([y0])


# ----------------------------------------------------------------------------- ensembles and tabulated weights


def test_tabulated_field_equals_the_field_at_its_times():
    f = ode.KnotField(3, 7, [0.0, 0.3, 1.0], generator=gen(38))
    times = [0.0, 0.15, 0.3, 0.65, 1.0, 1.4]
    tab = f.tabulate(times)
    y = torch.randn(5, 3, generator=gen(39), dtype=F64)
    with torch.no_grad():
        for t in times:
            assert torch.allclose(tab(t, y), f(t, y), rtol=0, atol=1e-15)
    with pytest.raises(KeyError):
        tab(0.5, y)


def test_ensemble_equals_separate_fields_forward_and_in_training():
    S, T, L = 3, 1.0, 6
    gens = [gen(40 + i) for i in range(S)]
    ens = ode.KnotField(2, 5, [0.0, 0.5, 1.0], generator=gens, n_models=S)
    singles = [ode.KnotField(2, 5, [0.0, 0.5, 1.0], generator=gen(40 + i)) for i in range(S)]
    for name in ("w_in", "b_in", "w_out", "b_out"):
        assert torch.equal(getattr(ens, name).detach(), torch.stack([getattr(m, name).detach() for m in singles]))
    x = torch.randn(S, 16, 2, generator=gen(44), dtype=F64)
    target = ode.twist(x)
    with torch.no_grad():
        for scheme in ode.SCHEMES:
            out = ode.resnet(ens, x, T, L, scheme=scheme)
            for i, m in enumerate(singles):
                assert torch.allclose(out[i], ode.resnet(m, x[i], T, L, scheme=scheme), rtol=0, atol=1e-14)
    losses = ode.train_field(ens, x, target, T, L, steps=15, scheme="rk4")
    assert len(losses) == 15 and len(losses[0]) == S
    for i, m in enumerate(singles):
        single_losses = ode.train_field(m, x[i], target[i], T, L, steps=15, scheme="rk4")
        assert [row[i] for row in losses] == pytest.approx(single_losses, rel=1e-9)
        assert torch.allclose(ens.w_in[i], m.w_in, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="generator"):
        ode.KnotField(2, 5, [0.0], generator=gens[:2], n_models=S)


def test_twist_rotates_by_the_radial_angle():
    x = torch.tensor([[1e-9, 0.0], [0.6, -0.8], [2.0, 0.0]], dtype=F64)
    y = ode.twist(x)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1))
    assert torch.allclose(y[0], torch.tensor([0.0, 1e-9], dtype=F64), atol=1e-15)  # π/2 at the origin
    angle = math.atan2(float(y[2, 1]), float(y[2, 0]))
    assert angle == pytest.approx((math.pi / 2) * math.exp(-8.0))
    with pytest.raises(ValueError, match="plane"):
        ode.twist(torch.zeros(3, 3))


# ----------------------------------------------------------------------------- growth rates


def test_exponential_rate_separates_exponential_from_power_law():
    t = [0.1 * k for k in range(1, 2001)]
    r, p = ode.exponential_rate(t, [0.03 * s + 1.5 * math.log(s) + 0.2 for s in t])
    assert r == pytest.approx(0.03, abs=1e-10) and p == pytest.approx(1.5, abs=1e-8)
    r, p = ode.exponential_rate(t, [2.0 * math.log(s) for s in t])
    assert abs(r) < 1e-10 and p == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 4"):
        ode.exponential_rate([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])


def test_per_network_growth_and_linear_block_rate():
    n, d, h, L = 4, 6, 0.05, 1500
    W = torch.randn(n, d, d, generator=gen(45), dtype=F64) / math.sqrt(d)
    b = torch.randn(n, d, generator=gen(46), dtype=F64)
    x0 = torch.randn(n, 3, d, generator=gen(47), dtype=F64)
    v = torch.randn(n, 3, d, generator=gen(48), dtype=F64)
    plain = ode.TiedResNet("plain", W, b, h)
    per = ode.perturbation_growth(plain, x0, 20, v, per_network=True)
    assert per.shape == (21, n)
    assert math.log(ode.perturbation_growth(plain, x0, 20, v)[-1]) == pytest.approx(float(per[-1].mean()), rel=1e-12)
    linear = ode.TiedResNet("linear", W, b, h)
    with torch.no_grad():
        ref = torch.func.jvp(linear.step, (x0,), (v,))
    got = linear.tangent_step(x0, v)
    assert torch.allclose(got[0], ref[0]) and torch.allclose(got[1], ref[1])
    logs = ode.perturbation_growth(linear, x0, L, v, per_network=True)
    t = [h * l for l in range(L + 1)]
    for i in range(n):  # the linear block grows at max log|1 + hλ(W)| / h
        r, _ = ode.exponential_rate(t, logs[:, i].tolist())
        assert r == pytest.approx(ode.euler_growth_rate(torch.linalg.eigvals(W[i]), h), abs=0.02)


def test_euler_growth_rate_and_antisymmetric_stable_step():
    gamma, omega, h = 0.1, 2.0, 0.02
    lam = torch.tensor([complex(-gamma, omega), complex(-gamma, -omega), complex(-1.0, 0.0)])
    assert ode.euler_growth_rate(lam, h) == pytest.approx(0.5 * math.log((1 - h * gamma) ** 2 + (h * omega) ** 2) / h)
    W = torch.randn(5, 7, 7, generator=gen(49), dtype=F64)
    expected = min(ode.euler_stable_step(torch.linalg.eigvals(ode.antisymmetric(W[i], gamma))) for i in range(5))
    assert ode.antisymmetric_stable_step(W, gamma) == pytest.approx(expected, rel=1e-12)


def test_frozen_stable_step_is_the_smallest_over_layers():
    K = torch.randn(3, 2, 5, 5, generator=gen(50), dtype=F64) - 3 * torch.eye(5, dtype=F64)
    got = ode.frozen_stable_step(K)
    for i in range(2):
        assert float(got[i]) == pytest.approx(min(ode.euler_stable_step(torch.linalg.eigvals(K[l, i]))
                                                   for l in range(3)), rel=1e-12)
    unstable = K.clone()
    unstable[1, 0] += 10 * torch.eye(5, dtype=F64)
    assert float(ode.frozen_stable_step(unstable)[0]) == 0.0


def test_finite_growth_rate_frozen_criterion_holds_for_constant_blocks_and_fails_for_switching():
    n, d, L = 3, 8, 400
    W = torch.randn(n, d, d, generator=gen(51), dtype=F64) / math.sqrt(d)
    zeros = torch.zeros(n, d, dtype=F64)
    # a normal block at its equilibrium, small perturbations: the linearised rate
    K = ode.antisymmetric(W, 0.2)
    h_pred = ode.frozen_stable_step(K[None])
    for frac in (0.5, 1.5):
        rate = ode.finite_growth_rate([K] * L, zeros, frac * h_pred, zeros, eps=1e-8, skip=0.5)
        expected = torch.tensor([ode.euler_growth_rate(torch.linalg.eigvals(K[i]), float(frac * h_pred[i]))
                                 for i in range(n)], dtype=F64)
        assert torch.allclose(rate, expected, atol=1e-3)
        assert bool((rate < 0).all()) if frac < 1 else bool((rate > 0).all())
    # K and Kᵀ alternating: every layer frozen-stable, the pair unstable when sym(K) has a positive eigenvalue
    shift = torch.linalg.eigvals(W).real.amax(-1) + 0.05
    K0 = W - shift[:, None, None] * torch.eye(d, dtype=F64)
    assert bool((torch.linalg.eigvalsh(0.5 * (K0 + K0.mT)).amax(-1) > 0.1).all())
    blocks = [K0 if l % 2 == 0 else K0.mT for l in range(L)]
    h0 = 0.5 * ode.frozen_stable_step(blocks)
    assert bool((ode.finite_growth_rate(blocks, zeros, h0, zeros, eps=1e-6) > 0.05).all())
    assert bool((ode.finite_growth_rate([K0] * L, zeros, h0, zeros, eps=1e-6, skip=0.5) < 0).all())


# ----------------------------------------------------------------------------- edge of chaos (2)


def test_linear_lyapunov_is_log_weight_scale_and_sign_changes():
    for s in (0.7, 1.0, 1.6):
        lam = ode.tanh_lyapunov(s, width=256, depth=80, burn_in=10, generator=gen(52), dtype=F64,
                                activation="linear", bias_scale=0.5)
        assert lam == pytest.approx(math.log(s), abs=0.02)
    assert ode.sign_changes([0.0, 1.0, 2.0, 3.0], [-1.0, 1.0, 3.0, -1.0]) == [0.5, 2.75]
    assert ode.sign_changes([0.0, 1.0], [1.0, 2.0]) == []


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call,name", [
    (lambda: ode.resnet_euler(lambda t, y: y, torch.zeros(2), 1.0, 0), "n_layers"),
    (lambda: ode.resnet_euler(lambda t, y: y, torch.zeros(2), -1.0, 3), "T"),
    (lambda: ode.resnet_rk4(lambda t, y: y, torch.zeros(2), 1.0, 3, rule="rk5"), "rule"),
    (lambda: ode.KnotField(2, 3, [0.0, 0.0]), "knot_times"),
    (lambda: ode.KnotField(0, 3, [0.0]), "dim"),
    (lambda: ode.TiedResNet("resnet", torch.eye(2), torch.zeros(2), 0.1), "kind"),
    (lambda: ode.TiedResNet("plain", torch.eye(2), torch.zeros(2), 0.0), "step_size"),
    (lambda: ode.TiedResNet("antisymmetric", torch.eye(2), torch.zeros(2), 0.1, gamma=-1.0), "gamma"),
    (lambda: ode.TiedResNet("plain", torch.ones(2, 3), torch.zeros(2), 0.1), "W"),
    (lambda: ode.depth_errors(lambda t, y: y, torch.zeros(2), 1.0, [2], torch.zeros(2), scheme="rk2"), "scheme"),
    (lambda: ode.tanh_lyapunov(1.0, width=4, depth=5, burn_in=5), "burn_in"),
    (lambda: ode.layer_times(1.0, 2.5), "n_layers"),
    (lambda: ode.tanh_lyapunov(1.0, width=4, depth=5, activation="relu"), "activation"),
    (lambda: ode.finite_growth_rate([torch.eye(2)[None]] * 4, torch.zeros(1, 2), 0.1, torch.zeros(1, 2), skip=1.0),
     "skip"),
    (lambda: ode.finite_growth_rate([torch.eye(2)[None]] * 4, torch.zeros(1, 2), -0.1, torch.zeros(1, 2)),
     "step_size"),
    (lambda: ode.finite_growth_rate([torch.eye(2)[None]] * 4, torch.zeros(2), 0.1, torch.zeros(2)), "x0"),
    (lambda: ode.richardson(torch.zeros(2), torch.zeros(2), order=0), "order"),
    (lambda: ode.euler_growth_rate(torch.tensor([-1.0]), 0.0), "step_size"),
    (lambda: ode.KnotField(2, 3, [0.0], n_models=0), "n_models"),
    (lambda: ode.resnet(lambda t, y: y, torch.zeros(2), 1.0, 2, scheme="rk2"), "scheme"),
    (lambda: ode.depth_convergence([0], width=4, n_points=4, depths=[2, 4, 8]), "depths"),
    (lambda: ode.depth_convergence([0], width=4, n_points=0), "n_points"),
    (lambda: ode.resampling_study([0], n_train=4, steps=1, L_train=12), "L_train"),
    (lambda: ode.resampling_study([0], n_train=4, steps=0), "steps"),
    (lambda: ode.stability_study(0, width=4, depth=64, gamma=0.0), "gamma"),
    (lambda: ode.stability_study(0, width=4, depth=32, gamma=0.1), "depth"),
    (lambda: ode.frozen_criterion_study(0, width=4, n_layers=1), "n_layers"),
    (lambda: ode.edge_of_chaos_study([0], n_scales=1, width=4, depth=4, bias_scale=0.1), "n_scales"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=name) as info:
        call()
    assert "not allowed" in str(info.value) or "expected" in str(info.value)


# ----------------------------------------------------------------------------- the chapter's experiments, small


def test_scheme_registry_maps_names_to_the_blocks():
    assert ode.SCHEMES == {"euler": ode.resnet_euler, "rk4": ode.resnet_rk4}
    f = LinearField(seed=60)
    y0 = torch.randn(3, 5, generator=gen(61), dtype=F64)
    for name, block in ode.SCHEMES.items():
        assert torch.equal(ode.resnet(f, y0, 1.0, 7, scheme=name), block(f, y0, 1.0, 7))


@pytest.fixture(scope="module")
def convergence():
    return ode.depth_convergence([0, 1], width=8, n_points=8, depths=[2**k for k in range(1, 9)])


def test_depth_convergence_orders_and_seed_protocol(convergence):
    r = convergence
    assert len(r.euler_errors) == 8 and len(r.rk4_errors) == 7 and len(r.smooth_diffs[1]) == 7
    assert 0.9 <= r.p_euler <= 1.1 and r.used_euler[0] == 16
    assert 3.5 <= r.p_rk4 <= 4.5 and r.reference_gap < 1e-12
    assert r.rk4_smallest_fitted_error >= r.fit_floor
    assert all(abs(p - 1) < 0.1 for p in r.smooth_orders) and all(p < 0.75 for p in r.untied_orders)
    # seed s draws the field, then the inputs, from one generator (the chapter's protocol)
    g = gen(1)
    field = ode.KnotField(4, 8, [0.0, 0.5, 1.0], generator=g)
    y0 = torch.randn(8, 4, generator=g, dtype=F64)
    with torch.no_grad():
        by_hand = ode.cauchy_differences([ode.resnet_euler(field, y0, 1.0, L) for L in r.depths])
    assert by_hand == r.smooth_diffs[1]
    m = r.metrics()
    assert m["max_depth"]["value"] == 256 and m["rk4_errors"]["labels"] == {"depths": r.rk4_depths}
    header, rows = r.table()
    assert len(rows) == 8 and all(len(row) == len(header) for row in rows) and rows[-1][2] == ""
    assert "smooth 0.99" in r.evidence() or "smooth 1.0" in r.evidence()


@pytest.fixture(scope="module")
def resampled():
    return ode.resampling_study([0, 1], n_train=16, steps=5, n_test=8, eval_depths=(8, 16, 32),
                                flow_rtol=1e-5, flow_atol=1e-7)


def test_resampling_study_shapes_and_change_at_the_trained_depth(resampled):
    r = resampled
    assert list(r.designs) == ["smooth_euler", "smooth_rk4", "untied_euler", "untied_rk4"]
    for d in r.designs.values():
        assert [c[1] for c in d["change"]] == [0.0, 0.0]  # at the trained depth: no change
        assert d["max_change"] == [max(c) for c in d["change"]]
        assert len(d["to_flow"]) == 2 and len(d["loss"][0]) == 3 and len(d["train_loss"]) == 2
    assert r.designs["untied_euler"]["params"] == 16 * r.designs["smooth_euler"]["params"] // 5
    assert r.log_change["smooth_euler"] == [math.log10(v) for v in r.designs["smooth_euler"]["max_change"]]
    # RK4 blocks follow their own flow far more closely than Euler blocks, even barely trained
    assert max(r.log_change["smooth_rk4"]) < min(r.log_change["smooth_euler"])
    m = r.metrics()
    assert len(m) == 4 * 7 + 2 and m["n_training_seeds"]["value"] == 2
    assert r.evidence("smooth_rk4", "untied_rk4", ".4f").startswith("largest changes per seed: smooth RK4 ")


@pytest.fixture(scope="module")
def stability():
    return ode.stability_study(3, width=4, depth=256, gamma=0.1, n_nets=2, batch=2, gammas=(0.1, 0.2))


def test_stability_study_rates_against_the_linearised_prediction(stability):
    r = stability
    g = gen(3)  # the networks are the first draws of the generator
    assert torch.equal(r.W, torch.randn(2, 4, 4, generator=g, dtype=F64) / 2.0)
    assert r.step_size == pytest.approx(0.5 * ode.antisymmetric_stable_step(r.W, 0.1), rel=1e-15)
    assert list(r.rates) == ["plain", "antisymmetric", "hamiltonian", "linear"]
    assert all(len(v) == 2 for v in r.rates.values()) and len(r.log_growth["plain"]) == 257
    assert np.mean(r.rates["linear"]) == pytest.approx(r.predicted_linear, abs=0.02)
    assert r.reversal < 1e-10 and r.grad_depths == [8, 32, 128] and "linear" not in r.grad_growth
    assert r.stable_worst == [max(abs(a), abs(h)) for a, h in zip(r.rates["antisymmetric"],
                                                                    r.rates["hamiltonian"])]
    assert len(r.gamma_rates) == 2 and all(p < 0 for p in r.gamma_predicted)
    assert "gradient_growth_linear" not in r.metrics() and len(r.table()[1]) == 4


def test_equilibrium_stable_steps_equal_the_prediction(stability):
    boundary = ode.equilibrium_stable_steps(stability.W[0], stability.b[0], 0.1, n_layers=300)
    assert list(boundary) == ["antisymmetric", "shifted plain"]
    for predicted, measured in boundary.values():
        assert measured == pytest.approx(predicted, rel=0.01)


@pytest.fixture(scope="module")
def frozen():
    return ode.frozen_criterion_study(5, width=6, n_nets=2, n_layers=64)


def test_frozen_criterion_holds_for_slow_weights_and_fails_for_switching(frozen):
    r = frozen
    assert len(r.rate_slow) == 6 and all(len(x) == 2 for x in r.rate_slow + r.rate_switch)
    assert r.slow == r.rate_slow[3] and r.switch == r.rate_switch[3]
    assert max(r.slow) < 0 < min(r.switch)
    assert r.metrics()["c5_rate_slow"]["labels"]["at"] == "h = 0.9 h_pred"
    assert r.evidence().startswith("2 networks of 64 layers at h = 0.9 h_pred; slow: -")


@pytest.fixture(scope="module")
def chaos():
    return ode.edge_of_chaos_study([4], n_scales=5, width=32, depth=40, bias_scale=0.3)


def test_edge_of_chaos_study_edges_and_mean_field(chaos):
    r = chaos
    assert r.scales == [0.5, 1.0, 1.5, 2.0, 2.5] and r.single
    assert r.lyap_mf[2] == 0.5 * math.log(ode.mean_field_chi(1.5, 0.3)[1])
    assert r.gaps == [r.edges[0][0] - r.edge_mf]
    assert abs(r.gaps[0]) < 0.2 and abs(r.edges_linear[0][0] - 1.0) < 0.1
    m = r.metrics()
    assert m["edge_of_chaos_scale"]["value"] == r.edges[0][0] and m["lyapunov_sign_changes"]["value"] == [1]
    assert r.evidence().startswith("edges per seed: tanh [")


def test_plots_draw_every_result(convergence, resampled, stability, frozen, chaos):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 5)
    ode.plot_convergence(axes[:, 0], convergence)
    ode.plot_resampling(axes[:, 1], resampled)
    ode.plot_stability(axes[:, 2], stability, rate_max=0.01)
    ode.plot_frozen_criterion(axes[0, 3], frozen)
    ode.plot_edge_of_chaos(axes[0, 4], chaos)
    assert len(axes[0, 0].lines) == 5 and len(axes[1, 1].lines) == 4 * 2 + 2
    plt.close(fig)
