"""environment.yml describes the same environment as pyproject.toml and the Makefile."""

import re
import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

import yaml

from dynbook.book import cli

ROOT = cli.book_root()


def norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(map(norm, project["dependencies"]))
    for extra in project["optional-dependencies"].values():
        wanted |= set(map(norm, extra))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {norm(p) for p in pip if not p.startswith("-e")}
    torch_pin = re.search(r"TORCH_SPEC \?= (\S+)", (ROOT / "Makefile").read_text()).group(1)
    assert norm(torch_pin) in listed, "environment.yml must pin torch as the Makefile does"
    listed.discard(norm(torch_pin))
    wanted = {w for w in wanted if not w.startswith("torch>=")}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    assert "-e ." in pip
