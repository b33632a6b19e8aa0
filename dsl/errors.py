"""Compiler-style diagnostics: `file:line:col: error: message`, the source line, a caret."""

from __future__ import annotations

from dataclasses import dataclass

from adl.dsl.ast import Span

MAX_SHOWN = 8  # keep a report on one screen


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
    def at(cls, message: str, span: Span | None, *, filename: str = "<spec>", source: str = "",
           note: str | None = None) -> "AdlError":
        return cls(Diagnostic(message, span, note), filename=filename, source=source)

    @property
    def message(self) -> str:
        return self.diagnostics[0].message

    def render(self) -> str:
        lines = self.source.splitlines()
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
    if diag.span is None:
        out = [f"{filename}: error: {diag.message}"]
    else:
        span = diag.span
        out = [f"{filename}:{span.line}:{span.column}: error: {diag.message}"]
        if 1 <= span.line <= len(lines):
            text = lines[span.line - 1].expandtabs(1)
            gutter = f"{span.line:>4} | "
            end = span.end_column if span.end_line == span.line else len(text) + 1
            width = max(1, end - span.column)
            out.append(gutter + text)
            out.append(" " * (len(gutter) - 2) + "| " + " " * (span.column - 1) + "^" + "~" * (width - 1))
    if diag.note:
        out.append(f"  note: {diag.note}")
    return out
