"""Text -> AST. Syntax errors become `AdlError`s that read like a compiler's."""

from __future__ import annotations

import functools
from importlib import resources

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from adl.dsl import ast
from adl.dsl.ast import Span
from adl.dsl.errors import AdlError

BLOCK_KEYWORDS = ("spec", "task", "data", "model", "target", "constraints", "pipeline")

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
    return Lark(grammar, parser="lalr", propagate_positions=True, start=["start", "pipeline_text"],
                maybe_placeholders=False)


def parse(text: str, filename: str = "<spec>") -> ast.SpecFile:
    """Parse a whole spec into its AST (no semantic checks)."""
    tree = _run(text, filename, "start")
    items = _ToAst(text).transform(tree)
    return ast.SpecFile(items=tuple(items.children if isinstance(items, Tree) else items),
                        filename=filename, source=text)


def parse_pipeline_text(text: str, filename: str = "<pipeline>") -> tuple[ast.Stage, ...]:
    """Parse the textual pipeline form, e.g. ``nas{strategy=proxyless},train,lower``."""
    tree = _run(text, filename, "pipeline_text")
    return tuple(_ToAst(text).transform(tree).children)


def _run(text: str, filename: str, start: str) -> Tree:
    try:
        return _parser().parse(text, start=start)
    except UnexpectedInput as err:
        raise _syntax_error(err, text, filename) from None


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


def _number(token: Token) -> int | float:
    text = str(token)
    if any(c in text for c in ".eE"):
        return float(text)
    return int(text)


@v_args(meta=True)
class _ToAst(Transformer):
    """One method per grammar rule; each builds the AST node with its span."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self._source = source

    @staticmethod
    def _span(meta) -> Span:
        return Span(meta.line, meta.column, meta.end_line, meta.end_column)

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
            settings.extend(part)
        return ast.Stage(str(name), _span_of(name), tuple(settings), self._span(meta))

    def text_stage(self, meta, children):
        name, *settings = children
        return ast.Stage(str(name), _span_of(name), tuple(settings), self._span(meta))

    def quantity(self, meta, children):
        number, *unit = children
        text = self._source_text(meta)
        return ast.Number(_number(number), str(unit[0]) if unit else None, self._span(meta), text)

    def range(self, meta, children):
        low, high = (ast.Number(_number(t), None, _span_of(t), str(t)) for t in children)
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
        return ast.Call(str(name), _span_of(name), args, self._span(meta))

    def args(self, meta, children):
        return tuple(children)

    def _source_text(self, meta) -> str:
        lines = self._source.splitlines()
        if meta.line == meta.end_line and meta.line <= len(lines):
            return lines[meta.line - 1][meta.column - 1:meta.end_column - 1]
        return ""


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
    lines = text.split("\n")
    return sum(len(line) + 1 for line in lines[:token.line - 1]) + token.column - 1


def _end_span(text: str) -> Span:
    lines = text.splitlines() or [""]
    return Span.point(len(lines), len(lines[-1]) + 1)


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
            return fail("unexpected end of input: missing '}'", _end_span(text),
                        note=f"the block opened at {brace[0]}:{brace[1]} is not closed")
        return fail(f"unexpected end of input: expected {_describe(expected)}", _end_span(text))

    assert isinstance(err, UnexpectedToken)
    token = err.token
    span = _span_of(token)
    expected = set(err.expected)
    previous = err.token_history[-1] if err.token_history else None
    after = f" after '{previous}'" if previous is not None else ""

    if previous is not None and previous.type == "NAME" and str(previous) in BLOCK_KEYWORDS:
        # A block keyword was taken as a name: a name or a '}' before it is missing.
        brace = _last_unclosed_brace(text[:_offset(text, previous)])
        if brace is not None:
            return fail(f"expected '}}' before '{previous}'", _span_of(previous),
                        note=f"the block opened at {brace[0]}:{brace[1]} is not closed")
        return fail(f"'{previous}' is a block keyword, not a name", _span_of(previous),
                    note="a name is missing before it, e.g. `spec my_spec`")
    if expected == {"EQUAL"}:
        return fail(f"expected '='{after}", span)
    if token.type == "EQUAL" and previous is not None and previous.type == "NAME":
        return fail(f"'=' is not allowed here: '{previous}' is not a setting in this position", span)
    if token.type == "UNIT":
        return fail(f"unexpected unit '{token}'", span)
    if expected <= {"NAME", "RBRACE", "COMMA", "UNIT"} and token.type in ("NUMBER", "STRING"):
        return fail(f"expected a setting name, found {_found(token)}", span,
                    note="a setting is written `name = value`")
    if "COMPARE" in expected and len(expected) == 1:
        return fail(f"expected a comparison ('<=', '>=', '<' or '>'){after}, found {_found(token)}", span)
    if expected & _BLOCK_TERMINALS and token.type == "NAME":
        return fail(f"unknown block '{token}'", span, note="blocks are: " + ", ".join(BLOCK_KEYWORDS))
    return fail(f"expected {_describe(expected)}{after}, found {_found(token)}", span)


__all__ = ["parse", "parse_pipeline_text", "BLOCK_KEYWORDS", "VisitError"]
