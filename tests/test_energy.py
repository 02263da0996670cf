"""EnergyMeter: RAPL with wrap, NVML through a fake library, and the explicit 'unavailable'."""

import math

import pytest

from dynbook.measure import energy
from fakes import ConstantPowerMeter
from dynbook.measure.energy import EnergyMeter, EnergyModel, RaplCounter


def make_zone(root, name, value, max_range, label="package-0"):
    z = root / name
    z.mkdir(parents=True)
    (z / "energy_uj").write_text(str(value))
    (z / "max_energy_range_uj").write_text(str(max_range))
    (z / "name").write_text(label)
    return z


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_no_counter_is_unavailable_with_reason(tmp_path):
    meter = EnergyMeter("cpu", powercap_root=tmp_path / "nothing")
    assert not meter.available and meter.source == "unavailable"
    with meter:
        sum(range(1000))
    r = meter.reading
    assert r.source == "unavailable" and r.joules is None and r.net_joules is None
    assert "RAPL not readable" in r.reason and r.per(1e9) is None
    assert "unavailable" in r.describe()


def test_rapl_reads_packages_and_skips_subzones(tmp_path):
    make_zone(tmp_path, "intel-rapl:0", 1_000_000, 2**32)
    make_zone(tmp_path, "intel-rapl:1", 5_000_000, 2**32, "package-1")
    make_zone(tmp_path, "intel-rapl:0:0", 7, 2**32, "core")  # inside package 0: not summed
    c = RaplCounter(tmp_path)
    assert [z[0] for z in c.zones] == ["intel-rapl:0:package-0", "intel-rapl:1:package-1"]
    assert c.read() == 0.0
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text(str(3_000_000))
    assert c.read() == pytest.approx(2.0)


def test_rapl_counter_wrap(tmp_path):
    zone = make_zone(tmp_path, "intel-rapl:0", 999_000_000, 1_000_000_000)
    clock = FakeClock()
    meter = EnergyMeter("cpu", powercap_root=tmp_path, idle_seconds=0, poll_seconds=0, clock=clock)
    with meter:
        # the counter passes max_energy_range_uj and restarts: 999 J → wrap → 2 J is 3 J used
        (zone / "energy_uj").write_text(str(2_000_000))
        clock.t = 1.5
    r = meter.reading
    assert r.source == "rapl" and r.joules == pytest.approx(3.0) and r.seconds == pytest.approx(1.5)
    assert r.watts == pytest.approx(2.0)
    assert r.idle_watts is None and r.net_joules is None  # idle not measured → no net figure


def test_idle_power_is_subtracted(tmp_path, monkeypatch):
    zone = make_zone(tmp_path, "intel-rapl:0", 0, 2**32)
    clock = FakeClock()

    def fake_sleep(s):  # 10 W of idle power while the meter sleeps
        clock.t += s
        zone.joinpath("energy_uj").write_text(str(int(zone.joinpath("energy_uj").read_text()) + int(10e6 * s)))

    monkeypatch.setattr(energy.time, "sleep", fake_sleep)
    meter = EnergyMeter("cpu", powercap_root=tmp_path, idle_seconds=0.5, poll_seconds=0, clock=clock)
    with meter:
        zone.joinpath("energy_uj").write_text(str(int(zone.joinpath("energy_uj").read_text()) + 50_000_000))
        clock.t += 2.0
    r = meter.reading
    assert meter.idle_watts == pytest.approx(10.0)
    assert r.joules == pytest.approx(50.0) and r.net_joules == pytest.approx(30.0)
    assert r.per(30e12) == pytest.approx(1.0)  # 30 J over 3e13 operations = 1 pJ each


class FakeNvml:
    """Stands in for pynvml: the total-energy counter in millijoules."""

    def __init__(self, supported=True):
        self.mj = 1_000_000
        self.supported = supported
        self.shutdowns = 0

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"gpu{i}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.supported:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return self.mj


def test_nvml_counter_reads_millijoules(monkeypatch):
    fake = FakeNvml()
    monkeypatch.setattr(energy, "_sync", lambda device: None)
    clock = FakeClock()
    meter = EnergyMeter("cuda", nvml=fake, idle_seconds=0, clock=clock)
    assert meter.source == "nvml"
    with meter:
        fake.mj += 250_000
        clock.t = 1.0
    assert meter.reading.joules == pytest.approx(250.0)
    meter.close()
    assert fake.shutdowns == 1


