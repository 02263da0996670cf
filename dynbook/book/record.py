"""Record what a chapter measured: metrics, executable checks and claim verdicts.

Each call writes ``<metrics dir>/<chapter>.json`` anew (so a crashed run still leaves what it
measured) and glues the value for myst-nb, so prose quotes the executed number with
``{glue:text}`name:.2f```. The metrics folder is ``$DYNBOOK_METRICS_DIR`` (set by
``dynbook run``), else ``<book root>/_build/metrics``, else ``./_build/metrics``.

Two kinds of statement live here:

* :func:`record` – a measured quantity (value, unit, the claim it bears on).
* :func:`check` – an *executable claim*: a relation that must hold on any hardware (two
  implementations agree, an order of convergence is met). A failing check stops the chapter.

Claims of the source documents get their verdicts through the claims protocol of
:mod:`dynbook.book.claims` (declared rule, interval, negative control), which writes into the same
record. A verdict may be "not supported" on some hardware; that is a result, not an error.
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dynbook.book import environment

VERDICTS = ("supported", "not supported", "inconclusive", "unavailable")


class ClaimFailed(AssertionError):
    """An executable claim of a chapter did not hold."""


class _Text(str):
    """A string whose repr is itself, so ``{glue:text}`` shows it without quotes."""

    def __repr__(self):
        return str(self)


def _plain(value: Any) -> Any:
    """Turn tensors and NumPy scalars into JSON-able Python values."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    elif hasattr(value, "tolist") and not isinstance(value, (list, tuple, dict, str)):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no NaN or infinity: NaN becomes null, infinities the strings "inf"/"-inf"
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def metrics_dir() -> Path:
    env = os.environ.get("DYNBOOK_METRICS_DIR")
    if env:
        return Path(env)
    root = environment.find_root()
    return (root if root else Path.cwd()) / "_build" / "metrics"


def _glue(name: str, value: Any) -> None:
    try:
        from myst_nb import glue
    except ImportError:  # plain Python without myst-nb: the JSON still has everything
        return
    try:
        from IPython import get_ipython

        if get_ipython() is None:
            return
    except ImportError:  # pragma: no cover
        return
    glue(name, value, display=False)


class Recorder:
    """Holds one chapter run's record and writes it to JSON after every change."""

    def __init__(self, chapter: str, *, profile: str, device: str, seed: int, parameters: dict,
                 directory: str | os.PathLike | None = None):
        self.path = Path(directory or metrics_dir()) / f"{chapter}.json"
        self.started = time.perf_counter()
        self.data: dict[str, Any] = {
            "chapter": chapter,
            "profile": profile,
            "device": device,
            "seed": seed,
            "parameters": _plain(parameters),
            "commit": environment.commit(),
            "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": 0.0,
            "versions": environment.versions(),
            "hardware": environment.hardware(device),
            "metrics": {},
            "checks": {},
            "claims": {},
        }
        self.write()

    def write(self) -> None:
        self.data["wall_seconds"] = round(time.perf_counter() - self.started, 3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, allow_nan=False, default=str))
        tmp.replace(self.path)


_current: Recorder | None = None


def start(chapter: str, **kwargs) -> Recorder:
    """Begin the record of a chapter run (``dynbook.setup`` calls this)."""
    global _current
    _current = Recorder(chapter, **kwargs)
    return _current


def current() -> Recorder:
    if _current is None:
        raise RuntimeError("no chapter run is being recorded: call dynbook.setup(...) first")
    return _current


def _check_name(name: str) -> None:
    if not name or not all(c.isalnum() or c == "_" for c in name):
        raise ValueError(f"metric name {name!r} must be letters, digits and '_' (it is a glue key)")


def record(name: str, value: Any, *, unit: str = "", claim: str | None = None,
           labels: dict | None = None, glue: bool = True) -> None:
    """Store a measured quantity and glue it (returns None, so a cell ending in a record
    shows nothing).

    ``value`` may be a number, a string, ``None`` (not measured here, e.g. energy without a
    counter), a tensor or a list. ``labels`` says which configuration it was measured at.
    """
    _check_name(name)
    rec = current()
    plain = _plain(value)
    rec.data["metrics"][name] = {"value": plain, "unit": unit, "claim": claim,
                                 "labels": _plain(labels or {})}
    rec.write()
    if glue:
        _glue(name, _Text(plain) if isinstance(plain, str) else plain)


def check(claim: str, statement: str, holds: bool, *, detail: str = "") -> None:
    """An executable claim: record it, and raise :class:`ClaimFailed` if it does not hold."""
    rec = current()
    holds = bool(holds)
    rec.data["checks"][claim] = {"statement": statement, "passed": holds, "detail": detail}
    rec.write()
    mark = "PASS" if holds else "FAIL"
    print(f"[{mark}] {claim}: {statement}" + (f" — {detail}" if detail else ""))
    if not holds:
        raise ClaimFailed(f"{claim}: {statement} — {detail}")


def finish() -> dict:
    """Stamp the wall time and return the record (the chapter's last cell calls this)."""
    rec = current()
    rec.write()
    return rec.data
