"""The claims protocol: a verdict is only worth printing if it could have come out the other way.

A chapter declares its claims in one place, before any experiment (:func:`declare`): each
:class:`Claim` has an id, a source (seed file and section, or "this book"), a statement, the
measured quantity, a decision :class:`Rule` and the negative control, a case where the claim
must fail. After measuring, the chapter calls :func:`decide` with an :class:`~dynbook.book.stats.Estimate`
(value and interval) of the claim's quantity and one of the negative control's; the rule turns
each into a verdict:

* ``at_least(t, band)``: supported when the whole interval is ≥ t + band, not supported when
  it is ≤ t − band, inconclusive otherwise (the interval straddles the band);
* ``at_most(t, band)``: the mirror image;
* ``within(target, tol, band)``: supported when the interval lies inside target ± (tol − band),
  not supported when it lies wholly outside target ± (tol + band).

The control is judged by the same rule. If it does not come out "not supported", the
measurement cannot tell the claim from its opposite, and the claim's verdict is
"inconclusive" whatever its own value says (the record keeps both). A statement that no case
could contradict is an identity: make it a :func:`dynbook.check`, not a claim.

Every claim is glued as ``verdict_<id>`` (the word) and ``says_<id>`` (the sentence for that
outcome, from the claim's ``says`` templates), so prose that states an outcome follows the run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from dynbook.book import record as _record
from dynbook.book.stats import Estimate, exact

VERDICTS = _record.VERDICTS
OUTCOMES = ("supported", "not supported", "inconclusive")


@dataclass(frozen=True)
class Rule:
    """How a measured interval becomes a verdict (see the module docstring)."""

    kind: str  # "at_least", "at_most", "within"
    threshold: float  # the threshold, or the target of "within"
    band: float = 0.0  # half-width of the inconclusive band around the threshold(s)
    tol: float = 0.0  # "within" only: the allowed distance from the target

    def __post_init__(self):
        if self.kind not in ("at_least", "at_most", "within"):
            raise ValueError(f"Rule kind {self.kind!r} is not allowed: expected 'at_least', 'at_most' or 'within'")
        if not math.isfinite(self.threshold):
            raise ValueError(f"Rule threshold {self.threshold!r} must be finite")
        if self.band < 0 or self.tol < 0:
            raise ValueError(f"Rule band={self.band!r} and tol={self.tol!r} must be ≥ 0")
        if self.kind == "within" and self.band >= self.tol:
            raise ValueError(f"Rule within: band={self.band!r} must be smaller than tol={self.tol!r}")

    def decide(self, estimate: Estimate | None) -> str:
        if estimate is None or not all(map(_finite, (estimate.lo, estimate.value, estimate.hi))):
            return "unavailable"
        lo, hi, t, b = estimate.lo, estimate.hi, self.threshold, self.band
        if self.kind == "at_least":
            return "supported" if lo >= t + b else "not supported" if hi < t - b else "inconclusive"
        if self.kind == "at_most":
            return "supported" if hi <= t - b else "not supported" if lo > t + b else "inconclusive"
        inner, outer = self.tol - b, self.tol + b
        if t - inner <= lo and hi <= t + inner:
            return "supported"
        if hi < t - outer or lo > t + outer:
            return "not supported"
        return "inconclusive"

    def text(self, unit: str = "") -> str:
        u = f" {unit}" if unit else ""
        band = f" (inconclusive within ±{self.band:g})" if self.band else ""
        if self.kind == "at_least":
            return f"≥ {self.threshold:g}{u}{band}"
        if self.kind == "at_most":
            return f"≤ {self.threshold:g}{u}{band}"
        return f"{self.threshold:g} ± {self.tol:g}{u}{band}"

    def as_dict(self) -> dict:
        d = {"kind": self.kind, "threshold": self.threshold, "band": self.band, "text": self.text()}
        if self.kind == "within":
            d["tol"] = self.tol
        return d


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def at_least(threshold: float, band: float = 0.0) -> Rule:
    """Supported when the quantity's whole interval is at or above ``threshold + band``."""
    return Rule("at_least", float(threshold), float(band))


def at_most(threshold: float, band: float = 0.0) -> Rule:
    """Supported when the quantity's whole interval is at or below ``threshold − band``."""
    return Rule("at_most", float(threshold), float(band))


def within(target: float, tol: float, band: float = 0.0) -> Rule:
    """Supported when the quantity's whole interval lies within ``target ± (tol − band)``."""
    return Rule("within", float(target), float(band), float(tol))