def test_nvml_unsupported_is_unavailable(monkeypatch):
    monkeypatch.setattr(energy, "_sync", lambda device: None)
    meter = EnergyMeter("cuda", nvml=FakeNvml(supported=False))
    assert not meter.available and "NVML energy counter not readable" in meter.reason
    with meter:
        pass
    assert meter.reading.joules is None


def test_bad_meter_arguments():
    with pytest.raises(ValueError, match="device='tpu' is not allowed"):
        EnergyMeter("tpu")
    with pytest.raises(ValueError, match="idle_seconds=-1"):
        EnergyMeter("cpu", idle_seconds=-1)


def test_horowitz_model_arithmetic():
    m = EnergyModel(flops=2, dram_bytes=8)
    assert m.arithmetic_pj == pytest.approx(3.7 + 0.9)  # one multiply + one add
    assert m.dram_pj == pytest.approx(1300.0)  # one 64-bit DRAM read
    assert m.movement_share == pytest.approx(1300 / 1304.6)
    assert EnergyModel(flops=2, dram_bytes=0, dtype="bf16").arithmetic_pj == pytest.approx(1.5)


@pytest.mark.gpu
def test_nvml_on_a_real_gpu(cuda_only):
    import torch

    meter = EnergyMeter("cuda", idle_seconds=0.2)
    assert meter.available, meter.reason
    x = torch.randn(4096, 4096, device="cuda")
    with meter:
        for _ in range(50):
            x @ x
    assert meter.reading.joules > 0 and meter.reading.seconds > 0


# ----------------------------------------------------------------------------- RAPL zones


def test_rapl_sums_packages_and_dram_not_psys_core_or_mmio(tmp_path):
    make_zone(tmp_path, "intel-rapl:0", 0, 2**32, "package-0")
    make_zone(tmp_path, "intel-rapl:0:0", 0, 2**32, "core")
    make_zone(tmp_path, "intel-rapl:0:1", 0, 2**32, "dram")
    make_zone(tmp_path, "intel-rapl:1", 0, 2**32, "psys")  # the platform: contains package-0
    make_zone(tmp_path, "intel-rapl-mmio:0", 0, 2**32, "package-0")  # the same counter again
    c = RaplCounter(tmp_path)
    assert [z[0] for z in c.zones] == ["intel-rapl:0:package-0", "intel-rapl:0:1:dram"]
    for zone, uj in [("intel-rapl:0", 4_000_000), ("intel-rapl:0:0", 3_000_000),
                     ("intel-rapl:0:1", 1_000_000), ("intel-rapl:1", 9_000_000), ("intel-rapl-mmio:0", 4_000_000)]:
        (tmp_path / zone / "energy_uj").write_text(str(uj))
    assert c.read() == pytest.approx(5.0)  # package 4 J + DRAM 1 J; not core, psys or mmio
    assert c.domains() == {"intel-rapl:0:package-0": pytest.approx(4.0), "intel-rapl:0:1:dram": pytest.approx(1.0)}


def test_rapl_falls_back_to_psys_alone(tmp_path):
    make_zone(tmp_path, "intel-rapl:1", 0, 2**32, "psys")
    assert [n for _, n in energy.rapl_zones(tmp_path)] == ["psys"]


# ----------------------------------------------------------------------------- idle power


class CoolingZone:
    """A RAPL zone whose power decays from ``hot`` to ``idle`` watts with time constant ``tau``."""

    def __init__(self, root, clock, hot=60.0, idle=10.0, tau=2.0):
        self.zone = make_zone(root, "intel-rapl:0", 0, 2**40)
        self.clock, self.hot, self.idle, self.tau = clock, hot, idle, tau
        self.uj = 0.0

    def sleep(self, s):
        import math

        t0, t1 = self.clock.t, self.clock.t + s
        excess = (self.hot - self.idle) * self.tau * (math.exp(-t0 / self.tau) - math.exp(-t1 / self.tau))
        self.uj += 1e6 * (self.idle * s + excess)
        self.clock.t = t1
        (self.zone / "energy_uj").write_text(str(int(self.uj)))


