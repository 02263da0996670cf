"""dynbook.models.cosmo: the duality's dictionary, the FLRW integration (constraint, vacuum limit),
the f-ODE against closed forms and scipy, the γ fit and the mode equations."""

import math

import numpy as np
import pytest
import torch

from dynbook.models import cosmo
from dynbook.models.ntk import MLPConfig

F64 = torch.float64


def t64(*v):
    return torch.tensor(v, dtype=F64)


def test_matching_identities():
    lr, mu, mp = t64(1e-3, 0.01, 0.1, 0.3), t64(0.9, 0.5, 0.0, 0.7), 2.5
    gamma = cosmo.friction(lr, mu)
    torch.testing.assert_close(gamma, (1 - mu) / lr.sqrt())
    torch.testing.assert_close(3 * cosmo.hubble_rate(lr, mu), gamma)
    v0 = cosmo.vacuum_energy(lr, mu, mp)
    torch.testing.assert_close(v0, mp ** 2 * (1 - mu) ** 2 / (3 * lr))          # V_0 ∝ 1/η
    torch.testing.assert_close(v0, 3 * mp ** 2 * cosmo.hubble_rate(lr, mu) ** 2)
    # next order: γ/c replaces γ, c = (1 + μ)/2
    c = (1 + mu) / 2
    torch.testing.assert_close(cosmo.vacuum_energy(lr, mu, mp, "next"), v0 / c ** 2)
    torch.testing.assert_close(cosmo.vacuum_energy_of(gamma, mu, mp), v0)
    torch.testing.assert_close(cosmo.energy_ratio(2.0, 0.5, lr, mu, mp),
                               3 * lr * 2.0 * 0.5 / (mp ** 2 * (1 - mu) ** 2))


def test_friedmann_constraint_is_conserved():
    gen = torch.Generator().manual_seed(0)
    b = 6
    phi0 = torch.randn(b, generator=gen, dtype=F64)
    ntk0 = torch.rand(b, generator=gen, dtype=F64) * 5 + 0.1
    power = t64(2, 4, 2, 4, 6, 2)
    vacuum = torch.rand(b, generator=gen, dtype=F64) + 0.05  # includes far-from-vacuum cases
    sol = cosmo.flrw(phi0, ntk0, phi0 + 1.0, power, vacuum, 0.05, 400, planck_mass=0.7,
                     dphi0=0.3, rtol=1e-11, atol=1e-13)
    assert sol["phi"].shape == (401, b)
    assert cosmo.constraint_violation(sol).max() < 1e-8
    # H decreases (Ḣ = −φ̇²/2M_P² ≤ 0) and the scale factor grows
    assert torch.all(sol["hubble"].diff(dim=0) <= 1e-14)
    assert torch.all(sol["log_a"].diff(dim=0) > 0)


def test_flrw_tends_to_the_network_as_the_vacuum_dominates():
    # same γ, M_P → ∞ makes ρ_φ/V_0 → 0: the FLRW field becomes the network's f-ODE,
    # with a deviation ∝ ρ_φ/V_0 ∝ 1/M_P²
    f0, ntk0, lr, mu, k = t64(0.2), t64(1.7), 0.01, 0.5, 300
    pred = cosmo.predict_output(ntk0, f0, f0 + 1, 2, lr, mu, k)
    devs = []
    for mp in (3.0, 30.0):
        phi = cosmo.flrw_of_network(ntk0, f0, f0 + 1, 2, lr, mu, k, planck_mass=mp)["phi"]
        devs.append(cosmo.relative_deviation(phi, pred).item())
    assert devs[1] < 2e-3
    assert 50 < devs[0] / devs[1] < 200


