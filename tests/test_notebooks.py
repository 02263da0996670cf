"""Chapters: .md (jupytext MyST, the reviewed source) and .ipynb pairs are in sync, the
notebooks carry no outputs, and each has the parameters cell papermill needs."""

import jupytext
import nbformat
import pytest

from dynbook.book import cli

ROOT = cli.book_root()
SOURCES = sorted((ROOT / "notebooks").glob("*.md"))


def cells(nb):
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", []))) for c in nb.cells]


@pytest.mark.parametrize("md", SOURCES, ids=lambda p: p.stem)
def test_pair_in_sync_and_without_outputs(md):
    ipynb = md.with_suffix(".ipynb")
    assert ipynb.exists(), f"{md.name} has no paired notebook: jupytext --to ipynb {md}"
    committed = nbformat.read(ipynb, as_version=4)
    assert cells(committed) == cells(jupytext.read(md)), f"{ipynb.name} is out of sync: jupytext --sync {md}"
    for c in committed.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, f"{ipynb.name} has outputs: strip them"
    assert committed.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("md", SOURCES, ids=lambda p: p.stem)
def test_parameters_cell_has_common_parameters(md):
    params = cli.notebook_parameters(md.with_suffix(".ipynb"))
    assert {"profile", "device", "seed"} <= set(params)
    nb = jupytext.read(md)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    following = nb.cells[tagged[0] + 1].source
    assert "dynbook.setup(" in following, "the cell after parameters must validate them"
    assert "dynbook.provenance()" in nb.cells[-1].source


def test_every_toc_chapter_has_a_source():
    for ch in cli.chapters(ROOT):
        assert ch.source.exists() and ch.notebook.exists(), ch.slug


@pytest.mark.parametrize("md", SOURCES, ids=lambda p: p.stem)
def test_install_cell_uses_the_book_repository(md):
    """Colab installs the package from the one repository URL of _config.yml."""
    import yaml

    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    first = next(c for c in jupytext.read(md).cells if c.cell_type == "code")
    assert "remove-cell" in first.metadata.get("tags", [])
    assert "except ImportError" in first.source and f'"dynbook @ git+{url}"' in first.source


@pytest.mark.parametrize("md", SOURCES, ids=lambda p: p.stem)
def test_no_chapter_repeats_the_bibliography(md):
    """The book lists its references once (book/references.md); a chapter's own
    ``{bibliography}`` block would define every cited key a second time (-W build fails)."""
    assert "{bibliography}" not in md.read_text(), f"{md.name}: cite inline; the references page lists them"
