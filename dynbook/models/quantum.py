"""Matrix mechanics and wave mechanics of one Hamiltonian, and the nonlinear Schrödinger equation.

Units ħ = m = ω = 1, float64 (complex128) throughout, numpy/scipy.

Glossary (code → symbol):

=================  ===========================================================================
``n_basis``        ``N``: harmonic-oscillator states ``|0⟩ … |N−1⟩`` kept (matrix mechanics)
``ladder(N)``      ``a``: ``a|n⟩ = √n |n−1⟩``; ``x = (a + a†)/√2``, ``p = i(a† − a)/√2``
``Potential``      ``V(x) = ½ c₂ x² + g x⁴`` (``quadratic`` c₂, ``quartic`` g); c₂ < 0: a double well
``Grid``           ``n`` points on the periodic interval ``[−ℓ/2, ℓ/2)``, wave numbers ``k``
``strang``         ``e^{−iV dt/2} e^{−iT dt} e^{−iV dt/2}`` (order 2); ``"lie"``: ``e^{−iT dt} e^{−iV dt}`` (order 1)
``C_j``            autocorrelation ``⟨ψ(0)|ψ(j dt)⟩ = Σ_m |c_m|² e^{−i E_m j dt}``
=================  ===========================================================================

Matrix mechanics: :func:`hamiltonian_matrix` is ``H = p²/2 + V(x)`` in the truncated harmonic
basis, each power of ``x`` and ``p`` computed in a basis four states larger and then cut, so
the ``N × N`` matrix holds the exact matrix elements ``⟨m|H|n⟩`` (a Galerkin projection: its
eigenvalues are upper bounds that fall with ``N``). The truncated ``x`` and ``p`` themselves
do not obey ``[x, p] = i``: :func:`commutator` is ``i·diag(1, …, 1, 1 − N)``.

Wave mechanics: :func:`propagate` evolves ``ψ`` on a :class:`Grid` by split-step Fourier and
records the autocorrelation; :func:`levels_from_autocorrelation` finds its frequencies from a
Hann-windowed FFT and refines them by fitting the signal with a sum of complex exponentials
(variable projection: amplitudes by linear least squares, frequencies by Gauss–Newton).

NLSE ``i ψ_t + ½ ψ_xx + |ψ|² ψ = 0`` (focusing): bright soliton
``ψ = A sech(A(x − x₀ − v t)) e^{i(v x + (A² − v²) t/2 + φ)}``; conserved norm ``∫|ψ|²`` and
energy ``∫ ½|ψ_x|² − ½|ψ|⁴``; two solitons pass through each other and each jumps forward by
:func:`collision_shift` (Zakharov & Shabat 1972, rescaled to this convention).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.fft as sfft
import scipy.linalg as sla
from scipy.optimize import least_squares

from dynbook._checks import in_range, one_of, positive, positive_int
from dynbook.book.stats import Estimate
from dynbook.measure.timing import blas_threads  # noqa: F401 - also the chapter's `qm.blas_threads`

SCHEMES = ("strang", "lie")


# ----------------------------------------------------------------------------- matrix mechanics


def ladder(n_basis: int) -> np.ndarray:
    """The annihilation operator ``a`` on ``|0⟩ … |N−1⟩``: ``(N, N)`` real, ``a[n−1, n] = √n``."""
    n = positive_int("n_basis", n_basis)
    return np.diag(np.sqrt(np.arange(1, n, dtype=np.float64)), 1)


def position(n_basis: int) -> np.ndarray:
    """``x = (a + a†)/√2``, ``(N, N)`` real symmetric (tridiagonal)."""
    a = ladder(n_basis)
    return (a + a.T) / math.sqrt(2)


def momentum(n_basis: int) -> np.ndarray:
    """``p = i(a† − a)/√2``, ``(N, N)`` complex Hermitian."""
    a = ladder(n_basis)
    return 1j * (a.T - a) / math.sqrt(2)


def commutator(n_basis: int) -> np.ndarray:
    """``[x, p] = xp − px`` of the truncated matrices: ``i·I`` except the last diagonal entry,
    ``i(1 − N)`` (the truncation made visible)."""
    x, p = position(n_basis), momentum(n_basis)
    return x @ p - p @ x


@dataclass(frozen=True)
class Potential:
    """``V(x) = ½ c₂ x² + g x⁴``; ``quadratic = 1, quartic = 0`` is the harmonic oscillator,
    ``quadratic < 0 < quartic`` a double well."""

    quadratic: float = 1.0
    quartic: float = 0.1

    def __post_init__(self):
        if not (math.isfinite(self.quadratic) and math.isfinite(self.quartic)):
            raise ValueError(f"Potential quadratic={self.quadratic!r}, quartic={self.quartic!r}: expected finite numbers")
        if self.quartic < 0 or (self.quartic == 0 and self.quadratic <= 0):
            raise ValueError(f"Potential quadratic={self.quadratic!r}, quartic={self.quartic!r} is not allowed: "
                             "expected quartic > 0, or quartic = 0 with quadratic > 0 (a confining potential)")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return 0.5 * self.quadratic * x ** 2 + self.quartic * x ** 4


def hamiltonian_matrix(n_basis: int, potential: Potential) -> np.ndarray:
    """``⟨m|p²/2 + V(x)|n⟩`` for ``m, n < N``: ``(N, N)`` real symmetric (pentadiagonal).

    The powers are taken in a basis of ``N + 4`` states and then cut to ``N``, so every entry
    is exact (cutting first would spoil the last rows of ``x⁴``)."""
    n = positive_int("n_basis", n_basis)
    big = n + 4
    a = ladder(big)
    x = (a + a.T) / math.sqrt(2)
    p2 = -((a.T - a) @ (a.T - a)) / 2  # p² = −(a† − a)²/2, real
    x2 = x @ x
    h = 0.5 * p2 + 0.5 * potential.quadratic * x2 + potential.quartic * (x2 @ x2)
    return np.ascontiguousarray(h[:n, :n])


def matrix_levels(n_basis: int, potential: Potential, k: int | None = None) -> np.ndarray:
    """The lowest ``k`` (default all ``N``) eigenvalues of :func:`hamiltonian_matrix`, ascending."""
    h = hamiltonian_matrix(n_basis, potential)
    if k is None:
        return sla.eigvalsh(h)
    k = positive_int("k", k)
    if k > h.shape[0]:
        raise ValueError(f"k={k!r} is not allowed: expected k <= n_basis = {h.shape[0]}")
    return sla.eigh(h, eigvals_only=True, subset_by_index=[0, k - 1])


def basis_convergence(potential: Potential, sizes: Sequence[int], *, k: int,
                      reference_size: int) -> dict:
    """Largest relative error of the lowest ``k`` levels against a basis of ``reference_size``
    for each basis size in ``sizes``: ``{"sizes", "errors", "reference"}``."""
    sizes = [positive_int(f"sizes[{i}]", s, minimum=k) for i, s in enumerate(sizes)]
    positive_int("reference_size", reference_size, minimum=max(sizes) + 1)
    ref = matrix_levels(reference_size, potential, k)
    errors = [float(np.max(np.abs(matrix_levels(s, potential, k) - ref) / np.abs(ref))) for s in sizes]
    return {"sizes": sizes, "errors": errors, "reference": ref}


def local_order(x: Sequence[float], errors: Sequence[float]) -> np.ndarray:
    """``−Δ log e / Δ log x`` between neighbouring points of a convergence sweep: constant for
    an algebraic method, growing for a spectral (exponential) one."""
    x, e = np.log(np.asarray(x, float)), np.log(np.asarray(errors, float))
    return -np.diff(e) / np.diff(x)


def convergence_order(resolution: Sequence[float], errors: Sequence[float]) -> Estimate:
    """The fitted order ``p`` of ``error ∝ resolution^(−p)`` (``resolution``: basis size,
    steps per unit time, grid points), with the t interval of
    :func:`dynbook.measure.fits.loglog_slope`."""
    from dynbook.measure.fits import loglog_slope

    return loglog_slope(resolution, errors).map(lambda v: -v)


# ----------------------------------------------------------------------------- wave mechanics


@dataclass(frozen=True)
class Grid:
    """``n`` points ``x_j = −ℓ/2 + j·ℓ/n`` of the periodic interval of length ``length`` ``ℓ``."""

    n: int
    length: float

    def __post_init__(self):
        positive_int("n", self.n, minimum=4)
        positive("length", self.length)

    @property
    def dx(self) -> float:
        return self.length / self.n

    @property
    def x(self) -> np.ndarray:
        return -self.length / 2 + self.dx * np.arange(self.n)

    @property
    def k(self) -> np.ndarray:
        return 2 * np.pi * sfft.fftfreq(self.n, self.dx)

    def inner(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``⟨a|b⟩ = Σ conj(a) b dx`` over the last axis."""
        return np.sum(np.conj(a) * b, axis=-1) * self.dx


