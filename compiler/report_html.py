"""The artifact's `report.html`: one self-contained page (no network: plots are embedded PNGs,
styles inline) rendered from the manifest.

Plots, each drawn only when the pipeline produced its data: training curves (the `train`
pass and the fine-tuning of `amc`/`haq`), the NAS search trajectory with its Pareto front
and the chosen point, per-group pruning ratios, per-layer bit widths, and per-layer latency
as the cost model predicts it beside the library's own kernel for that layer, timed alone. Tables: budgets,
measurements, the chosen genotype, layers, passes.

The page marks itself when loaded (``<body data-loaded="N">`` with N the plots decoded, or
``data-errors`` with what failed), so a headless browser can check that it renders.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any, Callable, Sequence

from adl.compiler.manifest import LAYER_COLUMNS, layer_rows

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
  if (bad.length) { document.body.dataset.errors = (document.body.dataset.errors || "") + bad.length + " plots did not decode;"; }
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
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _training_plot(manifest: dict[str, Any]) -> str:
    metrics = manifest["metrics"]
    curves = [("train", manifest.get("training", {}).get("history") or [])]
    for name in ("amc", "haq"):
        curves.append((f"{name} fine-tuning", ((metrics.get(name) or {}).get("finetune") or {}).get("history") or []))
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


def _pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten in both latency (lower) and accuracy (higher), by latency."""
    front, best = [], -1.0
    for latency, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((latency, accuracy))
            best = accuracy
    return front


def _nas_section(nas: dict[str, Any]) -> str:
    out = ["<h2>Architecture search (nas)</h2>",
           f"<p>Strategy <code>{html.escape(nas['strategy'])}</code> over <code>{html.escape(nas['space'])}</code>;"
           f" predicted latency of the found network {nas['predicted_latency_s'] * 1e6:.4g} us"
           + (f", budget {nas['latency_budget_s'] * 1e6:.4g} us" if nas.get("latency_budget_s") else "") + ".</p>"]
    history = [row for row in nas.get("history") or [] if "expected_latency_s" in row and "val_accuracy" in row]
    if history:
        points = [(row["expected_latency_s"] * 1e6, row["val_accuracy"]) for row in history]

        def draw(ax: Any) -> None:
            ax.scatter(*zip(*points), s=18, c=range(len(points)), cmap="viridis", label="per search epoch")
            front = _pareto(points)
            ax.step(*zip(*front), where="post", color="tab:orange", label="Pareto front")
            ax.scatter([nas["predicted_latency_s"] * 1e6], [history[-1]["val_accuracy"]], marker="*", s=200,
                       color="tab:red", label="chosen", zorder=3)
            if nas.get("latency_budget_s"):
                ax.axvline(nas["latency_budget_s"] * 1e6, color="grey", linestyle="--", label="budget")
            ax.set_xlabel("latency (us)")
            ax.set_ylabel("validation accuracy (shared weights)")
            ax.legend(fontsize=8)

        out.append(_figure(draw, "NAS accuracy vs latency: each epoch's derived architecture (expected latency "
                                 "of the architecture distribution), the Pareto front, and the chosen network"))
    genotype = nas.get("genotype") or {}
    if "blocks" in genotype:
        out.append(_table(["block", "op"], list(enumerate(genotype["blocks"]))))
    for cell in ("normal", "reduce"):
        if cell in genotype:
            out.append(f"<p>{cell} cell</p>" + _table(["node", "inputs"], [(i, ", ".join(node)) for i, node in
                                                                          enumerate(genotype[cell])]))
    return "".join(out)


