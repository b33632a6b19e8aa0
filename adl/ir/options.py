"""Typed options: a schema per setting, coercion of AST values into Python values, and printing back.

One mechanism serves every place the language takes `name = value`: block settings
(`data digits { split = 0.8 }`), call arguments (`adam(lr = 1e-3)`), pass options in a
`pipeline` block and in the textual pipeline (`train{epochs=3}`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from adl.dsl import ast
from adl.dsl.errors import Diagnostic
from adl.dsl.parser import POSITIONAL_MESSAGE
from adl.ir.domains import DOMAIN_FORMS, DOMAIN_NAMES, Domain
from adl.ir.spec import CallValue

# unit -> (quantity, factor to the base unit)
UNITS: Mapping[str, tuple[str, float]] = {
    "ns": ("time", 1e-9),
    "us": ("time", 1e-6),
    "ms": ("time", 1e-3),
    "s": ("time", 1.0),
    "B": ("bytes", 1),
    "KB": ("bytes", 1e3),
    "MB": ("bytes", 1e6),
    "GB": ("bytes", 1e9),
    "KiB": ("bytes", 1024),
    "MiB": ("bytes", 1024**2),
    "GiB": ("bytes", 1024**3),
    "%": ("fraction", 0.01),
    "FLOPs": ("flops", 1),
    "KFLOPs": ("flops", 1e3),
    "MFLOPs": ("flops", 1e6),
    "GFLOPs": ("flops", 1e9),
    "K": ("count", 1e3),
    "M": ("count", 1e6),
}
BASE_UNIT = {"time": "s", "bytes": "B", "flops": "FLOPs", "count": ""}
QUANTITY_WORDS = {
    "time": "a time (ns, us, ms, s)",
    "bytes": "a size (B, KB, MB, GB, KiB, MiB, GiB)",
    "fraction": "a fraction (0.5 or 50 %)",
    "flops": "a FLOP count (FLOPs, KFLOPs, MFLOPs, GFLOPs)",
    "count": "a count (plain, K or M)",
}

REQUIRED = object()
NUMERIC_KINDS = ("int", "float", "fraction", "time", "bytes", "flops", "count", "int_list", "int_range")
INT_LIMIT = 2**31 - 1  # the bound of an integer option that declares no `high` of its own
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class OptionError(Exception):
    """A bad value; carries the diagnostic (with span) to report."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


@dataclass(frozen=True)
class Option:
    """The schema of one setting.

    kind: int | float | fraction | bool | name | string | path | time | bytes | flops | count
          | int_list | name_list | int_range | call
    For `name` and `name_list`, `choices` lists the legal identifiers; for `call`, `calls` maps each legal
    callee to the schema of its arguments (a bare name means the call with defaults).
    """

    name: str
    kind: str
    default: Any = REQUIRED
    doc: str = ""
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    calls: Mapping[str, Sequence["Option"]] | None = field(default=None, compare=False)
    noun: str = ""  # what a callee is called in messages ("unknown cost model 'x'"); default: the name

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def upper_bound(self) -> float | None:
        """The declared `high`, or `INT_LIMIT` for an integer option that declares none."""
        return INT_LIMIT if self.high is None and self.kind in ("int", "int_list", "int_range") else self.high

    def describe_range(self) -> str:
        """The accepted values of a number, e.g. ``1..1000`` or ``>= 0``; ``-`` where there is no bound
        or the option is not a number."""
        low, high = self.low, self.upper_bound
        if self.kind not in NUMERIC_KINDS or (low is None and high is None):
            return "-"
        if low is None:
            return f"<= {format_value(high)}"
        if high is None:
            return f">= {format_value(low)}"
        return f"{format_value(low)}..{format_value(high)}"

    def describe_default(self) -> str:
        if self.required:
            return "(required)"
        if self.default is None:
            return "none"
        if self.kind == "time" and isinstance(self.default, (int, float)) and self.default > 0:
            for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
                if self.default >= factor:
                    return f"{self.default / factor:.4g} {unit}"
        return format_value(self.default)