def test_idle_power_waits_for_a_hot_device_to_settle(tmp_path, monkeypatch):
    def hot_meter(root):
        clock = FakeClock()
        zone = CoolingZone(root, clock)
        monkeypatch.setattr(energy.time, "sleep", zone.sleep)
        return EnergyMeter("cpu", powercap_root=root, idle_seconds=0.5, poll_seconds=0, clock=clock)

    # read at once, the average over the first 0.5 s of a hot device is far above idle
    assert hot_meter(tmp_path / "a")._power_over(0.5) > 40
    meter = hot_meter(tmp_path / "b")
    watts = meter.measure_idle(0.5, settle_seconds=30)
    assert watts == pytest.approx(10.0, rel=0.06)
    assert meter.idle_settle_seconds > 2.0  # it waited for the power to stop falling
    with pytest.raises(ValueError, match="seconds=0"):
        meter.measure_idle(0)


# ----------------------------------------------------------------------------- movement model


class WorkMeter:
    """Stands in for an EnergyMeter: the kernels below add known picojoules to ``pj``."""

    available = True
    reason = ""

    def __init__(self):
        self.pj = 0.0
        self.reading = None

    def __enter__(self):
        self._start = self.pj
        return self

    def __exit__(self, *exc):
        from dynbook.measure.energy import EnergyReading

        self.reading = EnergyReading("fake", 1.0, joules=(self.pj - self._start) * 1e-12, idle_watts=0.0)
        return False


def fake_kernels(meter, e_byte, e_flop, extra_gemv=1.0):
    from dynbook.measure.energy import Kernel

    def work(flops, nbytes, factor=1.0):
        def fn():
            meter.pj += factor * (e_byte * nbytes + e_flop * flops)
        return fn

    n = 64
    specs = {"copy": (0.0, 2e6), "fma": (4e6, 8e2), "gemv": (2.0 * n * n, 4.0 * (n * n + 2 * n)),
             "gemm": (2.0 * 256 * n * n, 4.0 * (2 * 256 * n + n * n))}
    return {name: Kernel(name, work(f, b, extra_gemv if name == "gemv" else 1.0), f, b)
            for name, (f, b) in specs.items()}


def test_movement_study_recovers_the_two_costs_and_predicts_the_gemv():
    meter = WorkMeter()
    kernels = fake_kernels(meter, e_byte=20.0, e_flop=0.5)
    per_call = energy.energy_per_call(list(kernels.values()), meter, repeats=3, seconds=1e-4)
    assert per_call["copy"] == pytest.approx([20.0 * 2e6] * 3)
    out = energy.movement_study(per_call, kernels, target="gemv", control="gemm")
    assert out["pj_per_byte"] == pytest.approx([20.0] * 3)
    assert out["pj_per_flop"] == pytest.approx([0.5] * 3)
    gemv, gemm = kernels["gemv"], kernels["gemm"]
    share = 20.0 * gemv.bytes / (20.0 * gemv.bytes + 0.5 * gemv.flops)
    assert out["share"] == pytest.approx([share] * 3) and share > 0.9
    assert max(out["control_share"]) < share
    assert out["measured_over_model"] == pytest.approx([1.0] * 3)
    assert min(out["measured_over_arithmetic"]) > 10  # leaving out the bytes misses most of it
    est = energy.over_repeats(out["share"])
    assert "interleaved repeats" in est.method and est.n == 3


def test_movement_study_sees_a_gemv_the_model_does_not_explain():
    meter = WorkMeter()
    kernels = fake_kernels(meter, e_byte=20.0, e_flop=0.5, extra_gemv=2.0)
    per_call = energy.energy_per_call(list(kernels.values()), meter, repeats=2, seconds=1e-4)
    out = energy.movement_study(per_call, kernels, target="gemv", control="gemm")
    assert out["measured_over_model"] == pytest.approx([2.0, 2.0])


