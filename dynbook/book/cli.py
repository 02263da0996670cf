"""Command line: ``dynbook list``, ``dynbook run CHAPTER``, ``dynbook book``.

``run`` executes a chapter notebook with papermill (the same engine ``python -m papermill``
uses) and writes ``<out>/executed/<slug>.ipynb`` and ``<out>/metrics/<slug>.json``; a failing
chapter exits non-zero and names the failing cell. ``book`` runs every chapter of ``_toc.yml``
and builds the HTML with Jupyter Book over the executed copies.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dynbook.book import environment


class CliError(Exception):
    """A user error: printed without a traceback, exit status 2."""


# ----------------------------------------------------------------------------- chapters


@dataclass(frozen=True)
class Chapter:
    number: int
    slug: str  # e.g. "01_matrix_limits"
    source: Path  # notebooks/01_matrix_limits.md (jupytext MyST)
    notebook: Path  # notebooks/01_matrix_limits.ipynb (what papermill runs)

    @property
    def title(self) -> str:
        for line in self.source.read_text().splitlines():
            if line.startswith("# "):
                return line[2:].strip()
        return self.slug


def book_root() -> Path:
    root = environment.find_root()
    if root is None:
        raise CliError("not inside the dynbook book (no _toc.yml with a dynbook/ folder beside it "
                       "found above the current directory); cd into the repository or set DYNBOOK_ROOT")
    return root


def toc_files(root: Path) -> list[str]:
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def chapters(root: Path | None = None) -> list[Chapter]:
    """The chapters listed in ``_toc.yml``, in book order."""
    root = root or book_root()
    out = []
    for f in toc_files(root):
        m = re.fullmatch(r"notebooks/((\d+)_\w+)", f)
        if m:
            slug = m.group(1)
            out.append(Chapter(int(m.group(2)), slug, root / f"{f}.md", root / f"{f}.ipynb"))
    return out


def find_chapter(name: str, root: Path | None = None) -> Chapter:
    """A chapter by number (``1``, ``01``), slug (``01_matrix_limits``) or topic (``matrix_limits``)."""
    path = Path(name)
    m = re.fullmatch(r"(\d+)_\w+", path.stem)
    if path.suffix in (".ipynb", ".md") and path.exists() and m:
        # a notebook not (yet) in _toc.yml, given by path: useful while writing a chapter
        nb = path.with_suffix(".ipynb").resolve()
        return Chapter(int(m.group(1)), path.stem, nb.with_suffix(".md"), nb)
    known = chapters(root)
    key = str(name).strip().removesuffix(".ipynb").removesuffix(".md").split("/")[-1]
    for ch in known:
        if key.isdigit() and int(key) == ch.number or key in (ch.slug, ch.slug.split("_", 1)[1]):
            return ch
    listing = ", ".join(f"{c.number} ({c.slug})" for c in known)
    raise CliError(f"unknown chapter {name!r}: known chapters are {listing}")


# ----------------------------------------------------------------------------- parameters


def parse_assignment(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` → (name, value); VALUE is a Python literal if it parses as one
    (``3``, ``1e-3``, ``[1, 2]``, ``True``, ``None``), else a string."""
    if "=" not in text:
        raise CliError(f"parameter {text!r} is not NAME=VALUE")
    name, raw = text.split("=", 1)
    name = name.strip()
    if not name.isidentifier():
        raise CliError(f"parameter name {name!r} is not a valid identifier")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw
    return name, value


def notebook_parameters(notebook: Path) -> dict:
    """Names and defaults of the notebook's ``parameters`` cell (papermill's own inspection)."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def check_names(chapter: Chapter, params: dict) -> None:
    """Fail before starting a kernel if a parameter name is not in the parameters cell."""
    known = notebook_parameters(chapter.notebook)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise CliError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for chapter {chapter.slug}: allowed names are {', '.join(sorted(known))}"
        )


# ----------------------------------------------------------------------------- running


def kernel_env(root: Path, out: Path) -> dict:
    """Environment for the chapter kernel: where to write metrics, which commit is running,
    and prefer this environment's kernelspec over a user-level one."""
    return {
        "DYNBOOK_ROOT": str(root),
        "DYNBOOK_METRICS_DIR": str(out / "metrics"),
        "DYNBOOK_COMMIT": environment.git_describe(root),
        "JUPYTER_PREFER_ENV_PATH": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }


def run_chapter(chapter: Chapter, params: dict, *, out: Path, progress: bool = True) -> Path:
    """Execute one chapter with papermill; return the executed notebook's path.

    Raises :class:`ChapterFailed` naming the failing cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    check_names(chapter, params)
    root = chapter.notebook.parent.parent
    executed = out / "executed" / f"{chapter.slug}.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    saved = dict(os.environ)
    os.environ.update(kernel_env(root, out))
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(chapter.notebook), str(executed), parameters=params, progress_bar=progress,
            cwd=str(chapter.notebook.parent), kernel_name="python3", language="python",
        )
    except PapermillExecutionError as e:
        raise ChapterFailed(
            f"chapter {chapter.slug} failed in cell {e.cell_index} (execution count {e.exec_count}): "
            f"{e.ename}: {e.evalue}\n  executed notebook with the traceback: {executed}"
        ) from None
    finally:
        os.environ.clear()
        os.environ.update(saved)
    print(f"{chapter.slug}: executed in {time.perf_counter() - t0:.1f} s → {executed}", file=sys.stderr)
    return executed


class ChapterFailed(Exception):
    """A chapter raised during execution; the message names the cell."""


# ----------------------------------------------------------------------------- the book


LEDGER_MARK = "<!-- claims ledger: generated by `dynbook book` -->"


def claims_ledger(metrics: list[dict], titles: dict | None = None) -> str:
    """Markdown tables of every chapter's claims and verdicts, from the metrics files
    (``titles``: chapter slug → heading): the declared rule, the value with its interval, the
    negative control's outcome and the verdict."""
    from dynbook.book.claims import _fmt

    lines = []
    for m in metrics:
        heading = (titles or {}).get(m["chapter"], m["chapter"])
        lines += [f"## {heading}", "",
                  f"Profile `{m['profile']}` on `{m['device']}` "
                  f"({m['hardware'].get('gpu') or m['hardware']['cpu']}), seed {m['seed']}, "
                  f"commit `{m['commit']}`.", "",
                  "| claim | statement (source) | rule: supported when | this run [interval] "
                  "| negative control | verdict |", "|---|---|---|---|---|---|"]
        for cid, c in m["claims"].items():
            ctrl = c.get("negative_control") or {}
            row = [cid, f"{c['statement']} ({c.get('source', '')})",
                   f"{c.get('quantity', '')} {(c.get('rule') or {}).get('text', '')}",
                   _fmt(c.get("value"), c.get("interval")),
                   f"{ctrl.get('case', '')}: {_fmt(ctrl.get('value'), ctrl.get('interval'))} → "
                   f"{ctrl.get('verdict', '')}" if ctrl else "—",
                   f"**{c['verdict']}**"]
            lines.append("| " + " | ".join(str(x).replace("|", "\\|").replace("\n", " ") for x in row) + " |")
        checks = m["checks"]
        lines += ["", f"Executable checks: {sum(c['passed'] for c in checks.values())} of {len(checks)} passed.", ""]
    return "\n".join(lines)


def stage_book(root: Path, executed_dir: Path, metrics_dir: Path, stage: Path) -> Path:
    """Copy the book's configuration and pages to ``stage``, the chapters as executed
    notebooks (no Markdown twins, so each page has one source: the executed ``.ipynb``)."""
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, stage / name)
    shutil.copytree(root / "book", stage / "book")
    (stage / "notebooks").mkdir()
    metrics, titles = [], {}
    for ch in chapters(root):
        titles[ch.slug] = f"{ch.number}. {ch.title}"
        src = executed_dir / f"{ch.slug}.ipynb"
        if not src.exists():
            raise CliError(f"chapter {ch.slug} has no executed notebook at {src}: run `dynbook run {ch.number}`")
        _copy_hiding_injected_parameters(src, stage / "notebooks" / src.name)
        mpath = metrics_dir / f"{ch.slug}.json"
        if mpath.exists():
            metrics.append(json.loads(mpath.read_text()))
    claims = stage / "book" / "claims.md"
    text = claims.read_text()
    if LEDGER_MARK in text:
        claims.write_text(text.replace(LEDGER_MARK, claims_ledger(metrics, titles)))
    return stage