def gaussian_packet(grid: Grid, *, center: float = 0.0, width: float = 1.0, wavenumber: float = 0.0) -> np.ndarray:
    """A normalised Gaussian ``∝ exp(−(x − x₀)²/(2 w²) + i k₀ x)`` on ``grid`` (complex128)."""
    positive("width", width)
    x = grid.x
    psi = np.exp(-(x - center) ** 2 / (2 * width ** 2) + 1j * wavenumber * x)
    return psi / np.sqrt(grid.inner(psi, psi).real)


def propagate(psi0: np.ndarray, potential_values: np.ndarray, grid: Grid, *, dt: float, n_steps: int,
              scheme: str = "strang", autocorrelation: bool = True, doubling: bool = False):
    """Evolve ``i ψ_t = −½ψ_xx + V ψ`` by ``n_steps`` split steps of ``dt``.

    ``psi0``: ``(..., n)``; ``potential_values``: ``V`` on ``grid.x``. Returns
    ``(ψ(n_steps·dt), C)`` with ``C[j] = ⟨ψ0|ψ(j dt)⟩`` for ``j = 0 … n_steps`` (``C`` is
    ``None`` when ``autocorrelation=False``). The steps are unitary for either scheme.

    ``doubling=True`` (Strang, real ``ψ0``): the Strang step ``U`` is a symmetric matrix
    (``V`` diagonal, the kinetic factor an even function of ``k``), so
    ``C[2j] = ψ_jᵀψ_j`` and ``C[2j+1] = ψ_jᵀψ_{j+1}``: ``n_steps`` steps give ``2·n_steps + 1``
    samples of ``C`` (half the work for the same signal)."""
    one_of("scheme", scheme, SCHEMES)
    positive("dt", dt)
    n_steps = int(n_steps)
    if n_steps < 0:
        raise ValueError(f"n_steps={n_steps!r} is not allowed: expected an integer >= 0")
    psi = np.array(psi0, dtype=np.complex128)
    if psi.shape[-1] != grid.n:
        raise ValueError(f"psi0 has {psi.shape[-1]} points on its last axis; the grid has n={grid.n}")
    if doubling and (scheme != "strang" or np.any(np.abs(psi.imag) > 0) or psi.ndim != 1):
        raise ValueError("doubling=True needs scheme='strang' and one real psi0 (the step must be symmetric)")
    kin = np.exp(-0.5j * grid.k ** 2 * dt)
    half_v = np.exp(-0.5j * np.asarray(potential_values) * dt)
    full_v = half_v * half_v
    c = None
    if autocorrelation:
        c = np.empty(2 * n_steps + 1 if doubling else n_steps + 1, dtype=np.complex128)
        bra = (psi if doubling else np.conj(psi)) * grid.dx
        c[0] = np.sum(bra * psi)
    for j in range(1, n_steps + 1):
        prev = psi
        if scheme == "strang":
            psi = half_v * sfft.ifft(kin * sfft.fft(half_v * psi))
        else:
            psi = sfft.ifft(kin * sfft.fft(full_v * psi))
        if autocorrelation:
            if doubling:
                c[2 * j - 1] = np.sum(prev * psi) * grid.dx
                c[2 * j] = np.sum(psi * psi) * grid.dx
            else:
                c[j] = np.sum(bra * psi)
    return psi, c


