"""Stand-ins shared by the tests: meters with known readings, so energy arithmetic is checked
without a hardware counter."""

import time

from dynbook.measure.energy import EnergyReading


class ConstantPowerMeter:
    """An EnergyMeter stand-in that charges ``watts`` over the wall time of each region (plus
    ``extra_joules`` per region, to tell gross from net), with zero idle power."""

    available, reason, source = True, "", "fake"

    def __init__(self, watts=10.0, *, extra_joules=0.0):
        self.watts = watts
        self.extra_joules = extra_joules
        self.reading = None

    def __enter__(self):
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        dt = time.perf_counter() - self._t0
        self.reading = EnergyReading("fake", dt, joules=self.watts * dt + self.extra_joules, idle_watts=0.0)
        return False
