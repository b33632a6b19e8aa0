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

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from adl.ir.files import atomic_path
from adl.ir.module import Module
from adl.ir.options import Option
from adl.ir.passes import Pass, PassContext, PassError
from adl.ir.report import Section
from adl.ir.search_state import load_search_state, save_search_state, search_key
from adl.passes.train import finetune, finetune_options, pre_compression, scoring_images_note

if TYPE_CHECKING:
    from torch import nn

    from adl.passes.haq.budget import BitPolicy
    from adl.passes.haq.lowering import Deployment
    from adl.passes.haq.search import HaqConfig, HaqResult, SearchData

POLICY_FILE = "haq_policy.json"
PACKED_FILE = "weights.packed.npz"
DEFAULT_FRACTION = 0.7


class HaqPass(Pass):
    name = "haq"
    summary = "mixed-precision quantization under a latency, energy or size budget, the widths found by DDPG (HAQ)"
    options = (
        Option("bits", "int_range", (2, 8), "the bit widths the agent may choose from", low=1, high=16),
        Option(
            "budget",
            "name",
            "latency",
            "the resource the cost model prices against the budget",
            choices=("latency", "energy", "size"),
        ),
        Option(
            "fraction",
            "fraction",
            None,
            "budget = this fraction of the cost at the highest width "
            f"(default: the spec's latency budget, else {DEFAULT_FRACTION})",
            low=0.0,
            high=1.0,
        ),
        Option(
            "search",
            "name",
            "ddpg",
            "ddpg (the HAQ agent) or fixed (highest width, lowered until it fits)",
            choices=("ddpg", "fixed"),
        ),
        Option(
            "episodes", "int", 300, "search episodes (each quantizes and scores one network)", low=1, high=1_000_000
        ),
        Option("warmup", "int", 100, "episodes of random actions before the agent acts", low=0, high=1_000_000),
        Option(
            "calibration",
            "name",
            "percentile",
            "how activation ranges are calibrated",
            choices=("minmax", "percentile", "kl"),
        ),
        Option(
            "mode",
            "name",
            "linear",
            "linear: per-channel integer codes; kmeans: shared centroids "
            "(HAQ's second mode, not lowered to integer arithmetic)",
            choices=("linear", "kmeans"),
        ),
        Option(
            "val_samples",
            "int",
            500,
            "images that score policies: from the data's validation split, else from the training split",
            low=10,
            high=10_000_000,
        ),
        *finetune_options(5, 0.0005, "quantization-aware fine-tuning"),
    )
    artifact_files = {"packed_weights": "weights.packed.npz"}  # the weight codes, bit-packed per layer
    requires = ("trained",)
    ensures = ("model", "trained", "quantized", "compressed")

    def latency_factor(self, spec: Any) -> float:
        """A latency budget's fraction of the highest-width latency (1.0 when the budget is the
        spec's own latency constraint, or not latency)."""
        if self.config["budget"] != "latency":
            return 1.0
        if self.config["fraction"] is not None:
            return self.config["fraction"]
        from adl.ir.budget_plan import latency_budget

        return 1.0 if latency_budget(spec) is not None else DEFAULT_FRACTION

    def run(self, module: Module, ctx: PassContext) -> Module:
        import torch

        from adl.passes.haq.lowering import deployable_model
        from adl.passes.haq.search import SearchData

        if "quantized" in module.facts:
            raise PassError("the network is already quantized (one haq pass per pipeline)")
        dataset = ctx.dataset()
        torch.set_num_threads(max(1, ctx.spec.target.cores or 1))
        model = module.model.eval()
        pricing = self._pricing(model, dataset, ctx)
        config = self._search_config(ctx)
        data = SearchData.split(dataset, config.val_samples, config.calibration_samples, config.seed)
        result = self._search_policy(model, pricing, data, config, ctx)
        chosen = self._price_choice(pricing, result, ctx)
        fake, finetune_history = self._finetune(model, result, data, config, ctx, pre_compression(module))
        deployment = deployable_model(fake, ctx.spec.target.kind)
        packed_path = self._pack(deployment.packed, ctx)
        scores = _test_scores(fake, deployment.model, dataset)
        metrics = self._metrics(config, pricing, result, chosen, deployment, finetune_history, scores)
        return (
            module.evolve(model=deployment.model, reference=pre_compression(module))
            .with_files(packed_weights=str(packed_path))
            .with_metrics(torch_accuracy=scores.deployed_accuracy, haq=metrics)
            .establish("quantized", "trained", "compressed")
        )

    def _pricing(self, model: nn.Module, dataset: Any, ctx: PassContext) -> _Pricing:
        """The layers a policy assigns bits to, what they cost at the lowest and highest widths and the
        budget; refuses a network with nothing to quantize and a budget bits cannot reach."""
        from adl.passes.haq.budget import BitPolicy, quantized_layers
        from adl.passes.haq.search import deployed_layers

        low, high = self.config["bits"]
        resource = self.config["budget"]
        layers = deployed_layers(model, tuple(dataset.input_shape))
        n = len(quantized_layers(layers))
        if n == 0:
            raise PassError("the network has no Conv2d or Linear layer to quantize")
        cost = self._cost(layers, resource, ctx)
        highest, lowest = cost(BitPolicy.uniform(n, high)), cost(BitPolicy.uniform(n, low))
        budget, source = self._budget(ctx, resource, highest)
        pricing = _Pricing(layers, resource, cost, highest, lowest, budget, source)
        self._check_reachable(pricing, ctx)
        return pricing

    def _check_reachable(self, pricing: _Pricing, ctx: PassContext) -> None:
        from adl.passes.haq.budget import BudgetUnreachable

        low, high = self.config["bits"]
        resource = pricing.resource
        if resource != "size" and not pricing.lowest < pricing.highest:
            raise PassError(
                f"the cost model '{ctx.cost_model.name}' prices every width in {low}..{high} the same "
                f"{resource} ({pricing.highest:.4g}), so bits cannot buy {resource}: use a cost model "
                "that models bit widths (bitserial) or budget = size"
            )
        if pricing.lowest > pricing.budget:
            raise PassError(
                str(BudgetUnreachable(resource, pricing.lowest, pricing.budget)) + f" (budget: {pricing.source})"
            )

    def _search_config(self, ctx: PassContext) -> HaqConfig:
        from adl.passes.haq.search import HaqConfig

        low, high = self.config["bits"]
        return HaqConfig(
            low=low,
            high=high,
            episodes=self.config["episodes"],
            warmup=self.config["warmup"],
            strategy="fixed" if self.config["search"] == "fixed" else "ddpg",
            calibration=self.config["calibration"],
            mode=self.config["mode"],
            val_samples=self.config["val_samples"],
            seed=ctx.seed,
        )

    def _search_policy(
        self, model: nn.Module, pricing: _Pricing, data: SearchData, config: HaqConfig, ctx: PassContext
    ) -> HaqResult:
        """The search's `HaqResult`: the one saved by this compile before it was cut off (during
        fine-tuning), else a new search's, saved before it is used."""
        from adl.passes.haq.search import run_haq

        key = search_key(ctx.current_key, asdict(config))
        saved = load_search_state(ctx.state_dir(), POLICY_FILE, key)
        if saved is not None:
            result = _result_from_state(saved)
            ctx.log("haq: reusing the policy found before the interruption")
            return result
        ctx.log(scoring_images_note("haq", ctx.dataset(), config.val_samples))
        result = run_haq(
            model,
            pricing.layers,
            data,
            config,
            pricing.cost,
            pricing.budget,
            resource=pricing.resource,
            progress=ctx.progress,
        )
        save_search_state(ctx.state_dir(), POLICY_FILE, key, _state_of_result(result))
        return result

    def _price_choice(self, pricing: _Pricing, result: HaqResult, ctx: PassContext) -> float:
        """The chosen policy's cost, logged; priced once, as a measured cost model may answer otherwise twice."""
        chosen = pricing.cost(result.policy)
        ctx.log(
            f"haq: {pricing.resource} {chosen / pricing.highest:.1%} of {self.config['bits'][1]}-bit; validation "
            f"accuracy {result.full_precision_accuracy:.4f} -> {result.accuracy:.4f} before fine-tuning"
        )
        return chosen

    def _finetune(
        self,
        model: nn.Module,
        result: HaqResult,
        data: SearchData,
        config: HaqConfig,
        ctx: PassContext,
        teacher: nn.Module,
    ) -> tuple[nn.Module, list[dict[str, Any]]]:
        """The network fake-quantized to the chosen policy, after quantization-aware fine-tuning (if
        any), in eval mode; the fine-tuning history."""
        from adl.passes.haq.model import quantize_model

        fake = quantize_model(model, result.policy, data.calibration, method=config.calibration, mode=config.mode)
        history: list[dict[str, Any]] = []
        if self.config["finetune"] > 0:
            trained = finetune(fake, ctx, self.config, teacher=teacher)
            fake, history = trained.model, trained.history
        fake.eval()
        return fake, history

    def _pack(self, packed: Mapping[str, Any], ctx: PassContext) -> Path:
        """The bit-packed weight codes, written to the pass's output folder."""
        import numpy as np

        packed_path = ctx.output_dir() / PACKED_FILE
        with atomic_path(packed_path) as tmp:
            np.savez(tmp, **packed)
        return packed_path

    def _metrics(
        self,
        config: HaqConfig,
        pricing: _Pricing,
        result: HaqResult,
        chosen: float,
        deployment: Deployment,
        finetune_history: list[dict[str, Any]],
        scores: _TestScores,
    ) -> dict[str, Any]:
        """The `haq` metrics (and so the manifest's)."""
        return {
            "search": config.strategy,
            "bits": [config.low, config.high],
            "resource": pricing.resource,
            "budget": pricing.budget,
            "budget_source": pricing.source,
            "mode": config.mode,
            "calibration": config.calibration,
            "episodes": config.episodes if config.strategy == "ddpg" else 0,
            "cost": {
                "highest_bits": pricing.highest,
                "lowest_bits": pricing.lowest,
                "chosen": chosen,
                "proposed": pricing.cost(result.proposed),
            },
            "budget_met": chosen <= pricing.budget * (1 + 1e-9),
            "policy": _policy_rows(pricing.layers, result.policy),
            **_lowering_metrics(deployment),
            "val_accuracy_full_precision": result.full_precision_accuracy,
            "val_accuracy_quantized": result.accuracy,
            "finetune": {
                "epochs": self.config["finetune"],
                "history": finetune_history,
                "test_accuracy": scores.simulated_accuracy,
            },
            "test_agreement_deployed_vs_simulated": scores.agreement,
            "history": result.history,
        }

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
        from adl.ir.budget_plan import latency_budget

        declared = latency_budget(ctx.spec) if resource == "latency" else None
        if declared is not None:
            return declared.value, f"the spec's budget latency {declared.op} {declared.text}"
        bits = self.config["bits"][1]
        return DEFAULT_FRACTION * highest, f"default {DEFAULT_FRACTION:g} of the {bits}-bit {resource}"

    def report(self, metrics: Mapping[str, Any]) -> list[Section]:
        from adl.passes.haq.report import sections

        return sections(metrics["haq"]) if metrics.get("haq") else []


