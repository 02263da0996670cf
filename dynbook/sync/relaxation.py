"""Asynchronous iterations simulated exactly in one process, and a local operator computed
locally and globally.

Bertsekas & Tsitsiklis (1989) write every asynchronous method as ``x_i ← T_i(x(t - d))``: a
component is updated from values that may be ``d`` updates old. Simulating that in one
process isolates the *algorithmic* effect of asynchrony from timing noise:

* :func:`jacobi` / :func:`chaotic_relaxation` – the fixed point of a lattice field
  (screened Poisson, a max-norm contraction) by synchronous sweeps, and by random subsets of
  sites updating from stale neighbour values (chaotic relaxation, Chazan & Miranker 1969);
* :func:`delayed_sgd` – SGD whose gradient is evaluated ``tau`` updates ago, many step sizes
  and delays at once, on streaming linear regression with a known excess risk.

The same nearest-neighbour lattice update is computed as a stencil (:func:`diffusion_step`,
local: each site reads 4 neighbours) and as the dense matrix of the same linear operator
(:func:`diffusion_matrix`, global: every site reads every site);
:func:`dynbook.measure.costs.kernel_costs` counts the FLOPs and compulsory bytes of these and
of the GEMM and scan they are set beside (:func:`movement_kernels`).

The synchronization chapter's simulated experiments are one call each, returning a dict with
the quantities its claims and checks are decided on, the metrics it records and its tables:
:func:`stability_study` (K5), :func:`linear_speedup` (C3a), :func:`lattice_timing` (C4a),
:func:`relaxation_study` (C4b) and :func:`kernel_energy` (C5); ``plot_*`` draw its figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dynbook._checks import positive, positive_int
from dynbook.measure.timing import num_threads

# ----------------------------------------------------------------------------- lattice


def _check_shape(n: int, m: int) -> None:
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r} is not allowed: expected an integer >= 1")


def neighbour_sum(u: torch.Tensor) -> torch.Tensor:
    """Sum of the 4 nearest neighbours on a periodic lattice; ``u: (..., n, m)``."""
    return (torch.roll(u, 1, -2) + torch.roll(u, -1, -2) + torch.roll(u, 1, -1) + torch.roll(u, -1, -1))


def laplacian(u: torch.Tensor) -> torch.Tensor:
    """5-point periodic lattice Laplacian ``(Δu)_ij = Σ_nbr u - 4 u_ij``; ``u: (..., n, m)``."""
    return neighbour_sum(u) - 4 * u


def diffusion_step(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """One explicit diffusion step ``u + α Δu`` as a stencil (stable for ``0 < α ≤ 1/4``)."""
    return u + alpha * laplacian(u)


def diffusion_matrix(n: int, m: int, alpha: float, *, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """The same step as a dense ``(n m, n m)`` matrix ``I + α (I_n ⊗ T_m + T_n ⊗ I_m)``
    (``T`` the periodic second difference; sites flattened row-major, ``i m + j``), assembled
    entry by entry from the neighbour index map ``(i ± 1 mod n, j ± 1 mod m)`` — independently
    of the stencil's ``roll`` — in ``dtype`` on ``device`` (no temporaries of size ``(nm)²``)."""
    _check_shape(n, m)
    sites = torch.arange(n * m, device=device).view(n, m)
    i = torch.arange(n, device=device)[:, None].expand(n, m)
    j = torch.arange(m, device=device)[None, :].expand(n, m)
    rows = sites.flatten()
    matrix = torch.zeros(n * m, n * m, dtype=dtype, device=device)
    value = torch.tensor(alpha, dtype=dtype, device=device).expand(n * m)
    for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        cols = sites[(i + di) % n, (j + dj) % m].flatten()
        matrix.index_put_((rows, cols), value, accumulate=True)  # n ≤ 2: two neighbours coincide
    matrix.index_put_((rows, rows), 1 - 4 * value, accumulate=True)
    return matrix


