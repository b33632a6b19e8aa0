"""Text -> AST. Syntax errors become `AdlError`s that read like a compiler's."""

from __future__ import annotations

import functools
import math
import re
import sys
from dataclasses import dataclass
from importlib import resources

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from adl.dsl import ast
from adl.dsl.ast import Span
from adl.dsl.errors import AdlError

BLOCK_KEYWORDS = ("spec", "task", "data", "model", "target", "constraints", "pipeline")
MAX_DEPTH = 32  # lists and calls nest at most this deep (the tree is transformed recursively)
MAX_SPEC_BYTES = 1 << 20  # a spec is a page of text; 1 MiB is far past any real one
BOM = "\ufeff"

# How a terminal is named in an error message.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "UNIT": "a unit",
    "COMPARE": "a comparison ('<=', '>=', '<' or '>')",
    "EQUAL": "'='",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "__ANON_0": "'..'",
    "$END": "end of input",
}
_BLOCK_TERMINALS = {k.upper() for k in BLOCK_KEYWORDS}


@functools.lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = resources.files("adl.dsl").joinpath("grammar.lark").read_text()
    return Lark(
        grammar, parser="lalr", propagate_positions=True, start=["start", "pipeline_text"], maybe_placeholders=False
    )


def parse(text: str, filename: str = "<spec>") -> ast.SpecFile:
    """Parse a whole spec into its AST (no semantic checks). A leading byte-order mark is skipped."""
    text = text.removeprefix(BOM)
    if len(text) > MAX_SPEC_BYTES:  # characters: at least as many bytes
        raise AdlError.at(f"spec is larger than {MAX_SPEC_BYTES >> 20} MiB", None, filename=filename)
    items = _transform(_run(text, filename, "start"), text, filename)
    return ast.SpecFile(
        items=tuple(items.children if isinstance(items, Tree) else items), filename=filename, source=text
    )


def parse_pipeline_text(text: str, filename: str = "<pipeline>") -> tuple[ast.Stage, ...]:
    """Parse the textual pipeline form, e.g. ``nas{strategy=proxyless},train,lower``."""
    return tuple(_transform(_run(text, filename, "pipeline_text"), text, filename).children)


def _run(text: str, filename: str, start: str) -> Tree:
    _check_nesting(text, filename)
    try:
        return _parser().parse(text, start=start)
    except UnexpectedInput as err:
        raise _syntax_error(err, text, filename) from None


def _transform(tree: Tree, text: str, filename: str):
    """The AST of a parse tree; an `AdlError` raised by a rule (a number out of range) passes through."""
    try:
        return _ToAst(text, filename).transform(tree)
    except VisitError as err:
        if isinstance(err.orig_exc, AdlError):
            raise err.orig_exc from None
        raise


# brackets outside strings and comments (an unterminated string runs to the end of its line)
_BRACKETS = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[\[\]()]')


def _check_nesting(text: str, filename: str) -> None:
    """Refuse lists and calls nested deeper than MAX_DEPTH before parsing.

    Parsing such text is slow and transforming its tree overflows Python's stack; a scan of
    the brackets is cheap. The caret is on the first bracket too deep.
    """
    depth = 0
    for match in _BRACKETS.finditer(text):
        bracket = match.group()
        if bracket in "[(":
            depth += 1
            if depth > MAX_DEPTH:
                line, column = _line_column(text, match.start())
                raise AdlError.at(
                    f"nesting deeper than {MAX_DEPTH} levels",
                    Span.point(line, column),
                    filename=filename,
                    source=text,
                    note=f"lists and calls may nest at most {MAX_DEPTH} deep",
                )
        elif bracket in "])":
            depth = max(0, depth - 1)


def _line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset, counting lines as the parser does (at \\n)."""
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - line_start + 1


def _span_of(node: Tree | Token) -> Span:
    if isinstance(node, Token):
        return Span(node.line, node.column, node.end_line, node.end_column)
    meta = node.meta
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    out, i = [], 0
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], body[i + 1]))
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def _number(token: Token, source: str, filename: str) -> int | float:
    """The value of a NUMBER token; one past a 64-bit float's range (1e999, 400 digits) is an error at it."""
    text = str(token)
    value = float(text)
    if not math.isfinite(value):
        raise AdlError.at(
            "number out of range",
            _span_of(token),
            filename=filename,
            source=source,
            note=f"numbers must be finite and at most {sys.float_info.max:.1e} in magnitude",
        )
    if any(c in text for c in ".eE"):
        return value
    # below 1.8e308, so at most 309 digits once leading zeros go (int() refuses more than 4300)
    digits = int(text.lstrip("+-").lstrip("0") or "0")
    return -digits if text.startswith("-") else digits


@dataclass(frozen=True)
class _Args:
    """A call's arguments while the tree is transformed: the named ones and the positional ones."""

    named: tuple[ast.Setting, ...]
    positional: tuple[ast.Value, ...]


POSITIONAL_MESSAGE = "positional argument: write `name = value`"


