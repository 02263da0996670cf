"""Every chapter of _toc.yml executed by papermill with profile=quick: its executable checks
pass, every claim follows the claims protocol and keeps its verdict at another seed, every
glued number in the prose is a recorded metric with the same value, a chapter run twice at the
same seed on the same machine gives the same record, chapters without timings reproduce their
committed record (tests/reference/: value for value on the CPU that recorded it, verdict for
verdict on another), and the HTML book builds from the executed copies with warnings as errors.

The chapter runs these tests need are made once, up front, as separate ``dynbook run``
processes, ``DYNBOOK_TEST_JOBS`` (default 2) at a time; a chapter that spawns worker
processes of its own runs alone, so that its timings do not compete with another chapter."""

import json
import math
import os
import re
import subprocess
import sys
import time

import nbformat
import pytest

from dynbook.book import cli
from dynbook.book.record import VERDICTS

ROOT = cli.book_root()
CHAPTERS = cli.chapters(ROOT)
BY_SLUG = {c.slug: c for c in CHAPTERS}
GLUE_REF = re.compile(r"\{glue(?::(?:text|md|any))?\}`([A-Za-z0-9_]+)(?::[^`]*)?`")

OTHER_SEED = 1
# Chapters whose claims depend on random initialisation or random data: rerun at another seed,
# a verdict may move to or from "inconclusive" but never between "supported" and "not supported".
SEED_DEPENDENT = [c.slug for c in CHAPTERS]
# Chapters whose recorded metrics contain no timing: seed 0 must give the committed record
# (tests/reference/<slug>.json), value for value.
DETERMINISTIC = [c.slug for c in CHAPTERS
                 if c.slug.endswith(("resnets_as_odes", "learning_dynamics", "cosmology_duality"))]
# Chapters that run alone: the distributed one starts worker processes and times them; the
# matrix one measures caches and memory bandwidth, which a chapter on the other core shares
# (its distinct- vs shared-weight control strayed into the band when it ran beside another);
# the SSM one times three computations of one layer against each other and a copy of the scan
# against itself, and beside another chapter the copy once came out 2.0× [0.85, 2.5] slower.
EXCLUSIVE = {c.slug for c in CHAPTERS
             if c.slug.endswith(("synchronization_energy", "matrix_limits", "state_space_models"))}
JOBS = max(1, int(os.environ.get("DYNBOOK_TEST_JOBS", "2")))

# The chapter run a second time at seed 0 (the cheapest chapter without timings): same seed,
# same machine → the same record, value for value, on whatever CPU the tests run.
REPEATED = [c.slug for c in CHAPTERS if c.slug.endswith("learning_dynamics")]

# the runs a test may need: variant → parameters beyond profile=quick, device=cpu
VARIANTS = {"seed0": {}, "other_seed": {"seed": OTHER_SEED}, "repeat": {}}


def _wanted(items) -> set:
    """(slug, variant) pairs that the selected tests of this module need."""
    need = set()
    for item in items:
        if getattr(item, "module", None) is None or item.module.__name__ != __name__:
            continue
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        slug = params["chapter"].slug if "chapter" in params else params.get("slug")
        if item.originalname == "test_book_builds_from_executed_chapters":
            need |= {(s, "seed0") for s in BY_SLUG}
        elif slug:
            need.add((slug, "seed0"))
            if item.originalname == "test_verdicts_hold_at_another_seed":
                need.add((slug, "other_seed"))
            if item.originalname == "test_same_seed_gives_the_same_record_twice":
                need.add((slug, "repeat"))
    return need


def _command(slug: str, variant: str, out) -> list:
    params = [f"--param={k}={v}" for k, v in VARIANTS[variant].items()]
    return [sys.executable, "-c", "import sys; from dynbook.book.cli import main; sys.exit(main())",
            "run", slug, "--profile", "quick", "--device", "cpu", "--no-progress",
            "--out", str(out), *params]