def _fail(message: str, span: ast.Span | None, note: str | None = None) -> OptionError:
    return OptionError(Diagnostic(message, span, note))


def _number_value(value: ast.Value, opt: Option) -> ast.Number:
    if not isinstance(value, ast.Number):
        raise _fail(f"'{opt.name}' must be a number", value.span)
    return value


def _in_bounds(number: float, opt: Option, span: ast.Span, shown: str) -> None:
    high = opt.upper_bound
    if opt.low is not None and number < opt.low:
        raise _fail(f"'{opt.name}' must be at least {format_value(opt.low)}, got {shown}", span)
    if high is not None and number > high:
        raise _fail(f"'{opt.name}' must be at most {format_value(high)}, got {shown}", span)


def quantity_of(number: ast.Number, quantity: str, what: str) -> float:
    """Normalise a number with a unit to the base unit of `quantity`; raise on a wrong/missing unit."""
    if number.unit is None:
        if quantity == "fraction":
            if not 0 <= number.value <= 1:
                raise _fail(
                    f"{what} must be a fraction in [0, 1] or a percentage, got {number.text}",
                    number.span,
                    note="write 0.5 or 50 %",
                )
            return float(number.value)
        if quantity == "count":
            return float(number.value)
        raise _fail(f"{what} needs a unit: expected {QUANTITY_WORDS[quantity]}", number.span)
    unit_quantity, factor = UNITS[number.unit]
    if unit_quantity != quantity:
        raise _fail(f"wrong unit '{number.unit}' for {what}: expected {QUANTITY_WORDS[quantity]}", number.span)
    value = float(number.value) * factor
    if not math.isfinite(value):  # 1e300 GB
        raise _fail(f"{what} is out of range: {number.text}", number.span)
    # 15 significant digits: 70 % is 0.7, not 0.7000000000000001 (which would print in pass strings)
    return float(f"{value:.15g}")


def coerce(value: ast.Value, opt: Option, *, domains: bool = False) -> Any:
    """Turn an AST value into the Python value `opt` describes, or raise OptionError at its span.

    With `domains` (a pass's options), a search domain such as ``loguniform(1e-4, 1e-1)`` or
    ``choice(32, 64)`` becomes a `Domain` in the option's base unit; elsewhere it is an error.
    """
    kind = opt.kind
    if isinstance(value, ast.Call) and value.name in DOMAIN_NAMES and kind != "call":
        if not domains:
            raise _domain_not_allowed(value)
        return _coerce_domain(value, opt)
    if kind in ("int", "float"):
        number = _number_value(value, opt)
        if number.unit is not None:
            raise _fail(f"'{opt.name}' takes a plain number, not '{number.unit}'", number.span)
        if kind == "int" and not isinstance(number.value, int):
            raise _fail(f"'{opt.name}' must be an integer, got {number.text}", number.span)
        _in_bounds(number.value, opt, number.span, number.text)
        return number.value if kind == "int" else float(number.value)
    if kind in ("fraction", "time", "bytes", "flops", "count"):
        number = _number_value(value, opt)
        result = quantity_of(number, kind, f"'{opt.name}'")
        _in_bounds(result, opt, number.span, number.text)
        return result
    if kind == "bool":
        if isinstance(value, ast.Name) and value.value in ("true", "false"):
            return value.value == "true"
        raise _fail(f"'{opt.name}' must be true or false", value.span)
    if kind == "name":
        if not isinstance(value, ast.Name):
            raise _fail(f"'{opt.name}' must be one of: {', '.join(opt.choices)}", value.span)
        if opt.choices and value.value not in opt.choices:
            raise _fail(
                f"unknown {opt.name} '{value.value}'", value.span, note="expected one of: " + ", ".join(opt.choices)
            )
        return value.value
    if kind in ("string", "path"):
        if isinstance(value, ast.String) or (kind == "string" and isinstance(value, ast.Name)):
            return value.value
        raise _fail(f"'{opt.name}' must be a string in double quotes", value.span)
    if kind == "int_list":
        items = value.items if isinstance(value, ast.ListValue) else (value,)
        item_opt = Option(opt.name, "int", low=opt.low, high=opt.high)
        if isinstance(value, ast.ListValue) and not items:
            raise _fail(f"'{opt.name}' must not be empty", value.span)
        return tuple(_coerce_item(item, item_opt, opt, domains) for item in items)
    if kind == "name_list":
        items = value.items if isinstance(value, ast.ListValue) else (value,)
        if isinstance(value, ast.ListValue) and not items:
            raise _fail(f"'{opt.name}' must not be empty", value.span)
        item_opt = Option(opt.noun or opt.name, "name", choices=opt.choices)
        names = tuple(_coerce_item(item, item_opt, opt, domains) for item in items)
        for i, item in enumerate(items):
            if names[i] in names[:i]:
                raise _fail(f"'{names[i]}' is listed twice in '{opt.name}'", item.span)
        return names
    if kind == "int_range":
        if not isinstance(value, ast.RangeValue):
            raise _fail(f"'{opt.name}' must be a range such as 2..8", value.span)
        item_opt = Option(opt.name, "int", low=opt.low, high=opt.high)
        low, high = coerce(value.low, item_opt), coerce(value.high, item_opt)  # numbers: no domains
        if low > high:
            raise _fail(f"empty range {low}..{high} for '{opt.name}'", value.span)
        return (low, high)
    if kind == "call":
        return _coerce_call(value, opt, domains=domains)
    raise AssertionError(f"unknown option kind {kind!r}")