def _copy_hiding_injected_parameters(src: Path, dst: Path) -> None:
    """Copy an executed chapter; the cell papermill injected with the run's parameters gets
    ``hide-input`` like the parameters cell it overrides (the page shows the rendered
    parameter table instead)."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            cell.metadata["tags"] = [*tags, "hide-input"]
    nbformat.write(nb, dst)


def build_html(stage: Path, out: Path) -> Path:
    """Jupyter Book 1.x over the staged book, warnings as errors; returns index.html."""
    jb = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which("jupyter-book")
    if jb is None:
        raise CliError("jupyter-book is not installed: `pip install -e '.[book]'` (or `make book`)")
    work = out / "jupyter-book"
    cmd = [jb, "build", str(stage), "--path-output", str(work), "-W", "-n", "--keep-going"]
    print("$ " + " ".join(cmd), file=sys.stderr)
    # Sphinx's warnings go to stderr as they come; jupyter-book's stdout ends by naming the
    # folder it built into, which is moved below, so it is shown only if the build fails.
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    built = work / "_build" / "html"
    if proc.returncode != 0 or not (built / "index.html").exists():
        print(proc.stdout, file=sys.stderr)
        raise ChapterFailed(f"jupyter-book build failed (exit {proc.returncode}); see the warnings above")
    html = out / "html"
    if html.exists():
        shutil.rmtree(html)
    shutil.move(str(built), str(html))
    return html / "index.html"


def save_results(root: Path, metrics_dir: Path, chs: list[Chapter]) -> Path:
    """Copy the chapters' metrics to ``results/<hardware>/``: the reference results of a run
    on named hardware (each file carries its own provenance: commit, versions, date)."""
    dest = None
    for ch in chs:
        data = json.loads((metrics_dir / f"{ch.slug}.json").read_text())
        dest = root / "results" / environment.hardware_slug(data["hardware"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(metrics_dir / f"{ch.slug}.json", dest / f"{ch.slug}.json")
        print(f"saved {dest / (ch.slug + '.json')}", file=sys.stderr)
    return dest


# ----------------------------------------------------------------------------- main


def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="set a parameter of the chapter's parameters cell (repeatable)")
    from dynbook.book.params import DEVICES, PROFILES

    p.add_argument("--profile", choices=PROFILES, help="shorthand for -p profile=…")
    p.add_argument("--device", choices=DEVICES, help="shorthand for -p device=…")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <book>/_build)")
    p.add_argument("--no-progress", action="store_true", help="hide papermill's progress bar")
    p.add_argument("--save-results", action="store_true",
                   help="also copy the metrics to results/<hardware>/ (for full runs on named hardware)")


def _params(args) -> dict:
    params = dict(parse_assignment(a) for a in args.param)
    if args.profile:
        params["profile"] = args.profile
    if args.device:
        params["device"] = args.device
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dynbook", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the chapters")
    run = sub.add_parser("run", help="execute one chapter with papermill")
    run.add_argument("chapter", help="number (1), slug (01_matrix_limits) or topic (matrix_limits)")
    _common_run_args(run)
    book = sub.add_parser("book", help="execute every chapter, then build the HTML book")
    _common_run_args(book)
    book.add_argument("--no-execute", action="store_true",
                      help="reuse the executed notebooks already in <out>/executed")
    args = parser.parse_args(argv)

    try:
        root = book_root()
        out = (args.out or root / "_build").resolve() if hasattr(args, "out") else None
        if args.command == "list":
            for ch in chapters(root):
                params = notebook_parameters(ch.notebook)
                names = ", ".join(params)
                print(f"{ch.number:2d}  {ch.slug:32s} {ch.title}\n    parameters: {names}")
            return 0
        params = _params(args)
        if args.command == "run":
            chapter = find_chapter(args.chapter, root)
            run_chapter(chapter, params, out=out, progress=not args.no_progress)
            print(f"metrics: {out / 'metrics'}")
            if args.save_results:
                save_results(root, out / "metrics", [chapter])
            return 0
        # book
        from tqdm import tqdm

        chs = chapters(root)
        for ch in chs:
            check_names(ch, params)  # every chapter accepts the common parameters
        if not args.no_execute:
            for ch in tqdm(chs, desc="chapters", unit="chapter", disable=args.no_progress):
                run_chapter(ch, params, out=out, progress=not args.no_progress)
        if args.save_results:
            save_results(root, out / "metrics", chs)
        stage = stage_book(root, out / "executed", out / "metrics", out / "stage")
        index = build_html(stage, out)
        print(f"\nThe book is built: {index}")
        return 0
    except CliError as e:
        print(f"dynbook: error: {e}", file=sys.stderr)
        return 2
    except ChapterFailed as e:
        print(f"dynbook: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