@dataclass(frozen=True)
class Claim:
    """One claim of a chapter, declared before it is measured.

    ``says`` maps an outcome ("supported", "not supported", "inconclusive", "unavailable") to
    the sentence the prose shows for it; ``{value}``, ``{lo}``, ``{hi}`` and ``{control}``
    (the control's value) may appear with format specs, e.g. ``"{value:.2f}"``.
    """

    id: str
    source: str
    statement: str
    quantity: str
    rule: Rule
    control: str  # the case where the claim must fail, measured the same way
    unit: str = ""
    says: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not self.id or not all(c.isalnum() or c == "_" for c in self.id):
            raise ValueError(f"Claim id {self.id!r} must be letters, digits and '_' (it is a glue key)")
        for name in ("source", "statement", "quantity", "control"):
            if not str(getattr(self, name)).strip():
                raise ValueError(f"Claim {self.id}: {name} is empty; every claim states its {name}")
        if not isinstance(self.rule, Rule):
            raise ValueError(f"Claim {self.id}: rule must be a dynbook.Rule (at_least, at_most, within)")
        bad = set(self.says) - set(VERDICTS)
        if bad:
            raise ValueError(f"Claim {self.id}: says has keys {sorted(bad)}; allowed are {VERDICTS}")

    def declaration(self) -> dict:
        return {"source": self.source, "statement": self.statement, "quantity": self.quantity,
                "unit": self.unit, "rule": self.rule.as_dict(), "control_case": self.control}


DECLARED = Path(__file__).resolve().parent.parent / "declared"
_RULES = {"at_least": at_least, "at_most": at_most, "within": within}
_FIELD = re.compile(r"\$\{(\w+)(:[^}]*)?\}")


def declared_path(chapter: str) -> Path:
    """``dynbook/declared/<topic>.yaml`` for chapter ``NN_topic`` (the number may change as
    chapters are inserted; the topic does not)."""
    topic = re.sub(r"^\d+_", "", chapter)
    return DECLARED / f"{topic}.yaml"


def load(chapter: str, values: Mapping | None = None) -> list[Claim]:
    """The claims chapter ``chapter`` declares, read from its YAML file (see
    ``dynbook/declared/README.md``). ``${name}`` or ``${name:.3g}`` in any text, and a rule
    threshold written as ``${name}``, take the run's value of ``name`` (a parameter, or a
    constant the chapter passes to :func:`declare`)."""
    import yaml

    path = declared_path(chapter)
    if not path.exists():
        raise FileNotFoundError(f"chapter {chapter!r} declares its claims in {path}, which does not exist")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a mapping claim id → declaration")
    values = dict(values or {})

    def fill(text, where):
        def one(m):
            name, spec = m.group(1), (m.group(2) or "")[1:]
            if name not in values:
                raise KeyError(f"{path.name}: {where} uses ${{{name}}}, which is neither a parameter nor "
                               f"a value passed to dynbook.declare (given: {sorted(values)})")
            return format(values[name], spec)
        return _FIELD.sub(one, str(text))

    claims = []
    for cid, d in data.items():
        where = f"claim {cid}"
        allowed = {"source", "statement", "quantity", "unit", "rule", "control", "says"}
        if not isinstance(d, dict) or set(d) - allowed:
            raise ValueError(f"{path.name}: {where} has keys {sorted(set(d or {}) - allowed)}; allowed are {sorted(allowed)}")
        rule = dict(d.get("rule") or {})
        kinds = [k for k in rule if k in _RULES]
        if len(kinds) != 1 or set(rule) - {kinds[0], "tol", "band"}:
            raise ValueError(f"{path.name}: {where} rule {rule!r}: expected one of at_least/at_most/within "
                             "with its threshold, and optional band (and tol for within)")
        num = {k: float(fill(v, f"{where} rule {k}")) for k, v in rule.items()}
        kind = kinds[0]
        rule = _RULES[kind](num[kind], num["tol"], num.get("band", 0.0)) if kind == "within" \
            else _RULES[kind](num[kind], num.get("band", 0.0))
        claims.append(Claim(str(cid), source=fill(d.get("source", ""), where),
                            statement=fill(d.get("statement", ""), where),
                            quantity=fill(d.get("quantity", ""), where), rule=rule,
                            control=fill(d.get("control", ""), where), unit=fill(d.get("unit", ""), where),
                            says={k: fill(v, f"{where} says") for k, v in (d.get("says") or {}).items()}))
    return claims


def declare(*claims, show: bool = True, **values):
    """Declare a chapter's claims before its experiments: record them with their rules and
    return the claims table (a Markdown object the cell displays) when ``show``.

    ``declare(run, **values)`` reads the chapter's claims from ``dynbook/declared/<topic>.yaml``
    (:func:`load`), filling ``${name}`` fields from the run's parameters and ``values``;
    ``declare(claim, claim, ...)`` takes :class:`Claim` objects."""
    from dynbook.book.params import Run

    if len(claims) == 1 and isinstance(claims[0], Run):
        run = claims[0]
        claims = tuple(load(run.chapter, {**run.values, **values}))
    elif values:
        raise TypeError(f"declare: values {sorted(values)} are only used with declare(run, ...)")
    rec = _record.current()
    seen = set()
    for c in claims:
        if c.id in seen:
            raise ValueError(f"claim id {c.id!r} is declared twice")
        seen.add(c.id)
    rec.data["claims"] = {c.id: {**c.declaration(), "verdict": None} for c in claims}
    rec.write()
    _declared.clear()
    _declared.update({c.id: c for c in claims})
    if show:
        return claims_table(claims)
    return None