@pytest.fixture(scope="session")
def chapter_runs(request, tmp_path_factory):
    """{(slug, variant): output folder, or the failure message}: every run the selected tests
    need, made before the first of them."""
    base = tmp_path_factory.mktemp("runs")
    # the runs that must be alone first (nothing waits idle beside them), then seed 0 before
    # the other variants, the later (heavier) chapters before the lighter ones
    todo = sorted(_wanted(request.session.items),
                  key=lambda sv: (sv[0] not in EXCLUSIVE, list(VARIANTS).index(sv[1]), -BY_SLUG[sv[0]].number))
    results, running = {}, []

    def reap():
        for job in list(running):
            key, proc, out, log = job
            if proc.poll() is not None:
                log.close()
                text = (out / "log.txt").read_text()
                results[key] = out if proc.returncode == 0 else (
                    f"chapter {key[0]} ({key[1]} run) exited {proc.returncode}:\n{text[-4000:]}")
                running.remove(job)

    def busy(key) -> bool:
        alone = key[0] in EXCLUSIVE or any(j[0][0] in EXCLUSIVE for j in running)
        return bool(running) and (alone or len(running) >= JOBS)

    for key in todo:
        while busy(key):
            time.sleep(0.5)
            reap()
        out = base / f"{key[0]}-{key[1]}"
        out.mkdir()
        log = open(out / "log.txt", "w")
        proc = subprocess.Popen(_command(*key, out), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        running.append((key, proc, out, log))
    while running:
        time.sleep(0.5)
        reap()
    return results


def _run_dir(chapter_runs, slug: str, variant: str):
    result = chapter_runs[(slug, variant)]
    if isinstance(result, str):
        pytest.fail(result)
    return result


def execute(chapter, chapter_runs, variant: str = "seed0"):
    """The executed notebook and the record of one chapter run."""
    out = _run_dir(chapter_runs, chapter.slug, variant)
    return (nbformat.read(out / "executed" / f"{chapter.slug}.ipynb", as_version=4),
            json.loads((out / "metrics" / f"{chapter.slug}.json").read_text()))


def glue_outputs(nb) -> dict:
    out = {}
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            sb = o.get("metadata", {}).get("scrapbook")
            if sb:
                out[sb["name"]] = o["data"][sb["mime_prefix"] + "text/plain"]
    return out


@pytest.mark.chapter
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.slug)
def test_chapter_runs_quick_and_its_checks_pass(chapter, chapter_runs):
    nb, metrics = execute(chapter, chapter_runs)
    assert metrics["profile"] == "quick" and metrics["device"] == "cpu"
    assert metrics["metrics"], "a chapter that measures nothing is not done"
    assert metrics["checks"] and all(c["passed"] for c in metrics["checks"].values())
    assert metrics["claims"], "every chapter gives its claims verdicts"
    assert all(c["verdict"] in VERDICTS for c in metrics["claims"].values())


@pytest.mark.chapter
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.slug)
def test_glued_numbers_are_the_recorded_metrics(chapter, chapter_runs):
    nb, metrics = execute(chapter, chapter_runs)
    glued = glue_outputs(nb)
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    refs = set(GLUE_REF.findall(prose))
    assert refs, "the prose quotes no executed number"
    for key in sorted(refs):
        assert key in glued, f"prose quotes {key!r}, which no cell glued"
        if key.startswith("says_"):
            claim = key.removeprefix("says_")
            assert claim in metrics["claims"], f"{key} has no recorded claim"
            assert glued[key] == metrics["claims"][claim]["sentence"]
            continue
        if key.startswith("verdict_"):
            claim = key.removeprefix("verdict_")
            assert claim in metrics["claims"], f"{key} has no recorded claim"
            assert glued[key] == metrics["claims"][claim]["verdict"]
            continue
        assert key in metrics["metrics"], f"prose quotes {key!r}, which is not a recorded metric"
        value = metrics["metrics"][key]["value"]
        shown = glued[key]
        if isinstance(value, bool) or value is None or isinstance(value, str):
            assert shown == str(value), (key, shown, value)
        elif isinstance(value, (int, float)):
            assert float(shown) == pytest.approx(value, rel=1e-12), (key, shown, value)
        else:
            pytest.fail(f"{key}: glued value of type {type(value).__name__} cannot be quoted")


