"""The artifact's `report.html`: one self-contained page (no network: plots are embedded PNGs,
styles inline) rendered from the manifest.

Plots, each drawn only when the pipeline produced its data: training curves (the `train` pass,
then every pass's fine-tuning), each pass's own sections (`Pass.report`: text, tables, plots),
and per-layer latency as the cost model predicts it beside the library's own kernel for that
layer, timed alone. Tables: budgets, measurements, layers, passes.

The page marks itself when loaded (``<body data-loaded="N">`` with N the plots decoded, or
``data-errors`` with what failed), so a headless browser can check that it renders.
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import Any, Callable, Sequence

from adl.driver.manifest import LAYER_COLUMNS, layer_rows
from adl.ir.report import Block, Figure, Section, Table

_CODE = re.compile(r"`([^`]+)`")

__all__ = ["render_html"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; } .holds { color: #176317; } .misses { color: #a11; font-weight: bold; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; } img { max-width: 100%; }
"""

_CHECK = """
window.addEventListener("error", function (e) {
  document.body.dataset.errors = (document.body.dataset.errors || "") + (e.message || "resource failed") + ";";
}, true);
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  if (bad.length) {
    document.body.dataset.errors = (document.body.dataset.errors || "") + bad.length + " plots did not decode;";
  }
  document.body.dataset.loaded = String(imgs.length - bad.length);
});
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(draw: Callable[[Any], None], caption: str, size: tuple[float, float] = (7.0, 3.2)) -> str:
    try:
        import matplotlib
    except ImportError:  # adl installed without its `full` extra: tables only
        return f"<p>(plot omitted, matplotlib is not installed: {html.escape(caption)})</p>"
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _training_plot(manifest: dict[str, Any]) -> str:
    """The `train` history, then each pass's fine-tuning (a pass's metrics ``finetune.history``), in
    pipeline order."""
    metrics = manifest["metrics"]
    curves = [("train", manifest.get("training", {}).get("history") or [])]
    for name in dict.fromkeys(p["name"] for p in manifest["passes"]):
        record = metrics.get(name)
        finetune = record.get("finetune") if isinstance(record, dict) else None
        history = finetune.get("history") if isinstance(finetune, dict) else None
        curves.append((f"{name} fine-tuning", history or []))
    curves = [(label, rows) for label, rows in curves if rows and "loss" in rows[0]]
    if not curves:
        return ""

    def draw(ax: Any) -> None:
        offset = 0
        for label, rows in curves:
            epochs = [offset + row["epoch"] for row in rows]
            ax.plot(epochs, [row["loss"] for row in rows], marker=".", label=label)
            offset = epochs[-1]
        ax.set_xlabel("epoch (passes in pipeline order)")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.legend()

    return "<h2>Training</h2>" + _figure(draw, "Training loss per epoch: the train pass, then each fine-tuning")


def _inline(text: str) -> str:
    """A section's title or paragraph: escaped, with Markdown `code` spans as <code>."""
    return _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(text))


def _block(block: Block) -> str:
    if isinstance(block, Table):
        return _table(block.header, block.rows)
    if isinstance(block, Figure):
        return _figure(block.draw, block.caption, block.size)
    return f"<p>{_inline(block)}</p>"


def _section(section: Section) -> str:
    return f"<h2>{_inline(section.title)}</h2>" + "".join(_block(b) for b in section.blocks)