def test_movement_study_leaves_ratios_undefined_when_a_counter_reads_nothing():
    meter = WorkMeter()
    kernels = fake_kernels(meter, e_byte=0.0, e_flop=0.0)
    per_call = energy.energy_per_call(list(kernels.values()), meter, repeats=2, seconds=1e-4)
    out = energy.movement_study(per_call, kernels, target="gemv", control="gemm")
    assert all(math.isnan(v) for v in out["measured_over_model"])
    with pytest.raises(ValueError):
        energy.over_repeats(out["measured_over_model"])


def test_energy_per_call_needs_a_counter_and_idle_power(tmp_path):
    meter = EnergyMeter("cpu", powercap_root=tmp_path / "nothing")
    k = energy.Kernel("x", lambda: None, 1.0, 1.0)
    with pytest.raises(ValueError, match="readable counter"):
        energy.energy_per_call([k], meter)
    make_zone(tmp_path, "intel-rapl:0", 0, 2**32)
    meter = EnergyMeter("cpu", powercap_root=tmp_path, idle_seconds=0, poll_seconds=0)
    with pytest.raises(ValueError, match="idle power"):
        energy.energy_per_call([k], meter, repeats=2, seconds=1e-4)
    # one reading gives no interval: metered's repeat rule asks for two
    with pytest.raises(ValueError, match="readings=1 is not allowed"):
        energy.energy_per_call([k], WorkMeter(), repeats=1, seconds=1e-4)
    with pytest.raises(ValueError, match="expected distinct names"):
        energy.energy_per_call([k, k], WorkMeter(), repeats=2, seconds=1e-4)


def test_energy_per_call_is_metered_interleaved_with_exact_call_counts(monkeypatch):
    """energy_per_call reads through metered (one repeat rule), one call as the unit: each
    reading divides by the exact number of calls it ran."""
    from dynbook.measure import metered as metered_module

    meter = WorkMeter()

    def kernel(name, pj):
        def fn():
            meter.pj += pj
        return energy.Kernel(name, fn, 1.0, 1.0)

    seen = {}
    real = metered_module.metered

    def spy(fns, **kw):
        seen.update(kw)
        return real(fns, **kw)

    monkeypatch.setattr(metered_module, "metered", spy)
    out = energy.energy_per_call([kernel("a", 3.0), kernel("b", 5.0)], meter, repeats=3, seconds=1e-4)
    assert seen["readings"] == 3 and seen["units"] == 1.0 and seen["meter"] is meter
    assert out == {"a": pytest.approx([3.0] * 3), "b": pytest.approx([5.0] * 3)}


def test_fit_movement_model_rejects_kernels_alike():
    k = energy.Kernel("a", lambda: None, 1.0, 1.0)
    with pytest.raises(ValueError, match="differ"):
        energy.fit_movement_model(k, 1.0, k, 2.0)


def test_fma_loop_kernel_matches_its_reference():
    import torch

    x = torch.rand(1000)  # irregular: the last block is masked
    want = energy.fma_loop_reference(x.double(), 5).float()
    energy.run_fma_loop(x, 5, block=256)
    assert torch.allclose(x, want, rtol=1e-6, atol=1e-6)
    k = energy.fma_kernel("cpu", cpu_size=16)
    assert k.flops == 2 * 16**3 and k.bytes == 0
    k.fn()
    c = energy.copy_kernel("cpu", 4096)
    assert c.bytes == 8192 and c.flops == 0


def test_the_chapter_energy_path_runs_on_real_cpu_kernels():
    """The sequence of chapter 1's energy cell, on real kernels with a fake counter."""
    kernels = {"copy": energy.copy_kernel("cpu", 2**20), "fma": energy.fma_kernel("cpu", cpu_size=32),
               "gemv": energy.gemm_kernel("cpu", 1, 64, name="gemv"),
               "gemm": energy.gemm_kernel("cpu", 16, 64, name="gemm")}
    per_call = energy.energy_per_call(list(kernels.values()), ConstantPowerMeter(10.0, extra_joules=1e-3), repeats=3, seconds=0.01)
    out = energy.movement_study(per_call, kernels, target="gemv", control="gemm")
    for key in ("share", "control_share", "measured_over_model", "pj_per_byte", "pj_per_flop"):
        assert len(out[key]) == 3
    share = energy.over_repeats(out["share"])
    assert share.lo <= share.value <= share.hi and share.n == 3
