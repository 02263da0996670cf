"""dynbook._checks: every refusal names the parameter, the value and what is allowed."""

import math

import pytest

from dynbook import _checks as C


def test_accepted_values_come_back_normalised():
    assert C.positive_int("n", 3) == 3 and C.positive_int("n", 0, minimum=0) == 0
    assert C.positive("dt", 1) == 1.0 and C.positive("tol", 0, allow_zero=True) == 0.0
    assert C.in_range("mu", 0.5, 0, 1) == 0.5 and C.probability("p", 1) == 1.0
    assert C.one_of("method", "rk4", {"euler": 1, "rk4": 2}) == "rk4"


@pytest.mark.parametrize("call, match", [
    (lambda: C.positive_int("n_steps", 0), r"n_steps=0 is not allowed: expected an integer >= 1"),
    (lambda: C.positive_int("n_steps", 2.0), r"n_steps=2.0"),
    (lambda: C.positive_int("n_steps", True), r"n_steps=True"),
    (lambda: C.positive("dt", -1e-3), r"dt=-0.001 is not allowed: expected a finite number > 0"),
    (lambda: C.positive("dt", math.nan), r"dt=nan"),
    (lambda: C.in_range("mu", 1.0, 0, 1, closed=False), r"mu=1.0 is not allowed: expected a number in \(0, 1\)"),
    (lambda: C.probability("p", 1.5), r"p=1.5 is not allowed: expected a number in \[0, 1\]"),
    (lambda: C.one_of("method", "rk5", ("euler", "rk4")), r"method='rk5' is not allowed: expected one of 'euler', 'rk4'"),
])
def test_refusals_name_parameter_value_and_allowed(call, match):
    with pytest.raises(ValueError, match=match):
        call()