@pytest.mark.chapter
def test_book_builds_from_executed_chapters(chapter_runs, tmp_path):
    out_dir = tmp_path  # the seed-0 runs, gathered as `dynbook book` leaves them
    for ch in CHAPTERS:
        run = _run_dir(chapter_runs, ch.slug, "seed0")
        for d, ext in (("executed", "ipynb"), ("metrics", "json")):
            (out_dir / d).mkdir(exist_ok=True)
            (out_dir / d / f"{ch.slug}.{ext}").write_bytes((run / d / f"{ch.slug}.{ext}").read_bytes())
    stage = cli.stage_book(ROOT, out_dir / "executed", out_dir / "metrics", out_dir / "stage")
    index = cli.build_html(stage, out_dir)
    assert index.exists()
    html_dir = index.parent
    ledger = (html_dir / "book" / "claims.html").read_text()
    for ch in CHAPTERS:
        page = (html_dir / "notebooks" / f"{ch.slug}.html").read_text()
        assert "Provenance of this page" in page
        # MathJax is served from the book itself, so a saved or offline copy typesets math
        assert "_static/mathjax/tex-chtml.js" in page and "cdn.jsdelivr.net/npm/mathjax" not in page
        assert f"colab.research.google.com/github/" in page and f"notebooks/{ch.slug}.ipynb" in page
        assert f"{ch.number}. {ch.title}" in ledger


@pytest.mark.chapter
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.slug)
def test_every_claim_follows_the_protocol(chapter, chapter_runs):
    """Declared rule, a value with its interval, and a negative control measured in the run
    whose verdict is "not supported" (both "unavailable" where nothing can be measured here)."""
    _, metrics = execute(chapter, chapter_runs)
    for cid, c in metrics["claims"].items():
        where = f"{chapter.slug} {cid}"
        assert c.get("source") and c.get("quantity"), f"{where}: no source or measured quantity"
        assert c.get("rule") and c["rule"]["kind"] in ("at_least", "at_most", "within"), f"{where}: no rule"
        assert c["verdict"] in VERDICTS, f"{where}: not decided"
        control = c.get("negative_control")
        assert control and control.get("case"), f"{where}: no negative control"
        if c["verdict"] == "unavailable":
            assert c["value"] is None and c.get("note"), f"{where}: unavailable without a reason"
            continue
        lo, hi = c["interval"]
        assert lo <= c["value"] <= hi, f"{where}: value outside its interval"
        assert control["verdict"] == "not supported", (
            f"{where}: the negative control ({control['case']}) came out {control['verdict']!r}")
        assert c.get("sentence"), f"{where}: no sentence glued from the verdict"


@pytest.mark.chapter
@pytest.mark.parametrize("slug", SEED_DEPENDENT)
def test_verdicts_hold_at_another_seed(slug, chapter_runs):
    _, first = execute(BY_SLUG[slug], chapter_runs)
    _, second = execute(BY_SLUG[slug], chapter_runs, "other_seed")
    assert second["seed"] == OTHER_SEED and set(second["claims"]) == set(first["claims"])
    flips = [f"{cid}: {first['claims'][cid]['verdict']} at seed {first['seed']} → "
             f"{c['verdict']} at seed {OTHER_SEED}"
             for cid, c in second["claims"].items()
             if {c["verdict"], first["claims"][cid]["verdict"]} == {"supported", "not supported"}]
    assert not flips, "verdicts flipped with the seed: " + "; ".join(flips)
    for cid, c in second["claims"].items():
        if c["verdict"] != "unavailable":
            assert c["negative_control"]["verdict"] == "not supported", (
                f"{cid} at seed {OTHER_SEED}: negative control {c['negative_control']['verdict']!r}")


REFERENCES = ROOT / "tests" / "reference"