@v_args(meta=True)
class _ToAst(Transformer):
    """One method per grammar rule; each builds the AST node with its span."""

    def __init__(self, source: str, filename: str) -> None:
        super().__init__()
        self._source = source
        self._filename = filename

    @staticmethod
    def _span(meta) -> Span:
        return Span(meta.line, meta.column, meta.end_line, meta.end_column)

    def _error(self, message: str, span: Span, note: str | None = None) -> AdlError:
        return AdlError.at(message, span, filename=self._filename, source=self._source, note=note)

    def spec_block(self, meta, children):
        (name,) = children
        return ast.SpecName(str(name), _span_of(name), Span(meta.line, meta.column, meta.line, meta.column + 4))

    def _block(self, meta, children):
        keyword, *rest = children
        head = None
        settings: tuple[ast.Setting, ...] = ()
        for child in rest:
            if isinstance(child, tuple):
                settings = child
            elif isinstance(child, Token):
                head = ast.Name(str(child), _span_of(child))
            else:
                head = child
        if isinstance(head, ast.Call) and head.positional:
            raise self._error(
                POSITIONAL_MESSAGE,
                head.positional[0].span,
                note=f"a block's head takes settings, e.g. `{keyword} {head.name}(name = value)`",
            )
        return ast.Block(str(keyword), _span_of(keyword), head, settings, self._span(meta))

    task_block = data_block = model_block = target_block = _block

    def body(self, meta, children):
        return tuple(children)

    def setting(self, meta, children):
        key, value = children
        if isinstance(value, Token):  # a bare NAME that `?value` inlined
            value = ast.Name(str(value), _span_of(value))
        return ast.Setting(str(key), _span_of(key), value, self._span(meta))

    def constraints_block(self, meta, children):
        keyword, *constraints = children
        return ast.ConstraintsBlock(_span_of(keyword), tuple(constraints), self._span(meta))

    def constraint(self, meta, children):
        metric, op, bound = children
        return ast.Constraint(str(metric), _span_of(metric), str(op), _span_of(op), bound, self._span(meta))

    def pipeline_block(self, meta, children):
        keyword, *stages = children
        return ast.PipelineBlock(_span_of(keyword), tuple(stages), self._span(meta))

    def stage(self, meta, children):
        name, *parts = children
        settings: list[ast.Setting] = []
        for part in parts:
            if isinstance(part, _Args):
                if part.positional:
                    raise self._error(
                        POSITIONAL_MESSAGE,
                        part.positional[0].span,
                        note=f"a pass's options are named, e.g. `{name}(option = value)`",
                    )
                part = part.named
            settings.extend(part)
        return ast.Stage(str(name), _span_of(name), tuple(settings), self._span(meta))

    def text_stage(self, meta, children):
        name, *settings = children
        return ast.Stage(str(name), _span_of(name), tuple(settings), self._span(meta))

    def quantity(self, meta, children):
        number, *unit = children
        text = self._source_text(meta)
        value = _number(number, self._source, self._filename)
        return ast.Number(value, str(unit[0]) if unit else None, self._span(meta), text)

    def range(self, meta, children):
        low, high = (ast.Number(_number(t, self._source, self._filename), None, _span_of(t), str(t)) for t in children)
        return ast.RangeValue(low, high, self._span(meta))

    def string(self, meta, children):
        return ast.String(_unquote(str(children[0])), self._span(meta))

    def name(self, meta, children):
        return ast.Name(str(children[0]), self._span(meta))

    def list(self, meta, children):
        items = tuple(ast.Name(str(c), _span_of(c)) if isinstance(c, Token) else c for c in children)
        return ast.ListValue(items, self._span(meta))

    def call(self, meta, children):
        name, args = children
        return ast.Call(str(name), _span_of(name), args.named, self._span(meta), args.positional)

    def args(self, meta, children):
        named: list[ast.Setting] = []
        positional: list[ast.Value] = []
        for child in children:
            if isinstance(child, ast.Setting):
                named.append(child)
                continue
            value = ast.Name(str(child), _span_of(child)) if isinstance(child, Token) else child
            if named:
                raise self._error(
                    "positional argument after a named one",
                    value.span,
                    note="write positional arguments first, e.g. `int(8, 256, log = true)`",
                )
            positional.append(value)
        return _Args(tuple(named), tuple(positional))

    def _source_text(self, meta) -> str:
        """The node's text as written (spread over lines: joined by single spaces); a slice of the
        source, so that the texts of all numbers cost time linear in the source's length."""
        text = self._source[meta.start_pos : meta.end_pos]
        return text if meta.line == meta.end_line else " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Syntax errors


def _describe(expected: set[str]) -> str:
    if {"NUMBER", "STRING", "NAME"} <= expected:
        return "a value"
    words = set()
    if expected & _BLOCK_TERMINALS:
        words.add("a block (" + ", ".join(BLOCK_KEYWORDS) + ")")
        expected = expected - _BLOCK_TERMINALS
    for terminal in expected:
        words.add(_TERMINAL_WORDS.get(terminal, terminal.lower()))
    ordered = sorted(words)
    if len(ordered) == 1:
        return ordered[0]
    return ", ".join(ordered[:-1]) + " or " + ordered[-1]


