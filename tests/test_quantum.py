"""Matrix and wave mechanics of one Hamiltonian, split-step orders and NLSE solitons
(dynbook.models.quantum), in float64 against closed forms."""

import math

import numpy as np
import pytest

from dynbook.models import quantum as q

HARMONIC = q.Potential(1.0, 0.0)
ANHARMONIC = q.Potential(1.0, 0.1)


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    with q.blas_threads(1):
        yield


@pytest.mark.parametrize("n", [2, 5, 13])
def test_commutator_is_i_except_the_last_entry(n):
    c = q.commutator(n)
    expected = 1j * np.eye(n)
    expected[-1, -1] = 1j * (1 - n)
    np.testing.assert_allclose(c, expected, atol=1e-12)


def test_operators_are_hermitian_and_p_squared_matches():
    x, p = q.position(9), q.momentum(9)
    np.testing.assert_allclose(x, x.T.conj())
    np.testing.assert_allclose(p, p.T.conj())
    # x² + p² = 2a†a + 1 away from the truncation edge
    h = (x @ x + p @ p).real / 2
    np.testing.assert_allclose(np.diag(h)[:-1], np.arange(8) + 0.5, atol=1e-12)


def test_harmonic_spectrum_by_matrix_mechanics_is_exact():
    np.testing.assert_allclose(q.matrix_levels(30, HARMONIC), np.arange(30) + 0.5, atol=1e-12)


def test_anharmonic_ground_state_matches_the_literature_value():
    # H = p²/2 + x²/2 + 0.1 x⁴: E₀ = 0.559146327183519, the classic benchmark value
    assert abs(q.matrix_levels(60, ANHARMONIC, 1)[0] - 0.559146327183519) < 1e-11


def test_galerkin_levels_fall_monotonically_with_basis_size():
    levels = np.array([q.matrix_levels(n, ANHARMONIC, 3) for n in (6, 10, 14, 20, 30)])
    assert np.all(np.diff(levels, axis=0) <= 1e-13)


def test_basis_convergence_is_faster_than_algebraic():
    bc = q.basis_convergence(ANHARMONIC, [8, 16, 24, 32], k=3, reference_size=80)
    orders = q.local_order(bc["sizes"], bc["errors"])
    assert bc["errors"][-1] < 1e-8 and orders.min() > 2


def test_fourier_grid_hamiltonian_matches_the_basis_levels():
    grid = q.Grid(96, 20.0)
    np.testing.assert_allclose(q.grid_matrix_levels(grid, ANHARMONIC, 4), q.matrix_levels(60, ANHARMONIC, 4),
                               rtol=1e-10)


def test_autocorrelation_fit_recovers_exact_frequencies():
    dt, e = 0.05, np.array([0.7, 1.9, 3.3, 5.1, 8.0])
    w = np.array([0.5, 0.3, 0.1, 0.07, 0.03])
    c = (w * np.exp(-1j * np.outer(np.arange(900) * dt, e))).sum(1)
    out = q.levels_from_autocorrelation(c, dt, k=4)
    np.testing.assert_allclose(out["energies"], e[:4], rtol=1e-9)
    np.testing.assert_allclose(out["weights"], w[:4], rtol=1e-7)


def test_doubling_gives_the_plain_autocorrelation():
    grid = q.Grid(64, 16.0)
    psi0 = q.gaussian_packet(grid, center=0.7)
    _, plain = q.propagate(psi0, ANHARMONIC(grid.x), grid, dt=0.05, n_steps=40)
    _, fast = q.propagate(psi0, ANHARMONIC(grid.x), grid, dt=0.05, n_steps=20, doubling=True)
    np.testing.assert_allclose(fast, plain, atol=1e-12)


def test_harmonic_spectrum_by_wave_mechanics():
    grid = q.Grid(128, 20.0)
    out = q.wave_levels(HARMONIC, grid, dt=0.01, t_end=30.0, k=4)
    # Strang's eigenphases: error O(dt²), here ≈ 1e-5 relative
    np.testing.assert_allclose(out["energies"], np.arange(4) + 0.5, rtol=1e-4)


def test_split_step_orders():
    grid = q.Grid(128, 20.0)
    out = q.state_error_orders(ANHARMONIC, grid, dts=[0.04, 0.02, 0.01], t_end=1.0, reference_dt=0.001)
    assert abs(out["order"]["strang"].value - 2) < 0.1
    assert abs(out["order"]["lie"].value - 1) < 0.1


def test_soliton_is_conserved_and_strang_is_second_order():
    grid = q.Grid(256, 40.0)
    out = q.soliton_study(grid, amplitude=1.0, velocity=0.5, t_end=1.0, dts=[0.04, 0.02, 0.01])
    assert max(out["strang"]["norm_drift"]) < 1e-12
    assert out["strang"]["energy_drift"][-1] < 1e-6
    assert abs(out["strang"]["order"].value - 2) < 0.1
    assert abs(out["lie"]["order"].value - 1) < 0.15
    assert out["strang"]["error"][-1] < 1e-4


def test_collision_shift_formula():
    d1, d2 = q.collision_shift(1.0, 1.0, 1.0, -1.0)
    assert d1 == pytest.approx(math.log(2.0)) and d2 == pytest.approx(-math.log(2.0))
    d1, d2 = q.collision_shift(1.5, -0.3, 0.7, 0.9)  # soliton 1 slower: it jumps backward
    assert d1 < 0 < d2 and 1.5 * d1 == pytest.approx(-0.7 * d2)


def test_collision_experiment_matches_theory_and_control_has_no_shift():
    grid = q.Grid(256, 40.0)
    out = q.collision_experiment(grid, amplitudes=(1.2, 0.8), velocities=(1.0, -1.0), separation=12.0,
                                 t_end=14.0, dt=0.02, seeds=[3])
    assert out["ratio"][0] == pytest.approx(1.0, abs=0.02)
    assert abs(out["control_ratio"][0]) < 0.02


@pytest.mark.parametrize("call, match", [
    (lambda: q.Potential(-1.0, 0.0), "confining"),
    (lambda: q.matrix_levels(5, ANHARMONIC, 7), "k=7"),
    (lambda: q.propagate(np.ones(8), np.zeros(8), q.Grid(8, 1.0), dt=0.1, n_steps=1, scheme="rk4"), "scheme"),
    (lambda: q.collision_shift(1.0, 0.5, 1.0, 0.5), "never collide"),
    (lambda: q.Grid(2, 1.0), "n"),
    (lambda: q.levels_from_autocorrelation(np.ones(8), 0.1, k=1), "at least 16"),
])
def test_errors_name_the_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_convergence_order_of_a_power_law():
    est = q.convergence_order([10, 20, 40, 80], [1e-2, 2.5e-3, 6.25e-4, 1.5625e-4])
    assert est.value == pytest.approx(2.0) and est.lo <= 2.0 <= est.hi
