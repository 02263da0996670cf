"""dynbook.sync.relaxation: the lattice operator in two forms, synchronous and chaotic relaxation,
delayed-gradient SGD and its stability limit, each against an exact or independent result."""

import math

import numpy as np
import pytest
import torch

from dynbook.sync import relaxation as R


@pytest.mark.parametrize("shape", [(7, 13), (1, 5), (2, 3), (4, 4), (3, 11, 6)])
def test_stencil_equals_dense_matrix(shape):
    u = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    n, m = shape[-2:]
    a = R.diffusion_matrix(n, m, 0.17, dtype=torch.float64)
    torch.testing.assert_close(R.diffusion_step(u, 0.17), R.diffusion_step_dense(u, a), rtol=0, atol=1e-13)


def test_diffusion_matrix_conserves_mass_and_is_symmetric():
    a = R.diffusion_matrix(5, 8, 0.2, dtype=torch.float64)
    torch.testing.assert_close(a.sum(1), torch.ones(40, dtype=torch.float64))
    torch.testing.assert_close(a, a.T)


def test_laplacian_of_a_plane_wave_is_its_eigenvalue():
    n, m, p, q = 12, 10, 3, 2
    i, j = torch.meshgrid(torch.arange(n, dtype=torch.float64), torch.arange(m, dtype=torch.float64), indexing="ij")
    kx, ky = 2 * math.pi * p / n, 2 * math.pi * q / m
    wave = torch.cos(kx * i + ky * j)
    eig = 2 * math.cos(kx) + 2 * math.cos(ky) - 4
    torch.testing.assert_close(R.laplacian(wave), eig * wave, rtol=0, atol=1e-12)