def test_predict_output_matches_the_damped_oscillator():
    # n = 2: f̈ + γ ḟ + 2Θ(f − y) = 0 at t_k = k √η
    theta, f0, y, lr, mu, k = 1.3, -0.4, 0.6, 0.04, 0.8, 150
    got = cosmo.predict_output(theta, t64(f0), y, 2, lr, mu, k)[:, 0]
    gamma = (1 - mu) / math.sqrt(lr)
    t = torch.arange(k + 1, dtype=F64) * math.sqrt(lr)
    a, w = gamma / 2, math.sqrt(2 * theta - gamma ** 2 / 4)
    exact = y + (f0 - y) * torch.exp(-a * t) * (torch.cos(w * t) + a / w * torch.sin(w * t))
    torch.testing.assert_close(got, exact, rtol=1e-7, atol=1e-8)


def test_predict_output_next_order_against_scipy():
    from scipy.integrate import solve_ivp

    theta, f0, y, lr, mu, k = 2.1, 0.3, 1.3, 0.02, 0.6, 80
    got = cosmo.predict_output(theta, t64(f0), y, 4, lr, mu, k, convention="next")[:, 0]
    c, gamma, h = (1 + mu) / 2, (1 - mu) / math.sqrt(lr), math.sqrt(lr)
    t = (np.arange(k + 1) + 0.5) * h
    sol = solve_ivp(lambda _, s: [s[1], (-gamma * s[1] - theta * 4 * (s[0] - y) ** 3) / c],
                    (0, t[-1]), [f0, 0.0], t_eval=t, rtol=1e-11, atol=1e-13, method="DOP853")
    torch.testing.assert_close(got, torch.as_tensor(sol.y[0]), rtol=1e-6, atol=1e-7)