def diffusion_step_dense(u: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``u: (..., n, m)`` → the step computed as one GEMV/GEMM with the dense operator."""
    flat = u.reshape(-1, u.shape[-2] * u.shape[-1])
    return (flat @ matrix.T).reshape(u.shape)


# ----------------------------------------------------------------------------- relaxation


def jacobi_map(u: torch.Tensor, source: torch.Tensor, mass2: float) -> torch.Tensor:
    """``T(u) = (f + Σ_nbr u) / (4 + m²)``: Jacobi for ``(4 + m²) u - Σ_nbr u = f``. A
    contraction in the max norm with factor ``4 / (4 + m²)``, so synchronous and totally
    asynchronous iterations share one fixed point (Bertsekas & Tsitsiklis, §6.2)."""
    return (source + neighbour_sum(u)) / (4 + mass2)


def _check_mass(mass2: float) -> None:
    if not mass2 > 0:
        raise ValueError(f"mass2={mass2!r} is not allowed: expected > 0 (the map must contract)")


def solve_screened_poisson(source: torch.Tensor, mass2: float) -> torch.Tensor:
    """The exact fixed point by FFT (the periodic operator is diagonal in Fourier space)."""
    _check_mass(mass2)
    n, m = source.shape[-2:]
    kx = 2 * math.pi * torch.fft.fftfreq(n, dtype=torch.float64, device=source.device)
    ky = 2 * math.pi * torch.fft.fftfreq(m, dtype=torch.float64, device=source.device)
    symbol = 4 + mass2 - 2 * torch.cos(kx)[:, None] - 2 * torch.cos(ky)[None, :]
    return torch.fft.ifft2(torch.fft.fft2(source.to(torch.float64)) / symbol).real.to(source.dtype)


def jacobi(source: torch.Tensor, mass2: float, *, tol: float = 1e-10, max_sweeps: int = 100_000):
    """Synchronous Jacobi from ``u = 0`` until ``max|T(u) - u| ≤ tol``.
    Returns ``(u, sweeps, residuals)``; every site is updated once per sweep."""
    _check_mass(mass2)
    residuals = []
    image = jacobi_map(torch.zeros_like(source), source, mass2)
    for sweep in range(1, max_sweeps + 1):
        u = image
        image = jacobi_map(u, source, mass2)  # the next sweep's result, and this state's residual
        residuals.append(float((image - u).abs().max()))
        if residuals[-1] <= tol:
            return u, sweep, residuals
    raise RuntimeError(f"jacobi did not reach tol={tol} in max_sweeps={max_sweeps}")


def chaotic_relaxation(source: torch.Tensor, mass2: float, *, activation_prob: float = 0.5,
                       max_delay: int = 3, seed: int = 0, tol: float = 1e-10,
                       max_ticks: int = 1_000_000):
    """Totally asynchronous Jacobi: at every tick each site wakes with probability
    ``activation_prob`` (a random update order) and recomputes itself from neighbour values
    read ``d ∈ {0..max_delay}`` ticks ago, ``d`` drawn independently per site and neighbour.

    Stops when ``max|T(u) - u| ≤ tol`` for the current state. Returns
    ``(u, ticks, site_updates, residuals)``; ``site_updates / n_sites`` is comparable to
    Jacobi sweeps."""
    _check_mass(mass2)
    if not 0 < activation_prob <= 1:
        raise ValueError(f"activation_prob={activation_prob!r} is not allowed: expected in (0, 1]")
    if isinstance(max_delay, bool) or not isinstance(max_delay, int) or max_delay < 0:
        raise ValueError(f"max_delay={max_delay!r} is not allowed: expected an integer >= 0")
    gen = torch.Generator(device=source.device).manual_seed(seed)
    depth = max_delay + 1
    u = torch.zeros_like(source)
    history = torch.zeros((depth, *source.shape), dtype=source.dtype, device=source.device)
    shifts = ((1, -2), (-1, -2), (1, -1), (-1, -1))
    updates, residuals = 0, []
    for tick in range(1, max_ticks + 1):
        history[tick % depth] = u  # slot tick % depth holds the state at this tick
        nbr = torch.zeros_like(u)
        for shift, dim in shifts:
            delay = torch.randint(0, depth, source.shape, generator=gen, device=source.device)
            delay = torch.minimum(delay, torch.tensor(tick - 1, device=source.device))
            slot = (tick - delay) % depth
            nbr += torch.roll(history, shift, dim).gather(0, slot[None]).squeeze(0)
        awake = torch.rand(source.shape, generator=gen, device=source.device) < activation_prob
        u = torch.where(awake, (source + nbr) / (4 + mass2), u)
        updates += int(awake.sum())
        residuals.append(float((jacobi_map(u, source, mass2) - u).abs().max()))
        if residuals[-1] <= tol:
            return u, tick, updates, residuals
    raise RuntimeError(f"chaotic_relaxation did not reach tol={tol} in max_ticks={max_ticks}")


# ----------------------------------------------------------------------------- delayed SGD


def delay_stability_limit(tau: int) -> float:
    """Largest ``η λ`` for which ``w_{t+1} = w_t - η λ w_{t-τ}`` converges:
    ``2 sin(π / (2 (2τ + 1)))`` (Levin & May 1976); 2 for ``τ = 0``, about ``π / (2τ)`` for large τ."""
    if tau < 0:
        raise ValueError(f"tau={tau!r} is not allowed: expected >= 0")
    return 2 * math.sin(math.pi / (2 * (2 * tau + 1)))


@dataclass(frozen=True)
class StreamingRegression:
    """``y = x·w* + σ ε`` with fresh ``x ~ N(0, Σ)`` every step, ``Σ = diag(λ)``, ``λ``
    geometric from ``lam_min`` to ``lam_max`` over ``dim`` directions. Excess risk
    ``E(w) = ½ (w - w*)ᵀ Σ (w - w*)`` is known exactly (no test-set noise)."""

    dim: int = 16
    lam_min: float = 0.1
    lam_max: float = 1.0
    noise: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.dim < 1:
            raise ValueError(f"dim={self.dim!r} is not allowed: expected >= 1")
        if not 0 < self.lam_min <= self.lam_max:
            raise ValueError(f"lam_min={self.lam_min!r}, lam_max={self.lam_max!r} are not allowed: "
                             "expected 0 < lam_min <= lam_max")

    def spectrum(self) -> torch.Tensor:
        return torch.logspace(math.log10(self.lam_max), math.log10(self.lam_min), self.dim,
                              dtype=torch.float64)

    def w_star(self) -> torch.Tensor:
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float64)


def delayed_sgd(problem: StreamingRegression, step_sizes, delays, n_steps: int, *,
                batch_size: int = 1, n_seeds: int = 8, seed: int = 0, exact_gradient: bool = False,
                n_records: int = 64, blowup: float = 1e6) -> dict:
    """SGD with stale gradients, ``w_{t+1} = w_t - η_c ĝ(w_{t - τ_c})``, for configurations
    ``c`` (``step_sizes`` and ``delays`` of equal length) run side by side from ``w = 0`` on
    the same samples (common random numbers), ``n_seeds`` independent repetitions.

    ``τ = W - 1`` models ``W`` workers in round robin: each update applies a gradient computed
    before the other ``W - 1`` workers' updates landed. ``exact_gradient`` uses ``Σ (w - w*)``.

    Returns ``final`` (C,) mean excess risk over the last tenth of the steps and the seeds
    (``nan`` once a run exceeded ``blowup`` × its start: diverged), ``final_per_seed`` (S, C)
    the same before the mean over seeds, ``curve`` (records, C), ``steps`` (records,),
    ``diverged`` (C,) bool.
    """
    eta = torch.as_tensor(step_sizes, dtype=torch.float64)
    tau = torch.as_tensor(delays, dtype=torch.long)
    if eta.ndim != 1 or eta.shape != tau.shape:
        raise ValueError(f"step_sizes and delays must be 1-D of equal length; got {tuple(eta.shape)} and {tuple(tau.shape)}")
    if (tau < 0).any() or not (eta > 0).all():
        raise ValueError(f"delays={tau.tolist()} and step_sizes={eta.tolist()} are not allowed: "
                         "expected delays >= 0 and step sizes > 0")
    if n_steps < 1:
        raise ValueError(f"n_steps={n_steps!r} is not allowed: expected >= 1")
    lam, w_star = problem.spectrum(), problem.w_star()
    C, S, d = len(eta), n_seeds, problem.dim
    depth = int(tau.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    w = torch.zeros(S, C, d, dtype=torch.float64)
    history = torch.zeros(depth, S, C, d, dtype=torch.float64)  # slot t % depth = w_t
    cols = torch.arange(C)
    excess0 = 0.5 * (lam * w_star ** 2).sum()
    alive = torch.ones(C, dtype=torch.bool)
    tail_start = n_steps - max(1, n_steps // 10)
    tail = torch.zeros(S, C, dtype=torch.float64)
    record_at = set(torch.linspace(0, n_steps, n_records).round().long().tolist())
    curve, steps = [], []
    chunk = 256  # draw samples for many steps at once: the loop is overhead-bound
    for t in range(n_steps + 1):
        if t in record_at or t >= tail_start:
            err = w - w_star
            per_seed = 0.5 * (lam * err ** 2).sum(-1)  # (S, C)
            excess = per_seed.mean(0)  # (C,)
            alive &= torch.isfinite(excess) & (excess < blowup * excess0)
            if t in record_at:
                curve.append(torch.where(alive, excess, torch.nan))
                steps.append(t)
            if tail_start <= t < n_steps:
                tail += torch.where(alive, per_seed, 0.0)
        if t == n_steps:
            break
        history[t % depth] = w
        stale = history[(t - tau).clamp(min=0) % depth, :, cols].transpose(0, 1) - w_star  # (S, C, d)
        if exact_gradient:
            grad = lam * stale
        else:
            if t % chunk == 0:
                xs = torch.randn(chunk, S, batch_size, d, generator=gen, dtype=torch.float64) * lam.sqrt()
                noises = problem.noise * torch.randn(chunk, S, 1, batch_size, generator=gen, dtype=torch.float64)
            x, noise = xs[t % chunk], noises[t % chunk]
            resid = torch.einsum("sbd,scd->scb", x, stale) - noise
            grad = torch.einsum("sbd,scb->scd", x, resid) / batch_size
        # a diverged run is frozen (its nan/inf must not leak into the update)
        w = torch.where(alive[None, :, None], w - eta[None, :, None] * grad, w)
    per_seed = torch.where(alive, tail / (n_steps - tail_start), torch.nan)
    return {"final": per_seed.mean(0), "final_per_seed": per_seed, "curve": torch.stack(curve),
            "steps": torch.tensor(steps), "diverged": ~alive}


def _largest_tolerated(workers, final: torch.Tensor, rel_tol: float) -> int:
    ok = torch.nan_to_num(final, nan=math.inf) <= (1 + rel_tol) * final[0]
    best = 1
    for w, good in zip(workers, ok.tolist()):
        if not good:
            break
        best = w
    return best


def crossing_workers(workers, final: torch.Tensor, rel_tol: float) -> float:
    """The number of workers at which the final excess risk first reaches ``(1 + rel_tol)``
    × that of ``W = 1``, interpolated linearly in ``log W`` between the grid points around the
    first crossing (a diverged run counts as a crossing at its grid point's left neighbour).
    A continuous version of :func:`tolerated_workers`'s ``W_max``; the last grid point if no
    ``W`` on the grid crosses."""
    workers = [float(w) for w in workers]
    ratio = (torch.nan_to_num(final, nan=math.inf) / final[0]).tolist()
    target = 1 + rel_tol
    for i in range(1, len(workers)):
        if ratio[i] > target:
            if not math.isfinite(ratio[i]):
                return workers[i - 1]
            lo, hi = math.log(workers[i - 1]), math.log(workers[i])
            frac = (target - ratio[i - 1]) / (ratio[i] - ratio[i - 1])
            return math.exp(lo + min(max(frac, 0.0), 1.0) * (hi - lo))
    return workers[-1]


def tolerated_workers_by_group(problem: StreamingRegression, n_steps: int, workers, step_sizes, *,
                               n_groups: int = 3, seeds_per_group: int = 8, rel_tol: float = 0.1,
                               seed: int = 0, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`tolerated_workers` for several step sizes at once, repeated on ``n_groups``
    independent groups of ``seeds_per_group`` seeds (one simulation; the groups give the
    spread). Returns the crossing number of workers (:func:`crossing_workers`) of shape
    ``(len(step_sizes), n_groups)`` and the groups' final excess risk
    ``(len(step_sizes), n_groups, len(workers))``."""
    workers = list(workers)
    if workers[0] != 1 or sorted(workers) != workers:
        raise ValueError(f"workers={workers!r} is not allowed: expected an increasing list starting at 1")
    if n_groups < 1 or seeds_per_group < 1:
        raise ValueError(f"n_groups={n_groups!r}, seeds_per_group={seeds_per_group!r} are not allowed: expected >= 1")
    etas = [float(e) for e in step_sizes]
    out = delayed_sgd(problem, [e for e in etas for _ in workers], [w - 1 for _ in etas for w in workers],
                      n_steps, n_seeds=n_groups * seeds_per_group, seed=seed, **kwargs)
    per_seed = out["final_per_seed"].view(n_groups, seeds_per_group, len(etas), len(workers))
    final = per_seed.mean(1).permute(1, 0, 2)  # (etas, groups, workers)
    w_max = torch.tensor([[crossing_workers(workers, final[e, g], rel_tol) for g in range(n_groups)]
                          for e in range(len(etas))], dtype=torch.float64)
    return w_max, final


def tolerated_workers(problem: StreamingRegression, n_steps: int, workers, step_size: float, *,
                      rel_tol: float = 0.1, **kwargs) -> tuple[int, torch.Tensor]:
    """Largest ``W`` in ``workers`` (which must start at 1) such that every ``W' ≤ W`` ends
    within ``(1 + rel_tol)`` × the excess risk of ``W = 1`` after ``n_steps`` updates, i.e.
    asynchrony costs no extra iterations: wall time falls like ``1 / W`` (linear speed-up).
    Returns ``(W_max, final excess risk per W)``."""
    workers = list(workers)
    if workers[0] != 1 or sorted(workers) != workers:
        raise ValueError(f"workers={workers!r} is not allowed: expected an increasing list starting at 1")
    out = delayed_sgd(problem, [step_size] * len(workers), [w - 1 for w in workers], n_steps, **kwargs)
    final = out["final"]
    return _largest_tolerated(workers, final, rel_tol), final


def measured_stability_limits(delays, grid, *, n_steps: int = 3000) -> torch.Tensor:
    """For each delay ``τ``, the largest ``a = η λ`` in the increasing ``grid`` for which delayed
    gradient descent on ``½ λ w²`` (exact gradient, from ``w = 1``) ends below where it started,
    with every smaller ``a`` on the grid converging too. Measured by simulation, to compare with
    :func:`delay_stability_limit`. Returns ``(len(delays),)``; ``nan`` if even ``grid[0]`` fails."""
    delays, grid = list(delays), [float(a) for a in grid]
    if sorted(grid) != grid or grid[0] <= 0:
        raise ValueError("grid is not allowed: expected increasing positive step sizes")
    one_d = StreamingRegression(dim=1, lam_min=1.0, lam_max=1.0, noise=0.0)
    etas = [a for _ in delays for a in grid]
    taus = [t for t in delays for _ in grid]
    out = delayed_sgd(one_d, etas, taus, n_steps, n_seeds=1, exact_gradient=True, n_records=2)
    start = 0.5 * float(one_d.w_star() ** 2)
    ok = (torch.nan_to_num(out["final"], nan=math.inf) < start).view(len(delays), len(grid))
    limits = []
    for row in ok.tolist():
        good = 0
        while good < len(grid) and row[good]:
            good += 1
        limits.append(grid[good - 1] if good else math.nan)
    return torch.tensor(limits, dtype=torch.float64)


# ----------------------------------------------------------------------------- the chapter's studies
# Each returns a dict with what its claim or check is decided on, ``metrics`` (what the
# chapter records: keyword arguments of :func:`dynbook.record`) and, where the chapter shows
# one, ``table`` (header and rows for :func:`dynbook.show.table`).


def _metric(name: str, value, unit: str = "", claim: str | None = None, labels: dict | None = None) -> dict:
    """One entry of a study's ``metrics``: the keyword arguments of :func:`dynbook.record`
    (also used by :mod:`dynbook.sync.regimes`)."""
    return {"name": name, "value": value, "unit": unit, "claim": claim, "labels": labels}


def stability_study(delays, grid, *, n_steps: int = 3000) -> dict:
    """:func:`measured_stability_limits` beside :func:`delay_stability_limit`: ``measured``
    and ``predicted`` (lists, one per delay), the grid's ``step_ratio``, and ``agree``: every
    predicted limit lies in the measured limit's grid cell (1 % slack)."""
    delays, grid = list(delays), [float(a) for a in grid]
    measured = measured_stability_limits(delays, grid, n_steps=n_steps).tolist()
    predicted = [delay_stability_limit(t) for t in delays]
    ratio = grid[1] / grid[0]
    return {"delays": delays, "measured": measured, "predicted": predicted, "step_ratio": ratio,
            "agree": all(m / 1.01 <= p < m * ratio * 1.01 for m, p in zip(measured, predicted)),
            "metrics": [_metric("stability_limit_tau0", measured[0], "ηλ"),
                        _metric("stability_limit_tau_max", measured[-1], "ηλ"),
                        _metric("tau_max", delays[-1], "steps")]}


def linear_speedup(problem: StreamingRegression, iterations, workers, *, fixed_step: float = 1 / 16,
                   n_groups: int = 8, seeds_per_group: int = 4, rel_tol: float = 0.1, seed: int = 0) -> dict:
    """Lian et al.'s ``W ≲ √K``: for each ``K`` in ``iterations``, the workers that cost no
    extra iterations (:func:`tolerated_workers_by_group`) at step size ``1/√K`` (row 0) and
    at ``fixed_step`` (row 1). Returns ``w_max`` and ``final`` per K, and ``slopes``: the
    log–log slope of W_max against K per group, ``{0: [...], 1: [...]}``."""
    from dynbook.measure.fits import loglog_fit

    iterations = [positive_int("iterations", k) for k in iterations]
    positive("fixed_step", fixed_step)
    w_max, final = {}, {}
    with num_threads(1):
        for k in iterations:
            w_max[k], final[k] = tolerated_workers_by_group(
                problem, k, workers, [1 / math.sqrt(k), fixed_step], n_groups=n_groups,
                seeds_per_group=seeds_per_group, rel_tol=rel_tol, seed=seed)
    slopes = {e: [loglog_fit(iterations, [float(w_max[k][e, g]) for k in iterations])[0] for g in range(n_groups)]
              for e in (0, 1)}
    unit = "d log W_max / d log K"
    metrics = [_metric(f"w_max_K{k}", float(w_max[k][0].mean()), "workers", "C3a",
                       {"K": k, "step_size": 1 / math.sqrt(k), "per_group": w_max[k][0].tolist()})
               for k in iterations]
    metrics += [_metric("lian_groups", n_groups, "groups of seeds"),
                _metric("lian_slope", float(np.mean(slopes[0])), unit, "C3a"),
                _metric("lian_slope_fixed", float(np.mean(slopes[1])), unit, "C3a"),
                _metric("lian_K_max", iterations[-1], "iterations"),
                _metric("w_max_at_K_max", float(w_max[iterations[-1]][0].mean()), "workers", "C3a")]
    return {"iterations": iterations, "workers": list(workers), "fixed_step": fixed_step,
            "w_max": w_max, "final": final, "slopes": slopes, "n_groups": n_groups, "metrics": metrics}


def lattice_timing(sizes, *, alpha: float = 0.2, device: str = "cpu", repeats: int = 5,
                   min_run_time: float = 0.02) -> dict:
    """One diffusion step of an ``n × n`` lattice as a stencil and as the dense matrix, for
    each ``n`` of ``sizes``, timed in ``repeats`` interleaved repeats on one thread.

    Returns ``exact_error`` (float64 stencil vs matrix, a 7×13 batch of 5), ``same`` (float32
    allclose at every size) and ``rows``: per size ``n``, ``times`` (seconds per update per
    repeat, by kind), ``ratio`` (dense ÷ stencil, :func:`~dynbook.book.stats.timing_ratio`)
    and each kind's FLOP/byte counts (:func:`~dynbook.measure.costs.kernel_costs`)."""
    from dynbook.book.stats import timing_ratio
    from dynbook.measure.costs import kernel_costs
    from dynbook.measure.timing import interleaved_times

    positive_int("repeats", repeats)
    u64 = torch.randn(5, 7, 13, dtype=torch.float64)
    exact = float((diffusion_step(u64, alpha)
                   - diffusion_step_dense(u64, diffusion_matrix(7, 13, alpha, dtype=torch.float64))).abs().max())
    rows, same = [], []
    with num_threads(1):
        for n in sizes:
            u = torch.randn(n, n, device=device)
            matrix = diffusion_matrix(n, n, alpha, device=device)
            same.append(torch.allclose(diffusion_step(u, alpha), diffusion_step_dense(u, matrix), rtol=1e-5, atol=1e-5))
            times = interleaved_times({"stencil": lambda: diffusion_step(u, alpha),
                                       "dense_operator": lambda: diffusion_step_dense(u, matrix)},
                                      device=device, min_run_time=min_run_time, repeats=repeats)
            rows.append({"n": n, "times": times, "ratio": timing_ratio(times["dense_operator"], times["stencil"]),
                         **{k: kernel_costs(k, sites=n * n, batch=1) for k in times}})
    big, tiny = rows[-1], rows[0]
    ratio_unit = "dense ÷ stencil"
    metrics = [_metric(f"lattice_{k}_n{r['n']}_s", min(r["times"][k]), "s per update (least of repeats)", "C4a")
               for r in rows for k in ("stencil", "dense_operator")]
    metrics += [_metric("lattice_n_max", big["n"], "sites per side"),
                _metric("lattice_n_min", tiny["n"], "sites per side"),
                *(_metric(f"lattice_{w}_ratio", big["dense_operator"][w] / big["stencil"][w], ratio_unit, "C4a")
                  for w in ("bytes", "flops")),
                _metric("lattice_time_ratio", big["ratio"].value, ratio_unit, "C4a"),
                _metric("lattice_time_ratio_n_min", tiny["ratio"].value, ratio_unit, "C4a")]
    table = (["n", "kind", "FLOPs", "bytes", "µs per update (least)"],
             [(r["n"], k, r[k]["flops"], r[k]["bytes"], f"{min(r['times'][k]) * 1e6:.3g}")
              for r in rows for k in ("stencil", "dense_operator")])
    return {"exact_error": exact, "same": all(same), "rows": rows, "repeats": repeats, "metrics": metrics,
            "table": table}


def relaxation_study(seeds, *, n: int = 16, mass2: float = 0.5, tol: float = 1e-10,
                     max_delays=(3, 12), activation_prob: float = 0.5) -> dict:
    """Synchronous Jacobi and chaotic relaxation (reads up to each of ``max_delays`` ticks
    stale) on the screened Poisson equation with a random source per seed, ``n × n``.

    Returns ``work`` (per max delay: site updates per site ÷ Jacobi sweeps, per seed),
    ``sweeps`` (Jacobi, per seed), ``errors`` (max |u − u*| of every run against the FFT
    solve), ``bound`` (the distance to the fixed point a residual below ``tol`` guarantees)
    and ``curves`` (first seed: ``0`` → (sweeps, residuals), delay → (updates per site,
    residuals))."""
    positive_int("n", n)
    q = 4 / (4 + positive("mass2", mass2))
    out = {"work": {d: [] for d in max_delays}, "sweeps": [], "errors": [], "curves": {},
           "bound": 2 * tol * q / (1 - q), "n": n}
    with num_threads(1):
        for s in seeds:
            f = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
            u_star = solve_screened_poisson(f, mass2)
            u, sweeps, res = jacobi(f, mass2, tol=tol)
            out["errors"].append(float((u - u_star).abs().max()))
            out["sweeps"].append(sweeps)
            for d in max_delays:
                v, _, updates, res_async = chaotic_relaxation(f, mass2, activation_prob=activation_prob,
                                                              max_delay=d, seed=s, tol=tol)
                out["errors"].append(float((v - u_star).abs().max()))
                out["work"][d].append(updates / f.numel() / sweeps)
                if s == seeds[0]:
                    out["curves"][d] = (updates / f.numel(), res_async)
            if s == seeds[0]:
                out["curves"][0] = (sweeps, res)
    first, *rest = max_delays
    work = out["work"]
    out["metrics"] = [_metric("relax_max_delay", first, "ticks"),
                      _metric("jacobi_sweeps", out["sweeps"][0], "sweeps", "C4b"),
                      _metric("async_work_ratio", float(np.mean(work[first])), "× Jacobi", "C4b",
                              {"per_seed": work[first]}),
                      *(_metric(f"async_work_ratio_stale{d}", float(np.mean(work[d])), "× Jacobi", "C4b")
                        for d in rest)]
    return out


def movement_kernels(gemm_n: int, stencil_n: int, scan_shape, *, device: str = "cpu",
                     alpha: float = 0.2) -> dict:
    """Kernels of different arithmetic intensity, ``{key: (label, call, costs)}``: a GEMM
    ``(b, n) @ (n, n)`` at batch 1, n/2 and n, the lattice stencil on ``stencil_n²`` sites,
    and a prefix sum over ``scan_shape = (batch, length, channels)`` along ``length``."""
    from dynbook.measure.costs import kernel_costs

    g = positive_int("gemm_n", gemm_n, minimum=2)
    w = torch.randn(g, g, device=device)
    xs = {b: torch.randn(b, g, device=device) for b in (1, g // 2, g)}
    field_ = torch.randn(stencil_n, stencil_n, device=device)
    seq = torch.randn(*scan_shape, device=device)
    b, length, channels = scan_shape
    gemm = {f"gemm_{k}": (f"GEMM batch {m}", (lambda x=xs[m]: x @ w), kernel_costs("gemm", n=g, k=g, batch=m))
            for k, m in (("small", 1), ("half", g // 2), ("large", g))}
    return {**gemm,
            "stencil": ("stencil", lambda: diffusion_step(field_, alpha),
                        kernel_costs("stencil", sites=stencil_n ** 2, batch=1)),
            "scan": ("scan (prefix sum)", lambda: torch.cumsum(seq, dim=1),
                     kernel_costs("scan", batch=b, length=length, channels=channels))}


def kernel_energy(kernels: dict, meter=None, *, device: str = "cpu", min_seconds: float = 0.05,
                  readings: int = 3) -> dict:
    """Time and (where ``meter`` can read a counter) net energy per FLOP of each kernel of
    :func:`movement_kernels`, interleaved by :func:`dynbook.measure.metered.metered`, beside
    the Horowitz model of its FLOPs and compulsory bytes. Returns ``rows``, ``{key: row}`` with
    ``name``, ``flops``, ``bytes``, ``gflops``, ``model`` (an
    :class:`~dynbook.measure.energy.EnergyModel`) and ``measured_pj`` (pJ/FLOP per reading,
    or ``None``)."""
    from dynbook.measure.energy import EnergyModel
    from dynbook.measure.metered import metered

    readout = metered({k: v[1] for k, v in kernels.items()}, units={k: v[2]["flops"] for k, v in kernels.items()},
                      meter=meter, device=device, readings=readings, min_seconds=min_seconds)
    rows = {k: dict(cost, name=name, gflops=1e-9 / min(readout[k].seconds), measured_pj=readout[k].picojoules,
                    model=EnergyModel(flops=cost["flops"], dram_bytes=cost["bytes"]))
            for k, (name, _, cost) in kernels.items()}
    metrics = []
    for k, r in rows.items():
        pj = r["measured_pj"]
        metrics += [_metric(f"energy_{k}_model_pj_per_flop", r["model"].pj_per_flop, "pJ/FLOP (model)", "C5"),
                    _metric(f"energy_{k}_movement_share", r["model"].movement_share, "fraction (model)", "C5"),
                    _metric(f"energy_{k}_measured_pj_per_flop", float(np.mean(pj)) if pj else None,
                            "pJ/FLOP (measured, net)", "C5"),
                    _metric(f"energy_{k}_gflops", r["gflops"], "GFLOP/s", "C5")]
    table = (["kernel", "FLOPs", "bytes", "FLOP/byte", "GFLOP/s", "model pJ/FLOP", "model movement share",
              "measured pJ/FLOP"],
             [(r["name"], float(r["flops"]), float(r["bytes"]), r["flops"] / r["bytes"], r["gflops"],
               r["model"].pj_per_flop, f"{r['model'].movement_share:.0%}",
               f"{np.mean(r['measured_pj']):.3g}" if r["measured_pj"] else "unavailable")
              for r in rows.values()])
    return {"rows": rows, "metrics": metrics, "table": table}


# ----------------------------------------------------------------------------- figures


def plot_staleness(axes, stability: dict, etas, taus, final) -> None:
    """Left: measured and predicted stability limits against τ; right: final excess risk of
    delayed SGD against τ, one line per step size (``final``: (len(etas), len(taus)))."""
    ax1, ax2 = axes
    ax1.plot(stability["delays"], stability["predicted"], "-", label=r"$2\sin(\pi / (2(2\tau+1)))$")
    ax1.plot(stability["delays"], stability["measured"], "o", label="measured")
    ax1.axhline(2.0, color="k", lw=0.8, ls=":")
    ax1.set(xlabel=r"staleness $\tau$", ylabel=r"largest stable $\eta\lambda$", yscale="log")
    ax1.legend()
    for eta, row in zip(etas, final):
        ax2.plot([max(t, 0.5) for t in taus], row, "o-", label=fr"$\eta$ = {eta}")
    ax2.set(xlabel=r"staleness $\tau$ (0 drawn at 0.5)", ylabel="final excess risk", xscale="log", yscale="log")
    ax2.legend()


def plot_speedup(axes, study: dict) -> None:
    """Left: excess risk after K iterations against W (step 1/√K, first group); right:
    W_max against K for both step sizes (mean over groups, bars min–max) and √K."""
    ax1, ax2 = axes
    ks = study["iterations"]
    for k in ks:
        ax1.plot(study["workers"], study["final"][k][0, 0], "o-", ms=3, label=f"K = {k}")
    ax1.set(xlabel="workers W", ylabel="final excess risk", xscale="log", yscale="log")
    ax1.legend()
    for e, label in ((0, r"$\eta = 1/\sqrt{K}$"), (1, fr"$\eta$ = {study['fixed_step']}")):
        w = np.array([study["w_max"][k][e].numpy() for k in ks])
        ax2.errorbar(ks, w.mean(1), yerr=[w.mean(1) - w.min(1), w.max(1) - w.mean(1)], fmt="o-", capsize=3,
                     label=f"{label} (slope {np.mean(study['slopes'][e]):.2f})")
    ax2.plot(ks, np.sqrt(np.array(ks, dtype=float)), "k--", label=r"$\sqrt{K}$")
    ax2.set(xlabel="iterations K", ylabel="workers", xscale="log", yscale="log")
    ax2.legend()


def plot_lattice(axes, lattice: dict) -> None:
    """Left: time per update (every repeat) against sites for both forms; right: their
    compulsory bytes."""
    ax1, ax2 = axes
    rows = lattice["rows"]
    for i, (kind, label) in enumerate((("stencil", "stencil (local)"), ("dense_operator", "dense matrix (global)"))):
        for r in rows:
            ax1.plot([r["n"] ** 2] * len(r["times"][kind]), [t * 1e6 for t in r["times"][kind]], "o", color=f"C{i}",
                     label=label if r is rows[0] else None)
        ax2.loglog([r["n"] ** 2 for r in rows], [r[kind]["bytes"] for r in rows], "o-", color=f"C{i}", label=label)
    ax1.set(xscale="log", yscale="log", xlabel="lattice sites N", ylabel="µs per update")
    ax2.set(xlabel="lattice sites N", ylabel="compulsory bytes per update")
    ax1.legend()


def plot_relaxation(ax, study: dict) -> None:
    """Residual against site updates per site, Jacobi and each chaotic relaxation (first seed)."""
    sweeps, res = study["curves"][0]
    ax.semilogy(range(1, len(res) + 1), res, label="synchronous Jacobi")
    for d in study["work"]:
        work, r = study["curves"][d]
        ax.semilogy([work * i / max(len(r) - 1, 1) for i in range(len(r))], r,
                    label=f"chaotic, reads ≤ {d} ticks stale")
    ax.set(xlabel="site updates per site", ylabel="residual")
    ax.legend()


def plot_energy(ax, energy: dict) -> None:
    """Modelled pJ/FLOP split into arithmetic and movement per kernel (log scale), and the
    measured net pJ/FLOP as black dots where a counter exists (``energy``: :func:`kernel_energy`)."""
    rows = energy["rows"]
    names = list(rows)
    xs = np.arange(len(names))
    ax.bar(xs - 0.2, [rows[k]["model"].arithmetic_pj / rows[k]["flops"] for k in names], 0.4, color="C0",
           label="arithmetic (model)")
    ax.bar(xs + 0.2, [(rows[k]["model"].dram_pj + rows[k]["model"].sram_pj) / rows[k]["flops"] for k in names], 0.4,
           color="C3", label="data movement (model)")
    pts = [(i, np.mean(rows[k]["measured_pj"])) for i, k in enumerate(names) if rows[k]["measured_pj"]]
    if pts:
        ax.plot(*zip(*pts), "ko", label="measured total (net)")
    ax.set_xticks(xs, [rows[k]["name"] for k in names], rotation=15)
    ax.set(ylabel="pJ per FLOP", yscale="log")
    ax.legend()