def test_fft_solve_satisfies_the_equation():
    f = torch.randn(9, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    u = R.solve_screened_poisson(f, 0.3)
    torch.testing.assert_close((4 + 0.3) * u - R.neighbour_sum(u), f, rtol=0, atol=1e-12)


def test_jacobi_and_chaotic_relaxation_reach_the_fixed_point():
    f = torch.randn(9, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = R.solve_screened_poisson(f, 1.0)
    u, sweeps, res = R.jacobi(f, 1.0, tol=1e-11)
    assert (u - exact).abs().max() < 1e-9 and res[-1] <= 1e-11
    for prob, delay in [(0.3, 0), (0.7, 5)]:
        v, ticks, updates, _ = R.chaotic_relaxation(f, 1.0, activation_prob=prob, max_delay=delay, seed=4, tol=1e-11)
        assert (v - exact).abs().max() < 1e-9
        assert updates / f.numel() >= 0.5 * sweeps  # no free lunch: about as much work or more


def test_chaotic_relaxation_without_randomness_is_jacobi():
    f = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    u, sweeps, res = R.jacobi(f, 0.5, tol=1e-9)
    v, ticks, updates, res_async = R.chaotic_relaxation(f, 0.5, activation_prob=1.0, max_delay=0, tol=1e-9)
    assert ticks == sweeps and updates == sweeps * 30
    torch.testing.assert_close(u, v, rtol=0, atol=1e-15)


def test_relaxation_bad_inputs():
    f = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="mass2=0"):
        R.jacobi(f, 0)
    with pytest.raises(ValueError, match="activation_prob=0"):
        R.chaotic_relaxation(f, 1.0, activation_prob=0)
    with pytest.raises(ValueError, match="max_delay=-1"):
        R.chaotic_relaxation(f, 1.0, max_delay=-1)
    with pytest.raises(ValueError, match="n=0"):
        R.diffusion_matrix(0, 3, 0.1)


def _spectral_radius(a, tau):
    """Largest root modulus of z^(τ+1) - z^τ + a = 0 (the delayed recursion's characteristic polynomial)."""
    coeffs = np.zeros(tau + 2)
    coeffs[0], coeffs[1], coeffs[-1] = 1.0, -1.0, a
    if tau == 0:
        coeffs = np.array([1.0, a - 1.0])
    return max(abs(np.roots(coeffs)))


@pytest.mark.parametrize("tau", range(0, 8))
def test_delay_stability_limit_is_the_root_boundary(tau):
    limit = R.delay_stability_limit(tau)
    assert _spectral_radius(0.99 * limit, tau) < 1 < _spectral_radius(1.01 * limit, tau)


def test_delayed_gradient_descent_matches_a_hand_written_loop():
    pb = R.StreamingRegression(dim=4, lam_min=0.2, lam_max=1.0, seed=7)
    lam, w_star = pb.spectrum(), pb.w_star()
    eta, tau, n = 0.3, 2, 40
    ws = [torch.zeros(4, dtype=torch.float64)]
    for t in range(n):
        ws.append(ws[-1] - eta * lam * (ws[max(t - tau, 0)] - w_star))
    tail = range(n - n // 10, n)
    expected = np.mean([float(0.5 * (lam * (ws[t] - w_star) ** 2).sum()) for t in tail])
    out = R.delayed_sgd(pb, [eta], [tau], n, n_seeds=1, exact_gradient=True)
    assert float(out["final"][0]) == pytest.approx(expected, rel=1e-12)


def test_delayed_sgd_configurations_share_samples_and_flag_divergence():
    pb = R.StreamingRegression(dim=3, seed=1)
    out = R.delayed_sgd(pb, [0.05, 0.05, 3.0], [1, 1, 0], 300, n_seeds=3, seed=9)
    assert float(out["final"][0]) == float(out["final"][1])  # common random numbers
    assert out["diverged"].tolist() == [False, False, True] and math.isnan(float(out["final"][2]))
    assert out["curve"].shape[1] == 3


def test_measured_stability_limits_match_theory():
    taus = [0, 1, 3, 6]
    grid = np.geomspace(0.1, 2.5, 80).tolist()
    measured = R.measured_stability_limits(taus, grid, n_steps=4000)
    ratio = grid[1] / grid[0]
    for m, tau in zip(measured.tolist(), taus):
        assert m / 1.01 <= R.delay_stability_limit(tau) < m * ratio * 1.01


def test_tolerated_workers_follows_the_final_risks():
    pb = R.StreamingRegression(dim=4, seed=0)
    grid = [1, 2, 4, 8, 64]
    w_max, final = R.tolerated_workers(pb, 256, grid, 0.05, n_seeds=2)
    out = R.delayed_sgd(pb, [0.05] * 5, [w - 1 for w in grid], 256, n_seeds=2)
    torch.testing.assert_close(final, out["final"], rtol=0, atol=0)
    within = [bool(v <= 1.1 * final[0]) for v in final.tolist()]  # nan (diverged) compares False
    expected = grid[within.index(False) - 1] if False in within else grid[-1]
    assert w_max == expected
    # a step size that 64 stale workers cannot survive (ηλ_max = 0.5 > π/(2·63)) tolerates fewer
    w_big, final_big = R.tolerated_workers(pb, 256, grid, 0.5, n_seeds=2)
    assert math.isnan(float(final_big[-1])) and w_big < 64 and w_big <= w_max


def test_crossing_workers_interpolates_in_log_w():
    grid = [1, 2, 4, 8, 16]
    final = torch.tensor([1.0, 1.05, 1.08, 1.2, float("nan")], dtype=torch.float64)
    assert R.crossing_workers(grid, final, 0.1) == pytest.approx(4 * 2 ** (1 / 6))  # (1.1 − 1.08)/(1.2 − 1.08)
    diverged = torch.tensor([1.0, 1.02, float("nan"), 5.0, 9.0], dtype=torch.float64)
    assert R.crossing_workers(grid, diverged, 0.1) == 2.0
    assert R.crossing_workers(grid, torch.ones(5, dtype=torch.float64), 0.1) == 16.0


def test_tolerated_workers_by_group_repeats_the_single_run():
    pb = R.StreamingRegression(dim=4, seed=0)
    grid = [1, 2, 4, 8]
    w, final = R.tolerated_workers_by_group(pb, 128, grid, [0.05, 0.2], n_groups=3, seeds_per_group=2, seed=5)
    assert w.shape == (2, 3) and final.shape == (2, 3, 4)
    full = R.delayed_sgd(pb, [0.05] * 4 + [0.2] * 4, [0, 1, 3, 7] * 2, 128, n_seeds=6, seed=5)
    torch.testing.assert_close(final.mean(1).flatten(), full["final"], rtol=1e-12, atol=0)
    for e in range(2):
        for g in range(3):
            assert float(w[e, g]) == pytest.approx(R.crossing_workers(grid, final[e, g], 0.1))


def test_tolerated_workers_bad_inputs():
    pb = R.StreamingRegression(dim=4, seed=0)
    with pytest.raises(ValueError, match="workers="):
        R.tolerated_workers(pb, 16, [2, 4], 0.1)
    with pytest.raises(ValueError, match="delays="):
        R.delayed_sgd(pb, [0.1], [-1], 10)
    with pytest.raises(ValueError, match="lam_min"):
        R.StreamingRegression(lam_min=2.0, lam_max=1.0)


# ----------------------------------------------------------------------------- the chapter's studies


def _metric_names(out):
    return [m["name"] for m in out["metrics"]]


def test_stability_study_puts_theory_in_the_measured_cell():
    grid = np.geomspace(0.1, 2.5, 60).tolist()
    out = R.stability_study([0, 2, 5], grid, n_steps=3000)
    assert out["agree"] and out["predicted"] == [R.delay_stability_limit(t) for t in (0, 2, 5)]
    assert out["measured"] == R.measured_stability_limits([0, 2, 5], grid, n_steps=3000).tolist()
    assert _metric_names(out) == ["stability_limit_tau0", "stability_limit_tau_max", "tau_max"]
    too_short = R.stability_study([0, 2, 5], grid, n_steps=4)
    assert not too_short["agree"]  # four steps cannot tell a slow divergence: the check must fail


def test_linear_speedup_fits_the_groups_exponents():
    pb = R.StreamingRegression(dim=4, seed=0)
    out = R.linear_speedup(pb, [64, 256], [1, 2, 4, 8], fixed_step=0.2, n_groups=2,
                           seeds_per_group=2, seed=3)
    for k in (64, 256):
        w, final = R.tolerated_workers_by_group(pb, k, [1, 2, 4, 8], [1 / math.sqrt(k), 0.2],
                                                n_groups=2, seeds_per_group=2, seed=3)
        torch.testing.assert_close(out["w_max"][k], w, rtol=0, atol=0)
    for e in (0, 1):  # two points: the slope is exact
        expected = [math.log(float(out["w_max"][256][e, g]) / float(out["w_max"][64][e, g])) / math.log(4)
                    for g in range(2)]
        assert out["slopes"][e] == pytest.approx(expected, rel=1e-12)
    assert "lian_slope" in _metric_names(out) and "w_max_K256" in _metric_names(out)
    with pytest.raises(ValueError, match="fixed_step=0"):
        R.linear_speedup(pb, [64, 256], [1, 2], fixed_step=0)
    with pytest.raises(ValueError, match="iterations=0"):
        R.linear_speedup(pb, [0, 256], [1, 2])


def test_lattice_timing_rows_costs_and_agreement():
    out = R.lattice_timing([4, 6], repeats=2, min_run_time=0.001)
    assert out["exact_error"] < 1e-12 and out["same"]
    assert [r["n"] for r in out["rows"]] == [4, 6]
    for r in out["rows"]:
        assert all(len(t) == 2 and min(t) > 0 for t in r["times"].values())
        assert r["stencil"] == {"flops": 7 * r["n"] ** 2, "bytes": 8 * r["n"] ** 2}
        assert r["ratio"].value == pytest.approx(min(r["times"]["dense_operator"]) / min(r["times"]["stencil"]))
    assert len(out["table"][1]) == 4 and "lattice_time_ratio_n_min" in _metric_names(out)
    with pytest.raises(ValueError, match="repeats=0"):
        R.lattice_timing([4], repeats=0)


def test_relaxation_study_repeats_jacobi_and_chaotic_relaxation():
    out = R.relaxation_study([0, 1], n=6, mass2=2.0, tol=1e-7, max_delays=(0, 2))
    f = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, sweeps, _ = R.jacobi(f, 2.0, tol=1e-7)
    _, _, updates, _ = R.chaotic_relaxation(f, 2.0, max_delay=2, seed=1, tol=1e-7)
    assert out["sweeps"][1] == sweeps and out["work"][2][1] == pytest.approx(updates / 36 / sweeps)
    assert len(out["errors"]) == 2 * 3 and max(out["errors"]) < out["bound"]
    assert set(out["curves"]) == {0, 2} and _metric_names(out)[-1] == "async_work_ratio_stale2"
    with pytest.raises(ValueError, match="mass2=0"):
        R.relaxation_study([0], mass2=0)


def test_movement_kernels_compute_and_count():
    ks = R.movement_kernels(6, 5, [2, 7, 3])
    assert list(ks) == ["gemm_small", "gemm_half", "gemm_large", "stencil", "scan"]
    assert [tuple(ks[k][1]().shape) for k in ks] == [(1, 6), (3, 6), (6, 6), (5, 5), (2, 7, 3)]
    assert ks["gemm_half"][2] == {"flops": 2 * 6 * 6 * 3, "bytes": 4 * (36 + 18 + 18)}
    assert ks["scan"][2]["flops"] == 2 * 7 * 3
    with pytest.raises(ValueError, match="gemm_n=1"):
        R.movement_kernels(1, 5, [2, 7, 3])


def test_kernel_energy_without_a_counter_times_per_flop():
    ks = R.movement_kernels(8, 4, [1, 16, 2])
    out = R.kernel_energy(ks, None, min_seconds=0.001, readings=2)
    for k, row in out["rows"].items():
        assert row["measured_pj"] is None and row["gflops"] > 0
        assert row["model"].flops == ks[k][2]["flops"] and row["model"].dram_bytes == ks[k][2]["bytes"]
    assert out["table"][1][0][-1] == "unavailable"
    assert len(out["metrics"]) == 4 * len(ks)


def test_figures_draw():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pb = R.StreamingRegression(dim=4, seed=0)
    fig, axes = plt.subplots(5, 2)
    R.plot_staleness(axes[0], R.stability_study([0, 1], np.geomspace(0.1, 2.5, 20).tolist(), n_steps=200),
                     [0.1], [0, 1], [[1.0, 2.0]])
    R.plot_speedup(axes[1], R.linear_speedup(pb, [64, 128], [1, 2, 4], n_groups=2, seeds_per_group=1))
    R.plot_lattice(axes[2], R.lattice_timing([4, 5], repeats=2, min_run_time=0.001))
    R.plot_relaxation(axes[3, 0], R.relaxation_study([0], n=4, mass2=2.0, tol=1e-5))
    R.plot_energy(axes[3, 1], R.kernel_energy(R.movement_kernels(4, 4, [1, 8, 1]), None, min_seconds=0.001,
                                              readings=2))
    assert all(ax.has_data() for ax in axes[:4].flat)
    plt.close(fig)


def test_kernel_energy_with_a_counter_gives_net_picojoules_per_flop():
    from dynbook.measure.energy import EnergyReading

    class CountingMeter:  # charges 3 µJ per call, plus 2 W of idle power (no hardware)
        available, reason, source = True, "", "scripted"

        def __init__(self):
            self.calls = 0

        def __enter__(self):
            self.calls = 0
            return self

        def __exit__(self, *exc):
            s = 1e-3 * self.calls
            self.reading = EnergyReading("scripted", seconds=s, joules=3e-6 * self.calls + 2.0 * s, idle_watts=2.0)
            return False

    meter = CountingMeter()
    kernels = {"a": ("A", lambda: setattr(meter, "calls", meter.calls + 1), {"flops": 10, "bytes": 40}),
               "b": ("B", lambda: setattr(meter, "calls", meter.calls + 1), {"flops": 30, "bytes": 40})}
    out = R.kernel_energy(kernels, meter, min_seconds=1e-4, readings=3)
    assert out["rows"]["a"]["measured_pj"] == pytest.approx([3e-6 / 10 * 1e12] * 3)
    assert out["rows"]["b"]["measured_pj"] == pytest.approx([1e5] * 3)
    measured = {m["name"]: m["value"] for m in out["metrics"]}
    assert measured["energy_a_measured_pj_per_flop"] == pytest.approx(3e5)
    assert out["table"][1][1][-1] == "1e+05"