def test_batched_predictions_equal_single_ones():
    ntk0, f0, power = t64(0.5, 3.0, 1.0), t64(0.0, 0.4, -0.2), t64(2, 4, 4)
    lr, mu = t64(0.001, 0.01, 0.05), t64(0.9, 0.5, 0.0)
    batch = cosmo.predict_output(ntk0, f0, f0 + 1, power, lr, mu, 60)
    for b in range(3):
        one = cosmo.predict_output(ntk0[b], f0[b], f0[b] + 1, power[b], lr[b], mu[b], 60)
        torch.testing.assert_close(batch[:, b], one[:, 0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("convention", ["leading", "next"])
def test_fit_friction_recovers_a_known_friction(convention):
    ntk0, f0, lr, mu = t64(1.2, 0.7), t64(0.1, -0.3), t64(0.01, 0.003), t64(0.5, 0.9)
    true = cosmo.friction(lr, mu) * t64(1.3, 0.8)
    obs = cosmo.predict_output(ntk0, f0, f0 + 1, 2, lr, mu, 80, convention=convention,
                               gamma=true, rtol=1e-10, atol=1e-12)
    fit = cosmo.fit_friction(obs, ntk0, f0, f0 + 1, 2, lr, mu, convention=convention)
    torch.testing.assert_close(fit, true, rtol=1e-4, atol=0)


def test_max_learning_rate_falls_with_momentum_and_scales_as_one_over_ntk():
    # Θ_0 = 1 and 4 in one batched bisection; log-range 9.2 / 2^14: 6e-4 resolution each
    theta, mu = t64(1.0, 1.0, 1.0, 4.0, 4.0, 4.0), t64(0.0, 0.5, 0.8, 0.0, 0.5, 0.8)
    lr = cosmo.max_learning_rate(theta, 0.0, 1.0, 2, mu, 40, iterations=14, lr_range=(1e-4, 1.0))
    lr1, lr4 = lr[:3], lr[3:]
    assert torch.all(lr1.diff() < 0) and torch.all(lr4 > 1e-4)
    # everything depends on ηΘ_0 only (rescale time by √Θ_0), up to the bisection's resolution
    torch.testing.assert_close(lr1 / lr4, torch.full_like(lr1, 4.0), rtol=2e-3, atol=0)


def test_modes_equal_the_projected_frozen_kernel_prediction_for_a_quadratic_loss():
    gen = torch.Generator().manual_seed(3)
    n = 7
    a = torch.randn(n, n, generator=gen, dtype=F64)
    kernel = a @ a.T + 5 * torch.ones(n, n, dtype=F64)  # a dominant uniform mode
    f0 = 0.1 * torch.randn(n, generator=gen, dtype=F64)
    y = torch.full((n,), 1.0, dtype=F64)
    full = cosmo.predict_function(kernel, f0, y, 2, 0.01, 0.5, 120)
    g, lam, vec = cosmo.predict_modes(kernel, f0, y, 2, 0.01, 0.5, 120)
    torch.testing.assert_close(full @ vec, g, rtol=1e-6, atol=1e-7)
    assert torch.all(lam.diff() <= 0) and vec[:, 0].sum() > 0
    torch.testing.assert_close(vec.T @ vec, torch.eye(n, dtype=F64))
    # n = 4: the linearized perturbations still track the full prediction closely
    full4 = cosmo.predict_function(kernel, f0, y, 4, 0.01, 0.5, 120) @ vec
    g4, _, _ = cosmo.predict_modes(kernel, f0, y, 4, 0.01, 0.5, 120)
    assert (full4 - g4).abs().max() < 0.05 * (full4[-1, 0] - full4[0, 0]).abs()


def test_homogeneous_scan_runs_and_predicts_wide_networks():
    cfg = MLPConfig(width=64, depth=1, activation="erf", bias_std=0.5)
    res = cosmo.homogeneous_scan([cfg], weight_stds=[0.8, 1.2], lr_momentum=[(0.01, 0.5)],
                                 powers=[2], n_seeds=1, n_steps=60, target_shift=1.0,
                                 generator=torch.Generator().manual_seed(4))
    assert res["f"].shape == (61, 2) and res["ntk0"].shape == (2,)
    assert res["deviation"]["next"].max() < 0.05
    assert res["deviation"]["next"].max() < res["deviation"]["leading"].max()


def test_relative_deviation():
    actual = t64(0.0, 0.5, 1.0)[:, None]
    pred = t64(0.0, 0.7, 0.9)[:, None]
    assert cosmo.relative_deviation(pred, actual, over="end").item() == pytest.approx(0.1)
    assert cosmo.relative_deviation(pred, actual).item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="over='mean'"):
        cosmo.relative_deviation(pred, actual, over="mean")
    with pytest.raises(ValueError, match="same shape"):
        cosmo.relative_deviation(pred[:2], actual)


@pytest.mark.parametrize("call, match", [
    (lambda: cosmo.predict_output(1.0, t64(0.0), 1.0, 3, 0.01, 0.5, 10), "power=3"),
    (lambda: cosmo.predict_output(1.0, t64(0.0), 1.0, 2, 0.01, 1.0, 10), "momentum=1.0"),
    (lambda: cosmo.predict_output(1.0, t64(0.0), 1.0, 2, 0.0, 0.5, 10), "lr=0.0"),
    (lambda: cosmo.predict_output(-1.0, t64(0.0), 1.0, 2, 0.01, 0.5, 10), "ntk0="),
    (lambda: cosmo.predict_output(1.0, t64(0.0), 1.0, 2, 0.01, 0.5, 0), "n_steps=0"),
    (lambda: cosmo.predict_output(1.0, t64(0.0), 1.0, 2, 0.01, 0.5, 5, convention="x"),
     "convention='x'"),
    (lambda: cosmo.vacuum_energy(0.01, 0.5, planck_mass=-1.0), "planck_mass=-1.0"),
    (lambda: cosmo.flrw(t64(0.0), 1.0, 1.0, 2, 0.0, 0.1, 10), "vacuum="),
    (lambda: cosmo.ntk_modes(torch.zeros(2, 3, dtype=F64)), r"square \(N, N\)"),
])
def test_bad_arguments_raise_value_errors_naming_them(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_batched_mode_predictions_equal_single_ones():
    gen = torch.Generator().manual_seed(5)
    b, n = 3, 6
    a = torch.randn(b, n, n, generator=gen, dtype=F64)
    kernel = a @ a.transpose(-1, -2) + 4 * torch.ones(n, n, dtype=F64)
    f0 = 0.1 * torch.randn(b, n, generator=gen, dtype=F64)
    y = f0.mean(-1, keepdim=True) + 1.0
    power = t64(2, 4, 4)
    g, lam, vec = cosmo.predict_modes(kernel, f0, y.expand_as(f0), power, 0.02, 0.3, 50,
                                      convention="next")
    full = cosmo.predict_function(kernel, f0, y.expand_as(f0), power, 0.02, 0.3, 50)
    for i in range(b):
        gi, li, vi = cosmo.predict_modes(kernel[i], f0[i], y[i].expand(n), int(power[i]), 0.02, 0.3, 50,
                                         convention="next")
        torch.testing.assert_close(g[:, i], gi, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(lam[i], li)
        fi = cosmo.predict_function(kernel[i], f0[i], y[i].expand(n), int(power[i]), 0.02, 0.3, 50)
        torch.testing.assert_close(full[:, i], fi, rtol=1e-6, atol=1e-8)
    # a smaller kernel moves the modes less
    slow = cosmo.predict_modes(kernel, f0, y.expand_as(f0), power, 0.02, 0.3, 50, convention="next",
                               kernel_scale=0.1)[0]
    assert torch.all((slow[-1, :, 0] - slow[0, :, 0]).abs() < (g[-1, :, 0] - g[0, :, 0]).abs())


def test_mode_analysis_of_frozen_kernel_dynamics_explains_every_mode():
    # "training" generated by the frozen-kernel equation itself (n = 2, next order): the mean
    # mode is predicted exactly, every perturbation's motion is fully explained, and the
    # kernel/10 control misses
    gen = torch.Generator().manual_seed(6)
    b, n, k = 2, 5, 80
    a = torch.randn(b, n, n, generator=gen, dtype=F64)
    kernel = a @ a.transpose(-1, -2) + 6 * torch.ones(n, n, dtype=F64)
    f0 = 0.3 * torch.randn(b, n, generator=gen, dtype=F64)
    target = (f0.mean(-1, keepdim=True) + 1.0).expand_as(f0).clone()
    power = t64(2, 2)
    f = cosmo.predict_function(kernel, f0, target, power, 0.01, 0.5, k, convention="next",
                               rtol=1e-11, atol=1e-13)
    run = {"f": f, "f0": f0, "target": target, "ntk0": kernel, "ntk_end": kernel.clone(),
           "power": power}
    m = cosmo.mode_analysis(run, 0.01, 0.5, k)
    assert m["mean_dev"]["next"].max() < 1e-5
    assert m["mean_dev"]["leading"].min() > 1e-3  # the leading order is a different equation
    assert m["mean_dev_control"].min() > 0.3
    assert m["unexplained"].max() < 1e-3
    assert torch.all(m["ntk_change"] == 0)
    torch.testing.assert_close(m["motion"], m["motion_pred"], rtol=1e-3, atol=1e-9)
    assert m["lam_rel"].shape == (b, n - 1) and torch.all(m["lam_rel"] <= 1)


def test_fit_vacuum_energy_recovers_the_flrw_vacuum():
    ntk0, f0, lr, mu = t64(1.2, 0.7), t64(0.1, -0.3), t64(0.01, 0.003), t64(0.5, 0.9)
    true = cosmo.vacuum_energy(lr, mu) * t64(1.5, 0.7)
    obs = cosmo.flrw(f0, ntk0, f0 + 1, 2, true, lr.sqrt(), 80, rtol=1e-10, atol=1e-12)["phi"]
    fit = cosmo.fit_vacuum_energy(obs, ntk0, f0, f0 + 1, 2, lr, mu)
    torch.testing.assert_close(fit, true, rtol=1e-4, atol=0)


# ----------------------------------------------------------------------------- the chapter's studies


def test_theta0_metrics_and_bound_study_on_a_small_grid():
    from dynbook.models import ntk

    args = ([8, 16], [1, 2], ["relu", "erf"], [0.5, 1.0])
    study = ntk.theta0_study(*args, 2, x0=1.0, bias_std=0.5, seed=0)
    out = cosmo.theta0_metrics(study, *args)
    m = out["metrics"]
    assert m["ntk0_effect_width"]["labels"] == {"levels": [8, 16]}
    assert m["ntk0_effect_activation"]["labels"] == {"levels": ["relu", "erf"]}
    assert {v["claim"] for v in m.values()} == {"C2", "C3", "C4"}
    assert 0 <= m["erf_over_relu_fraction"]["value"] <= 1
    assert out["erf_fraction"].shape == (2,) and set(out["evidence"]) == {"C2", "C3", "C4"}
    bound = cosmo.bound_study(study, ["relu", "erf"], [1, 2], [0.5, 1.0], [2], [0.0, 0.5, 0.8],
                              target_shift=1.0, n_steps=20, planck_mass=1.0, tolerance=0.05)
    assert bound["eta_max"].shape == (4, 1, 3) and torch.all(bound["eta_max"].diff(dim=-1) < 0)
    assert abs(bound["exponent"].value - 2) < 0.5  # η_max ∝ (1 − μ)²
    assert abs(bound["exponent_flat"].value) < 0.5
    with pytest.raises(ValueError, match="momenta=.*at least 2"):
        cosmo.bound_study(study, ["relu", "erf"], [1, 2], [0.5, 1.0], [2], [0.5],
                          target_shift=1.0, n_steps=20, planck_mass=1.0, tolerance=0.05)


@pytest.fixture(scope="module")
def tiny_spectrum():
    return cosmo.spectrum_study(activations=["relu", "erf"], width=16, n_inputs=6, n_inits=3,
                                bias_std=0.5, interval_hubble=0.5, lr=0.1111, momentum=0.0,
                                input_point=1.0, seed=0, bias_levels=(0.05, 0.5))


def test_spectrum_study_shapes_and_controls(tiny_spectrum):
    spec = tiny_spectrum
    assert spec["lam"].shape == (12, 6) and spec["overlap"].shape == (12,)
    assert torch.all(spec["lam"].diff(dim=-1) <= 1e-12)  # eigenvalues in falling order
    assert torch.all((spec["overlap"] >= 0) & (spec["overlap"] <= 1 + 1e-12))
    # the control of C12 drops the 1/N of the mean loss: log2 N apart
    torch.testing.assert_close(spec["log2_centre_without_n"] - spec["log2_centre"],
                               torch.full((12,), math.log2(6), dtype=F64))
    assert spec["overlap_small_bias"].shape == (16,) and spec["gap_small_bias_relu"].shape == (8,)
    assert spec["half_width"] == pytest.approx(0.5 * 3 / cosmo.friction(0.1111, 0.0))
    with pytest.raises(ValueError, match="n_inputs=4"):
        cosmo.spectrum_study(activations=["erf"], width=4, n_inputs=4, n_inits=2, bias_std=0.5,
                             interval_hubble=0.5, lr=0.1, momentum=0.0, input_point=1.0, seed=0)


def test_mode_study_runs_every_architecture_and_power(tiny_spectrum):
    modes = cosmo.mode_study(tiny_spectrum, powers=[2, 4], n_seeds=1, lr=0.1111, momentum=0.0,
                             target_shift=1.0, n_steps=20)
    assert len(modes["arch_of"]) == 8 and modes["g"].shape == (21, 8, 6)
    assert modes["per_run"]["motion"].shape == (8,)
    # n = 2 at next order: the mean mode follows its equation closely on a wide-enough kernel
    quadratic = modes["run"]["power"] == 2
    assert modes["mean_dev"]["next"][quadratic].median() < 0.2
    with pytest.raises(ValueError, match="n_seeds=5"):
        cosmo.mode_study(tiny_spectrum, powers=[2], n_seeds=5, lr=0.1, momentum=0.0,
                         target_shift=1.0, n_steps=5)


def test_headline_study_checks_hold_and_the_dual_matches_at_small_lr():
    head = cosmo.headline_study(width=16, n_seeds=1, bias_std=0.5, x0=1.0, learning_rate=0.01,
                                momentum=0.5, fit_lrs=[0.001, 0.003], power=2, target_shift=1.0,
                                n_steps=25, planck_mass=1.0, vacuum_tolerance=0.05,
                                vacuum_dominance=0.1, seed=0)
    assert head["fit_lrs"] == [0.001, 0.003, 0.01] and head["i_h"] == 2
    assert all(holds for _, holds, _ in head["checks"].values()), head["checks"]
    assert head["dev_flrw"].shape == (1, 3 + len(head["multiples"]))
    assert head["metrics"]["learning_rate_used"]["value"] == 0.01
    # the fitted friction is the dictionary's (1 − μ)/√η to a few per cent
    assert max(head["gamma_err"]) < 0.1 < max(head["gamma_err_control"])
    with pytest.raises(ValueError, match="n_seeds=0"):
        cosmo.headline_study(width=4, n_seeds=0, bias_std=0.5, x0=1.0, learning_rate=0.01,
                             momentum=0.5, fit_lrs=[0.001], power=2, target_shift=1.0,
                             n_steps=5, planck_mass=1.0, vacuum_tolerance=0.05,
                             vacuum_dominance=0.1, seed=0)


def test_narrow_study_kernel_moves_more_in_narrow_networks():
    res = cosmo.narrow_study([4, 16, 256], n_seeds=4, bias_std=0.5, x0=1.0, lr=0.01,
                             momentum=0.5, power=2, target_shift=3.0, n_steps=40, seed=0)
    assert res["deviation"].shape == (3, 4) and res["widths"] == [4, 16, 256]
    assert res["change_slope"].value < 0  # |ΔΘ|/Θ_0 falls with the width
    assert res["metrics"]["narrow_width"]["value"] == 4
    with pytest.raises(ValueError, match="widths=.*at least 3"):
        cosmo.narrow_study([4, 8], n_seeds=2, bias_std=0.5, x0=1.0, lr=0.01, momentum=0.5,
                           power=2, target_shift=1.0, n_steps=5, seed=0)


def test_choices_rows_name_every_setting():
    from types import SimpleNamespace

    run = SimpleNamespace(
        bias_std=0.5, input_point=1.0, loss_powers=[2, 4], target_shift=1.0, n_steps=200,
        planck_mass=1.0, learning_rate=0.01, momentum=0.5, headline_width=256,
        headline_seeds=3, fig1_widths=[256], fig1_depths=[1, 2], fig1_init_stds=[0.5, 1.0],
        fig1_seeds=3, momenta=[0.5, 0.0, 0.3], vacuum_tolerance=0.05, scan_widths=[256],
        scan_depths=[1], scan_init_stds=[1.0], scan_lr_momentum=[[0.01, 0.0]], scan_seeds=1,
        fit_learning_rates=[0.001, 0.1], vacuum_dominance=0.1, pert_learning_rate=0.1111,
        pert_momentum=0.0, n_inputs=16, interval_hubble=0.5, pert_width=256, n_inits=16,
        narrow_widths=[16, 4, 8], narrow_shift=3.0, narrow_seeds=8, match_tolerance=0.1)
    rows = dict(cosmo.choices(run))
    assert "μ ∈ [0.0, 0.3, 0.5]" in rows["Fig. 2"]
    assert "η ∈ [0.001, 0.01, 0.1]" in rows["γ and V_0 fits"]
    assert rows["match tolerance"] == "0.1, inconclusive within ±0.02"