def _coerce_item(item: ast.Value, item_opt: Option, opt: Option, domains: bool) -> Any:
    """One item of a list-valued option: a search domain stands for the whole list, not an item."""
    if domains and isinstance(item, ast.Call) and item.name in DOMAIN_NAMES:
        raise _fail(
            f"a search domain stands for the whole value of '{opt.name}', not for one item",
            item.span,
            note=f"search among whole lists, e.g. `{opt.name} = choice([16, 32], [32, 64])`",
        )
    return coerce(item, item_opt)


def _coerce_call(value: ast.Value, opt: Option, *, domains: bool = False) -> CallValue:
    assert opt.calls is not None
    if isinstance(value, ast.Name):
        name, name_span, args, positional = value.value, value.span, (), ()
    elif isinstance(value, ast.Call):
        name, name_span, args, positional = value.name, value.name_span, value.args, value.positional
    else:
        raise _fail(f"'{opt.name}' must be one of: {', '.join(opt.calls)}", value.span)
    if name not in opt.calls:
        if isinstance(value, ast.Call) and name in DOMAIN_NAMES:
            if not domains:
                raise _domain_not_allowed(value)
            example = next(iter(opt.calls), "f")
            raise _fail(
                f"'{opt.name}' cannot be searched with {name}(...): search its arguments instead",
                value.span,
                note=f"e.g. `{opt.name} = {example}(option = uniform(low, high))`",
            )
        raise _fail(
            f"unknown {opt.noun or opt.name} '{name}'", name_span, note="expected one of: " + ", ".join(opt.calls)
        )
    schema = opt.calls[name]
    if positional:
        known = ", ".join(o.name for o in schema)
        raise _fail(
            POSITIONAL_MESSAGE,
            positional[0].span,
            note=f"the arguments of {name}(...) are named: {known}" if known else f"{name}(...) takes no arguments",
        )
    values = coerce_settings(args, schema, what=f"{name}(...)", span=value.span, domains=domains)
    return CallValue(name, tuple(values.items()))


# ---------------------------------------------------------------------------------------------
# Search domains (pass options only)

_FLOAT_KINDS = ("float", "fraction", "time", "bytes", "flops", "count")
_INT_KINDS = ("int", "count")
_KIND_WORDS = {
    "int": "an integer",
    "float": "a number",
    "fraction": "a fraction",
    "time": "a time",
    "bytes": "a size",
    "flops": "a FLOP count",
    "count": "a count",
    "bool": "true or false",
    "name": "a name",
    "string": "a string",
    "path": "a path",
    "int_list": "a list of integers",
    "name_list": "a list of names",
    "int_range": "a range",
}


