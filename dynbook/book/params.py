"""Chapter parameters: schemas, validation with clear errors, profiles, devices, seeding.

Every chapter has one cell tagged ``parameters`` (papermill injects overrides after it) and,
right after it, a call to :func:`dynbook.setup`, which validates *all* parameters here before
any work is done. A bad value stops the run with a :class:`ParameterError` naming the
parameter, the value and what is allowed.

Specs are small objects (``Int(lo, hi)``, ``Float(lo, hi)``, ``Choice(...)``, ``Bool()``,
``Str()``, ``List(Int(...))``, ``Optional(...)``); every chapter shares ``profile``,
``device`` and ``seed`` (see :data:`COMMON`).

A spec may carry its profile defaults, ``Int(1, 16384, quick=256, full=1024)``: the parameters
cell then says ``max_batch = None`` and :func:`resolve_defaults` puts in the value of the
resolved profile, so each parameter is declared once and no chapter picks values by profile.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Mapping

PROFILES = ("quick", "full", "auto")
DEVICES = ("auto", "cpu", "cuda")


class ParameterError(ValueError):
    """A chapter parameter has an unknown name, a wrong type or an out-of-range value."""


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


class _Unset:
    def __repr__(self):
        return "unset"


UNSET = _Unset()  # a spec without profile defaults


@dataclass(frozen=True)
class Spec:
    """Base class: ``check(name, value)`` returns the normalised value or raises.

    ``quick``/``full``: the profile defaults; with them, ``None`` is allowed and means "the
    resolved profile's value" (see :func:`resolve_defaults`)."""

    help: str = field(default="", kw_only=True)
    quick: Any = field(default=UNSET, kw_only=True)
    full: Any = field(default=UNSET, kw_only=True)

    def __post_init__(self):
        if (self.quick is UNSET) != (self.full is UNSET):
            raise ValueError(f"{type(self).__name__}: give both quick= and full= defaults, or neither")
        for prof in ("quick", "full"):
            default = getattr(self, prof)
            if default is not UNSET:
                self.check(f"<{prof} default>", default)  # a bad default is the chapter's bug

    @property
    def has_defaults(self) -> bool:
        return self.quick is not UNSET

    def default(self, profile: str) -> Any:
        return self.full if profile == "full" else self.quick

    def allowed(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def check(self, name: str, value: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def validate(self, name: str, value: Any) -> Any:
        """``check``, letting ``None`` through when the profile supplies the value."""
        if value is None and self.has_defaults:
            return None
        try:
            return self.check(name, value)
        except ParameterError:
            if not self.has_defaults:
                raise
            raise self.fail(name, value) from None

    def described(self) -> str:
        """What is allowed, including ``None`` for specs with profile defaults."""
        if self.has_defaults:
            return f"None (the profile's value: quick {self.quick!r}, full {self.full!r}) or {self.allowed()}"
        return self.allowed()

    def fail(self, name: str, value: Any, why: str = "") -> ParameterError:
        why = f" ({why})" if why else ""
        return ParameterError(
            f"parameter '{name}' = {_show(value)} is not allowed{why}: expected {self.described()}"
        )


@dataclass(frozen=True)
class Int(Spec):
    lo: int | None = None
    hi: int | None = None

    def allowed(self) -> str:
        lo = "-inf" if self.lo is None else self.lo
        hi = "inf" if self.hi is None else self.hi
        return f"an integer in [{lo}, {hi}]"

    def check(self, name, value):
        if isinstance(value, bool) or not isinstance(value, int):
            # papermill passes "3" from some front ends; accept integral strings/floats exactly
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
                value = int(value)
            else:
                raise self.fail(name, value, "wrong type")
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise self.fail(name, value, "out of range")
        return value


@dataclass(frozen=True)
class Float(Spec):
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False

    def allowed(self) -> str:
        lo = "-inf" if self.lo is None else self.lo
        hi = "inf" if self.hi is None else self.hi
        return f"a number in {'(' if self.lo_open else '['}{lo}, {hi}]"

    def check(self, name, value):
        if isinstance(value, bool):
            raise self.fail(name, value, "wrong type")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise self.fail(name, value, "wrong type") from None
        if not isinstance(value, (int, float)):
            raise self.fail(name, value, "wrong type")
        value = float(value)
        if not math.isfinite(value):
            raise self.fail(name, value, "not finite")
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise self.fail(name, value, "out of range")
        if self.hi is not None and value > self.hi:
            raise self.fail(name, value, "out of range")
        return value


@dataclass(frozen=True)
class Choice(Spec):
    options: tuple = ()

    def __init__(self, *options, help: str = "", quick: Any = UNSET, full: Any = UNSET):
        object.__setattr__(self, "options", tuple(options))
        object.__setattr__(self, "help", help)
        object.__setattr__(self, "quick", quick)
        object.__setattr__(self, "full", full)
        self.__post_init__()

    def allowed(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)

    def check(self, name, value):
        # type must match too: True == 1, but True is not the option 1
        if not any(value == o and type(value) is type(o) for o in self.options):
            raise self.fail(name, value)
        return value


@dataclass(frozen=True)
class Bool(Spec):
    def allowed(self) -> str:
        return "True or False"

    def check(self, name, value):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise self.fail(name, value, "wrong type")


@dataclass(frozen=True)
class Str(Spec):
    def allowed(self) -> str:
        return "a string"

    def check(self, name, value):
        if not isinstance(value, str):
            raise self.fail(name, value, "wrong type")
        return value


@dataclass(frozen=True)
class List(Spec):
    item: Spec = field(default_factory=Str)
    min_len: int = 1
    max_len: int | None = None

    def __init__(self, item: Spec, min_len: int = 1, max_len: int | None = None, help: str = "",
                 quick: Any = UNSET, full: Any = UNSET):
        object.__setattr__(self, "item", item)
        object.__setattr__(self, "min_len", min_len)
        object.__setattr__(self, "max_len", max_len)
        object.__setattr__(self, "help", help)
        object.__setattr__(self, "quick", quick)
        object.__setattr__(self, "full", full)
        self.__post_init__()

    def allowed(self) -> str:
        n = f"at least {self.min_len}" + (f" and at most {self.max_len}" if self.max_len else "")
        return f"a list of {n} items, each {self.item.allowed()}"

    def check(self, name, value):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise self.fail(name, value, "wrong type")
        if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
            raise self.fail(name, value, "wrong length")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(self.item.check(f"{name}[{i}]", v))
            except ParameterError:
                raise self.fail(name, value, f"item {i} = {v!r} is not allowed") from None
        return out


@dataclass(frozen=True)
class Optional(Spec):
    """``None`` (meaning: take the value from the profile) or a value of ``inner``."""

    inner: Spec = field(default_factory=Str)

    def __init__(self, inner: Spec, help: str = ""):
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "help", help)
        object.__setattr__(self, "quick", UNSET)
        object.__setattr__(self, "full", UNSET)

    def allowed(self) -> str:
        return f"None or {self.inner.allowed()}"

    def check(self, name, value):
        if value is None:
            return None
        try:
            return self.inner.check(name, value)
        except ParameterError:
            raise self.fail(name, value) from None


COMMON: dict[str, Spec] = {
    "profile": Choice(*PROFILES, help="quick: ~1 min on a 2-core CPU; full: paper scale (GPU); auto: full on CUDA"),
    "device": Choice(*DEVICES, help="auto: CUDA when available, else CPU"),
    "seed": Int(0, 2**32 - 1, help="seeds random, numpy and torch"),
}

# Names that are in a kernel's namespace without being parameters.
_NAMESPACE_NOISE = {"In", "Out", "get_ipython", "exit", "quit", "open"}
_PARAM_TYPES = (bool, int, float, str, list, tuple, type(None))


def candidate_parameters(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The plain-valued public names of a notebook namespace: the parameters cell's names
    and whatever papermill injected (modules, functions and classes are not parameters)."""
    return {
        k: v
        for k, v in namespace.items()
        if not k.startswith("_") and k not in _NAMESPACE_NOISE and isinstance(v, _PARAM_TYPES)
    }


def validate(values: Mapping[str, Any], schema: Mapping[str, Spec], *, strict: bool = True) -> dict:
    """Check ``values`` against ``COMMON`` + ``schema``; return the normalised dict.

    Unknown names raise (``strict``) and list the allowed names; missing names raise too,
    because the parameters cell must define every parameter it accepts.
    """
    full = {**COMMON, **schema}
    unknown = sorted(set(values) - set(full))
    if unknown and strict:
        raise ParameterError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
            f"allowed names are {', '.join(sorted(full))}"
        )
    missing = sorted(set(full) - set(values))
    if missing:
        raise ParameterError(
            f"parameter{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
            "not defined: the parameters cell must define every parameter of the schema"
        )
    return {name: spec.validate(name, values[name]) for name, spec in full.items()}


def resolve_defaults(values: Mapping[str, Any], schema: Mapping[str, Spec], profile: str) -> dict:
    """Put the resolved profile's default in place of each ``None`` whose spec has one."""
    out = dict(values)
    for name, spec in schema.items():
        if out.get(name) is None and spec.has_defaults:
            out[name] = spec.default(profile)
    return out


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available else ``cpu``; ``cuda`` without a GPU is an error."""
    if device not in DEVICES:
        raise COMMON["device"].fail("device", device)
    has_cuda = cuda_available()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if device == "cuda" and not has_cuda:
        raise ParameterError(
            "parameter 'device' = 'cuda' (str) is not allowed: torch.cuda.is_available() is "
            "False on this machine; expected one of 'auto', 'cpu'"
        )
    return device


def resolve_profile(profile: str, device: str) -> str:
    """``auto`` → ``full`` on CUDA, ``quick`` otherwise."""
    if profile not in PROFILES:
        raise COMMON["profile"].fail("profile", profile)
    if profile == "auto":
        return "full" if device == "cuda" else "quick"
    return profile


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Run:
    """The validated parameters of one chapter run (attribute access, read-only)."""

    def __init__(self, chapter: str, values: dict, device: str, profile: str,
                 schema: Mapping[str, Spec] | None = None):
        object.__setattr__(self, "chapter", chapter)
        object.__setattr__(self, "schema", dict(schema or {}))
        object.__setattr__(self, "values", dict(values))
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "profile", profile)

    def __getattr__(self, name):
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Run is read-only: change parameters in the parameters cell")

    @property
    def seed(self) -> int:
        return self.values["seed"]

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"

    def pick(self, quick, full):
        """The value for this run's profile: ``P.pick(quick=256, full=8192)``."""
        return full if self.profile == "full" else quick

    def get(self, name: str, quick, full):
        """A parameter that may be ``None`` (then the profile's value)."""
        value = self.values[name]
        return self.pick(quick, full) if value is None else value

    def table(self):
        """The parameters of this run as a Markdown table: name, the value used, what is
        allowed, the quick and full defaults, and what the parameter does."""
        from IPython.display import Markdown

        full = {**COMMON, **self.schema}
        rows = ["| parameter | used | allowed | quick | full | meaning |", "|---|---|---|---|---|---|"]
        for name, spec in full.items():
            q, f = ("", "") if not spec.has_defaults else (repr(spec.quick), repr(spec.full))
            used = f"`{self.values[name]!r}`"
            resolved = {"profile": self.profile, "device": self.device}.get(name, self.values[name])
            if resolved != self.values[name]:
                used += f" → `{resolved!r}`"
            cells = (f"`{name}`", used, spec.allowed(), q, f, spec.help)
            rows.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
        return Markdown("\n".join(rows))

    def __repr__(self):
        shown = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"Run({self.chapter}: {shown}; resolved profile={self.profile}, device={self.device})"
