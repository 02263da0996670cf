"""Energy: read real counters, or say plainly that none can be read.

``EnergyMeter`` is a context manager around a piece of work:

* on an NVIDIA GPU it reads NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
  millijoules since driver load, Volta and newer), synchronising CUDA at both edges so the
  reading covers exactly the work;
* on a CPU it reads RAPL package counters from ``/sys/class/powercap`` (``energy_uj``), handling
  the counter's wrap at ``max_energy_range_uj`` and polling so that a long region cannot wrap
  twice unseen;
* otherwise it reports ``source="unavailable"`` with the reason. It never estimates.

Idle power is measured separately (the same counter over a quiet interval) and the reading
gives both gross joules and idle-subtracted (net) joules.

The per-operation energy model of Horowitz (ISSCC 2014, 45 nm) is here too, as a model to set
beside measurements, never in place of one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
    """Sum of RAPL package zones under ``root``, unwrapped across counter overflow."""

    source = "rapl"

    def __init__(self, root: str | Path = POWERCAP_ROOT):
        root = Path(root)
        zones = []
        for zone in sorted(root.glob("*rapl:*")):
            if zone.name.count(":") != 1:  # top-level packages only: sub-zones are inside them
                continue
            energy, limit = zone / "energy_uj", zone / "max_energy_range_uj"
            try:
                int(energy.read_text())
                max_range = int(limit.read_text())
            except (OSError, ValueError):
                continue
            name = (zone / "name").read_text().strip() if (zone / "name").exists() else zone.name
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
        if device not in ("cpu", "cuda"):
            raise ValueError(f"EnergyMeter device {device!r} is not allowed: expected 'cpu' or 'cuda'")
        if idle_seconds < 0:
            raise ValueError(f"EnergyMeter idle_seconds={idle_seconds!r} is not allowed: expected >= 0")
        self.device = device
        self.idle_seconds = idle_seconds
        self.poll_seconds = poll_seconds
        self.clock = clock
        self.counter, self.reason = open_counter(device, powercap_root=powercap_root,
                                                 gpu_index=gpu_index, nvml=nvml)
        self.idle_watts: float | None = None
        self.reading: EnergyReading | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def source(self) -> str:
        return self.counter.source if self.counter else "unavailable"

    @property
    def available(self) -> bool:
        return self.counter is not None

    def measure_idle(self, seconds: float | None = None) -> float | None:
        """Average power over a quiet interval, in watts (None without a counter)."""
        if self.counter is None:
            return None
        seconds = self.idle_seconds if seconds is None else seconds
        _sync(self.device)
        e0, t0 = self.counter.read(), self.clock()
        time.sleep(seconds)
        e1, t1 = self.counter.read(), self.clock()
        self.idle_watts = (e1 - e0) / (t1 - t0) if t1 > t0 else None
        return self.idle_watts

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


def measure(fn: Callable[[], object], *, device: str = "cpu", repeat: int = 1,
            meter: EnergyMeter | None = None) -> EnergyReading:
    """Run ``fn`` ``repeat`` times inside one metered region and return the reading."""
    meter = meter or EnergyMeter(device)
    with meter:
        for _ in range(repeat):
            fn()
    return meter.reading


# ----------------------------------------------------------------------------- Horowitz model

#: Energy per operation at 45 nm, 0.9 V (Horowitz, ISSCC 2014), in picojoules.
HOROWITZ_45NM_PJ = {
    "fp32_add": 0.9,
    "fp32_mult": 3.7,
    "fp16_add": 0.4,
    "fp16_mult": 1.1,
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
