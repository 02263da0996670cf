"""The claims protocol: rules decide from intervals, a control that does not fail makes the
verdict inconclusive, undeclared claims are refused, and the record holds what the ledger shows."""

import json

import pytest

import dynbook
from dynbook.book import claims, cli, record as metrics
from dynbook.book.stats import Estimate, exact


@pytest.fixture
def rec(tmp_path):
    return metrics.start("test_chapter", profile="quick", device="cpu", seed=0, parameters={},
                         directory=tmp_path)


def est(lo, value, hi):
    return Estimate(value, lo, hi, "test", 3)


@pytest.mark.parametrize("interval, expected", [
    ((1.2, 1.5, 1.9), "supported"),
    ((0.9, 1.5, 1.9), "inconclusive"),       # straddles the threshold
    ((1.05, 1.1, 1.15), "inconclusive"),     # inside the band
    ((0.2, 0.5, 0.85), "not supported"),
    ((0.2, 0.5, 0.95), "inconclusive"),      # reaches into the band
])
def test_at_least_uses_the_whole_interval_and_the_band(interval, expected):
    assert dynbook.at_least(1.0, band=0.1).decide(est(*interval)) == expected


def test_at_most_mirrors_at_least():
    rule = dynbook.at_most(1.0, band=0.1)
    assert rule.decide(est(0.1, 0.5, 0.8)) == "supported"
    assert rule.decide(est(1.2, 1.5, 1.6)) == "not supported"
    assert rule.decide(est(0.5, 0.95, 1.5)) == "inconclusive"


def test_within_tolerance_and_band():
    rule = dynbook.within(1.0, tol=0.2, band=0.05)
    assert rule.decide(est(0.9, 1.0, 1.1)) == "supported"
    assert rule.decide(est(0.7, 0.8, 1.0)) == "inconclusive"
    assert rule.decide(est(1.3, 1.4, 1.5)) == "not supported"
    assert rule.decide(est(0.1, 0.4, 0.7)) == "not supported"
    with pytest.raises(ValueError, match="band"):
        dynbook.within(1.0, tol=0.1, band=0.1)


def test_missing_or_nan_is_unavailable():
    rule = dynbook.at_least(1.0)
    assert rule.decide(None) == "unavailable"
    assert rule.decide(Estimate(float("nan"), float("nan"), float("nan"))) == "unavailable"


def _claim(**kw):
    base = dict(id="C1", source="seed 000 §II", statement="more is better", quantity="ratio",
                rule=dynbook.at_least(2.0), control="the same run with the effect removed",
                says={"supported": "It holds: {value:.1f}.", "not supported": "It fails: {value:.1f}.",
                      "inconclusive": "Undecided at {value:.1f} (control {control:.1f})."})
    base.update(kw)
    return dynbook.Claim(**base)


def test_decide_records_rule_interval_control_and_sentence(rec):
    dynbook.declare(_claim(), show=False)
    assert json.loads(rec.path.read_text())["claims"]["C1"]["verdict"] is None  # declared first
    word = dynbook.decide("C1", est(2.5, 3.0, 3.5), est(0.8, 1.0, 1.2), seeds=[0, 1, 2])
    assert word == "supported"
    c = json.loads(rec.path.read_text())["claims"]["C1"]
    assert c["rule"]["kind"] == "at_least" and c["rule"]["threshold"] == 2.0
    assert c["interval"] == [2.5, 3.5] and c["seeds"] == [0, 1, 2]
    assert c["negative_control"]["verdict"] == "not supported"
    assert c["sentence"] == "It holds: 3.0."


def test_a_control_that_does_not_fail_makes_the_claim_inconclusive(rec):
    dynbook.declare(_claim(), show=False)
    word = dynbook.decide("C1", est(2.5, 3.0, 3.5), est(2.2, 2.5, 2.8))
    assert word == "inconclusive"
    c = json.loads(rec.path.read_text())["claims"]["C1"]
    assert c["negative_control"]["verdict"] == "supported"
    assert "cannot tell" in c["note"]
    assert c["sentence"] == "Undecided at 3.0 (control 2.5)."


def test_unavailable_measurement(rec):
    dynbook.declare(_claim(), show=False)
    assert dynbook.decide("C1", None, None, reason="no energy counter") == "unavailable"
    c = json.loads(rec.path.read_text())["claims"]["C1"]
    assert c["value"] is None and c["note"] == "no energy counter"


def test_undeclared_claim_and_bad_declarations_are_refused(rec):
    dynbook.declare(_claim(), show=False)
    with pytest.raises(KeyError, match="not declared"):
        dynbook.decide("C9", 1.0, 0.0)
    with pytest.raises(ValueError, match="twice"):
        dynbook.declare(_claim(), _claim(), show=False)
    with pytest.raises(ValueError, match="control is empty"):
        _claim(control=" ")
    with pytest.raises(ValueError, match="says has keys"):
        _claim(says={"yes": "x"})


def test_summary_refuses_undecided_claims(rec):
    dynbook.declare(_claim(), _claim(id="C2"), show=False)
    dynbook.decide("C1", exact(3.0), exact(1.0))
    with pytest.raises(RuntimeError, match="C2"):
        dynbook.summary()
    dynbook.decide("C2", exact(1.0), exact(0.5))
    assert "not supported" in dynbook.summary().data


@pytest.mark.parametrize("chapter", [c.slug for c in cli.chapters()])
def test_every_chapters_declared_claims_parse(chapter):
    """Each chapter of the book has its claims file, valid YAML, with every claim's source,
    statement, quantity, one rule, a negative control and a sentence per outcome; a YAML slip
    (an unquoted ": " in a text) fails here, not minutes into a chapter run."""
    import yaml

    from dynbook.book.claims import declared_path

    path = declared_path(chapter)
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data, f"{path.name}: no claims"
    for cid, d in data.items():
        assert {"source", "statement", "quantity", "rule", "control", "says"} <= set(d), (cid, sorted(d))
        assert len({"at_least", "at_most", "within"} & set(d["rule"])) == 1, (cid, d["rule"])
        assert {"supported", "not supported", "inconclusive"} <= set(d["says"]), (cid, sorted(d["says"]))
