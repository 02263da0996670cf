"""dynbook.measure.metered: time and energy per unit of work, interleaved, one repeat rule."""

import pytest

from dynbook.measure import metered as mt
from dynbook.measure.energy import EnergyReading


class ScriptedMeter:
    """A meter whose readings charge each region a known energy per call (no hardware)."""

    available = True
    reason = ""

    def __init__(self, joules_per_call):
        self.joules_per_call = joules_per_call
        self.calls = 0
        self.regions = 0

    def count(self):
        self.calls += 1

    def __enter__(self):
        self.calls = 0
        return self

    def __exit__(self, *exc):
        self.regions += 1
        j = self.calls * self.joules_per_call
        self.reading = EnergyReading("scripted", seconds=1e-3 * self.calls, joules=j + 1e-3 * self.calls * 2.0,
                                     idle_watts=2.0)
        return False


def test_energy_per_unit_is_net_of_idle_and_divided_by_the_work():
    meter = ScriptedMeter(joules_per_call=3e-6)
    out = mt.metered({"a": meter.count, "b": meter.count}, units={"a": 10, "b": 30}, meter=meter,
                     readings=3, min_seconds=1e-4)
    assert set(out) == {"a", "b"} and meter.regions == 6  # 3 interleaved readings each
    assert out["a"].energy().value == pytest.approx(3e-6 / 10 * 1e12)  # pJ per unit, net of idle
    assert out["b"].energy().value == pytest.approx(1e5)
    assert mt.ratio(out["a"], out["b"], what="energy").value == pytest.approx(3.0)
    assert out["a"].gross_picojoules[0] > out["a"].picojoules[0]


def test_without_a_counter_time_is_measured_and_energy_is_none():
    import time

    out = mt.metered({"slow": lambda: time.sleep(2e-3), "fast": lambda: None}, units=2, readings=2,
                     min_seconds=0.01)
    assert out["slow"].energy() is None and "no energy meter" in out["slow"].reason
    assert out["slow"].time().value >= 1e-3 - 1e-5  # 2 ms per call over 2 units per call
    assert mt.ratio(out["slow"], out["slow"], what="energy") is None


@pytest.mark.parametrize("kw, match", [
    ({"readings": 1}, "readings=1"), ({"min_seconds": 0}, "min_seconds=0"),
    ({"units": {"a": 0}}, "units="), ({"units": -1}, "units=")])
def test_bad_arguments_are_refused_before_any_work(kw, match):
    called = []
    with pytest.raises(ValueError, match=match):
        mt.metered({"a": lambda: called.append(1)}, **kw)
    assert not called
