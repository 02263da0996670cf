"""dynbook: the helper package of the executable book *From matrix-based to dynamical deep
learning — synchronization and energy*.

A chapter imports this package, calls :func:`setup` right after its ``parameters`` cell,
declares its claims with their decision rules and negative controls (:func:`declare`, the
claims protocol of :mod:`dynbook.book.claims`), records what it measures with :func:`record`, asserts
what must hold with :func:`check`, gives each claim its verdict from an estimate with an
interval (:func:`decide`, :mod:`dynbook.book.stats`), and ends with :func:`summary` and
:func:`provenance`.

The package is laid out as a floor plan: ``dynbook.book`` (the pipeline every chapter runs
through: parameters, record, claims, show, CLI), ``dynbook.measure`` (timing, memory, energy,
cost models, fits), ``dynbook.models`` (the systems the chapters study), ``dynbook.sync``
(distributed and asynchronous regimes), ``dynbook.kernels`` (Triton kernels beside their
PyTorch references) and ``dynbook/declared/`` (each chapter's claims, as data).

Importing ``dynbook`` touches no GPU, network or file; the subject modules load on first use.
"""

from __future__ import annotations

from typing import Any, Mapping

from dynbook.book import show, stats
from dynbook.book.params import Bool, Choice, Float, Int, List, Optional, ParameterError, Run, Str
from dynbook.book.record import ClaimFailed, check, record
from dynbook.book.claims import Claim, Rule, at_least, at_most, declare, decide, summary, within
from dynbook.book.stats import Estimate

__all__ = ["setup", "record", "check", "provenance", "ParameterError", "ClaimFailed", "Run",
           "Claim", "Rule", "at_least", "at_most", "within", "declare", "decide", "summary", "Estimate",
           "Bool", "Choice", "Float", "Int", "List", "Optional", "Str", "show", "stats"]
__version__ = "0.1.0"


def setup(chapter: str, namespace: Mapping[str, Any], schema: Mapping | None = None, *,
          cpu_only: bool = False, metrics_dir: str | None = None) -> Run:
    """Validate a chapter's parameters, seed everything and start its record.

    ``namespace`` is the notebook's ``globals()``: every plain-valued public name in it (the
    parameters cell's names and those papermill injected) must be in ``COMMON`` + ``schema``.
    Raises :class:`ParameterError` before any work if a name, type or value is not allowed.

    ``cpu_only``: the chapter computes on the CPU whatever the machine has, so its run and its
    record say ``device = 'cpu'`` (and ``profile = 'auto'`` resolves to ``quick``) even where
    CUDA was asked for or is available: a record must not call CPU timings GPU figures.
    """
    from dynbook.book import record as _record, params as _params, show as _show

    schema = dict(schema or {})
    global _setup_calls
    given = _params.candidate_parameters(namespace)
    # Re-running the cell interactively finds later cells' variables too: only the first
    # call in a kernel can tell parameters from results, so later calls ignore extras.
    first = _setup_calls == 0
    known = {**_params.COMMON, **schema}
    values = given if first else {k: v for k, v in given.items() if k in known}
    values = _params.validate(values, schema, strict=True)
    device = _params.resolve_device(values["device"])
    if cpu_only and device != "cpu":
        print(f"{chapter} computes on the CPU only: device {values['device']!r} → 'cpu'")
        device = "cpu"
    profile = _params.resolve_profile(values["profile"], device)
    values = _params.resolve_defaults(values, schema, profile)
    _params.seed_everything(values["seed"])
    _setup_calls += 1
    run = Run(chapter, values, device=device, profile=profile, schema=schema)
    rec = _record.start(chapter, profile=profile, device=device, seed=values["seed"],
                        parameters=values, directory=metrics_dir)
    _show.use_style()
    v = rec.data["versions"]
    hw = rec.data["hardware"]
    print(f"{chapter}: profile={profile} (asked {values['profile']}), device={device} "
          f"(asked {values['device']}), seed={values['seed']}")
    print(f"torch {v['torch']} (CUDA {v['cuda']}), python {v['python']}, "
          f"{hw.get('gpu') or hw['cpu']}, {hw['torch_threads']} threads")
    print(f"metrics → {rec.path}")
    return run


_setup_calls = 0


def provenance():
    """The closing note of a chapter page: commit, profile, parameters, seed, device,
    versions and wall time of the run that produced the page."""
    from IPython.display import Markdown

    from dynbook.book import record as _record

    data = _record.finish()
    v, hw = data["versions"], data["hardware"]
    params = ", ".join(f"`{k}={v!r}`" for k, v in data["parameters"].items())
    device = hw.get("gpu") or hw["cpu"]
    n_claims = len(data["claims"])
    n_checks = sum(c["passed"] for c in data["checks"].values())
    text = (
        "```{admonition} Provenance of this page\n:class: note\n"
        f"Executed from commit `{data['commit']}` on {data['started_utc']} with profile "
        f"**{data['profile']}** on **{data['device']}** ({device}); parameters {params}; "
        f"seed {data['seed']}. torch {v['torch']}, CUDA {v['cuda']}, Python {v['python']}, "
        f"dynbook {v['dynbook']}. Wall time {data['wall_seconds']:.1f} s; "
        f"{n_checks} executable checks passed, {n_claims} claims given a verdict. "
        f"Metrics: `_build/metrics/{data['chapter']}.json`.\n```"
    )
    return Markdown(text)
