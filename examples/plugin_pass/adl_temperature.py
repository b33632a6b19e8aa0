"""`temperature`: calibrate the classifier's confidence by temperature scaling (Guo et al.,
"On Calibration of Modern Neural Networks", ICML 2017) -- an example of a pass written
outside adl and registered through the `adl.passes` entry point.

One scalar T > 0 divides the logits; it is fitted by minimising the negative log-likelihood
on half of the test split (the even-indexed samples) and judged on the other half (NLL and
expected calibration error, ECE). Dividing by T never changes the arg-max, so accuracy is
untouched; the division is part of the model, so `lower` compiles it into the library.

It uses the whole public pass contract (`adl.ir`): options, requires/ensures, a report section
with a table and a plot (`Pass.report`), and a file the artifact carries (`Pass.artifact_files`:
``calibration.json`` with the fitted T and the reliability bins).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from adl.ir.files import atomic_write_text
from adl.ir.module import Module
from adl.ir.options import Option
from adl.ir.passes import Pass, PassContext, PassError
from adl.ir.report import Figure, Section, Table


def expected_calibration_error(probs: Any, labels: Any, bins: int) -> float:
    """ECE: the |accuracy - confidence| gap of equal-width confidence bins, weighted by their size."""
    import numpy as np

    confidence, predicted = probs.max(1), probs.argmax(1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += inside.mean() * abs((predicted[inside] == labels[inside]).mean() - confidence[inside].mean())
    return float(ece)


class TemperaturePass(Pass):
    name = "temperature"
    summary = "temperature scaling: fit one logit divisor on held-out data so confidences match accuracy"
    options = (
        Option("bins", "int", 15, "confidence bins of the expected calibration error", low=2),
        Option("steps", "int", 100, "L-BFGS iterations fitting log T", low=1),
    )
    requires = ("trained",)
    ensures = ("model", "calibrated")
    artifact_files = {"calibration": "calibration.json"}  # Module.files key -> file in the artifact

    def run(self, module: Module, ctx: PassContext) -> Module:
        import numpy as np
        import torch

        dataset = ctx.dataset()
        if len(dataset.y_test) < 4:
            raise PassError(f"temperature: the test split has {len(dataset.y_test)} samples; it needs at least 4")
        model = module.model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(np.ascontiguousarray(dataset.x_test))).double()
        labels = torch.from_numpy(np.asarray(dataset.y_test, dtype=np.int64))
        fit, judge = slice(0, None, 2), slice(1, None, 2)

        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=self.config["steps"], line_search_fn="strong_wolfe")

        def nll() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(logits[fit] / log_t.exp(), labels[fit])
            loss.backward()
            return loss

        optimizer.step(nll)
        temperature = float(log_t.detach().exp())
        if not np.isfinite(temperature) or temperature <= 0:
            raise PassError(f"temperature: the fit diverged (T = {temperature})")

        def judged(t: float) -> dict[str, float]:
            scaled = logits[judge] / t
            probs = torch.softmax(scaled, 1).numpy()
            return {
                "nll": float(torch.nn.functional.cross_entropy(scaled, labels[judge])),
                "ece": expected_calibration_error(probs, labels[judge].numpy(), self.config["bins"]),
                "bins": reliability_bins(probs, labels[judge].numpy(), self.config["bins"]),
            }

        before, after = judged(1.0), judged(temperature)
        ctx.log(f"temperature: T = {temperature:.3f}; held-out ECE {before['ece']:.4f} -> {after['ece']:.4f}")
        calibrated = _fold_into_last_linear(model, temperature, logits, dataset.x_test)
        record = {
            "t": temperature,
            "before": before,
            "after": after,
            "fitted_on": int(len(labels[fit])),
            "judged_on": int(len(labels[judge])),
        }
        path = ctx.output_dir() / "calibration.json"
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        return (
            module.evolve(model=calibrated)
            .with_files(calibration=str(path))
            .with_metrics(temperature=record)
            .establish("calibrated")
        )

    def report(self, metrics: Mapping[str, Any]) -> list[Section]:
        """A section of the artifact's report.md and report.html: the fit, a reliability diagram and
        its table (the same contract the built-in passes use)."""
        t = metrics.get("temperature")
        if not t:
            return []
        summary = (
            f"Logits divided by T = {t['t']:.3f} (fitted on {t['fitted_on']} test samples). On the other "
            f"{t['judged_on']}: NLL {t['before']['nll']:.4f} -> {t['after']['nll']:.4f}, "
            f"ECE {t['before']['ece']:.4f} -> {t['after']['ece']:.4f}. The fit is in `calibration.json`."
        )
        rows = [
            (f"{b['low']:.2f}-{b['high']:.2f}", b["count"], f"{b['confidence']:.3f}", f"{b['accuracy']:.3f}")
            for b in t["after"]["bins"]
            if b["count"]
        ]
        return [
            Section(
                "Calibration (`temperature`)",
                [
                    summary,
                    Figure(
                        "Reliability: accuracy against confidence per bin, before and after "
                        "temperature scaling (the diagonal is perfect calibration)",
                        lambda ax: _draw_reliability(ax, t),
                    ),
                    Table(["confidence bin", "samples", "mean confidence", "accuracy"], rows),
                ],
            )
        ]


def _draw_reliability(ax: Any, t: Mapping[str, Any]) -> None:
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for label, judged in (("before (T = 1)", t["before"]), (f"after (T = {t['t']:.2f})", t["after"])):
        bins = [b for b in judged["bins"] if b["count"]]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o", label=label)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)


def reliability_bins(probs: Any, labels: Any, bins: int) -> list[dict[str, float]]:
    """Per equal-width confidence bin: its edges, samples, mean confidence and accuracy."""
    import numpy as np

    confidence, predicted = probs.max(1), probs.argmax(1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        count = int(inside.sum())
        out.append(
            {
                "low": float(lo),
                "high": float(hi),
                "count": count,
                "confidence": float(confidence[inside].mean()) if count else 0.0,
                "accuracy": float((predicted[inside] == labels[inside]).mean()) if count else 0.0,
            }
        )
    return out


def _fold_into_last_linear(model: Any, temperature: float, logits: Any, x: Any) -> Any:
    """A copy of `model` whose last Linear layer's weight and bias are divided by `temperature`:
    logits / T at no run-time cost. Checked on `x`; a model whose logits do not come straight
    from its last Linear layer is refused."""
    import copy

    import numpy as np
    import torch

    scaled = copy.deepcopy(model)
    linears = [m for m in scaled.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise PassError("temperature: the model has no Linear layer to fold the temperature into")
    with torch.no_grad():
        linears[-1].weight.div_(temperature)
        if linears[-1].bias is not None:
            linears[-1].bias.div_(temperature)
        got = scaled(torch.from_numpy(np.ascontiguousarray(x))).double()
    if not torch.allclose(got, logits / temperature, rtol=1e-4, atol=1e-4):
        raise PassError(
            "temperature: the model's logits are not the output of its last Linear layer, so the "
            "temperature cannot be folded into it"
        )
    return scaled
