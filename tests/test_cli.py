"""The command line: listing, chapter lookup, parameter parsing and clear failures."""

import json
import subprocess
import sys

import pytest

from dynbook.book import cli

ROOT = cli.book_root()
FIRST = cli.chapters(ROOT)[0]


def test_list_shows_chapters_and_parameters(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert FIRST.slug in out and "profile" in out


@pytest.mark.parametrize("name", [str(FIRST.number), f"{FIRST.number:02d}", FIRST.slug,
                                  FIRST.slug.split("_", 1)[1], f"notebooks/{FIRST.slug}.ipynb"])
def test_find_chapter_by_number_slug_topic_or_path(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli.find_chapter(name, ROOT).slug == FIRST.slug


def test_unknown_chapter_lists_known(capsys):
    assert cli.main(["run", "99"]) == 2
    err = capsys.readouterr().err
    assert "unknown chapter '99'" in err and FIRST.slug in err


@pytest.mark.parametrize("text,expected", [("seed=3", ("seed", 3)), ("lr=1e-3", ("lr", 1e-3)),
                                           ("device=cpu", ("device", "cpu")), ("x=[1, 2]", ("x", [1, 2])),
                                           ("flag=True", ("flag", True)), ("n=None", ("n", None))])
def test_parse_assignment(text, expected):
    assert cli.parse_assignment(text) == expected


def test_malformed_assignment():
    with pytest.raises(cli.CliError, match="is not NAME=VALUE"):
        cli.parse_assignment("seed")


def test_unknown_parameter_fails_before_a_kernel_starts(capsys, tmp_path):
    assert cli.main(["run", str(FIRST.number), "-p", "bogus=1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter 'bogus'" in err and "allowed names are" in err
    assert not (tmp_path / "executed").exists()


@pytest.mark.slow
def test_bad_value_fails_in_the_validation_cell_and_names_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dynbook.book.cli", "run", str(FIRST.number), "-p", "seed=-1",
                           "--out", str(tmp_path), "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert "failed in cell" in proc.stderr and "ParameterError" in proc.stderr
    assert "'seed' = -1 (int)" in proc.stderr and "[0, 4294967295]" in proc.stderr
    data = tmp_path / "metrics" / f"{FIRST.slug}.json"
    assert not data.exists(), "nothing may be recorded before the parameters are valid"


@pytest.mark.slow
def test_plain_papermill_validates_unknown_names_too(tmp_path):
    out = tmp_path / "out.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(FIRST.notebook), str(out),
                           "-p", "bogus", "3", "--cwd", str(FIRST.notebook.parent)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "DYNBOOK_METRICS_DIR": str(tmp_path / "m")})
    assert proc.returncode != 0
    assert "unknown parameter 'bogus'" in proc.stderr + out.read_text()


def test_claims_ledger_from_metrics():
    m = {"chapter": "01_x", "profile": "quick", "device": "cpu", "commit": "abc", "seed": 3,
         "hardware": {"cpu": "Some CPU"},
         "claims": {"C1": {"statement": "a | b", "source": "seed 000 §II", "quantity": "ratio",
                           "rule": {"text": "≥ 10"}, "value": 12.0, "interval": [11.0, 13.5],
                           "negative_control": {"case": "no batching", "value": 1.0,
                                                "interval": [0.9, 1.1], "verdict": "not supported"},
                           "verdict": "supported"}},
         "checks": {"K1": {"passed": True}}}
    assert "## 01_x" in cli.claims_ledger([m])
    text = cli.claims_ledger([m], {"01_x": "1. Some title"})
    assert "## 1. Some title" in text and "**supported**" in text and "a \\| b" in text
    assert "ratio ≥ 10" in text and "12 [11, 13.5]" in text
    assert "no batching: 1 [0.9, 1.1] → not supported" in text and "seed 3" in text
    assert "1 of 1 passed" in text


@pytest.mark.slow
def test_plain_papermill_runs_a_chapter_and_results_can_be_saved(tmp_path):
    """`python -m papermill` on the committed notebook, tiny sizes; then --save-results' copy."""
    out = tmp_path / "out.ipynb"
    tiny = ["-p", "max_batch", "4", "-p", "matrix_size", "64", "-p", "mlp_width", "32",
            "-p", "train_width", "16", "-p", "profile", "quick", "-p", "device", "cpu"]
    proc = subprocess.run([sys.executable, "-m", "papermill", str(FIRST.notebook), str(out), *tiny,
                           "--cwd", str(FIRST.notebook.parent)], capture_output=True, text=True, cwd=ROOT,
                          env={**__import__("os").environ, "DYNBOOK_METRICS_DIR": str(tmp_path / "metrics")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "metrics" / f"{FIRST.slug}.json").read_text())
    assert data["parameters"]["matrix_size"] == 64 and data["metrics"]
    root = tmp_path / "book"
    dest = cli.save_results(root, tmp_path / "metrics", [FIRST])
    assert dest.parent == root / "results" and (dest / f"{FIRST.slug}.json").exists()


def test_staged_chapter_hides_the_injected_parameters_cell(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("seed = 0", metadata={"tags": ["parameters", "hide-input"]}),
        nbformat.v4.new_code_cell("seed = 1", metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("print(seed)")])
    src, dst = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    nbformat.write(nb, src)
    cli._copy_hiding_injected_parameters(src, dst)
    tags = [c.metadata.get("tags", []) for c in nbformat.read(dst, as_version=4).cells]
    assert tags == [["parameters", "hide-input"], ["injected-parameters", "hide-input"], []]