@dataclass(frozen=True)
class _Pricing:
    """What the search trades accuracy against: a resource's cost function and its budget."""

    layers: list[Any]  # the deployed layers (BatchNorm folded), `LayerDesc`s
    resource: str  # latency | energy | size
    cost: Callable[[BitPolicy], float]
    highest: float  # the cost with every layer at the highest width
    lowest: float  # ... at the lowest width
    budget: float
    source: str  # where the budget comes from, for the manifest


@dataclass(frozen=True)
class _TestScores:
    """The test split through the simulated (fake-quantized) and the deployed networks."""

    simulated_accuracy: float
    deployed_accuracy: float
    agreement: float  # the fraction of test images on which the two networks predict the same class


def _test_scores(fake: nn.Module, deployed: nn.Module, dataset: Any) -> _TestScores:
    import numpy as np
    import torch

    x_test = torch.from_numpy(np.ascontiguousarray(dataset.x_test, dtype=np.float32))
    with torch.inference_mode():
        simulated, integer = fake(x_test).argmax(1).numpy(), deployed(x_test).argmax(1).numpy()
    return _TestScores(
        simulated_accuracy=float(np.mean(simulated == dataset.y_test)),
        deployed_accuracy=float(np.mean(integer == dataset.y_test)),
        agreement=float(np.mean(integer == simulated)),
    )


