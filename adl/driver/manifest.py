"""The artifact's `manifest.json` (schema-versioned) and its human summary `report.md`."""

from __future__ import annotations

import hashlib
import math
import numbers
from typing import Any, Sequence

from adl.ir.budgets import Verdict
from adl.ir.module import Module
from adl.ir.pipeline import Pipeline
from adl.ir.report import Section, markdown_table

SCHEMA_VERSION = 1


def build_manifest(
    module: Module,
    pipeline: Pipeline,
    dataset: Any,
    verdicts: Sequence[Verdict],
    *,
    seed: int,
    version: str,
    cost: dict[str, Any] | None = None,
    budget_plan: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The manifest; `cost` is the driver's `cost_model` record (see `adl.driver.run.price`).
    `library` (lower's record) gains ``sha256``, of the file the artifact carries, when
    `adl.backends.artifact.write_artifact` copies it there."""
    spec = module.spec
    metrics = dict(module.metrics)
    library = metrics.pop("library", None)
    layers = metrics.pop("layers", [])
    history = metrics.pop("train_history", [])
    source = metrics.pop("model_source", None)
    normalised = source is None or source.get("normalize")
    return without_non_finite(
        {
            "schema_version": SCHEMA_VERSION,
            "adl_version": version,
            "spec": {"name": spec.name, "file": "spec.adl", "sha256": hashlib.sha256(spec.source.encode()).hexdigest()},
            "seed": seed,
            "target": {
                "name": spec.target.name,
                **spec.target.tvm_target(),
                **({"rpc": spec.target.rpc, "key": spec.target.key} if spec.target.remote else {}),
            },
            "input": {
                "name": library["input_name"] if library else "x",
                "shape": [1, *dataset.input_shape],
                "dtype": "float32",
                "layout": "NCHW",
                "value_range": list(dataset.value_range),
                "preprocessing": "none: normalisation is compiled into the library"
                if normalised
                else "none: the library takes the imported network's input as it is",
            },
            # where the network came from: an imported file's digest and the layers adl replaced
            "model": source or ({"family": spec.model.family} if spec.model else None),
            "output": {"shape": [1, spec.task.classes], "meaning": "class logits"},
            "data": {
                "source": spec.data.source,
                "fingerprint": dataset.fingerprint(),
                "train_samples": len(dataset.y_train),
                "test_samples": len(dataset.y_test),
                "validation_samples": len(dataset.y_val) if dataset.has_validation else 0,
            },
            "pipeline": str(pipeline),
            "library": library,
            "tuning": {
                "method": spec.target.tune.name,
                **spec.target.tune.as_dict(),
                "report": library.get("tuning") if library else None,
            },
            "metrics": metrics,
            "budgets": [v.as_dict() for v in verdicts],
            "budget_plan": budget_plan or [],
            "all_budgets_hold": all(v.holds for v in verdicts),
            "layers": layers,
            "cost_model": cost,
            "passes": [
                {
                    "name": r.name,
                    "pass": r.pipeline_text,
                    "key": r.key,
                    "seconds": round(r.seconds, 3),
                    "reused": r.reused,
                }
                for r in module.log
            ],
            "training": {"history": history},
        }
    )


def without_non_finite(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with every NaN or infinite number written as null (JSON has neither), and, if
    there were any, `non_finite` naming each one's place and value, e.g.
    ``{"metrics.max_abs_diff": "NaN"}``: a measurement that failed shows as one, not as a number."""
    found: dict[str, str] = {}
    clean = _finite(manifest, "", found)
    return {**clean, "non_finite": found} if found else clean


def _finite(value: Any, path: str, found: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v, f"{path}.{k}" if path else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_finite(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and not math.isfinite(value):
        found[path] = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return None
    return value


LAYER_COLUMNS = ("layer", "op", "input", "output", "kernel", "params", "MACs", "bits (w/a)")


def layer_rows(manifest: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The manifest's layers as rows of `LAYER_COLUMNS` (report.md and report.html)."""
    return [
        (
            l["name"],
            l["op"],
            "x".join(map(str, l["input_shape"])),
            "x".join(map(str, l["output_shape"])),
            "x".join(map(str, l["kernel"])),
            l["params"],
            l["macs"],
            f"{l.get('weight_bits', 32)}/{l.get('act_bits', 32)}",
        )
        for l in manifest["layers"]
    ]


def _us(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e6:.4g} us"


def render_report(manifest: dict[str, Any], sections: Sequence[Section] = ()) -> str:
    """report.md: budgets, measurements, layers, cost model, then `sections` (what the passes
    report, see `Pass.report`), passes and deployment."""
    m = manifest["metrics"]
    verdict = "every budget holds" if manifest["all_budgets_hold"] else "a budget does NOT hold"
    out = [
        f"# {manifest['spec']['name']}: {verdict}",
        "",
        f"Pipeline `{manifest['pipeline']}` for target `{manifest['target']['name']}` "
        f"({manifest['target']['kind']}, {manifest['target']['num-cores']} cores), seed {manifest['seed']}.",
        "",
    ]
    if manifest["budgets"]:
        out += ["## Budgets", ""]
        out += markdown_table(
            ["metric", "budget", "measured", "verdict"],
            [
                (
                    b["metric"],
                    f"{b['op']} {b['bound_text']}",
                    b["measured_text"],
                    ("holds, " if b["holds"] else "FAILS, ") + b["margin"],
                )
                for b in manifest["budgets"]
            ],
        )
        out.append("")
        out += [
            f"Budget plan: `{s['pass']}` aims at {s['metric']} {_us(s['value'])} ({s['why']})."
            for s in manifest.get("budget_plan") or []
        ]
        if manifest.get("budget_plan"):
            out.append("")
    out += ["## Measurements", ""]
    rows = [(k, v) for k, v in m.items() if not isinstance(v, (dict, list))]
    out += markdown_table(["metric", "value"], rows)
    out += ["", "## Layers", ""]
    out += markdown_table(LAYER_COLUMNS, layer_rows(manifest))
    cost = manifest.get("cost_model")
    if cost and cost.get("predicted_latency_s") is not None:
        out += [
            "",
            "## Cost model",
            "",
            f"`{cost['model']}` predicts {_us(cost['predicted_latency_s'])}"
            + (f", {cost['predicted_energy_j'] * 1e6:.4g} uJ" if cost.get("predicted_energy_j") is not None else "")
            + f", {cost['predicted_memory_bytes']} bytes of memory"
            + (
                f"; measured {_us(cost['measured_latency_s'])} "
                f"(measured / predicted = {cost['measured_over_predicted']:.3g})"
                if cost.get("measured_over_predicted") is not None
                else ""
            )
            + ".",
            "",
        ]
        if any(c.get("measured_s") is not None for c in cost["per_layer"]):
            out += markdown_table(
                ["layer", "predicted", "measured kernel", "bound"],
                [
                    (
                        c["name"],
                        _us(c["latency_s"]),
                        "" if c.get("measured_s") is None else _us(c["measured_s"]),
                        c["bound"],
                    )
                    for c in cost["per_layer"]
                ],
            )
        else:
            out += markdown_table(
                ["layer", "predicted", "bound"],
                [(c["name"], _us(c["latency_s"]), c["bound"]) for c in cost["per_layer"]],
            )
    for section in sections:
        out += ["", f"## {section.title}", "", *section.markdown()]
    out += ["", "## Passes", ""]
    out += markdown_table(
        ["pass", "seconds", "reused"], [(p["pass"], p["seconds"], p["reused"]) for p in manifest["passes"]]
    )
    inp = manifest["input"]
    out += [
        "",
        "## Deploying",
        "",
        f"Input `{inp['name']}`: {inp['dtype']} {inp['shape']} ({inp['layout']}), raw values in "
        f"{inp['value_range']}; {inp['preprocessing']}. Run with `adl run <this folder> --input x.npy` or "
        "`adl.load(path)` (TVM runtime only).",
        "",
    ]
    return "\n".join(out)