def _amc_section(amc: dict[str, Any]) -> str:
    groups = list(amc["channels"])

    def draw(ax: Any) -> None:
        ratios = [amc["ratios"].get(g, amc["channels"][g][0] / amc["channels"][g][1]) for g in groups]
        ax.bar(range(len(groups)), ratios, color="tab:blue")
        ax.set_xticks(range(len(groups)), groups, rotation=60, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("channels kept")

    kept = ", ".join(f"{k} {v:.1%}" for k, v in amc["kept"].items())
    return ("<h2>Channel pruning (amc)</h2>" + f"<p>Kept {html.escape(kept)}.</p>"
            + _figure(draw, "Fraction of each channel group kept by the AMC policy"))


def _haq_section(haq: dict[str, Any]) -> str:
    layers = [row["layer"] for row in haq["policy"]]

    def draw(ax: Any) -> None:
        x = range(len(layers))
        ax.bar([i - 0.2 for i in x], [row["weight_bits"] for row in haq["policy"]], width=0.4, label="weights")
        ax.bar([i + 0.2 for i in x], [row["act_bits"] for row in haq["policy"]], width=0.4, label="activations")
        ax.set_xticks(list(x), layers, rotation=60, fontsize=7)
        ax.set_ylabel("bits")
        ax.legend(fontsize=8)

    rows = [(d["name"], d["weight_bits"], d["act_bits"], d["arithmetic"], d["reason"] or "-") for d in haq["lowering"]]
    return ("<h2>Mixed precision (haq)</h2>"
            + _figure(draw, "Bit widths per layer chosen by the HAQ policy")
            + _table(["layer", "weight bits", "activation bits", "arithmetic", "why not integer"], rows))


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
        ax.bar([p - (width / 2 if has_measured else 0) for p in positions], [row["latency_s"] * 1e6 for row in per_layer],
               width, color="tab:green", label="predicted by the cost model")
        if has_measured:
            ax.bar([p + width / 2 for p in positions], [(row.get("measured_s") or 0.0) * 1e6 for row in per_layer], width,
                   color="tab:blue", label="measured: the library's kernel, timed alone")
            ax.legend(fontsize=7)
        ax.set_xticks(positions, [row["name"] for row in per_layer], rotation=60, fontsize=7)
        ax.set_ylabel("latency (us)")

    total = cost.get("predicted_latency_s") or 0.0
    text = f"<p>Cost model <code>{html.escape(str(cost.get('model')))}</code> predicts {total * 1e6:.4g} us in all"
    if measured:
        text += f"; the library measured {measured * 1e6:.4g} us ({measured / total:.2f}x the prediction)" if total \
            else f"; the library measured {measured * 1e6:.4g} us"
    text += "."
    if kernels:
        text += (f" Its {kernels['count']} kernels, each timed alone, add up to {kernels['kernels_s'] * 1e6:.4g} us"
                 + ("; the rest of the library's time is the VM's dispatch and allocation" if measured else "") + ".")
        if kernels.get("why_not"):
            text += f" Not attributed to layers: {html.escape(kernels['why_not'])}."
    caption = ("Per-layer latency: the cost model's prediction beside the measured kernel of the library"
               if has_measured else "Per-layer latency predicted by the target's cost model (the measured figure is "
                                    "the whole library's)")
    rows = [(row["name"], f"{row['latency_s'] * 1e6:.3g}",
             "" if row.get("measured_s") is None else f"{row['measured_s'] * 1e6:.3g}",
             "" if not row.get("measured_s") or not row["latency_s"] else f"{row['measured_s'] / row['latency_s']:.2f}")
            for row in per_layer]
    other = kernels.get("other") or []
    return ("<h2>Latency per layer</h2>" + text + "</p>" + _figure(draw, caption)
            + (_table(["layer", "predicted (us)", "measured (us)", "measured / predicted"], rows) if has_measured
               else "")
            + (("<p>Kernels of no layer (layout transforms, stand-alone additions, ...):</p>"
                + _table(["kernel", "measured (us)"], [(k["name"], f"{k['median_s'] * 1e6:.3g}") for k in other]))
               if other else ""))


def render_html(manifest: dict[str, Any]) -> str:
    """The report page for `manifest` (see `adl.compiler.manifest.build_manifest`)."""
    metrics = manifest["metrics"]
    verdict = "every budget holds" if manifest["all_budgets_hold"] else "BUDGETS MISSED"
    budgets = manifest["budgets"]
    parts = [f"<h1>{html.escape(manifest['spec']['name'])}: {verdict}</h1>",
             f"<p>Pipeline <code>{html.escape(manifest['pipeline'])}</code> for target "
             f"<code>{html.escape(manifest['target']['name'])}</code>, seed {manifest['seed']}.</p>",
             "<h2>Budgets</h2>",
             _table(["metric", "budget", "measured", "verdict"],
                    [(b["metric"], f"{b['op']} {b['bound_text']}", b["measured_text"],
                      ("holds, " if b["holds"] else "") + b["margin"]) for b in budgets],
                    ["holds" if b["holds"] else "misses" for b in budgets]) if budgets else "<p>No budgets.</p>",
             "".join(f"<p>Budget plan: <code>{html.escape(s['pass'])}</code> aims at {html.escape(s['metric'])} "
                     f"{s['value'] * 1e6:.4g} us ({html.escape(s['why'])}).</p>" for s in manifest.get("budget_plan") or []),
             "<h2>Measurements</h2>",
             _table(["metric", "value"], [(k, v) for k, v in metrics.items() if not isinstance(v, (dict, list))])]
    parts.append(_training_plot(manifest))
    if metrics.get("nas"):
        parts.append(_nas_section(metrics["nas"]))
    if metrics.get("amc"):
        parts.append(_amc_section(metrics["amc"]))
    if metrics.get("haq"):
        parts.append(_haq_section(metrics["haq"]))
    if manifest.get("cost_model"):
        parts.append(_latency_section(manifest["cost_model"]))
    parts += ["<h2>Layers</h2>",
              _table(LAYER_COLUMNS, layer_rows(manifest)),
              "<h2>Passes</h2>",
              _table(["pass", "seconds", "reused"], [(p["pass"], p["seconds"], p["reused"]) for p in manifest["passes"]])]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(manifest['spec']['name'])} - adl report</title><style>{_STYLE}</style>"
            f"<script>{_CHECK}</script></head>\n<body>\n" + "\n".join(p for p in parts if p) + "\n</body></html>\n")