_declared: dict[str, Claim] = {}


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_table(claims) -> "object":
    from IPython.display import Markdown

    lines = ["| claim | source | statement | measured | rule: supported when | negative control |",
             "|---|---|---|---|---|---|"]
    for c in claims:
        lines.append("| " + " | ".join(_md(x) for x in (
            c.id, c.source, c.statement, c.quantity, c.rule.text(c.unit), c.control)) + " |")
    return Markdown("\n".join(lines))


def _as_estimate(x) -> Estimate | None:
    if x is None or isinstance(x, Estimate):
        return x
    if isinstance(x, (int, float)):
        return exact(x) if math.isfinite(x) else None
    raise TypeError(f"expected a dynbook.book.stats.Estimate, a number or None, got {type(x).__name__}")


def _sentence(claim: Claim, word: str, est: Estimate | None, ctrl: Estimate | None) -> str:
    template = claim.says.get(word)
    if template is None:
        shown = "" if est is None else f" ({claim.quantity} = {est:.3g}{' ' + claim.unit if claim.unit else ''})"
        return f"{claim.statement}: {word}{shown}."
    nan = float("nan")
    return template.format(value=est.value if est else nan, lo=est.lo if est else nan,
                           hi=est.hi if est else nan, control=ctrl.value if ctrl else nan)


def decide(claim_id: str, estimate: Estimate | float | None, control: Estimate | float | None, *,
           seeds=None, evidence: str = "", reason: str = "") -> str:
    """Give claim ``claim_id`` its verdict from ``estimate`` by its declared rule, after
    judging the negative ``control`` by the same rule. ``None`` means not measurable here
    (``reason`` says why): the verdict is "unavailable". Returns the verdict word."""
    if claim_id not in _declared:
        raise KeyError(f"claim {claim_id!r} was not declared: declare every claim with "
                       f"dynbook.declare(...) before the experiments (declared: {sorted(_declared)})")
    claim = _declared[claim_id]
    est, ctrl = _as_estimate(estimate), _as_estimate(control)
    word = claim.rule.decide(est)
    control_word = claim.rule.decide(ctrl)
    note = reason
    if word != "unavailable" and control_word != "not supported":
        note = (f"the negative control ({claim.control}) came out {control_word!r}, so this "
                f"measurement cannot tell the claim from its opposite (own value: {word!r})")
        word = "inconclusive"
    sentence = _sentence(claim, word, est, ctrl)
    rec = _record.current()
    entry = rec.data["claims"][claim_id]
    entry.update({
        "verdict": word,
        "value": None if est is None else est.value,
        "interval": None if est is None else [est.lo, est.hi],
        "method": None if est is None else est.method,
        "n": None if est is None else est.n,
        "samples": [] if est is None else [float(s) for s in est.samples],
        "seeds": list(seeds) if seeds is not None else None,
        "negative_control": {
            "case": claim.control,
            "value": None if ctrl is None else ctrl.value,
            "interval": None if ctrl is None else [ctrl.lo, ctrl.hi],
            "verdict": control_word,
        },
        "evidence": evidence,
        "note": note,
        "sentence": sentence,
    })
    rec.write()
    shown = "not measured" if est is None else f"{est:.3g}"
    cshown = "not measured" if ctrl is None else f"{ctrl:.3g}"
    print(f"[{word.upper()}] {claim_id}: {claim.statement} — {claim.quantity} = {shown}, rule "
          f"{claim.rule.text(claim.unit)}; control ({claim.control}) = {cshown} → {control_word}"
          + (f"; {note}" if note else "") + (f"; {evidence}" if evidence else ""))
    _record._glue(f"verdict_{claim_id}", _record._Text(word))
    _record._glue(f"says_{claim_id}", _record._Text(sentence))
    return word


def summary():
    """The chapter's closing table: every declared claim with its rule, value and interval,
    the control's outcome and the verdict (a Markdown object)."""
    from IPython.display import Markdown

    rec = _record.current()
    lines = ["| claim | rule | measured [interval] | negative control | verdict |",
             "|---|---|---|---|---|"]
    missing = []
    for cid, c in rec.data["claims"].items():
        if c.get("verdict") is None:
            missing.append(cid)
            continue
        rule = Rule(c["rule"]["kind"], c["rule"]["threshold"], c["rule"]["band"], c["rule"].get("tol", 0.0))
        lines.append("| " + " | ".join(_md(x) for x in (
            cid, rule.text(c["unit"]), _fmt(c["value"], c["interval"]),
            f"{c['negative_control']['case']}: {_fmt(c['negative_control']['value'], c['negative_control']['interval'])}"
            f" → {c['negative_control']['verdict']}",
            f"**{c['verdict']}**")) + " |")
    if missing:
        raise RuntimeError(f"claims {missing} were declared but never decided: every declared "
                           "claim needs dynbook.decide(...) before the summary")
    return Markdown("\n".join(lines))


def _fmt(value, interval) -> str:
    if value is None:
        return "not measured"
    if interval is None or interval[0] == interval[1] == value:
        return f"{value:.3g}"
    return f"{value:.3g} [{interval[0]:.3g}, {interval[1]:.3g}]"
