"""The `shrink` pass: remove the channels that training zeroed -- whole filters or whole input
channels, as `train { regularizer = ssl(...) }` (Structured Sparsity Learning) leaves them --
and keep a smaller dense network.

    pipeline {
      train  { regularizer = ssl(filters = 0.02) }
      shrink                                   # or shrink { threshold = 1e-3  finetune = 2 }
      lower
    }

The channel groups are `amc`'s (`adl.passes.channels`: residual additions, depthwise
convolutions and concatenations tie channels), so a removed group takes every layer's share of
the channel with it. With `threshold = 0` only exactly zero groups go and the output must not
change: the pass checks it on held-out images and stops if it did (an activation with f(0) != 0
after a zeroed filter). A threshold above 0 also removes near-zero groups (the subgradient form
of SSL leaves them) and reports how far the output moved; `finetune` then recovers it.
"""

from __future__ import annotations

from typing import Any, Mapping

from adl.ir.module import Module
from adl.ir.options import Option
from adl.ir.passes import Pass, PassContext, PassError
from adl.ir.report import Section, Table
from adl.passes.amc import simd_lanes
from adl.passes.train import finetune, finetune_options, pre_compression

EXACT = 1e-4  # float32 logits summed in another order move by ~1e-6 of their scale; a removed live channel far more


class ShrinkPass(Pass):
    name = "shrink"
    summary = "remove the channels training zeroed (SSL's group lasso): a smaller dense network, same output"
    options = (
        Option(
            "threshold",
            "float",
            0.0,
            "also remove groups whose norm is at most this fraction of their layer's largest (0: exact zeros only)",
            low=0.0,
            high=1.0,
        ),
        Option(
            "multiple",
            "int",
            None,
            "kept channel counts are rounded up to multiples of this by keeping zero channels (default: the "
            "target's float32 SIMD lanes, as amc)",
            low=1,
            high=1024,
        ),
        *finetune_options(0, 0.001, "fine-tuning the shrunk network"),
    )
    requires = ("trained",)
    ensures = ("model", "trained", "pruned", "compressed")

    def run(self, module: Module, ctx: PassContext) -> Module:
        import torch

        from adl.ir.layers import describe_model
        from adl.passes.channels import PruningError
        from adl.passes.shrink.removal import output_change, remove_zeroed
        from adl.passes.train.loop import evaluate

        dataset = ctx.dataset()
        torch.set_num_threads(max(1, ctx.spec.target.cores or 1))
        threshold = self.config["threshold"]
        multiple = self.config["multiple"] or simd_lanes(ctx)
        try:
            removal = remove_zeroed(module.model, dataset.input_shape, threshold, multiple)
        except PruningError as err:
            raise PassError(str(err)) from err
        probe = dataset.x_val if dataset.has_validation else dataset.x_train
        change = output_change(module.model, removal.model, probe[:256])
        if threshold == 0 and change > EXACT:
            raise PassError(
                f"shrink: removing the zero channels changed the network's output by {change:.2e} of its "
                "scale: a layer after a zeroed filter maps 0 to something else (an activation with f(0) != 0, "
                "a bias outside the lasso groups); set `threshold` above 0 to remove them anyway and `finetune`"
            )
        shape = (1, *dataset.input_shape)
        before = describe_model(module.model, shape)
        after = describe_model(removal.model, shape)
        costs = {
            "flops": (sum(layer.flops for layer in before), sum(layer.flops for layer in after)),
            "params": (sum(layer.params for layer in before), sum(layer.params for layer in after)),
        }
        ctx.log(
            f"shrink: {removal.zeroed} of {removal.prunable} channels were zero; kept "
            f"{costs['flops'][1] / costs['flops'][0]:.1%} of the FLOPs (output changed by {change:.1e})"
        )
        model = removal.model
        if self.config["finetune"] > 0:
            trained = finetune(model, ctx, self.config, teacher=pre_compression(module))
            model, accuracy = trained.model, trained.test_accuracy
            finetuning = {"epochs": self.config["finetune"], "history": trained.history, "test_accuracy": accuracy}
        else:
            accuracy = evaluate(model, dataset.x_test, dataset.y_test)
            finetuning = {"epochs": 0, "history": [], "test_accuracy": accuracy}
        return (
            module.evolve(model=model, reference=pre_compression(module))
            .with_metrics(
                torch_accuracy=accuracy,
                shrink={
                    "threshold": threshold,
                    "multiple": multiple,
                    "zeroed": removal.zeroed,
                    "prunable": removal.prunable,
                    "channels": removal.channels,
                    "before": {k: v[0] for k, v in costs.items()},
                    "after": {k: v[1] for k, v in costs.items()},
                    "kept": {k: v[1] / v[0] for k, v in costs.items() if v[0]},
                    "output_change": change,
                    "finetune": finetuning,
                },
            )
            .establish("pruned", "trained", "compressed")
        )

    def report(self, metrics: Mapping[str, Any]) -> list[Section]:
        shrink = metrics.get("shrink")
        if not shrink:
            return []
        summary = (
            f"{shrink['zeroed']} of {shrink['prunable']} prunable channels were zero (threshold "
            f"{shrink['threshold']:g}); kept {shrink['kept']['flops']:.1%} of the FLOPs and "
            f"{shrink['kept']['params']:.1%} of the parameters; the output moved by {shrink['output_change']:.1e} "
            f"of its scale; test accuracy {shrink['finetune']['test_accuracy']:.4f}."
        )
        rows = [(name, kept, size, zeroed) for name, (kept, size, zeroed) in shrink["channels"].items()]
        return [
            Section(
                "Removing zeroed channels (`shrink`)", [summary, Table(["channel group", "kept", "of", "zero"], rows)]
            )
        ]