def _found(token: Token) -> str:
    if token.type == "$END":
        return "end of input"
    return f"'{token}'"


def _last_unclosed_brace(text: str) -> tuple[int, int] | None:
    """Line/column of the innermost `{` still open at the end of `text` (strings, comments skipped)."""
    stack: list[tuple[int, int]] = []
    line, col, i = 1, 1, 0
    in_string = False
    while i < len(text):
        c = text[i]
        if in_string:
            if c == "\\":
                i, col = i + 1, col + 1
            elif c == '"':
                in_string = False
        elif c == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif c == '"':
            in_string = True
        elif c == "{":
            stack.append((line, col))
        elif c == "}" and stack:
            stack.pop()
        if c == "\n":
            line, col = line + 1, 1
        else:
            col += 1
        i += 1
    return stack[-1] if stack else None


def _offset(text: str, token: Token) -> int:
    return token.start_pos if token.start_pos is not None else len(text)


def _end_span(text: str) -> Span:
    """Just past the last character (of the last line: a final newline starts none)."""
    lines = text.split("\n")
    if len(lines) > 1 and not lines[-1]:
        lines.pop()
    return Span.point(len(lines), len(lines[-1].removesuffix("\r")) + 1)


def _syntax_error(err: UnexpectedInput, text: str, filename: str) -> AdlError:
    def fail(message: str, span: Span, note: str | None = None) -> AdlError:
        return AdlError.at(message, span, filename=filename, source=text, note=note)

    if isinstance(err, UnexpectedCharacters):
        char = text[err.pos_in_stream] if err.pos_in_stream < len(text) else ""
        if char == '"':
            return fail("unterminated string", Span.point(err.line, err.column))
        return fail(f"unexpected character '{char}'", Span.point(err.line, err.column))

    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        expected = set(err.expected)
        brace = _last_unclosed_brace(text)
        if "RBRACE" in expected and brace is not None:
            return fail(
                "unexpected end of input: missing '}'",
                _end_span(text),
                note=f"the block opened at {brace[0]}:{brace[1]} is not closed",
            )
        return fail(f"unexpected end of input: expected {_describe(expected)}", _end_span(text))

    assert isinstance(err, UnexpectedToken)
    token = err.token
    span = _span_of(token)
    expected = set(err.expected)
    previous = err.token_history[-1] if err.token_history else None
    after = f" after '{previous}'" if previous is not None else ""

    if previous is not None and previous.type == "NAME" and str(previous) in BLOCK_KEYWORDS:
        # A block keyword was taken as a name: a name or a '}' before it is missing.
        brace = _last_unclosed_brace(text[: _offset(text, previous)])
        if brace is not None:
            return fail(
                f"expected '}}' before '{previous}'",
                _span_of(previous),
                note=f"the block opened at {brace[0]}:{brace[1]} is not closed",
            )
        return fail(
            f"'{previous}' is a block keyword, not a name",
            _span_of(previous),
            note="a name is missing before it, e.g. `spec my_spec`",
        )
    if expected == {"EQUAL"}:
        return fail(f"expected '='{after}", span)
    if (
        "EQUAL" in expected
        and previous is not None
        and previous.type == "NAME"
        and token.type in ("NUMBER", "STRING", "NAME", "LSQB")
    ):
        # `f(lr 0.1)`: a call's argument may be a bare name too, but a value after it means a missing '='
        return fail(f"expected '='{after}", span)
    if token.type == "EQUAL" and previous is not None and previous.type in ("NUMBER", "STRING"):
        # `f(10 = x)`: a positional value where a setting's name belongs
        return fail(
            f"expected a setting name, found {_found(previous)}",
            _span_of(previous),
            note="a setting is written `name = value`",
        )
    if token.type == "EQUAL" and previous is not None and previous.type == "NAME":
        return fail(f"'=' is not allowed here: '{previous}' is not a setting in this position", span)
    if token.type == "UNIT":
        return fail(f"unexpected unit '{token}'", span)
    if expected <= {"NAME", "RBRACE", "COMMA", "UNIT"} and token.type in ("NUMBER", "STRING"):
        return fail(f"expected a setting name, found {_found(token)}", span, note="a setting is written `name = value`")
    if "COMPARE" in expected and len(expected) == 1:
        return fail(f"expected a comparison ('<=', '>=', '<' or '>'){after}, found {_found(token)}", span)
    if expected & _BLOCK_TERMINALS and token.type == "NAME":
        return fail(f"unknown block '{token}'", span, note="blocks are: " + ", ".join(BLOCK_KEYWORDS))
    return fail(f"expected {_describe(expected)}{after}, found {_found(token)}", span)


__all__ = ["parse", "parse_pipeline_text", "BLOCK_KEYWORDS", "VisitError"]
