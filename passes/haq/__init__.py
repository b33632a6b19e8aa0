"""The `haq` pass: hardware-aware mixed-precision quantization (Wang et al., "HAQ", CVPR 2019).

    pipeline {
      train
      haq { bits = 2..8  budget = latency  fraction = 0.7 }
      lower
    }

A DDPG agent (`adl.passes.rl.ddpg`, shared with `amc`) picks each Conv2d/Linear layer's weight
and activation bit widths in `bits` (`env.py`: the paper's state embedding); the widths are
then lowered one bit at a time, layer by layer, until the target's cost model says the
network fits the budget (`budget.py`). Each episode's policy is scored by the validation
accuracy of the fake-quantized network (`model.py`: BatchNorm folded, per-channel weight
scales, calibrated activation ranges). The best policy is fine-tuned with quantization-aware
training (straight-through estimators, the `train` loop) and frozen for deployment
(`lowering.py`): layers at <= 8 bits on a CPU target compute in u8 x s8 -> s32 in the
TVM library (`adl.models.integer`), the others in float32 on quantized values, each with its
reason in the manifest. The weight codes are also written bit-packed (`weights.packed.npz`
in the artifact: b bits per weight).

The budget is `fraction` of what the network costs with every layer at the highest width of
`bits`; without `fraction`, a latency budget is the spec's `latency` budget if it declares
one, else 0.7 of the highest-width latency (HAQ's headline: 1.4x faster than 8 bits).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from adl.compiler.files import atomic_path, atomic_write_text
from adl.compiler.module import Module
from adl.compiler.options import Option
from adl.compiler.passes import Pass, PassContext, PassError
from adl.passes.train import finetune, finetune_options, scoring_images_note

POLICY_FILE = "haq_policy.json"
PACKED_FILE = "weights.packed.npz"
DEFAULT_FRACTION = 0.7


class HaqPass(Pass):
    name = "haq"
    summary = "mixed-precision quantization under a latency, energy or size budget, the widths found by DDPG (HAQ)"
    options = (
        Option("bits", "int_range", (2, 8), "the bit widths the agent may choose from", low=1, high=16),
        Option("budget", "name", "latency", "the resource the cost model prices against the budget",
               choices=("latency", "energy", "size")),
        Option("fraction", "fraction", None, "budget = this fraction of the cost at the highest width "
               f"(default: the spec's latency budget, else {DEFAULT_FRACTION})", low=0.0, high=1.0),
        Option("search", "name", "ddpg", "ddpg (the HAQ agent) or fixed (highest width, lowered until it fits)",
               choices=("ddpg", "fixed")),
        Option("episodes", "int", 300, "search episodes (each quantizes and scores one network)", low=1, high=1_000_000),
        Option("warmup", "int", 100, "episodes of random actions before the agent acts", low=0, high=1_000_000),
        Option("calibration", "name", "percentile", "how activation ranges are calibrated",
               choices=("minmax", "percentile", "kl")),
        Option("mode", "name", "linear", "linear: per-channel integer codes; kmeans: shared centroids "
               "(HAQ's second mode, not lowered to integer arithmetic)", choices=("linear", "kmeans")),
        Option("val_samples", "int", 500, "images that score policies: from the data's validation split, "
               "else from the training split", low=10, high=10_000_000),
        *finetune_options(5, 0.0005, "quantization-aware fine-tuning"),
    )
    requires = ("trained",)
    ensures = ("model", "trained", "quantized")

    def latency_factor(self, spec: Any) -> float:
        """A latency budget's fraction of the highest-width latency (1.0 when the budget is the
        spec's own latency constraint, or not latency)."""
        if self.config["budget"] != "latency":
            return 1.0
        if self.config["fraction"] is not None:
            return self.config["fraction"]
        from adl.compiler.budget_plan import latency_budget

        return 1.0 if latency_budget(spec) is not None else DEFAULT_FRACTION

    def run(self, module: Module, ctx: PassContext) -> Module:
        import numpy as np
        import torch

        from adl.passes.haq.budget import BitPolicy, BudgetUnreachable, quantized_layers
        from adl.passes.haq.lowering import deployable_model
        from adl.passes.haq.model import quantize_model
        from adl.passes.haq.search import HaqConfig, HaqResult, SearchData, deployed_layers, run_haq
        if "quantized" in module.facts:
            raise PassError("the network is already quantized (one haq pass per pipeline)")
        dataset = ctx.dataset()
        low, high = self.config["bits"]
        resource = self.config["budget"]
        torch.set_num_threads(max(1, ctx.spec.target.cores or 1))
        model = module.model.eval()
        layers = deployed_layers(model, tuple(dataset.input_shape))
        n = len(quantized_layers(layers))
        if n == 0:
            raise PassError("the network has no Conv2d or Linear layer to quantize")
        cost = self._cost(layers, resource, ctx)
        highest, lowest = cost(BitPolicy.uniform(n, high)), cost(BitPolicy.uniform(n, low))
        budget, source = self._budget(ctx, resource, highest)
        if resource != "size" and not lowest < highest:
            raise PassError(f"the cost model '{ctx.cost_model.name}' prices every width in {low}..{high} the same "
                            f"{resource} ({highest:.4g}), so bits cannot buy {resource}: use a cost model that "
                            "models bit widths (bitserial) or budget = size")
        if lowest > budget:
            raise PassError(str(BudgetUnreachable(resource, lowest, budget)) + f" (budget: {source})")
        config = HaqConfig(low=low, high=high, episodes=self.config["episodes"], warmup=self.config["warmup"],
                           strategy="fixed" if self.config["search"] == "fixed" else "ddpg",
                           calibration=self.config["calibration"], mode=self.config["mode"],
                           val_samples=self.config["val_samples"], seed=ctx.seed)
        data = SearchData.split(dataset, config.val_samples, config.calibration_samples, config.seed)

        policy_path = ctx.state_dir() / POLICY_FILE
        if policy_path.exists():  # a compile cut off during fine-tuning: the search is done
            saved = json.loads(policy_path.read_text())
            result = HaqResult(BitPolicy(*map(tuple, saved["policy"])), BitPolicy(*map(tuple, saved["proposed"])),
                               saved["accuracy"], saved["full_precision_accuracy"], saved["history"])
            ctx.log("haq: reusing the policy found before the interruption")
        else:
            ctx.log(scoring_images_note("haq", dataset, config.val_samples))
            result = run_haq(model, layers, data, config, cost, budget, resource=resource, progress=ctx.progress)
            atomic_write_text(policy_path, json.dumps({
                "policy": [list(result.policy.weight_bits), list(result.policy.act_bits)],
                "proposed": [list(result.proposed.weight_bits), list(result.proposed.act_bits)],
                "accuracy": result.accuracy, "full_precision_accuracy": result.full_precision_accuracy,
                "history": result.history}))
        chosen = cost(result.policy)
        ctx.log(f"haq: {resource} {chosen / highest:.1%} of {high}-bit; validation accuracy "
                f"{result.full_precision_accuracy:.4f} -> {result.accuracy:.4f} before fine-tuning")

        fake = quantize_model(model, result.policy, data.calibration, method=config.calibration, mode=config.mode)
        finetuning: dict[str, Any] = {"epochs": self.config["finetune"], "history": []}
        if self.config["finetune"] > 0:
            trained = finetune(fake, ctx, self.config)
            fake, finetuning["history"] = trained.model, trained.history
        fake.eval()
        deployment = deployable_model(fake, ctx.spec.target.kind)
        deployed, decisions, packed = deployment
        packed_path = ctx.output_dir() / PACKED_FILE
        with atomic_path(packed_path) as tmp:
            np.savez(tmp, **packed)

        x_test = torch.from_numpy(np.ascontiguousarray(dataset.x_test, dtype=np.float32))
        with torch.inference_mode():
            simulated, integer = fake(x_test).argmax(1).numpy(), deployed(x_test).argmax(1).numpy()
        accuracy = float(np.mean(integer == dataset.y_test))
        finetuning["test_accuracy"] = float(np.mean(simulated == dataset.y_test))
        weights = sum(d.weights for d in decisions)
        names = [layers[i].name for i in quantized_layers(layers)]
        return module.evolve(model=deployed).with_files(packed_weights=str(packed_path)).with_metrics(
            torch_accuracy=accuracy, haq={
                "search": config.strategy, "bits": [low, high], "resource": resource, "budget": budget,
                "budget_source": source, "mode": config.mode, "calibration": config.calibration,
                "episodes": config.episodes if config.strategy == "ddpg" else 0,
                "cost": {"highest_bits": highest, "lowest_bits": lowest, "chosen": chosen,
                         "proposed": cost(result.proposed)},
                "budget_met": chosen <= budget * (1 + 1e-9),
                "policy": [{"layer": name, "weight_bits": w, "act_bits": a} for name, w, a in
                           zip(names, result.policy.weight_bits, result.policy.act_bits)],
                "lowering": [d.as_dict() for d in decisions],
                "integer_layers": sum(d.arithmetic == "int8" for d in decisions),
                "integer_handoffs": [{"producer": h.producer, "consumers": list(h.consumers), "codes": [h.low, h.high]}
                                     for h in deployment.handoffs],
                **({"handoff_note": deployment.handoff_note} if deployment.handoff_note else {}),
                "weight_bytes": {"float32": 4 * weights, "int8": weights,
                                 "packed": sum(d.packed_bytes for d in decisions)},
                "val_accuracy_full_precision": result.full_precision_accuracy,
                "val_accuracy_quantized": result.accuracy,
                "finetune": finetuning,
                "test_agreement_deployed_vs_simulated": float(np.mean(integer == simulated)),
                "history": result.history,
            }).establish("quantized", "trained")

    def _cost(self, layers: Any, resource: str, ctx: PassContext) -> Any:
        from adl.passes.haq.budget import apply_policy, cost_function

        if resource == "size":  # weight bytes at each layer's width: no cost model (or timing) needed
            return lambda policy: float(sum(layer.weight_bytes for layer in apply_policy(layers, policy)))
        if ctx.cost_model is None:
            raise PassError(f"a {resource} budget needs the target's cost model")
        return cost_function(layers, ctx.cost, resource)

    def _budget(self, ctx: PassContext, resource: str, highest: float) -> tuple[float, str]:
        fraction = self.config["fraction"]
        if fraction is not None:
            return fraction * highest, f"fraction = {fraction:g} of the {self.config['bits'][1]}-bit {resource}"
        from adl.compiler.budget_plan import latency_budget

        declared = latency_budget(ctx.spec) if resource == "latency" else None
        if declared is not None:
            return declared.value, f"the spec's budget latency {declared.op} {declared.text}"
        return DEFAULT_FRACTION * highest, f"default {DEFAULT_FRACTION:g} of the {self.config['bits'][1]}-bit {resource}"

    def report(self, metrics: Mapping[str, Any]) -> list[str]:
        from adl.compiler.manifest import table

        haq = metrics.get("haq")
        if not haq:
            return []
        sizes = haq["weight_bytes"]
        lines = [f"Search `{haq['search']}` ({haq['episodes']} episodes) over {haq['bits'][0]}..{haq['bits'][1]} bits "
                 f"under {haq['resource']} <= {haq['budget']:.4g} ({haq['budget_source']}): "
                 f"{haq['cost']['chosen'] / haq['cost']['highest_bits']:.1%} of the {haq['bits'][1]}-bit "
                 f"{haq['resource']} ({'budget met' if haq['budget_met'] else 'budget NOT met'}); "
                 f"validation accuracy {haq['val_accuracy_full_precision']:.4f} -> {haq['val_accuracy_quantized']:.4f} "
                 f"before fine-tuning; {haq['integer_layers']} of {len(haq['lowering'])} layers in integer arithmetic, "
                 f"{len(haq.get('integer_handoffs', []))} handing uint8 codes straight to the next; "
                 f"weights {sizes['packed']} B packed ({sizes['float32']} B in float32); deployed and simulated "
                 f"networks agree on {haq['test_agreement_deployed_vs_simulated']:.2%} of the test split.", ""]
        lines += table(["layer", "weight bits", "activation bits", "arithmetic", "why not integer"],
                       [(d["name"], d["weight_bits"], d["act_bits"], d["arithmetic"], d["reason"] or "-")
                        for d in haq["lowering"]])
        return lines