def levels_from_autocorrelation(c: np.ndarray, dt: float, *, k: int, threshold: float = 1e-4,
                                pad: int = 8, kaiser_beta: float = 12.0) -> dict:
    """Energies from ``C_j = Σ_m w_m e^{−i E_m j dt}``.

    1. Peaks of the Kaiser-windowed (``kaiser_beta``: side lobes ~90 dB down, so a side lobe
       of a strong level is not taken for a weak one), ``pad``-times zero-padded FFT of ``C``
       above ``threshold`` times the largest give the frequencies present (main lobe
       ``≈ ±4·2π/(n dt)``: the signal must be long enough to separate neighbouring levels).
    2. Variable projection: ``C`` is fitted by ``Σ_m w_m e^{−iθ_m j}`` over all those
       frequencies, ``w`` by linear least squares for given ``θ``, ``θ`` by Gauss–Newton
       (``scipy.optimize.least_squares``); the fit is exact for a noise-free signal whose
       components are all found; it uses every ``stride``-th sample, the stride set so that
       the largest frequency found stays 1.25× below the Nyquist frequency.
       ``E_m = θ_m / dt`` (the eigenphases of the step).

    Returns ``{"energies": lowest k, "weights": their |w|, "all_energies", "residual", "peaks"}``."""
    c = np.asarray(c, dtype=np.complex128)
    positive("dt", dt)
    k = positive_int("k", k)
    n = c.size
    if n < 16:
        raise ValueError(f"the autocorrelation has {n} samples; expected at least 16")
    m = sfft.next_fast_len(pad * n)
    window = np.kaiser(n, kaiser_beta)
    # C ~ e^{−iEt}: the inverse transform puts the peak at +E
    spec = np.abs(sfft.ifft(window * c, n=m)) * m
    freq = 2 * np.pi * sfft.fftfreq(m, dt)
    order = np.argsort(freq)
    freq, spec = freq[order], spec[order]
    is_peak = (spec[1:-1] > spec[:-2]) & (spec[1:-1] >= spec[2:]) & (spec[1:-1] > threshold * spec.max())
    peaks = freq[1:-1][is_peak]
    if peaks.size < k:
        raise ValueError(f"found {peaks.size} spectral peaks above threshold={threshold!r}; "
                         f"expected at least k={k}: excite more levels or lower the threshold")
    # the fit needs no more samples than the highest frequency found asks for: keep every
    # stride-th sample, with the Nyquist frequency 1.25× above the largest |peak|
    stride = max(1, int(math.pi / (1.25 * dt * float(np.max(np.abs(peaks))))))
    c = c[::stride]
    j = np.arange(c.size) * stride

    def basis(theta):
        return np.exp(-1j * np.outer(j, theta))

    def parts(theta):
        phi = basis(theta)
        q, r = np.linalg.qr(phi)
        w = np.linalg.solve(r, q.conj().T @ c)
        return phi, q, w

    def resid(theta):
        phi, q, _ = parts(theta)
        res = c - q @ (q.conj().T @ c)
        return np.concatenate([res.real, res.imag])

    def jac(theta):
        # Kaufman's variable-projection Jacobian: −P⊥ ∂Φ/∂θ_m w_m, P⊥ = I − QQ^H
        phi, q, w = parts(theta)
        d = (-1j * j[:, None]) * phi * w[None, :]
        d = d - q @ (q.conj().T @ d)
        return np.concatenate([-d.real, -d.imag])

    with blas_threads(1):  # tall-thin QRs: threads only add overhead
        fit = least_squares(resid, peaks * dt, jac=jac, method="lm", xtol=1e-13, ftol=1e-13, gtol=1e-13)
        theta = fit.x
        w = parts(theta)[2]
    energies = theta / dt
    idx = np.argsort(energies)
    energies, w = energies[idx], w[idx]
    return {"energies": energies[:k], "weights": np.abs(w[:k]), "all_energies": energies, "stride": stride,
            "residual": float(np.linalg.norm(fit.fun) / np.linalg.norm(np.concatenate([c.real, c.imag]))),
            "peaks": np.sort(peaks)}


