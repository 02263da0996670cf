"""dynbook.models.diffusion in float64: closed-form marginals and scores, samplers and their orders,
the two-sample metric, the likelihood identity, and a learned score on a tiny problem."""

import math

import pytest
import torch

from dynbook.models import diffusion as df

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny float64 problems: one thread is faster


def mixture():
    means = torch.tensor([[1.0, -0.5], [-1.2, 0.3], [0.2, 1.5]], dtype=D)
    return df.GaussianMixture(means, torch.tensor([0.04, 0.09, 0.25], dtype=D), torch.tensor([0.5, 0.3, 0.2], dtype=D))


SDES = [df.VPSDE(0.1, 20.0), df.VESDE(0.01, 10.0)]


@pytest.mark.parametrize("sde", SDES, ids=["vp", "ve"])
def test_kernel_variance_is_the_integral_of_g_squared(sde):
    # d/dt s(t)² = g(t)² − 2·(½β) s² for VP (= g² for VE): check s² against a quadrature of the
    # linear ODE v' = g² + 2 a(t) v, a = drift coefficient, v(0) = 0
    n = 1000
    ts = torch.linspace(0, 1, n + 1, dtype=D)
    v = torch.zeros((), dtype=D)
    at = {}

    def rhs(t, v):
        a = -0.5 * sde.beta(t) if sde.kind == "vp" else 0.0
        return sde.diffusion(t) ** 2 + 2 * a * v

    for k in range(n):  # classical RK4 on the variance ODE (error ~ h⁴, far below the tolerance)
        t0, h = ts[k], ts[k + 1] - ts[k]
        k1 = rhs(t0, v)
        k2 = rhs(t0 + h / 2, v + h / 2 * k1)
        k3 = rhs(t0 + h / 2, v + h / 2 * k2)
        k4 = rhs(t0 + h, v + h * k3)
        v = v + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        if k + 1 in (n // 10, n):
            at[k + 1] = float(v)
    assert at[n // 10] == pytest.approx(float(sde.noise_std(0.1)) ** 2, rel=1e-6)
    assert at[n] == pytest.approx(float(sde.noise_std(1.0)) ** 2, rel=1e-6)


@pytest.mark.parametrize("sde", SDES, ids=["vp", "ve"])
@pytest.mark.parametrize("t", [0.001, 0.1, 0.7])
def test_score_is_the_gradient_of_log_p_t(sde, t):
    mix = mixture()
    x = torch.tensor([[0.3, -0.2], [-1.0, 0.5], [2.0, 1.0]], dtype=D)
    eps = 1e-6
    fd = torch.stack([(mix.log_prob(x + eps * e, t, sde) - mix.log_prob(x - eps * e, t, sde)) / (2 * eps)
                      for e in torch.eye(2, dtype=D)], 1)
    assert torch.allclose(mix.score(x, t, sde), fd, rtol=1e-6, atol=1e-6)
    lap_fd = sum((mix.score(x + eps * e, t, sde) - mix.score(x - eps * e, t, sde))[:, i] / (2 * eps)
                 for i, e in enumerate(torch.eye(2, dtype=D)))
    assert torch.allclose(mix.laplacian_log_prob(x, t, sde), lap_fd, rtol=1e-5, atol=1e-5)


def test_marginal_object_matches_the_time_dependent_formulas_and_batches():
    mix, sde = mixture(), SDES[0]
    x = torch.randn(2, 5, 2, dtype=D)
    pt = mix.marginal(sde, 0.3)
    assert torch.allclose(pt.log_prob(x), mix.log_prob(x, 0.3, sde))
    assert torch.allclose(pt.score(x), mix.score(x, 0.3, sde))
    t = torch.rand(2, 5, dtype=D)  # per-point times, leading batch dimension
    per_point = torch.stack([mix.score(x[i, j:j + 1], t[i, j], sde)[0] for i in range(2) for j in range(5)])
    assert torch.allclose(mix.score(x, t, sde).reshape(-1, 2), per_point)
    # the marginal at t = 1 of the VP-SDE is nearly the standard normal
    p1 = mix.marginal(sde, 1.0)
    assert float(p1.means.abs().max()) < 0.02 and torch.allclose(p1.variances, torch.ones(3, dtype=D), atol=1e-3)


def test_mmd_to_mixture_is_unbiased_and_zero_for_its_own_samples():
    mix = mixture()
    other = mix.rotated(0.4)
    g = torch.Generator().manual_seed(0)
    ell = 0.5
    exact = df.mmd2_mixtures(other, mix, ell)
    assert exact > 1e-3 and df.mmd2_mixtures(mix, mix, ell) == pytest.approx(0.0, abs=1e-14)
    est = torch.tensor([df.mmd2_to_mixture(other.sample(400, g), mix, ell) for _ in range(40)], dtype=D)
    assert float(est.mean()) == pytest.approx(exact, abs=4 * float(est.std()) / math.sqrt(40))
    own = torch.tensor([df.mmd2_to_mixture(mix.sample(400, g), mix, ell) for _ in range(40)], dtype=D)
    assert abs(float(own.mean())) < 4 * float(own.std()) / math.sqrt(40)
    # the sample-sample estimator agrees with the closed-form one in expectation
    two = torch.tensor([df.mmd2_samples(other.sample(300, g), mix.sample(300, g), ell) for _ in range(40)], dtype=D)
    assert float(two.mean()) == pytest.approx(exact, abs=4 * float(two.std()) / math.sqrt(40))


def gaussian_flow_exact(x1, mu, v, sde, t):
    """For one Gaussian N(μ, vI) the probability flow is affine: x(t) − m_t μ scales by the
    ratio of standard deviations (VP)."""
    var = lambda s: float(sde.mean_coef(s)) ** 2 * v + float(sde.noise_std(s)) ** 2
    return float(sde.mean_coef(t)) * mu + (x1 - float(sde.mean_coef(1.0)) * mu) * math.sqrt(var(t) / var(1.0))


@pytest.mark.parametrize("solver,order", [("euler", 1), ("rk4", 4)])
def test_probability_flow_solvers_converge_at_their_order(solver, order):
    sde = df.VPSDE(0.1, 20.0)
    mu = torch.tensor([[0.7, -0.4]], dtype=D)
    mix = df.GaussianMixture(mu, torch.tensor([0.3], dtype=D), torch.ones(1, dtype=D))
    x1 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=D)
    exact = gaussian_flow_exact(x1, mu, 0.3, sde, 0.05)
    steps = [64, 128, 256] if solver == "euler" else [16, 32, 64]
    errs = [float((df.pf_ode(df.exact_score(mix, sde), sde, x1, t_end=0.05, solver=solver, n_steps=n)[0]
                   - exact).abs().max()) for n in steps]
    fitted = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(abs(p - order) < 0.3 * order for p in fitted), (errs, fitted)
    x, nfe = df.pf_ode(df.exact_score(mix, sde), sde, x1, t_end=0.05, solver="dopri5", rtol=1e-10, atol=1e-10)
    assert float((x - exact).abs().max()) < 1e-7 and nfe > 0


def test_reverse_sde_recovers_a_gaussian_and_brownian_helpers():
    sde = df.VPSDE(0.1, 20.0)
    mu = torch.tensor([[1.0, -1.0]], dtype=D)
    mix = df.GaussianMixture(mu, torch.tensor([0.09], dtype=D), torch.ones(1, dtype=D))
    g = torch.Generator().manual_seed(0)
    n = 8000
    dw = df.brownian_increments(400, n, 2, t_end=1e-3, generator=g)
    assert float(dw.var()) == pytest.approx((1 - 1e-3) / 400, rel=0.02)
    coarse = df.coarsen(dw, 4)
    assert coarse.shape == (100, n, 2) and torch.allclose(coarse.sum(0), dw.sum(0))
    with pytest.raises(ValueError):
        df.coarsen(dw, 7)
    x = df.reverse_sde_em(df.exact_score(mix, sde), sde, mix.marginal(sde, 1.0).sample(n, g), dw, t_end=1e-3)
    target = mix.marginal(sde, 1e-3)
    assert torch.allclose(x.mean(0), target.means[0], atol=0.02)
    assert float(x.var(0).mean()) == pytest.approx(float(target.variances[0]), rel=0.08)


def test_likelihood_identity_and_hutchinson():
    mix, sde = mixture(), df.VPSDE(0.1, 20.0)
    x = mix.marginal(sde, 1e-2).sample(6, torch.Generator().manual_seed(3))
    p1 = mix.marginal(sde, 1.0)
    ll, nfe = df.pf_log_likelihood(df.exact_score(mix, sde), sde, p1.log_prob, x, t_start=1e-2, rtol=1e-9, atol=1e-9)
    assert torch.allclose(ll, mix.log_prob(x, 1e-2, sde), atol=1e-5) and nfe > 0
    hutch = torch.stack([df.pf_log_likelihood(df.exact_score(mix, sde), sde, p1.log_prob, x, t_start=1e-2,
                                              trace="hutchinson", n_probes=8,
                                              generator=torch.Generator().manual_seed(s), rtol=1e-6, atol=1e-6)[0]
                         for s in range(4)])
    assert float((hutch.mean(0) - ll).abs().mean()) < 0.5  # unbiased but noisy
    with pytest.raises(ValueError, match="trace"):
        df.pf_log_likelihood(df.exact_score(mix, sde), sde, p1.log_prob, x, t_start=1e-2, trace="exact-ish")


def test_learned_score_on_a_tiny_problem():
    sde = df.VPSDE(0.1, 20.0)
    mix = df.GaussianMixture(torch.tensor([[0.5, -0.5]], dtype=D), torch.tensor([0.25], dtype=D), torch.ones(1, dtype=D))
    g = torch.Generator().manual_seed(0)
    net = df.EnsembleScore(2, 2, 32, 3, sde=sde, generator=g).double()
    before = df.weighted_score_error(net.member(0), mix, sde, n=2000, t_min=1e-2, generator=torch.Generator().manual_seed(1))
    losses = df.train_dsm(net, mix, iterations=300, batch=256, t_min=1e-2, lr=1e-2, generator=g)
    assert losses[-1] < losses[0]
    after = [df.weighted_score_error(net.member(i), mix, sde, n=2000, t_min=1e-2,
                                     generator=torch.Generator().manual_seed(1)) for i in range(2)]
    assert max(after) < 0.1 < before, (before, after)


def test_errors_and_small_helpers():
    with pytest.raises(ValueError, match="sde"):
        df.make_sde("subvp")
    with pytest.raises(ValueError, match="solver"):
        df.pf_ode(lambda x, t: x, df.VPSDE(), torch.zeros(2, 2, dtype=D), t_end=0.1, solver="heun", n_steps=3)
    with pytest.raises(ValueError, match="n_steps"):
        df.pf_ode(lambda x, t: x, df.VPSDE(), torch.zeros(2, 2, dtype=D), t_end=0.1, solver="rk4")
    with pytest.raises(ValueError, match="sampler"):
        df.step_cost("heun", n_modes=4)
    assert df.step_cost("rk4", n_modes=4)["nfe"] == 4
    assert df.step_cost("em", n_modes=8)["flops"] > df.step_cost("em", n_modes=4)["flops"]
    curve = [(4, [0.5, 0.01]), (8, [0.015, 0.03]), (16, [0.001, 0.001])]
    assert df.nfe_to_quality(curve, 0.02) == [8.0, 4.0]
    assert df.nfe_to_quality(curve, 1e-4) == [math.inf, math.inf]
    adaptive = [([19, 21], [0.5, 0.01]), ([40, 44], [0.01, 0.005])]
    assert df.nfe_to_quality(adaptive, 0.02) == [40.0, 21.0]
    between = df.nfe_to_quality(curve, 0.02, interpolate=True)
    assert between[1] == 4.0 and 4.0 < between[0] < 8.0
    assert between[0] == pytest.approx(math.exp(math.log(4) + (0.5 - 0.02) / (0.5 - 0.015) * math.log(2)))
    a = torch.zeros(3, 4, 2, dtype=D)
    assert torch.allclose(df.rms_distance(a, a + torch.tensor([3.0, 4.0], dtype=D)), torch.full((3,), 5.0, dtype=D))


# ----------------------------------------------------------------------------- the chapter's experiments


def small_problem(replicates=2, **kw):
    return df.mixture_problem("vp", n_modes=4, radius=2.0, std=0.2, bandwidth=0.5, t_end=1e-3, seed=3,
                              replicates=replicates, **kw)


def test_mixture_problem_derives_the_targets_and_refuses_bad_inputs():
    pb = small_problem()
    assert pb.seeds == [3000, 3001] and pb.replicates == 2
    # p_1 of the VP-SDE (β_max = 20) is the N(0, I) prior up to e^{-10}: their MMD² is tiny,
    # the unit (data to prior) is not, and the rotated mixture is another mixture
    assert df.mmd2_mixtures(pb.p1, pb.prior, 0.5) < 1e-6 < pb.unit
    assert torch.allclose(pb.target.means, float(pb.sde.mean_coef(1e-3)) * pb.mix.means)
    assert df.mmd2_mixtures(pb.mix, pb.wrong, 0.5) > 0.1
    x = torch.stack([pb.target.sample(2000, torch.Generator().manual_seed(r)) for r in range(2)])
    assert max(abs(v) for v in pb.quality(x)) < 0.01
    assert pb.noise(5, 7).shape == (5, 2, 7, 2) and pb.draw(pb.mix, 6).shape == (2, 6, 2)
    for kw, name in ((dict(kind="subvp"), "kind"), (dict(replicates=0), "replicates"),
                     (dict(n_modes=1), "n_modes"), (dict(bandwidth=0.0), "bandwidth"),
                     (dict(t_end=1.0), "t_end"), (dict(beta_min=5.0, beta_max=1.0), "beta_max")):
        with pytest.raises(ValueError, match=name):
            df.mixture_problem(**kw)
    assert isinstance(df.cut_schedule(df.VPSDE(0.1, 20.0)), df.VPSDE)
    assert df.cut_schedule(df.VESDE(0.01, 10.0)).sigma_max == 1.0


def test_forward_and_reverse_experiments_separate_claim_and_control():
    pb = small_problem()
    fwd = df.forward_experiment(pb, times=(0.5, 1.0), n_samples=400, n_steps=50, seed=0)
    assert fwd["paths"]["claim"][1.0].shape == (2, 400, 2)
    assert max(fwd["c1"]) < 0.02 < 0.05 < min(fwd["c1_control"])
    assert set(df.forward_records(fwd)) == {"forward_marginal_mmd_t050", "forward_marginal_mmd_t100",
                                            "forward_marginal_worst"}
    with pytest.raises(ValueError, match="times"):
        df.forward_experiment(pb, times=(0.5,), n_samples=10)
    rev = df.reverse_experiment(pb, n_samples=400, n_steps=64, solver="rk4")
    q = rev["quality"]
    assert max(q["sde"] + q["ode"]) < 0.03 and min(q["sde_wrong"] + q["ode_wrong"]) > 0.3
    assert rev["nfe_ode"] == 4 * 64 and rev["samples"]["ode"].shape == (2, 400, 2)
    assert rev["target"].shape == (400, 2)
    with pytest.raises(ValueError, match="solver"):
        df.reverse_experiment(pb, n_samples=10, n_steps=4, solver="heun")


def test_pathwise_experiment_converges_on_the_same_path_only():
    pb = small_problem(replicates=1)
    pw = df.pathwise_experiment(pb, n_paths=48, fine=128, sde_steps=(8, 16, 32), euler_steps=(8, 16, 32),
                                rk4_steps=(2, 4, 8), dopri_tols=(1e-3, 1e-4, 1e-5))
    assert pw["error"]["same"].shape == (1, 3)
    assert min(pw["order"]) > 0.3 and max(pw["order_control"]) < 0.2
    assert pw["fitted"]["probability flow, euler"].value > 0.5
    with pytest.raises(ValueError, match="fine"):
        df.pathwise_experiment(pb, n_paths=4, fine=100, sde_steps=(8,))


def test_nfe_crossover_on_a_known_curve():
    # the SDE crosses 0.02 at 16 NFE (replicate 0) and 32 (1); Euler at 8 and never; RK4 at 8, 8
    curves = {"reverse SDE (EM)": [(8, [0.1, 0.1]), (16, [0.02, 0.05]), (32, [0.01, 0.02])],
              "probability flow (Euler)": [(4, [0.1, 0.5]), (8, [0.02, 0.5])],
              "probability flow (RK4)": [(4, [0.5, 0.5]), (8, [0.02, 0.02])]}
    res = {"curves": curves, "control": [(8, [0.9, 0.9]), (16, [0.8, 0.8])]}
    c = df.nfe_crossover(res, 0.02)
    euler = c["nfe"]["probability flow (Euler)"]
    assert euler[0] == pytest.approx(8.0) and euler[1] == math.inf and c["cap"] == 64
    assert c["cheapest_ode_nfe"] == pytest.approx([8.0, 8.0]) and c["best_ode"] == "probability flow (RK4)"
    assert c["log_ratio"] == pytest.approx([1.0, 2.0])
    assert c["log_ratio_control"] == pytest.approx([math.log2(16 / 64), math.log2(32 / 64)])
    assert c["median"]["probability flow (Euler)"] == pytest.approx(8.0)
    assert c["rows"][1][1] == "8.0, not reached"
    with pytest.raises(ValueError, match="sde"):
        df.nfe_crossover(res, 0.02, sde="reverse SDE (Heun)")


def test_quality_grid_dsm_likelihood_and_generation_fit_together():
    pb = small_problem()
    grid = {"reverse SDE (EM)": ("em", (8, 32)), "probability flow (RK4)": ("rk4", (2, 8)),
            "probability flow (dopri5)": ("dopri5", (1e-2, 1e-3))}
    qn = df.quality_vs_nfe(pb, n_samples=200, grid=grid, control_steps=(2, 4))
    assert [n for n, _ in qn["curves"]["probability flow (RK4)"]] == [8, 32]
    assert len(qn["curves"]["probability flow (dopri5)"][0][0]) == 2  # each replicate's NFE
    cross = df.nfe_crossover(qn, 0.05)
    gen = df.generation_samplers(pb, qn, cross, n=50, seed=0)
    assert set(gen["run"]) == {"sde", "sde_quarter", "ode"}
    out = gen["run"]["sde"]()
    assert out.shape == (50, 2) and gen["nfe_sde"] >= 1
    rev = df.reverse_experiment(pb, n_samples=100, n_steps=16, solver="rk4")
    dsm = df.dsm_experiment(pb, rev, iterations=3, solver="rk4", seed=0, hidden=16, batch=32, n_error=200)
    assert set(dsm["records"]) == {"weighted_score_error", "rel_mmd2_learned", "rel_mmd2_untrained",
                                   "rel_mmd2_discretisation_score_part", "rel_mmd2_score_score_part"}
    assert dsm["samples"].shape == (2, 100, 2) and len(dsm["rows"]) == 3
    with pytest.raises(ValueError, match="iterations"):
        df.dsm_experiment(pb, rev, iterations=0, solver="rk4")
    lik = df.likelihood_experiment(pb, n_points=4)
    assert lik["max_abs_error"] < 1e-4 and lik["records"]["likelihood_nfe"] == (lik["nfe"], "evaluations")
    with pytest.raises(ValueError, match="n_points"):
        df.likelihood_experiment(pb, n_points=0)


def test_step_costs_and_figures():
    c = df.step_costs(8)
    assert c["records"]["step_intensity_rk4"][0] == pytest.approx(
        c["records"]["step_flops_rk4"][0] / c["records"]["step_bytes_rk4"][0])
    assert len(c["rows"]) == 4 and len(c["header"]) == 5 and len(c["records"]) == 9
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3)
    pts = torch.zeros(10, 2, dtype=D)
    df.plot_scatter_panels(axes[:2], [("a", pts), ("b", pts)], lim=3.0, density=mixture())
    curves = {"reverse SDE (EM)": [(8, [0.1, 0.1])], "probability flow (dopri5)": [([7, 9], [0.01, 0.02])]}
    df.plot_quality(axes[2], {"curves": curves, "control": [(8, [0.9, 0.9])]}, 0.02)
    assert len(axes[2].lines) == 3
    plt.close(fig)
