"""AST of the adl language. Every node carries the `Span` of the text it came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Span:
    """A region of source text: 1-based line/column of its first and one-past-last character."""

    line: int
    column: int
    end_line: int
    end_column: int

    @staticmethod
    def point(line: int, column: int, width: int = 1) -> "Span":
        return Span(line, column, line, column + max(width, 1))

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


@dataclass(frozen=True)
class Number:
    value: float | int
    unit: str | None
    span: Span
    text: str  # as written, unit included: "0.2 ms"


@dataclass(frozen=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True)
class Name:
    value: str
    span: Span


@dataclass(frozen=True)
class ListValue:
    items: tuple["Value", ...]
    span: Span


@dataclass(frozen=True)
class RangeValue:
    low: Number
    high: Number
    span: Span


@dataclass(frozen=True)
class Setting:
    key: str
    key_span: Span
    value: "Value"
    span: Span


@dataclass(frozen=True)
class Call:
    """`name(a, b, key = value)`: `args` are the named arguments, `positional` the values written
    before them (only a search domain takes those: `loguniform(1e-4, 1e-1)`)."""

    name: str
    name_span: Span
    args: tuple[Setting, ...]
    span: Span
    positional: tuple["Value", ...] = ()


Value = Union[Number, String, Name, ListValue, RangeValue, Call]


@dataclass(frozen=True)
class Block:
    """`KEYWORD [head] [{ settings }]`, e.g. `data digits { split = 0.8 }` or `model cnn(width = 2)`."""

    keyword: str
    keyword_span: Span
    head: Name | Call | None
    settings: tuple[Setting, ...]
    span: Span


@dataclass(frozen=True)
class SpecName:
    name: str
    span: Span  # of the name
    keyword_span: Span


@dataclass(frozen=True)
class Constraint:
    metric: str
    metric_span: Span
    op: str
    op_span: Span
    bound: Number
    span: Span


@dataclass(frozen=True)
class ConstraintsBlock:
    keyword_span: Span
    constraints: tuple[Constraint, ...]
    span: Span


@dataclass(frozen=True)
class Stage:
    """One pipeline entry: `amc(flops = 50 %)`, `train { epochs = 20 }` or just `lower`."""

    name: str
    name_span: Span
    settings: tuple[Setting, ...]
    span: Span


@dataclass(frozen=True)
class PipelineBlock:
    keyword_span: Span
    stages: tuple[Stage, ...]
    span: Span


TopLevel = Union[SpecName, Block, ConstraintsBlock, PipelineBlock]


@dataclass(frozen=True)
class SpecFile:
    items: tuple[TopLevel, ...]
    filename: str
    source: str