def wave_levels(potential: Potential, grid: Grid, *, dt: float, t_end: float, k: int,
                center: float = 1.0, width: float = 1.0, scheme: str = "strang") -> dict:
    """The lowest ``k`` levels by wave mechanics: a Gaussian packet displaced to ``center``
    (it overlaps both parities) evolved to ``t_end`` by :func:`propagate` (Strang: to
    ``t_end/2`` with ``doubling``), its
    autocorrelation read by :func:`levels_from_autocorrelation` (a windowed FFT + peak fit)."""
    positive("t_end", t_end)
    n_steps = max(16, int(round(t_end / dt)))
    psi0 = gaussian_packet(grid, center=center, width=width)
    doubling = scheme == "strang"
    if doubling:
        n_steps = (n_steps + 1) // 2
    _, c = propagate(psi0, potential(grid.x), grid, dt=dt, n_steps=n_steps, scheme=scheme, doubling=doubling)
    out = levels_from_autocorrelation(c, dt, k=k)
    out["n_steps"] = n_steps
    return out


def state_error_orders(potential: Potential, grid: Grid, *, dts: Sequence[float], t_end: float,
                       reference_dt: float, center: float = 1.0) -> dict:
    """``‖ψ_dt(t_end) − ψ_ref(t_end)‖₂`` for each step in ``dts`` and each of :data:`SCHEMES`
    (reference: Strang at ``reference_dt``), with the fitted orders
    (:func:`dynbook.measure.fits.loglog_slope`): ``{"dts", "errors": {scheme: [...]},
    "order": {scheme: Estimate}}``."""
    from dynbook.measure.fits import loglog_slope

    dts = [positive(f"dts[{i}]", d) for i, d in enumerate(dts)]
    psi0 = gaussian_packet(grid, center=center)
    v = potential(grid.x)

    def run(dt, scheme):
        n = int(round(t_end / dt))
        if not math.isclose(n * dt, t_end, rel_tol=1e-9):
            raise ValueError(f"t_end={t_end!r} is not a whole number of steps dt={dt!r}")
        return propagate(psi0, v, grid, dt=dt, n_steps=n, scheme=scheme, autocorrelation=False)[0]

    ref = run(reference_dt, "strang")
    errors = {s: [float(np.sqrt(grid.inner(run(d, s) - ref, run(d, s) - ref).real)) for d in dts]
              for s in SCHEMES}
    return {"dts": dts, "errors": errors, "order": {s: loglog_slope(dts, e) for s, e in errors.items()}}


