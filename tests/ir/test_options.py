from __future__ import annotations

import pytest

from adl.dsl import ast
from adl.ir.budgets import Verdict, evaluate
from adl.ir.options import Option, OptionError, coerce, format_option
from adl.ir.spec import Budget

SPAN = ast.Span(1, 1, 1, 2)


def num(value, unit=None):
    return ast.Number(value, unit, SPAN, f"{value} {unit or ''}".strip())


@pytest.mark.parametrize(
    "kind, value, expected",
    [
        ("time", num(200, "us"), 2e-4),
        ("time", num(1.5, "s"), 1.5),
        ("bytes", num(64, "KB"), 64_000),
        ("bytes", num(2, "KiB"), 2048),
        ("fraction", num(50, "%"), 0.5),
        ("fraction", num(0.25), 0.25),
        ("flops", num(3, "MFLOPs"), 3e6),
        ("count", num(40, "K"), 40e3),
        ("count", num(7), 7),
    ],
)
def test_units_normalise_to_base_units(kind, value, expected):
    assert coerce(value, Option("x", kind)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "kind, value, message",
    [
        ("time", num(5, "KB"), "wrong unit 'KB' for 'x': expected a time"),
        ("time", num(5), "'x' needs a unit"),
        ("fraction", num(1.5), "must be a fraction"),
        ("int", num(2.5), "must be an integer"),
        ("int", num(2, "ms"), "takes a plain number"),
        ("bool", ast.Name("yes", SPAN), "must be true or false"),
        ("int_range", ast.RangeValue(num(8), num(2), SPAN), "empty range 8..2"),
    ],
)
def test_bad_values_are_rejected_with_a_message(kind, value, message):
    with pytest.raises(OptionError, match=message):
        coerce(value, Option("x", kind))


def test_bounds_are_enforced():
    with pytest.raises(OptionError, match="at least 1"):
        coerce(num(0), Option("epochs", "int", low=1))
    with pytest.raises(OptionError, match="at most 2"):
        coerce(ast.ListValue((num(1), num(3)), SPAN), Option("strides", "int_list", high=2))


def test_an_integer_option_without_a_bound_of_its_own_stops_at_int_limit():
    assert coerce(num(2**31 - 1), Option("dm", "int")) == 2**31 - 1
    with pytest.raises(OptionError, match=r"^'dm' must be at most 2147483647, got 2147483648$"):
        coerce(num(2**31), Option("dm", "int"))
    with pytest.raises(OptionError, match="at most 2147483647"):
        coerce(ast.ListValue((num(1), num(2**64)), SPAN), Option("hidden", "int_list"))
    assert coerce(num(2**40), Option("big", "int", high=2**40)) == 2**40  # a declared bound wins


@pytest.mark.parametrize(
    "option, shown",
    [
        (Option("epochs", "int", low=1, high=1000), "1..1000"),
        (Option("dm", "int"), "<= 2147483647"),
        (Option("lr", "float", low=0.0), ">= 0.0"),
        (Option("scale", "float"), "-"),
        (Option("schedule", "name", choices=("cosine",)), "-"),
    ],
)
def test_the_accepted_range_is_described_as_it_is_enforced(option, shown):
    assert option.describe_range() == shown


def test_a_quantity_past_the_float_range_is_an_error():
    with pytest.raises(OptionError, match=r"^'x' is out of range: 1e\+300 GB$"):
        coerce(num(1e300, "GB"), Option("x", "bytes"))


@pytest.mark.parametrize(
    "kind, value, text",
    [
        ("time", 2e-4, "0.0002s"),
        ("bytes", 64000.0, "64000.0B"),
        ("int_range", (2, 8), "2..8"),
        ("path", "a b.npz", '"a b.npz"'),
        ("bool", True, "true"),
        ("int_list", (3, 5), "[3,5]"),
    ],
)
def test_values_print_in_the_language(kind, value, text):
    assert format_option(Option("x", kind), value) == text


def test_budget_verdicts_and_margins():
    latency = Budget("latency", "<=", 1e-3, "1 ms", "ms")
    accuracy = Budget("accuracy", ">=", 0.95, "95 %", "%")
    size = Budget("size", "<=", 1000, "1 KB", "KB")
    verdicts = evaluate([latency, accuracy, size], {"latency_s": 1.5e-3, "accuracy": 0.97})
    assert [v.holds for v in verdicts] == [False, True, False]
    assert verdicts[0].margin_text == "misses by 0.5 ms"
    assert verdicts[1].margin_text == "2 % to spare"
    assert verdicts[2].measured is None and verdicts[2].measured_text == "not measured"
    assert Verdict(Budget("latency", "<", 1e-3, "1 ms", "ms"), 1e-3).holds is False
