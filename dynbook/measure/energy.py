"""Energy: read real counters, or say plainly that none can be read.

``EnergyMeter`` is a context manager around a piece of work:

* on an NVIDIA GPU it reads NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
  millijoules since driver load, Volta and newer), synchronising CUDA at both edges so the
  reading covers exactly the work;
* on a CPU it reads RAPL counters from ``/sys/class/powercap`` (``energy_uj``): the packages
  and their DRAM sub-zones, never ``psys`` beside them (it contains the packages) nor the
  core/uncore sub-zones (inside the package); it handles the counter's wrap at
  ``max_energy_range_uj`` and polls so that a long region cannot wrap twice unseen;
* otherwise it reports ``source="unavailable"`` with the reason. It never estimates.

Idle power is measured separately (the same counter over a quiet interval, once the power has
stopped falling: a device that has just worked is still hot) and the reading gives both gross
joules and idle-subtracted (net) joules.

What a byte and a FLOP cost on the running device is measured by two kernels that each do one
thing — a copy past the caches and an FMA loop in registers, read per call through
:func:`dynbook.measure.metered.metered` (:func:`energy_per_call`) and solved for the two costs
(:func:`fit_movement_model`) — and :func:`movement_study` uses them to split and predict a
GEMV's energy.

The per-operation energy model of Horowitz (ISSCC 2014, 45 nm) is here too, as a model to set
beside measurements, never in place of one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dynbook import _checks

POWERCAP_ROOT = Path("/sys/class/powercap")


@dataclass
class EnergyReading:
    """What a meter read over one region."""

    source: str  # "nvml", "rapl" or "unavailable"
    seconds: float
    joules: float | None = None  # gross, from the counter
    idle_watts: float | None = None
    reason: str = ""
    domains: dict = field(default_factory=dict)  # RAPL zone -> joules

    @property
    def available(self) -> bool:
        return self.joules is not None

    @property
    def net_joules(self) -> float | None:
        """Gross joules minus idle power × duration (None when either is unknown)."""
        if self.joules is None or self.idle_watts is None:
            return None
        return self.joules - self.idle_watts * self.seconds

    @property
    def watts(self) -> float | None:
        return None if self.joules is None or self.seconds <= 0 else self.joules / self.seconds

    def per(self, count: float, *, net: bool = True, scale: float = 1e12) -> float | None:
        """Energy per unit of work (default picojoules per ``count``), or None if unmeasured."""
        j = self.net_joules if net else self.joules
        if j is None or count <= 0:
            return None
        return j / count * scale

    def describe(self) -> str:
        if not self.available:
            return f"energy unavailable ({self.reason})"
        net = self.net_joules
        extra = f", net {net:.3g} J after {self.idle_watts:.3g} W idle" if net is not None else ""
        return f"{self.joules:.3g} J gross over {self.seconds:.3g} s from {self.source}{extra}"


# ----------------------------------------------------------------------------- counters


class _Counter:
    """A monotonically read energy counter: ``read()`` → joules since an arbitrary origin."""

    source = "unavailable"

    def read(self) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def domains(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class RaplCounter(_Counter):
    """CPU energy from RAPL zones under ``root``, unwrapped across counter overflow.

    Which zones are summed (:func:`rapl_zones`): every ``package`` zone and every ``dram``
    sub-zone (DRAM energy is outside the package's); not the ``core``/``uncore`` sub-zones
    (inside the package), not ``psys`` (the platform, which already contains the packages) unless
    it is the only zone, and not the ``*-rapl-mmio`` copies of the package counters.
    """

    source = "rapl"

    def __init__(self, root: str | Path = POWERCAP_ROOT):
        zones = []
        for zone, name in rapl_zones(root):
            energy, limit = zone / "energy_uj", zone / "max_energy_range_uj"
            try:
                int(energy.read_text())
                max_range = int(limit.read_text())
            except (OSError, ValueError):
                continue
            zones.append((f"{zone.name}:{name}", energy, max_range))
        if not zones:
            raise OSError(f"no readable RAPL energy_uj under {root}")
        self.zones = zones
        self._last = [int(e.read_text()) for _, e, _ in zones]
        self._total_uj = [0] * len(zones)
        self._lock = threading.Lock()

    def poll(self) -> None:
        """Fold the counters' advance since the last poll into the totals (handles one wrap)."""
        with self._lock:
            for i, (_, energy, max_range) in enumerate(self.zones):
                now = int(energy.read_text())
                delta = now - self._last[i]
                if delta < 0:  # wrapped past max_energy_range_uj back to zero
                    delta += max_range
                self._total_uj[i] += delta
                self._last[i] = now

    def read(self) -> float:
        self.poll()
        return sum(self._total_uj) / 1e6

    def domains(self) -> dict:
        return {name: t / 1e6 for (name, _, _), t in zip(self.zones, self._total_uj)}


def rapl_zones(root: str | Path = POWERCAP_ROOT) -> list[tuple[Path, str]]:
    """``[(zone directory, name)]`` of the RAPL zones whose energies add up without double
    counting: packages and their ``dram`` sub-zones; ``psys`` only when there is no package."""
    root = Path(root)
    found = []
    for zone in sorted(root.glob("*rapl:*")):
        if "mmio" in zone.name:  # the same package counter read through MMIO
            continue
        name_file = zone / "name"
        name = name_file.read_text().strip() if name_file.exists() else zone.name
        depth = zone.name.count(":")
        found.append((zone, name, depth))
    packages = [(z, n) for z, n, d in found if d == 1 and n.startswith("package")]
    dram = [(z, n) for z, n, d in found if n == "dram"]
    if packages:
        return packages + dram
    psys = [(z, n) for z, n, d in found if n == "psys"]
    if psys:
        return psys[:1]
    return [(z, n) for z, n, d in found if d == 1] + dram


class NvmlCounter(_Counter):
    """NVML total energy of one GPU, in joules (the counter is 64-bit millijoules)."""

    source = "nvml"

    def __init__(self, index: int = 0, nvml=None):
        if nvml is None:
            import pynvml as nvml  # nvidia-ml-py
        self.nvml = nvml
        nvml.nvmlInit()
        try:
            self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
            nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception:
            nvml.nvmlShutdown()
            raise

    def read(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down a library we no longer need
            pass


def open_counter(device: str = "cpu", *, powercap_root: str | Path = POWERCAP_ROOT,
                 gpu_index: int = 0, nvml=None) -> tuple[_Counter | None, str]:
    """The counter for ``device`` and, when there is none, the reason why."""
    if device == "cuda":
        try:
            return NvmlCounter(gpu_index, nvml=nvml), ""
        except Exception as e:  # noqa: BLE001 - any NVML failure means no counter
            return None, f"NVML energy counter not readable: {type(e).__name__}: {e}"
    try:
        return RaplCounter(powercap_root), ""
    except OSError as e:
        return None, f"RAPL not readable: {e}"


# ----------------------------------------------------------------------------- the meter


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class EnergyMeter:
    """Measure the energy of the work inside ``with EnergyMeter(device) as m: ...``.

    After the block, ``m.reading`` is an :class:`EnergyReading`. Idle power is measured once
    per meter (``idle_seconds`` of sleep on the same counter) before the first region, unless
    ``idle_seconds=0``. The same meter can be entered many times.
    """

    def __init__(self, device: str = "cpu", *, idle_seconds: float = 0.5, poll_seconds: float = 1.0,
                 powercap_root: str | Path = POWERCAP_ROOT, gpu_index: int = 0, nvml=None,
                 clock: Callable[[], float] = time.perf_counter):
        _checks.one_of("device", device, ("cpu", "cuda"))
        _checks.positive("idle_seconds", idle_seconds, allow_zero=True)
        self.device = device
        self.idle_seconds = idle_seconds
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.counter, self.reason = open_counter(device, powercap_root=powercap_root,
                                                 gpu_index=gpu_index, nvml=nvml)
        self.idle_watts: float | None = None
        self.idle_settle_seconds: float | None = None
        self.reading: EnergyReading | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def source(self) -> str:
        return self.counter.source if self.counter else "unavailable"

    @property
    def available(self) -> bool:
        return self.counter is not None

    def measure_idle(self, seconds: float | None = None, *, settle_seconds: float | None = None,
                     window: float | None = None, rel_tol: float = 0.01) -> float | None:
        """Average power over a quiet interval, in watts (None without a counter).

        A device that has just worked stays hot for a while (clocks, fans, leakage), so idle
        power read right after work is too high. Power is first read in windows of
        ``window`` seconds (default ``seconds``) until it stops falling: a window no more
        than ``rel_tol`` below the one before (at most ``settle_seconds``, default 10 ×
        ``seconds``). The idle power is then the average over ``seconds``. Call it before
        the first heavy work when you can."""
        if self.counter is None:
            return None
        seconds = self.idle_seconds if seconds is None else seconds
        _checks.positive("seconds", seconds)
        window = seconds if window is None else window
        settle_seconds = 10 * seconds if settle_seconds is None else settle_seconds
        _sync(self.device)
        start = self.clock()
        previous = self._power_over(window)
        while self.clock() - start < settle_seconds:
            current = self._power_over(window)
            if current >= previous * (1 - rel_tol):
                break
            previous = current
        self.idle_settle_seconds = self.clock() - start
        self.idle_watts = self._power_over(seconds)
        return self.idle_watts

    def _power_over(self, seconds: float) -> float:
        e0, t0 = self.counter.read(), self.clock()
        time.sleep(seconds)
        e1, t1 = self.counter.read(), self.clock()
        return (e1 - e0) / (t1 - t0) if t1 > t0 else float("nan")

    def _poll_loop(self):
        while not self._stop.wait(self.poll_seconds):
            self.counter.poll()

    def __enter__(self):
        if self.counter is not None and self.idle_watts is None and self.idle_seconds > 0:
            self.measure_idle()
        _sync(self.device)
        self._t0 = self.clock()
        self._e0 = self.counter.read() if self.counter else None
        self._d0 = dict(self.counter.domains()) if self.counter else {}
        if isinstance(self.counter, RaplCounter) and self.poll_seconds > 0:
            self._stop.clear()
            self._poller = threading.Thread(target=self._poll_loop, daemon=True)
            self._poller.start()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        t1 = self.clock()
        if self._poller is not None:
            self._stop.set()
            self._poller.join()
            self._poller = None
        seconds = t1 - self._t0
        if self.counter is None:
            self.reading = EnergyReading("unavailable", seconds, reason=self.reason)
        else:
            e1 = self.counter.read()
            domains = {k: v - self._d0.get(k, 0.0) for k, v in self.counter.domains().items()}
            self.reading = EnergyReading(self.counter.source, seconds, joules=e1 - self._e0,
                                         idle_watts=self.idle_watts, domains=domains)
        return False

    def close(self) -> None:
        if self.counter is not None:
            self.counter.close()


# ----------------------------------------------------------------------------- movement vs arithmetic


@dataclass(frozen=True)
class Kernel:
    """A unit of work to meter: ``fn()`` does ``flops`` floating-point operations and moves
    at least ``bytes`` bytes to and from memory per call."""

    name: str
    fn: Callable[[], object]
    flops: float
    bytes: float


def copy_kernel(device: str, nbytes: int) -> Kernel:
    """``dst.copy_(src)`` on buffers of ``nbytes`` (size them past the last-level cache): it
    reads and writes every byte once and does no arithmetic."""
    import torch

    src = torch.empty(max(1, nbytes // 4), device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    return Kernel("copy", lambda: dst.copy_(src), 0.0, 2.0 * src.numel() * 4)


_TRITON_FMA = None


def _triton_fma():
    """The register-resident FMA loop, compiled on first use (Triton is imported lazily)."""
    global _TRITON_FMA
    if _TRITON_FMA is None:
        import triton
        import triton.language as tl

        @triton.jit
        def fma_loop(x_ptr, n, n_iter, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < n
            x = tl.load(x_ptr + offs, mask=mask, other=0.0)
            y = x + 1.0
            a = x * 0.0 + 0.999
            for _ in range(n_iter):  # two independent chains of FMAs, all in registers
                x = x * a + 0.001
                y = y * a + 0.001
            tl.store(x_ptr + offs, x + y, mask=mask)

        _TRITON_FMA = fma_loop
    return _TRITON_FMA


def fma_loop_reference(x, n_iter: int):
    """What the FMA loop computes, in plain PyTorch: two chains ``v ← 0.999 v + 0.001``
    started at ``x`` and ``x + 1``, summed. It reads and writes ``x`` once (8 bytes per
    element) and does ``4 · n_iter`` FLOP per element."""
    y = x + 1.0
    for _ in range(n_iter):
        x = x * 0.999 + 0.001
        y = y * 0.999 + 0.001
    return x + y


def run_fma_loop(x, n_iter: int, *, block: int = 1024) -> None:
    """Run the Triton FMA loop in place on ``x`` (float32, contiguous): compiled on CUDA,
    interpreted on CPU tensors when ``TRITON_INTERPRET=1`` was set before Triton loaded."""
    n = x.numel()
    _triton_fma()[(-(-n // block),)](x, n, n_iter, BLOCK=block)


def fma_kernel(device: str, *, n: int = 1 << 22, n_iter: int = 1024, block: int = 1024,
               cpu_size: int = 128) -> Kernel:
    """Arithmetic without data movement. On CUDA, a Triton loop of ``2 · n_iter`` dependent
    FMAs on each of ``n`` register-held floats (``4 n n_iter`` FLOP for ``8 n`` bytes). On a
    CPU, a ``cpu_size``-square matmul whose operands stay in the L2 cache (PyTorch offers no
    register loop there; the few bytes it moves come from the cache, never from DRAM)."""
    import torch

    if device == "cuda":
        x = torch.rand(n, device=device)
        return Kernel("fma", lambda: run_fma_loop(x, n_iter, block=block), 4.0 * n * n_iter, 8.0 * n)
    a = torch.randn(cpu_size, cpu_size)
    b = torch.randn(cpu_size, cpu_size)
    return Kernel("fma", lambda: a @ b, 2.0 * cpu_size**3, 0.0)


def gemm_kernel(device: str, m: int, n: int, *, name: str = "", dtype=None) -> Kernel:
    """``(m × n) @ (n × n)`` (float32 unless ``dtype``): a GEMV at ``m = 1``; minimal traffic
    counted (each operand read once, the result written once)."""
    import torch

    dtype = dtype or torch.float32
    x = torch.randn(m, n, device=device, dtype=dtype)
    w = torch.randn(n, n, device=device, dtype=dtype)
    s = x.element_size()
    return Kernel(name or f"gemm_m{m}", lambda: x @ w, 2.0 * m * n * n, float(s * (m * n + n * n + m * n)))


def energy_per_call(kernels: list[Kernel], meter: "EnergyMeter", *, repeats: int = 3,
                    seconds: float = 0.5, device: str = "cpu") -> dict[str, list[float]]:
    """Net picojoules per call of each kernel, ``repeats`` (≥ 2) readings each, the kernels
    interleaved: :func:`dynbook.measure.metered.metered` with one call as the unit of work
    (each reading runs an exact number of calls, sized to last about ``seconds``, inside
    ``meter`` and divides its idle-subtracted joules by that count)."""
    from dynbook.measure.metered import metered

    if not meter.available:
        raise ValueError(f"energy_per_call needs a readable counter: {meter.reason}")
    names = [k.name for k in kernels]
    if len(set(names)) != len(names):
        raise ValueError(f"energy_per_call kernel names {names} are not allowed: expected distinct names")
    got = metered({k.name: k.fn for k in kernels}, units=1.0, meter=meter, device=device,
                  readings=repeats, min_seconds=seconds)
    out = {}
    for name, m in got.items():
        if m.picojoules is None or any(v is None for v in m.picojoules):
            raise ValueError("energy_per_call needs idle power: call meter.measure_idle() first")
        out[name] = list(m.picojoules)
    return out


@dataclass(frozen=True)
class MovementModel:
    """Energy of a kernel as ``pj_per_byte · bytes + pj_per_flop · flops``, the two costs
    measured on this device with a copy kernel and an FMA kernel (:func:`fit_movement_model`)."""

    pj_per_byte: float
    pj_per_flop: float

    def predict_pj(self, flops: float, nbytes: float) -> float:
        return self.pj_per_byte * nbytes + self.pj_per_flop * flops

    def movement_share(self, flops: float, nbytes: float) -> float:
        """Fraction of the predicted energy spent moving bytes."""
        total = self.predict_pj(flops, nbytes)
        return self.pj_per_byte * nbytes / total if total else float("nan")


def fit_movement_model(copy: Kernel, copy_pj: float, fma: Kernel, fma_pj: float) -> MovementModel:
    """Solve the two kernels' energies for the two costs: ``[B F] [e_B e_F]ᵀ = E`` per kernel
    (the copy has no FLOPs, the FMA loop almost no bytes, so the system is well conditioned)."""
    import numpy as np

    a = np.array([[copy.bytes, copy.flops], [fma.bytes, fma.flops]], dtype=float)
    if abs(np.linalg.det(a)) <= 1e-12 * abs(a).max() ** 2:
        raise ValueError("fit_movement_model: the copy and FMA kernels must differ in bytes per FLOP")
    e_b, e_f = np.linalg.solve(a, np.array([copy_pj, fma_pj], dtype=float))
    return MovementModel(float(e_b), float(e_f))


def over_repeats(samples) -> "object":
    """Mean and Student-t interval of repeated readings (a :class:`dynbook.book.stats.Estimate`)."""
    from dataclasses import replace

    from dynbook.book.stats import over_seeds

    est = over_seeds(samples)
    return replace(est, method=est.method.replace("seeds", "interleaved repeats"))


def movement_study(per_call: dict[str, list[float]], kernels: dict[str, Kernel], *,
                   target: str, control: str) -> dict:
    """Per repeat, fit the two-cost model from ``copy`` and ``fma`` and use it on the
    ``target`` kernel (a GEMV) and on the ``control`` kernel (a large-batch GEMM). Returns
    per-repeat lists: ``share`` and ``control_share`` (movement's fraction of the predicted
    energy), ``measured_over_model`` (measured ÷ predicted energy of the target) and
    ``measured_over_arithmetic`` (measured ÷ the arithmetic-only prediction), and the
    per-repeat ``pj_per_byte`` and ``pj_per_flop``."""
    out = {k: [] for k in ("share", "control_share", "measured_over_model", "measured_over_arithmetic",
                           "pj_per_byte", "pj_per_flop")}
    t, c = kernels[target], kernels[control]
    for i in range(len(per_call["copy"])):
        model = fit_movement_model(kernels["copy"], per_call["copy"][i], kernels["fma"], per_call["fma"][i])
        out["pj_per_byte"].append(model.pj_per_byte)
        out["pj_per_flop"].append(model.pj_per_flop)
        out["share"].append(model.movement_share(t.flops, t.bytes))
        out["control_share"].append(model.movement_share(c.flops, c.bytes))
        # a cost at or below zero (a counter too coarse for the work) leaves a ratio undefined:
        # NaN or infinity, which over_repeats refuses, so no verdict rests on it
        predicted = model.predict_pj(t.flops, t.bytes)
        out["measured_over_model"].append(per_call[target][i] / predicted if predicted > 0 else float("nan"))
        arithmetic = model.pj_per_flop * t.flops
        out["measured_over_arithmetic"].append(per_call[target][i] / arithmetic if arithmetic > 0 else float("inf"))
    return out


# ----------------------------------------------------------------------------- Horowitz model

#: Energy per operation at 45 nm, 0.9 V (Horowitz, ISSCC 2014), in picojoules.
HOROWITZ_45NM_PJ = {
    "fp32_add": 0.9,
    "fp32_mult": 3.7,
    "fp16_add": 0.4,
    "fp16_mult": 1.1,
    "int8_add": 0.03,
    "int8_mult": 0.2,
    "int32_add": 0.1,
    "int32_mult": 3.1,
    "sram_read_64bit_8kb": 10.0,
    "sram_read_64bit_1mb": 100.0,  # the upper end of the 8 KB – 1 MB range
    "dram_read_64bit": 1300.0,  # 1.3–2.6 nJ; the optimistic end
    "dram_read_64bit_high": 2600.0,
}


@dataclass(frozen=True)
class EnergyModel:
    """Energy of a kernel from its operation and byte counts, at Horowitz's 45 nm costs."""

    flops: float
    dram_bytes: float
    sram_bytes: float = 0.0
    dtype: str = "fp32"  # "fp32" or "fp16" (bf16 is costed as fp16)

    @property
    def arithmetic_pj(self) -> float:
        kind = "fp16" if self.dtype in ("fp16", "bf16") else "fp32"
        # a fused multiply-add is two FLOPs: one multiply and one add
        per_flop = (HOROWITZ_45NM_PJ[f"{kind}_mult"] + HOROWITZ_45NM_PJ[f"{kind}_add"]) / 2
        return self.flops * per_flop

    @property
    def dram_pj(self) -> float:
        return self.dram_bytes / 8 * HOROWITZ_45NM_PJ["dram_read_64bit"]

    @property
    def sram_pj(self) -> float:
        return self.sram_bytes / 8 * HOROWITZ_45NM_PJ["sram_read_64bit_8kb"]

    @property
    def total_pj(self) -> float:
        return self.arithmetic_pj + self.dram_pj + self.sram_pj

    @property
    def movement_share(self) -> float:
        """Fraction of the modelled energy spent moving data rather than computing."""
        return (self.dram_pj + self.sram_pj) / self.total_pj if self.total_pj else 0.0

    @property
    def pj_per_flop(self) -> float:
        return self.total_pj / self.flops if self.flops else float("nan")