def fourier_grid_hamiltonian(grid: Grid, potential: Potential) -> np.ndarray:
    """The same Hamiltonian as a dense ``(n, n)`` real symmetric matrix on the grid: the
    kinetic energy ``F⁻¹ diag(k²/2) F`` (the Fourier-grid / sinc representation the
    split-step method applies) plus ``diag V(x)``."""
    eye = np.eye(grid.n)
    t = sfft.ifft(0.5 * grid.k[:, None] ** 2 * sfft.fft(eye, axis=0), axis=0).real
    t = 0.5 * (t + t.T)
    return t + np.diag(potential(grid.x))


def grid_matrix_levels(grid: Grid, potential: Potential, k: int) -> np.ndarray:
    """The lowest ``k`` eigenvalues of :func:`fourier_grid_hamiltonian` (dense, ``O(n³)``)."""
    return sla.eigh(fourier_grid_hamiltonian(grid, potential), eigvals_only=True,
                    subset_by_index=[0, positive_int("k", k) - 1], driver="evr")


def cost_comparison(potential: Potential, sizes: Sequence[int], *, length: float, k: int, dt: float,
                    t_end: float, readings: int = 3, reference: np.ndarray | None = None,
                    meter=None) -> dict:
    """Seconds to get the lowest ``k`` levels on grids of ``sizes`` points, both ways:
    ``"matrix"`` (build and diagonalise the dense grid Hamiltonian, :func:`grid_matrix_levels`)
    and ``"wave"`` (:func:`wave_levels`: ``t_end/dt`` split steps and the fit), interleaved by
    :func:`dynbook.measure.metered.metered` at each size, each side on one BLAS thread
    (:func:`blas_threads`). Also the largest relative error of
    each against ``reference`` (when given) and the bytes each holds
    (matrix ``8n²``; wave: a few length-``n`` complex vectors plus the signal and fit)."""
    from dynbook.measure.metered import metered, ratio

    out = {"sizes": [], "log2_ratio": [], "matrix_seconds": [], "wave_seconds": [], "matrix_error": [],
           "wave_error": [], "matrix_bytes": [], "wave_bytes": [], "energy": []}
    n_steps = max(16, int(round(t_end / dt)))
    for n in sizes:
        grid = Grid(positive_int("sizes[i]", n, minimum=8), length)
        fns = {"matrix": lambda g=grid: grid_matrix_levels(g, potential, k),
               "wave": lambda g=grid: wave_levels(potential, g, dt=dt, t_end=t_end, k=k)["energies"]}
        with blas_threads(1):
            res = metered(fns, readings=readings, min_seconds=0.02, meter=meter)
        r = ratio(res["matrix"], res["wave"])
        out["sizes"].append(int(n))
        out["log2_ratio"].append(r.map(math.log2))
        out["matrix_seconds"].append(min(res["matrix"].seconds))
        out["wave_seconds"].append(min(res["wave"].seconds))
        out["energy"].append({name: res[name].energy() for name in res})
        out["matrix_bytes"].append(8 * n * n)
        out["wave_bytes"].append(16 * (4 * n + (n_steps + 1) * 8))
        if reference is not None:
            ref = np.asarray(reference)[:k]
            out["matrix_error"].append(float(np.max(np.abs(fns["matrix"]() - ref) / np.abs(ref))))
            out["wave_error"].append(float(np.max(np.abs(fns["wave"]() - ref) / np.abs(ref))))
    out["energy_reason"] = res["matrix"].reason
    return out