def _latency_section(cost: dict[str, Any]) -> str:
    per_layer = [row for row in cost.get("per_layer") or [] if row.get("latency_s") is not None]
    if not per_layer:
        return ""
    measured = cost.get("measured_latency_s")
    kernels = cost.get("kernels") or {}
    has_measured = any(row.get("measured_s") is not None for row in per_layer)

    def draw(ax: Any) -> None:
        positions = [float(i) for i in range(len(per_layer))]
        width = 0.4 if has_measured else 0.8
        ax.bar(
            [p - (width / 2 if has_measured else 0) for p in positions],
            [row["latency_s"] * 1e6 for row in per_layer],
            width,
            color="tab:green",
            label="predicted by the cost model",
        )
        if has_measured:
            ax.bar(
                [p + width / 2 for p in positions],
                [(row.get("measured_s") or 0.0) * 1e6 for row in per_layer],
                width,
                color="tab:blue",
                label="measured: the library's kernel, timed alone",
            )
            ax.legend(fontsize=7)
        ax.set_xticks(positions, [row["name"] for row in per_layer], rotation=60, fontsize=7)
        ax.set_ylabel("latency (us)")

    total = cost.get("predicted_latency_s") or 0.0
    text = f"<p>Cost model <code>{html.escape(str(cost.get('model')))}</code> predicts {total * 1e6:.4g} us in all"
    if measured:
        text += (
            f"; the library measured {measured * 1e6:.4g} us ({measured / total:.2f}x the prediction)"
            if total
            else f"; the library measured {measured * 1e6:.4g} us"
        )
    text += "."
    if kernels:
        text += (
            f" Its {kernels['count']} kernels, each timed alone, add up to {kernels['kernels_s'] * 1e6:.4g} us"
            + ("; the rest of the library's time is the VM's dispatch and allocation" if measured else "")
            + "."
        )
        if kernels.get("why_not"):
            text += f" Not attributed to layers: {html.escape(kernels['why_not'])}."
    caption = (
        "Per-layer latency: the cost model's prediction beside the measured kernel of the library"
        if has_measured
        else "Per-layer latency predicted by the target's cost model (the measured figure is the whole library's)"
    )
    rows = [
        (
            row["name"],
            f"{row['latency_s'] * 1e6:.3g}",
            "" if row.get("measured_s") is None else f"{row['measured_s'] * 1e6:.3g}",
            "" if not row.get("measured_s") or not row["latency_s"] else f"{row['measured_s'] / row['latency_s']:.2f}",
        )
        for row in per_layer
    ]
    other = kernels.get("other") or []
    return (
        "<h2>Latency per layer</h2>"
        + text
        + "</p>"
        + _figure(draw, caption)
        + (_table(["layer", "predicted (us)", "measured (us)", "measured / predicted"], rows) if has_measured else "")
        + (
            (
                "<p>Kernels of no layer (layout transforms, stand-alone additions, ...):</p>"
                + _table(["kernel", "measured (us)"], [(k["name"], f"{k['median_s'] * 1e6:.3g}") for k in other])
            )
            if other
            else ""
        )
    )


def render_html(manifest: dict[str, Any], sections: Sequence[Section] = ()) -> str:
    """The report page for `manifest` (see `adl.driver.manifest.build_manifest`) with the passes'
    own `sections` (see `Pass.report`) after the training curves."""
    metrics = manifest["metrics"]
    verdict = "every budget holds" if manifest["all_budgets_hold"] else "BUDGETS MISSED"
    budgets = manifest["budgets"]
    parts = [
        f"<h1>{html.escape(manifest['spec']['name'])}: {verdict}</h1>",
        f"<p>Pipeline <code>{html.escape(manifest['pipeline'])}</code> for target "
        f"<code>{html.escape(manifest['target']['name'])}</code>, seed {manifest['seed']}.</p>",
        "<h2>Budgets</h2>",
        _table(
            ["metric", "budget", "measured", "verdict"],
            [
                (
                    b["metric"],
                    f"{b['op']} {b['bound_text']}",
                    b["measured_text"],
                    ("holds, " if b["holds"] else "") + b["margin"],
                )
                for b in budgets
            ],
            ["holds" if b["holds"] else "misses" for b in budgets],
        )
        if budgets
        else "<p>No budgets.</p>",
        "".join(
            f"<p>Budget plan: <code>{html.escape(s['pass'])}</code> aims at {html.escape(s['metric'])} "
            f"{s['value'] * 1e6:.4g} us ({html.escape(s['why'])}).</p>"
            for s in manifest.get("budget_plan") or []
        ),
        "<h2>Measurements</h2>",
        _table(["metric", "value"], [(k, v) for k, v in metrics.items() if not isinstance(v, (dict, list))]),
    ]
    parts.append(_training_plot(manifest))
    parts += [_section(section) for section in sections]
    if manifest.get("cost_model"):
        parts.append(_latency_section(manifest["cost_model"]))
    parts += [
        "<h2>Layers</h2>",
        _table(LAYER_COLUMNS, layer_rows(manifest)),
        "<h2>Passes</h2>",
        _table(["pass", "seconds", "reused"], [(p["pass"], p["seconds"], p["reused"]) for p in manifest["passes"]]),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(manifest['spec']['name'])} - adl report</title><style>{_STYLE}</style>"
        f"<script>{_CHECK}</script></head>\n<body>\n" + "\n".join(p for p in parts if p) + "\n</body></html>\n"
    )