def _differences(got, want, where="") -> list:
    """Where two records differ: floats to 1e-9 relative, all else exactly."""
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        same = (want != want and got != got) or math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
        return [] if same else [f"{where}: {got!r} != {want!r}"]
    if isinstance(want, dict) and isinstance(got, dict):
        keys = sorted(set(want) | set(got))
        out = [f"{where}.{k}: {'missing' if k not in got else 'not in the reference'}"
               for k in keys if (k in want) != (k in got)]
        for k in keys:
            if k in want and k in got:
                out += _differences(got[k], want[k], f"{where}.{k}")
        return out
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in _differences(g, w, f"{where}[{i}]")]
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


def _outcomes(record: dict) -> dict:
    """What a record decided: each claim's verdict and its control's, each check's outcome,
    and the parameters it ran with."""
    return {"parameters": record["parameters"],
            "claims": {k: (c["verdict"], (c.get("negative_control") or {}).get("verdict"))
                       for k, c in record["claims"].items()},
            "checks": {k: c["passed"] for k, c in record["checks"].items()}}


def machine(record: dict) -> dict:
    """The machine a record's last bits depend on: CPU model and identity (family, model,
    stepping, feature flags: a VM may call two CPU generations "AMD EPYC"), its vector ISA as
    torch dispatches it, the versions of torch, numpy and scipy (numpy's wheel brings its own
    OpenBLAS) and torch's thread count."""
    hw, v = record["hardware"], record["versions"]
    return {"cpu": hw["cpu"], "cpu_id": hw.get("cpu_id"), "cpu_capability": hw.get("cpu_capability"),
            "torch": v["torch"], "numpy": v.get("numpy"), "scipy": v.get("scipy"), "torch_threads": hw["torch_threads"]}


KEPT = ("parameters", "metrics", "checks", "claims")


@pytest.mark.chapter
@pytest.mark.parametrize("slug", REPEATED)
def test_same_seed_gives_the_same_record_twice(slug, chapter_runs):
    """The book's reproducibility standard: the same seed on the same CPU gives the same
    recorded metrics. Two runs of a chapter without timings, on this machine, value for value."""
    _, first = execute(BY_SLUG[slug], chapter_runs)
    _, second = execute(BY_SLUG[slug], chapter_runs, "repeat")
    diffs = _differences({k: second[k] for k in KEPT}, {k: first[k] for k in KEPT})
    assert not diffs, f"{slug}: two runs at seed 0 differ in {len(diffs)} places: " + "; ".join(diffs[:12])


@pytest.mark.chapter
@pytest.mark.parametrize("slug", DETERMINISTIC)
def test_same_seed_gives_the_committed_record(slug, chapter_runs):
    """A chapter whose record holds no timing reproduces, at seed 0, the record committed in
    tests/reference/ (a refactor that changes a result is caught): value for value on a machine
    like the one that recorded it (``recorded_on``: CPU model and identity, vector ISA, torch,
    threads);
    on another, its last bits differ and the training dynamics some claims follow amplify them
    (a CPU change moved a fitted spread by 4 %), so there every claim's verdict, every
    control's verdict and every check's outcome must be the reference's. When a change of
    results is intended, rewrite the reference with ``DYNBOOK_UPDATE_REFERENCE=1 pytest
    tests/test_chapters.py -k committed_record`` and commit it with the reason."""
    _, got = execute(BY_SLUG[slug], chapter_runs)
    kept = {k: got[k] for k in KEPT}
    path = REFERENCES / f"{slug}.json"
    if os.environ.get("DYNBOOK_UPDATE_REFERENCE") == "1":
        REFERENCES.mkdir(exist_ok=True)
        path.write_text(json.dumps({"recorded_on": machine(got), **kept}, indent=1, sort_keys=True) + "\n")
    assert path.exists(), f"no reference record {path.name}: DYNBOOK_UPDATE_REFERENCE=1 writes it"
    want = json.loads(path.read_text())
    recorded_on = want.pop("recorded_on", None)
    if recorded_on == machine(got):
        diffs = _differences(kept, want)
        what = "value for value"
    else:
        diffs = _differences(_outcomes(kept), _outcomes(want))
        what = f"in its verdicts (recorded on {recorded_on}, run on {machine(got)})"
    assert not diffs, f"{slug} at seed 0 differs from {path.name} {what} in {len(diffs)} places: " + "; ".join(diffs[:12])
