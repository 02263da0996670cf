"""Provenance: the book root, versions, hardware names and the commit that a record carries."""

import subprocess

from dynbook.book import environment


def test_find_root_walks_up_to_the_book_and_honours_the_override(tmp_path, monkeypatch):
    monkeypatch.delenv("DYNBOOK_ROOT", raising=False)
    (tmp_path / "_toc.yml").write_text("format: jb-book\n")
    (tmp_path / "dynbook").mkdir()
    deep = tmp_path / "notebooks" / "sub"
    deep.mkdir(parents=True)
    assert environment.find_root(deep) == tmp_path.resolve()
    monkeypatch.setenv("DYNBOOK_ROOT", "/some/book")
    assert str(environment.find_root(deep)) == "/some/book"


def test_versions_name_every_package_and_the_interpreter():
    v = environment.versions()
    assert v["python"].count(".") == 2
    assert set(environment.PACKAGES) <= set(v)
    assert v["torch"] and v["dynbook"]


def test_hardware_slug_is_a_folder_name():
    assert environment.hardware_slug({"gpu": "NVIDIA H100 80GB HBM3", "cpu": "x"}) == "nvidia-h100-80gb-hbm3"
    assert environment.hardware_slug({"cpu": "AMD EPYC 7B13 64-Core Processor"}) == "amd-epyc-7b13-64-core-processor"


def test_cpu_hardware_has_no_gpu_fields():
    hw = environment.hardware("cpu")
    assert hw["cpu"] and hw["cpu_count"] >= 1 and "gpu" not in hw


def test_git_describe_of_a_repository_and_of_a_plain_folder(tmp_path):
    assert environment.git_describe(tmp_path) == "unknown"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "f"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qm", "m"], check=True)
    described = environment.git_describe(tmp_path)
    assert len(described) == 12 and all(c in "0123456789abcdef" for c in described)
    (tmp_path / "f").write_text("y")
    assert environment.git_describe(tmp_path).endswith("-dirty")
