"""Compiler-style diagnostics: `file:line:col: error: message`, the source line, a caret."""

from __future__ import annotations

from dataclasses import dataclass

from adl.dsl.ast import Span

MAX_SHOWN = 8  # keep a report on one screen
MAX_LINE = 120  # a longer source line is shown as a window around the caret
MAX_MESSAGE = 400  # a longer message (a huge name quoted in it) is cut in the middle


@dataclass(frozen=True)
class Diagnostic:
    message: str
    span: Span | None = None
    note: str | None = None  # a second line: a hint or the list of valid choices


class AdlError(Exception):
    """A user-facing error in a spec (or a pipeline string). Rendering never shows a traceback."""

    def __init__(
        self,
        diagnostics: list[Diagnostic] | Diagnostic,
        *,
        filename: str = "<spec>",
        source: str = "",
    ) -> None:
        self.diagnostics = [diagnostics] if isinstance(diagnostics, Diagnostic) else list(diagnostics)
        self.filename = filename
        self.source = source
        super().__init__(self.render())

    @classmethod
    def at(
        cls, message: str, span: Span | None, *, filename: str = "<spec>", source: str = "", note: str | None = None
    ) -> "AdlError":
        return cls(Diagnostic(message, span, note), filename=filename, source=source)

    @property
    def message(self) -> str:
        return self.diagnostics[0].message

    def render(self) -> str:
        lines = self.source.split("\n")  # as the parser counts lines (not at \f, \u2028, ...)
        out: list[str] = []
        for diag in self.diagnostics[:MAX_SHOWN]:
            out.extend(_render_one(diag, self.filename, lines))
        hidden = len(self.diagnostics) - MAX_SHOWN
        if hidden > 0:
            out.append(f"... and {hidden} more error{'s' if hidden > 1 else ''}")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.render()


def _render_one(diag: Diagnostic, filename: str, lines: list[str]) -> list[str]:
    where = _clip(printable(filename))
    message = _clip(printable(diag.message))
    if diag.span is None:
        out = [f"{where}: error: {message}"]
    else:
        span = diag.span
        out = [f"{where}:{span.line}:{span.column}: error: {message}"]
        if 1 <= span.line <= len(lines):
            out.extend(_source_excerpt(lines[span.line - 1], span))
    if diag.note:
        out.append(f"  note: {_clip(printable(diag.note))}")
    return out


def _source_excerpt(line: str, span: Span) -> list[str]:
    """The source line and a caret under the span; a long line is cut to a window around it."""
    line = line.removesuffix("\r")
    gutter = f"{span.line:>4} | "
    end = span.end_column if span.end_line == span.line else len(line) + 1
    start = 0 if len(line) <= MAX_LINE else max(0, min(span.column - 1, len(line)) - MAX_LINE // 3)
    # one character for one: the caret stays under its column
    shown = "".join(c if c.isprintable() else " " if c == "\t" else "?" for c in line[start : start + MAX_LINE])
    column = span.column - start
    width = max(1, min(end - span.column, len(shown) - column + 1))
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + MAX_LINE < len(line) else ""
    caret = " " * (len(gutter) - 2) + "| " + " " * (len(prefix) + column - 1) + "^" + "~" * (width - 1)
    return [gutter + prefix + shown + suffix, caret]


def printable(text: str) -> str:
    """`text` with control characters, lone surrogates and the like escaped (\\x1b, \\udcff), so that
    a file name or a string from a spec cannot garble the terminal it is printed on."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _clip(text: str) -> str:
    if len(text) <= MAX_MESSAGE:
        return text
    half = MAX_MESSAGE // 2
    return f"{text[:half]} ... {text[-half:]}"