def harmonic_basis_cost(potential: Potential, n_basis: int, *, k: int, repeats: int = 5) -> float:
    """Least seconds over ``repeats`` to build and diagonalise the ``N``-state harmonic-basis
    Hamiltonian for its lowest ``k`` levels."""
    best = math.inf
    for _ in range(positive_int("repeats", repeats)):
        t0 = time.perf_counter()
        matrix_levels(n_basis, potential, k)
        best = min(best, time.perf_counter() - t0)
    return best


# ----------------------------------------------------------------------------- NLSE


def soliton(x: np.ndarray, *, amplitude: float, velocity: float = 0.0, position: float = 0.0,
            phase: float = 0.0, t: float = 0.0) -> np.ndarray:
    """The bright soliton of ``i ψ_t + ½ψ_xx + |ψ|²ψ = 0``:
    ``A sech(A(x − x₀ − v t)) exp(i(v x + (A² − v²) t/2 + φ))`` (norm ``2A``)."""
    positive("amplitude", amplitude)
    x = np.asarray(x, dtype=np.float64)
    env = amplitude / np.cosh(amplitude * (x - position - velocity * t))
    return env * np.exp(1j * (velocity * x + 0.5 * (amplitude ** 2 - velocity ** 2) * t + phase))


def nlse_propagate(psi0: np.ndarray, grid: Grid, *, dt: float, n_steps: int, nonlinearity: float = 1.0,
                   scheme: str = "strang") -> np.ndarray:
    """``n_steps`` split steps of ``i ψ_t + ½ψ_xx + s|ψ|²ψ = 0`` (``s = nonlinearity``; 0 is the
    free Schrödinger equation), batched over leading axes of ``psi0: (..., n)``. The nonlinear
    sub-step is exact (``|ψ|`` is constant under it): ``ψ ← ψ e^{i s|ψ|² τ}``; Strang takes
    half of it on each side of the linear step."""
    one_of("scheme", scheme, SCHEMES)
    positive("dt", dt)
    psi = np.array(psi0, dtype=np.complex128)
    if psi.shape[-1] != grid.n:
        raise ValueError(f"psi0 has {psi.shape[-1]} points on its last axis; the grid has n={grid.n}")
    kin = np.exp(-0.5j * grid.k ** 2 * dt)
    for _ in range(int(n_steps)):
        if scheme == "strang":
            psi = psi * np.exp(0.5j * nonlinearity * dt * np.abs(psi) ** 2)
            psi = sfft.ifft(kin * sfft.fft(psi, axis=-1), axis=-1)
            psi = psi * np.exp(0.5j * nonlinearity * dt * np.abs(psi) ** 2)
        else:
            psi = psi * np.exp(1j * nonlinearity * dt * np.abs(psi) ** 2)
            psi = sfft.ifft(kin * sfft.fft(psi, axis=-1), axis=-1)
    return psi


