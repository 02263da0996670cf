"""EnergyMeter: RAPL with wrap, NVML through a fake library, and the explicit 'unavailable'."""

import pytest

from dynbook import energy
from dynbook.energy import EnergyMeter, EnergyModel, RaplCounter


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
    with pytest.raises(ValueError, match="device 'tpu' is not allowed"):
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