def _policy_rows(layers: list[Any], policy: BitPolicy) -> list[dict[str, Any]]:
    """Per quantized layer, its name and widths."""
    from adl.passes.haq.budget import quantized_layers

    names = [layers[i].name for i in quantized_layers(layers)]
    return [
        {"layer": name, "weight_bits": w, "act_bits": a}
        for name, w, a in zip(names, policy.weight_bits, policy.act_bits, strict=True)
    ]


def _lowering_metrics(deployment: Deployment) -> dict[str, Any]:
    """How each layer was lowered, the integer hand-offs between layers and the weights' sizes."""
    decisions = deployment.layers
    weights = sum(d.weights for d in decisions)
    return {
        "lowering": [d.as_dict() for d in decisions],
        "integer_layers": sum(d.arithmetic == "int8" for d in decisions),
        "integer_handoffs": [
            {"producer": h.producer, "consumers": list(h.consumers), "codes": [h.low, h.high]}
            for h in deployment.handoffs
        ],
        **({"handoff_note": deployment.handoff_note} if deployment.handoff_note else {}),
        "weight_bytes": {"float32": 4 * weights, "int8": weights, "packed": sum(d.packed_bytes for d in decisions)},
    }


def _state_of_result(result: HaqResult) -> dict[str, Any]:
    """A `HaqResult` as JSON for `save_search_state`."""
    return {
        "policy": [list(result.policy.weight_bits), list(result.policy.act_bits)],
        "proposed": [list(result.proposed.weight_bits), list(result.proposed.act_bits)],
        "accuracy": result.accuracy,
        "full_precision_accuracy": result.full_precision_accuracy,
        "history": result.history,
    }


def _result_from_state(saved: Mapping[str, Any]) -> HaqResult:
    """The `HaqResult` saved by `_state_of_result`."""
    from adl.passes.haq.budget import BitPolicy
    from adl.passes.haq.search import HaqResult

    return HaqResult(
        BitPolicy(*map(tuple, saved["policy"])),
        BitPolicy(*map(tuple, saved["proposed"])),
        saved["accuracy"],
        saved["full_precision_accuracy"],
        saved["history"],
    )