def _domain_not_allowed(call: ast.Call) -> OptionError:
    return _fail(
        f"search domain '{call.name}(...)' is allowed only in pass options (pipeline stages)",
        call.span,
        note="a setting outside the pipeline takes one value",
    )


def _coerce_domain(call: ast.Call, opt: Option) -> Domain:
    """A `Domain` from ``uniform(a, b)``, ``loguniform(a, b)``, ``int(a, b[, log = true])`` or
    ``choice(v1, v2, ...)``, every bound and choice checked and normalised as `opt` says."""
    name, kind, positional = call.name, opt.kind, call.positional
    form = f"`{opt.name} = {DOMAIN_FORMS[name]}`"
    for item in positional:
        if isinstance(item, ast.Call) and item.name in DOMAIN_NAMES:
            raise _fail("search domains do not nest", item.span, note=f"write {form}")
    log, log_setting = False, None
    for setting in call.args:
        if name == "int" and setting.key == "log":
            if log_setting is not None:
                first = log_setting.key_span
                raise _fail("duplicate argument 'log'", setting.key_span, f"first set at {first.line}:{first.column}")
            log_setting = setting
            log = coerce(setting.value, Option("log", "bool"))
            continue
        takes = "takes only `log = true|false`" if name == "int" else "takes no named arguments"
        raise _fail(f"unknown argument '{setting.key}' for {name}(...)", setting.key_span, note=f"{name}(...) {takes}")
    if name == "choice":
        return _coerce_choice(call, opt)

    if name == "int" and kind not in _INT_KINDS:
        instead = "uniform(low, high) or loguniform(low, high)" if kind in _FLOAT_KINDS else "choice(a, b, ...)"
        raise _fail(
            f"int(...) searches an integer, but '{opt.name}' takes {_KIND_WORDS.get(kind, kind)}",
            call.name_span,
            note=f"search it with {instead}",
        )
    if name != "int" and kind not in _FLOAT_KINDS:
        if kind == "int":
            message, instead = f"'{opt.name}' takes an integer: search it with int(...)", "int(low, high)"
        else:
            message = f"{name}(...) searches a number, but '{opt.name}' takes {_KIND_WORDS.get(kind, kind)}"
            instead = "choice(a, b, ...)"
        raise _fail(message, call.name_span, note=f"write `{opt.name} = {instead}`")
    if len(positional) != 2:
        where = positional[2].span if len(positional) > 2 else call.span
        raise _fail(f"{name}(...) takes two bounds, got {len(positional)}", where, note=f"write {form}")

    low_value, high_value = positional
    low, high = coerce(low_value, opt), coerce(high_value, opt)
    if name == "int" and kind == "count":  # counts are floats ("40 K"); the domain's are whole
        for item, bound in zip(positional, (low, high)):
            if bound != int(bound):
                raise _fail(f"int(...) takes whole numbers, got {_text(item)}", item.span)
        low, high = int(low), int(high)
    if not low < high:
        raise _fail(
            f"empty search domain: {name}(...) needs low < high, got {_text(low_value)} and {_text(high_value)}",
            call.span,
        )
    if (name == "loguniform" or log) and low <= 0:
        written = "int(..., log = true)" if log else f"{name}(...)"
        raise _fail(
            f"{written} needs a low bound above 0, got {_text(low_value)}",
            low_value.span,
            note="a log scale starts above 0; uniform(low, high) includes 0",
        )
    return Domain(name, low, high, log=log, span=call.span)


def _coerce_choice(call: ast.Call, opt: Option) -> Domain:
    positional = call.positional
    if len(positional) < 2:
        raise _fail(
            f"choice(...) needs at least two values, got {len(positional)}",
            call.span,
            note=f"a single value is written as it is: `{opt.name} = value`",
        )
    choices: list[Any] = []
    for item in positional:
        value = coerce(item, opt)
        for j, earlier in enumerate(choices):
            if value == earlier:
                first = positional[j].span
                raise _fail(
                    f"choice(...) lists {_text(item)} twice", item.span, note=f"first at {first.line}:{first.column}"
                )
        choices.append(value)
    return Domain("choice", choices=tuple(choices), span=call.span)


