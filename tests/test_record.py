"""record / check / verdict write the chapter's JSON; setup validates before any work."""

import json

import pytest
import torch

import dynbook
from dynbook.book import record as metrics


@pytest.fixture
def run(tmp_path):
    metrics.start("99_test", profile="quick", device="cpu", seed=1, parameters={"a": 1}, directory=tmp_path)
    return tmp_path / "99_test.json"


def test_record_writes_json_with_provenance(run):
    dynbook.record("x_value", torch.tensor(2.5), unit="s", claim="C1", labels={"M": 1})
    dynbook.record("missing", None, claim="C2")
    data = json.loads(run.read_text())
    assert data["metrics"]["x_value"] == {"value": 2.5, "unit": "s", "claim": "C1", "labels": {"M": 1}}
    assert data["metrics"]["missing"]["value"] is None
    for key in ("profile", "device", "seed", "parameters", "versions", "hardware", "commit", "wall_seconds"):
        assert key in data
    assert data["versions"]["torch"] == torch.__version__


def test_record_rejects_names_that_cannot_be_glue_keys(run):
    with pytest.raises(ValueError, match="letters, digits and '_'"):
        dynbook.record("bad name", 1)


def test_check_raises_when_false_and_records_both(run):
    dynbook.check("K1", "one is one", 1 == 1)
    with pytest.raises(dynbook.ClaimFailed, match="K2: two is three"):
        dynbook.check("K2", "two is three", 2 == 3, detail="it is not")
    checks = json.loads(run.read_text())["checks"]
    assert checks["K1"]["passed"] is True and checks["K2"]["passed"] is False


def test_the_old_verdict_api_is_gone():
    """Verdicts come only from declared claims (dynbook.declare / dynbook.decide)."""
    assert not hasattr(dynbook, "verdict")


def test_nonfinite_values_are_json_safe(run):
    dynbook.record("nan_value", float("nan"))
    dynbook.record("inf_value", float("inf"))
    data = json.loads(run.read_text())
    assert data["metrics"]["nan_value"]["value"] is None
    assert data["metrics"]["inf_value"]["value"] == "inf"


def test_setup_rejects_unknown_and_bad_parameters_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(dynbook, "_setup_calls", 0)
    ns = {"profile": "quick", "device": "cpu", "seed": 0, "bogus": 1}
    with pytest.raises(dynbook.ParameterError, match="unknown parameter 'bogus'"):
        dynbook.setup("99_test", ns, {}, metrics_dir=str(tmp_path))
    assert not (tmp_path / "99_test.json").exists()
    ns = {"profile": "quick", "device": "cpu", "seed": 0, "n": 0}
    with pytest.raises(dynbook.ParameterError, match=r"'n' = 0 \(int\).*\[1, 8\]"):
        dynbook.setup("99_test", ns, {"n": dynbook.book.params.Int(1, 8)}, metrics_dir=str(tmp_path))


@pytest.mark.parametrize("cpu_only", [False, True])
def test_a_cpu_only_chapter_records_the_cpu_even_where_cuda_is_available(tmp_path, monkeypatch, cpu_only):
    """On a GPU machine ('auto' resolves to CUDA), a chapter that declares cpu_only runs and
    records device 'cpu' and the quick profile; any other chapter takes CUDA and 'full'."""
    monkeypatch.setattr(dynbook, "_setup_calls", 0)
    monkeypatch.setattr(dynbook.book.params, "cuda_available", lambda: True)
    monkeypatch.setattr(dynbook.book.environment, "hardware", lambda device="cpu": {
        "cpu": "test", "torch_threads": 1, **({"gpu": "test GPU"} if device == "cuda" else {})})
    run = dynbook.setup("99_test", {"profile": "auto", "device": "auto", "seed": 0}, {}, cpu_only=cpu_only,
                        metrics_dir=str(tmp_path))
    want = ("cpu", "quick") if cpu_only else ("cuda", "full")
    assert (run.device, run.profile) == want
    rec = json.loads((tmp_path / "99_test.json").read_text())
    assert (rec["device"], rec["profile"]) == want and ("gpu" in rec["hardware"]) is not cpu_only


def test_setup_returns_resolved_run(tmp_path, monkeypatch):
    monkeypatch.setattr(dynbook, "_setup_calls", 0)
    run = dynbook.setup("99_test", {"profile": "auto", "device": "cpu", "seed": 5, "n": None},
                        {"n": dynbook.book.params.Optional(dynbook.book.params.Int(1, 8))}, metrics_dir=str(tmp_path))
    assert run.profile == "quick" and run.device == "cpu" and run.seed == 5
    assert run.get("n", quick=2, full=8) == 2
    assert json.loads((tmp_path / "99_test.json").read_text())["profile"] == "quick"