def nlse_invariants(psi: np.ndarray, grid: Grid, *, nonlinearity: float = 1.0) -> dict:
    """``{"norm": ∫|ψ|², "energy": ∫ ½|ψ_x|² − (s/2)|ψ|⁴}`` over the last axis (spectral ψ_x)."""
    psi = np.asarray(psi, dtype=np.complex128)
    dpsi = sfft.ifft(1j * grid.k * sfft.fft(psi, axis=-1), axis=-1)
    norm = np.sum(np.abs(psi) ** 2, axis=-1) * grid.dx
    energy = np.sum(0.5 * np.abs(dpsi) ** 2 - 0.5 * nonlinearity * np.abs(psi) ** 4, axis=-1) * grid.dx
    return {"norm": norm, "energy": energy}


def soliton_study(grid: Grid, *, amplitude: float, velocity: float, t_end: float, dts: Sequence[float]) -> dict:
    """One soliton propagated to ``t_end`` with each step in ``dts``: the max-norm error
    against the exact soliton, the relative drifts of norm and energy, and the fitted order
    in ``dt`` (:func:`~dynbook.measure.fits.loglog_slope`) for Strang and Lie."""
    from dynbook.measure.fits import loglog_slope

    x = grid.x
    psi0 = soliton(x, amplitude=amplitude, velocity=velocity)
    exact = soliton(x, amplitude=amplitude, velocity=velocity, t=t_end)
    inv0 = nlse_invariants(psi0, grid)
    out = {"dts": [float(d) for d in dts]}
    for scheme in SCHEMES:
        err, dn, de, finals = [], [], [], []
        for dt in dts:
            n = int(round(t_end / dt))
            psi = nlse_propagate(psi0, grid, dt=dt, n_steps=n, scheme=scheme)
            inv = nlse_invariants(psi, grid)
            err.append(float(np.max(np.abs(psi - exact))))
            dn.append(float(abs(inv["norm"] - inv0["norm"]) / inv0["norm"]))
            de.append(float(abs(inv["energy"] - inv0["energy"]) / abs(inv0["energy"])))
            finals.append(psi)
        out[scheme] = {"error": err, "norm_drift": dn, "energy_drift": de,
                       "order": loglog_slope(dts, err), "final": finals[-1]}
    out["exact"] = exact
    out["initial"] = psi0
    return out


def collision_shift(a1: float, v1: float, a2: float, v2: float) -> tuple[float, float]:
    """Asymptotic position shifts ``(δ₁, δ₂)`` of two colliding solitons of
    ``i ψ_t + ½ψ_xx + |ψ|²ψ = 0`` (signed, along x).

    Zakharov & Shabat (1972) for ``i q_τ + q_ξξ + 2|q|²q = 0`` with eigenvalues
    ``ζ = ξ + iη`` give ``|δ_j| = ln(|ζ₁ − ζ₂*|²/|ζ₁ − ζ₂|²)/(2η_j)``; here ``ψ(x, t) = q(x, t/2)``,
    so ``ζ_j = (−v_j + iA_j)/2`` and ``|δ_j| = ln[((v₁−v₂)² + (A₁+A₂)²)/((v₁−v₂)² + (A₁−A₂)²)]/A_j``.
    Each soliton jumps forward, along its own velocity relative to the other's."""
    for name, v in (("a1", a1), ("a2", a2)):
        positive(name, v)
    if v1 == v2:
        raise ValueError(f"v1={v1!r} equals v2={v2!r}: solitons at equal speed never collide")
    dv2 = (v1 - v2) ** 2
    log = math.log((dv2 + (a1 + a2) ** 2) / (dv2 + (a1 - a2) ** 2))
    s = math.copysign(1.0, v1 - v2)
    return s * log / a1, -s * log / a2