def _text(value: ast.Value) -> str:
    """A value as written (a number with its unit), for messages."""
    if isinstance(value, ast.Number):
        return value.text
    if isinstance(value, ast.Name):
        return value.value
    if isinstance(value, ast.String):
        return f'"{value.value}"'
    return "this value"


def coerce_settings(
    settings: Sequence[ast.Setting],
    schema: Sequence[Option],
    *,
    what: str,
    span: ast.Span | None,
    fill_defaults: bool = True,
    errors: list[Diagnostic] | None = None,
    domains: bool = False,
) -> dict[str, Any]:
    """Check and convert a list of settings against a schema.

    Unknown and duplicate keys, missing required keys and bad values are errors. With
    `errors`, every problem is appended and the valid part returned; otherwise the first raises.
    With `domains` (a pass's options), values may be search domains (see `coerce`).
    """
    by_name = {o.name: o for o in schema}
    seen: dict[str, ast.Setting] = {}
    result: dict[str, Any] = {}

    def report(diag: Diagnostic) -> None:
        if errors is None:
            raise OptionError(diag)
        errors.append(diag)

    for setting in settings:
        opt = by_name.get(setting.key)
        if opt is None:
            known = ", ".join(by_name) or "none"
            report(
                Diagnostic(f"unknown setting '{setting.key}' for {what}", setting.key_span, f"known settings: {known}")
            )
            continue
        if setting.key in seen:
            first = seen[setting.key].key_span
            report(
                Diagnostic(
                    f"duplicate setting '{setting.key}'", setting.key_span, f"first set at {first.line}:{first.column}"
                )
            )
            continue
        seen[setting.key] = setting
        try:
            result[setting.key] = coerce(setting.value, opt, domains=domains)
        except OptionError as err:
            report(err.diagnostic)
    for opt in schema:
        if opt.name in seen:  # given (its value may have been reported as bad)
            continue
        if opt.required:
            report(Diagnostic(f"missing required setting '{opt.name}' for {what}", span, opt.doc or None))
        elif fill_defaults:
            result[opt.name] = opt.default
    ordered = {o.name: result[o.name] for o in schema if o.name in result}
    return ordered


def configure(owner: str, schema: Sequence[Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of `schema` with its value: `given` ones checked, defaults filled in.

    For objects configured from Python (passes, cost models); unknown or missing options
    raise TypeError naming `owner`, e.g. "pass 'train'".
    """
    names = [o.name for o in schema]
    unknown = set(given) - set(names)
    if unknown:
        raise TypeError(f"{owner} has no option(s) {sorted(unknown)}; known: {sorted(names)}")
    missing = [o.name for o in schema if o.required and o.name not in given]
    if missing:
        raise TypeError(f"{owner} needs option(s) {missing}")
    return {o.name: given.get(o.name, o.default) for o in schema}


def format_value(value: Any) -> str:
    """Print a typed value back in the language's syntax (base units), so that it re-parses equal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return f"{value:.1f}"
        return repr(value)
    if isinstance(value, str):
        if _NAME_RE.match(value):
            return value
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, CallValue):
        inner = ",".join(f"{k}={format_value(v)}" for k, v in value.args)
        return f"{value.name}({inner})"
    if isinstance(value, Domain):
        return value.describe(format_value)
    if isinstance(value, tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    raise TypeError(f"cannot print option value {value!r}")


def format_option(opt: Option, value: Any) -> str:
    if isinstance(value, Domain):  # its bounds or choices, each as the option prints a value
        return value.describe(lambda item: format_option(opt, item))
    if opt.kind == "int_range":
        return f"{value[0]}..{value[1]}"
    if opt.kind in ("time", "bytes", "flops"):
        return format_value(float(value)) + BASE_UNIT[opt.kind]
    if opt.kind == "path":
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if opt.kind == "call" and opt.calls is not None:
        schema = {o.name: o for o in opt.calls[value.name]}
        inner = ",".join(f"{k}={format_option(schema[k], v)}" for k, v in value.args)
        return f"{value.name}({inner})"
    return format_value(value)
