"""Report sections: what a pass shows of its work in the artifact's report.md and report.html.

A pass returns `Section`s from `Pass.report(metrics)`; the driver renders each one into both
reports, so a plug-in pass gets a section, tables and plots exactly as the built-ins do. A
section is a title and a sequence of blocks: paragraphs (Markdown text; in the HTML page only
`code` spans are rendered), `Table`s and `Figure`s. A figure is drawn by the pass's own function
on a matplotlib ``Axes`` when report.html is written; report.md names it by its caption.

Nothing here imports matplotlib: the driver does, when it renders.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]

    def markdown(self) -> list[str]:
        return markdown_table(self.header, self.rows)


@dataclass(frozen=True)
class Figure:
    """A plot: `draw(ax)` draws it on a matplotlib ``Axes`` of `size` inches."""

    caption: str
    draw: Callable[[Any], None]
    size: tuple[float, float] = (7.0, 3.2)


Block = Union[str, Table, Figure]


@dataclass(frozen=True)
class Section:
    title: str
    blocks: Sequence[Block] = ()

    def markdown(self) -> list[str]:
        """The section's body as report.md lines (its title is the caller's to render)."""
        lines: list[str] = []
        for block in self.blocks:
            if lines:
                lines.append("")
            if isinstance(block, Table):
                lines += block.markdown()
            elif isinstance(block, Figure):
                lines.append(f"*Figure (in report.html): {block.caption}*")
            else:
                lines.append(block)
        return lines


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
