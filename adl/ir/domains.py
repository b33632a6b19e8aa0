"""Search domains: pass options whose value is a range to search rather than one value.

In a pipeline stage an option may be written as a domain, which an `hpo` stage before the pass
samples and then replaces with one value per trial:

    train(epochs = int(3, 12), batch_size = choice(32, 64, 128),
          optimizer = adam(lr = loguniform(1e-4, 1e-1)), label_smoothing = uniform(0 %, 20 %))

`adl.ir.options.coerce(..., domains=True)` turns such a call into a `Domain` whose bounds and
choices are already in the option's base unit (fractions, seconds, bytes, ...). Domains may sit
inside call-valued options (`optimizer = adam(lr = loguniform(...))`); `domains_in` finds them by
dotted path ("optimizer.lr") and `substitute` puts the chosen values in their place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from adl.dsl.ast import Span
from adl.ir.spec import CallValue

DOMAIN_NAMES = ("uniform", "loguniform", "int", "choice")
DOMAIN_FORMS: Mapping[str, str] = {
    "uniform": "uniform(low, high)",
    "loguniform": "loguniform(low, high)",
    "int": "int(low, high) or int(low, high, log = true)",
    "choice": "choice(a, b, ...)",
}


@dataclass(frozen=True)
class Domain:
    """Where a searched option's value lies.

    kind: "uniform" | "loguniform" (floats in [low, high]), "int" (integers in [low, high], on a
    log scale when `log`), "choice" (one of `choices`). Bounds and choices are in the option's
    base unit.
    """

    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()
    log: bool = False  # int(8, 256, log = true): sampled on a log scale
    span: Span | None = field(default=None, compare=False)

    def describe(self, fmt: Callable[[Any], str]) -> str:
        """The domain in pipeline syntax, e.g. ``loguniform(0.0001,0.1)``, ``int(3,12)``,
        ``choice(32,64)``; `fmt` prints one bound or choice (`adl.ir.options.format_value` prints the
        whole domain so, in base units)."""
        if self.kind == "choice":
            return "choice(" + ",".join(fmt(c) for c in self.choices) + ")"
        log = ",log=true" if self.kind == "int" and self.log else ""
        return f"{self.kind}({fmt(self.low)},{fmt(self.high)}{log})"


def domains_in(values: Mapping[str, Any], prefix: str = "") -> dict[str, Domain]:
    """Every domain in `values` by dotted path, in order: ``{"epochs": ..., "optimizer.lr": ...}``
    (the arguments of call-valued options are searched too)."""
    found: dict[str, Domain] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Domain):
            found[path] = value
        elif isinstance(value, CallValue):
            found.update(domains_in(dict(value.args), prefix=f"{path}."))
    return found


def has_domains(values: Any) -> bool:
    """Whether `values` (a mapping of options, or one value) holds a domain anywhere."""
    if isinstance(values, Domain):
        return True
    if isinstance(values, CallValue):
        return bool(domains_in(dict(values.args)))
    if isinstance(values, Mapping):
        return bool(domains_in(values))
    return False


def substitute(values: Mapping[str, Any], chosen: Mapping[str, Any]) -> dict[str, Any]:
    """`values` with every domain replaced by ``chosen[path]`` (the path as `domains_in` names it);
    a domain without a chosen value is a ValueError naming its path."""
    return _substitute(values, chosen, "")


def _substitute(values: Mapping[str, Any], chosen: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, Domain):
            if path not in chosen:
                raise ValueError(f"no value chosen for the search domain '{path}' ({value.describe(repr)})")
            result[key] = chosen[path]
        elif isinstance(value, CallValue) and has_domains(value):
            args = _substitute(dict(value.args), chosen, f"{path}.")
            result[key] = CallValue(value.name, tuple(args.items()))
        else:
            result[key] = value
    return result


__all__ = ["DOMAIN_NAMES", "DOMAIN_FORMS", "Domain", "domains_in", "has_domains", "substitute"]