def _centroid(x: np.ndarray, density: np.ndarray, guess: float, half_width: float, length: float) -> float:
    """Centre of mass of ``density`` within ``guess ± half_width`` on the periodic grid."""
    d = (x - guess + length / 2) % length - length / 2
    m = np.abs(d) <= half_width
    return float(guess + np.sum(d[m] * density[m]) / np.sum(density[m]))


def collision_experiment(grid: Grid, *, amplitudes: tuple[float, float], velocities: tuple[float, float],
                         separation: float, t_end: float, dt: float, seeds: Sequence[int]) -> dict:
    """Two solitons started ``separation`` apart (soliton 1 on the left), random relative phase
    and a random common offset per seed, propagated to ``t_end``; each soliton's position is
    the centroid of ``|ψ|²`` near its free trajectory, and its measured shift is compared with
    :func:`collision_shift`. The control runs each soliton alone (no partner, so no shift)
    through the same code. Returns per seed ``"ratio"`` (measured/predicted, averaged over the
    two solitons) and ``"control_ratio"``, with the shifts themselves, the start positions
    ``"starts"`` and the first seed's ``"initial"`` and ``"final"`` ψ."""
    (a1, a2), (v1, v2) = amplitudes, velocities
    positive("separation", separation)
    positive("t_end", t_end)
    if (v1 - v2) * t_end < 2 * separation:
        raise ValueError(f"t_end={t_end!r} is too short: the solitons must pass and separate again "
                         f"((v1 − v2)·t_end >= 2·separation = {2 * separation})")
    predicted = collision_shift(a1, v1, a2, v2)
    x = grid.x
    n_steps = int(round(t_end / dt))
    t = n_steps * dt
    pair, alone, starts = [], [], []
    for s in seeds:
        rng = np.random.default_rng([int(s), 10])
        phase = rng.uniform(0, 2 * np.pi)
        offset = rng.uniform(-1, 1)
        x1, x2 = offset - separation / 2, offset + separation / 2
        s1 = soliton(x, amplitude=a1, velocity=v1, position=x1)
        s2 = soliton(x, amplitude=a2, velocity=v2, position=x2, phase=phase)
        pair.append(s1 + s2)
        alone += [s1, s2]
        starts.append((x1, x2))
    psi = nlse_propagate(np.array(pair + alone), grid, dt=dt, n_steps=n_steps)
    dens = np.abs(psi) ** 2
    r = len(starts)
    shifts, control, ratios, control_ratios = [], [], [], []
    width = 6.0 / min(a1, a2)
    for i, (x1, x2) in enumerate(starts):
        free = (x1 + v1 * t, x2 + v2 * t)
        got = [_centroid(x, dens[i], free[j] + predicted[j], width, grid.length) - free[j] for j in (0, 1)]
        ctl = [_centroid(x, dens[r + 2 * i + j], free[j], width, grid.length) - free[j] for j in (0, 1)]
        shifts.append(got)
        control.append(ctl)
        ratios.append(float(np.mean([got[j] / predicted[j] for j in (0, 1)])))
        control_ratios.append(float(np.mean([ctl[j] / predicted[j] for j in (0, 1)])))
    return {"predicted": predicted, "shifts": shifts, "control_shifts": control, "ratio": ratios,
            "control_ratio": control_ratios, "final": psi[0], "initial": np.array(pair[0]),
            "x": x, "t_end": t, "starts": starts}


def collision_history(grid: Grid, psi0: np.ndarray, *, dt: float, t_end: float, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """``(times, |ψ|² at frames + 1 times)`` of one NLSE run, for a space–time picture."""
    positive_int("frames", frames)
    per = max(1, int(round(t_end / dt / frames)))
    psi = np.array(psi0, dtype=np.complex128)
    out = [np.abs(psi) ** 2]
    for _ in range(frames):
        psi = nlse_propagate(psi, grid, dt=dt, n_steps=per)
        out.append(np.abs(psi) ** 2)
    return np.arange(frames + 1) * per * dt, np.array(out)
