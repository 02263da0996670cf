"""Parameter validation: every failure names the parameter, the value and what is allowed."""

import pytest

from dynbook.book import params as p
from dynbook.book.params import Bool, Choice, Float, Int, List, Optional, ParameterError, Str


def base(**kw):
    return {"profile": "quick", "device": "cpu", "seed": 0, **kw}


def test_valid_values_pass_and_normalise():
    out = p.validate(base(n=3, lr=1, name="x", flag="true", sizes=[1, 2]),
                     {"n": Int(1, 5), "lr": Float(0, 1), "name": Str(), "flag": Bool(), "sizes": List(Int(1, 9))})
    assert out["lr"] == 1.0 and isinstance(out["lr"], float)
    assert out["flag"] is True and out["sizes"] == [1, 2]


@pytest.mark.parametrize("name,value,schema,fragment", [
    ("seed", -1, {}, "an integer in [0, 4294967295]"),
    ("seed", "abc", {}, "wrong type"),
    ("seed", True, {}, "wrong type"),
    ("profile", "fast", {}, "one of 'quick', 'full', 'auto'"),
    ("device", "tpu", {}, "one of 'auto', 'cpu', 'cuda'"),
    ("n", 0, {"n": Int(1, 5)}, "an integer in [1, 5]"),
    ("lr", float("nan"), {"lr": Float(0, 1)}, "not finite"),
    ("lr", 0.0, {"lr": Float(0, 1, lo_open=True)}, "a number in (0, 1]"),
    ("sizes", [1, 99], {"sizes": List(Int(1, 9))}, "a list of"),
    ("sizes", "12", {"sizes": List(Int(1, 9))}, "wrong type"),
    ("mode", 1, {"mode": Choice("a", "b")}, "one of 'a', 'b'"),
    ("k", "x", {"k": Optional(Int(1, 3))}, "None or an integer in [1, 3]"),
])
def test_bad_values_name_parameter_value_and_allowed(name, value, schema, fragment):
    values = base(**{k: None for k in schema})
    values[name] = value
    with pytest.raises(ParameterError) as err:
        p.validate(values, schema)
    msg = str(err.value)
    assert f"'{name}'" in msg and repr(value) in msg and fragment in msg


def test_unknown_and_missing_names():
    with pytest.raises(ParameterError, match=r"unknown parameter 'bogus'.*allowed names are device, n, profile, seed"):
        p.validate(base(n=1, bogus=3), {"n": Int()})
    with pytest.raises(ParameterError, match=r"'n' not defined"):
        p.validate(base(), {"n": Int()})


def test_choice_does_not_confuse_bool_and_int():
    with pytest.raises(ParameterError):
        p.validate(base(x=True), {"x": Choice(1, 2)})


def test_candidate_parameters_skip_modules_functions_and_private():
    import math

    ns = {"math": math, "f": lambda: 0, "_hidden": 1, "In": [], "seed": 3, "sizes": [1], "x": None}
    assert p.candidate_parameters(ns) == {"seed": 3, "sizes": [1], "x": None}


def test_profiles_and_devices_resolve(monkeypatch):
    monkeypatch.setattr(p, "cuda_available", lambda: False)
    assert p.resolve_device("auto") == "cpu"
    assert p.resolve_profile("auto", "cpu") == "quick"
    assert p.resolve_profile("auto", "cuda") == "full"
    with pytest.raises(ParameterError, match=r"'device' = 'cuda'.*torch.cuda.is_available\(\) is False"):
        p.resolve_device("cuda")
    monkeypatch.setattr(p, "cuda_available", lambda: True)
    assert p.resolve_device("auto") == "cuda"


def test_run_pick_and_get():
    run = p.Run("x", {"profile": "quick", "device": "cpu", "seed": 1, "n": None, "m": 5}, "cpu", "full")
    assert run.pick(quick=1, full=2) == 2
    assert run.get("n", quick=1, full=2) == 2 and run.get("m", quick=1, full=2) == 5
    with pytest.raises(AttributeError):
        run.n = 3


def test_seed_everything_is_reproducible():
    import numpy as np
    import torch

    p.seed_everything(7)
    a = (torch.rand(3), np.random.rand(2))
    p.seed_everything(7)
    b = (torch.rand(3), np.random.rand(2))
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all()


def test_profile_defaults_resolve_none_and_are_declared_once():
    schema = {"n": Int(1, 100, quick=4, full=64), "sizes": List(Int(1, 9), quick=[1], full=[1, 2, 3]),
              "mode": Choice("a", "b", quick="a", full="b"), "lr": Float(0, 1)}
    values = p.validate(base(n=None, sizes=None, mode=None, lr=0.5), schema)
    assert values["n"] is None
    assert p.resolve_defaults(values, schema, "quick") == {**values, "n": 4, "sizes": [1], "mode": "a"}
    assert p.resolve_defaults(values, schema, "full")["n"] == 64
    given = p.resolve_defaults(p.validate(base(n=7, sizes=[2], mode="a", lr=0.5), schema), schema, "full")
    assert given["n"] == 7 and given["sizes"] == [2]  # a given value wins over the profile's


def test_profile_defaults_are_checked_and_named_in_errors():
    with pytest.raises(ParameterError, match="quick default"):
        Int(1, 10, quick=0, full=5)
    with pytest.raises(ValueError, match="both quick= and full="):
        Int(1, 10, quick=3)
    with pytest.raises(ParameterError) as err:
        p.validate(base(n=0), {"n": Int(1, 10, quick=2, full=8)})
    msg = str(err.value)
    assert "'n'" in msg and "quick 2, full 8" in msg and "an integer in [1, 10]" in msg
    with pytest.raises(ParameterError):  # None is not allowed without profile defaults
        p.validate(base(n=None), {"n": Int(1, 10)})


def test_run_table_shows_used_value_and_defaults():
    schema = {"n": Int(1, 100, quick=4, full=64, help="hidden width")}
    run = p.Run("x", {"profile": "quick", "device": "cpu", "seed": 0, "n": 4}, "cpu", "quick", schema)
    text = run.table().data
    assert "| `n` | `4` | an integer in [1, 100] | 4 | 64 | hidden width |" in text
