"""The `amc` pass: AutoML channel pruning with a DDPG agent (He et al., "AMC", ECCV 2018).

    pipeline {
      train { epochs = 30 }
      amc   { flops = 50 %  finetune = 10 }      # or latency = 0.6, params = 40 %
      lower
    }

The trained network's channel groups are found on its torch.fx graph (`adl/passes/channels.py`: residual
additions, depthwise convolutions, concatenations and BatchNorms tie channels together); a
DDPG agent (`adl.passes.rl.ddpg`) walks the groups and picks each one's keep fraction
(`env.py`), every action clipped so that the budget stays reachable; each episode's pruned
network (channels kept by filter norm, the next layer refitted by least squares,
`reconstruct.py`) is scored without fine-tuning on the data's validation split (or, without
one, on training images). The best policy
is applied -- a smaller dense network, no masks -- and fine-tuned with the `train` loop. The
per-group keep ratios, costs before and after and the search history go into the metrics
(and so into the manifest). Budgets are fractions of the unpruned network's FLOPs, parameters
or latency as the target's cost model prices it; several may be given at once.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Mapping

from adl.ir.module import Module
from adl.ir.options import Option
from adl.ir.passes import Pass, PassContext, PassError
from adl.ir.report import Section
from adl.ir.search_state import load_search_state, save_search_state, search_key
from adl.passes.train import finetune, finetune_options, pre_compression, scoring_images_note

if TYPE_CHECKING:
    from adl.passes.amc.env import AmcEnv
    from adl.passes.amc.search import AmcConfig, AmcResult

POLICY_FILE = "amc_policy.json"


def simd_lanes(ctx: PassContext) -> int:
    """The target's float32 SIMD lanes: channel counts that are multiples of it keep the pruned
    network on the default schedules' fast path. 8 (AVX2) when TVM cannot tell."""
    try:
        from adl.hwmodels.cpu import float_lanes

        return float_lanes(ctx.spec.target.tvm_target())
    except Exception as err:  # noqa: BLE001 -- an unknown target must not stop pruning
        ctx.log(f"amc: cannot tell the target's SIMD width ({err}); channel counts in multiples of 8")
        return 8


class AmcPass(Pass):
    name = "amc"
    summary = "channel pruning under a FLOPs, parameter or latency budget, the policy found by DDPG (AMC)"
    options = (
        Option(
            "flops",
            "fraction",
            None,
            "keep at most this fraction of the FLOPs (default 50 % if no budget)",
            low=0.0,
            high=1.0,
        ),
        Option("params", "fraction", None, "keep at most this fraction of the parameters", low=0.0, high=1.0),
        Option(
            "latency",
            "fraction",
            None,
            "keep at most this fraction of the latency the cost model predicts",
            low=0.0,
            high=1.0,
        ),
        Option(
            "search",
            "name",
            "ddpg",
            "ddpg (the AMC agent) or uniform (one keep ratio for every layer)",
            choices=("ddpg", "uniform"),
        ),
        Option("episodes", "int", 300, "search episodes (each prunes and scores one network)", low=1, high=1_000_000),
        Option("warmup", "int", 100, "episodes of random actions before the agent acts", low=0, high=1_000_000),
        Option(
            "reward", "name", "acc", "acc: validation accuracy; flops: -error * log(FLOPs)", choices=("acc", "flops")
        ),
        Option(
            "criterion",
            "name",
            "l1",
            "which channels a group keeps: largest L1 or L2 filter norm",
            choices=("l1", "l2"),
        ),
        Option("reconstruct", "bool", True, "refit the next layer's weights by least squares (AMC)"),
        Option(
            "min_keep", "fraction", 0.2, "no group keeps fewer than this fraction of its channels", low=0.01, high=1.0
        ),
        Option(
            "multiple",
            "int",
            None,
            "kept channel counts are multiples of this (default: the target's float32 "
            "SIMD lanes, 8 on AVX2, 16 on AVX-512; docs/amc.md)",
            low=1,
            high=1024,
        ),
        Option(
            "val_samples",
            "int",
            500,
            "images that score policies: from the data's validation split, else from the training split",
            low=10,
            high=10_000_000,
        ),
        *finetune_options(10, 0.001, "fine-tuning the pruned network"),
    )
    requires = ("trained",)
    ensures = ("model", "trained", "pruned", "compressed")

    def latency_factor(self, spec: Any) -> float:
        """The latency budget if given, else the FLOPs budget (latency ~ FLOPs to first order)."""
        budgets = self.budgets()
        return budgets.get("latency", budgets.get("flops", 1.0))

    def budgets(self) -> dict[str, float]:
        chosen = {r: self.config[r] for r in ("flops", "params", "latency") if self.config[r] is not None}
        return chosen or {"flops": 0.5}

    def run(self, module: Module, ctx: PassContext) -> Module:
        import torch

        from adl.ir.layers import describe_model
        from adl.passes.amc.env import BudgetError
        from adl.passes.amc.search import AmcConfig, make_env
        from adl.passes.channels import PruningError

        dataset = ctx.dataset()
        budgets = self.budgets()
        if "latency" in budgets and ctx.cost_model is None:
            raise PassError("a latency budget needs the target's cost model")
        latency = (lambda layers: ctx.cost(layers).latency_s) if ctx.cost_model is not None else None
        config = AmcConfig(
            budgets=budgets,
            strategy=self.config["search"],
            episodes=self.config["episodes"],
            warmup=self.config["warmup"],
            reward=self.config["reward"],
            criterion=self.config["criterion"],
            reconstruct=self.config["reconstruct"],
            min_keep=self.config["min_keep"],
            multiple=self.config["multiple"] or simd_lanes(ctx),
            val_samples=self.config["val_samples"],
            seed=ctx.seed,
        )
        torch.set_num_threads(max(1, ctx.spec.target.cores or 1))
        model = module.model
        try:
            env = make_env(model, dataset, config, latency if "latency" in budgets else None)
        except (PruningError, BudgetError) as err:
            raise PassError(str(err)) from err

        result = self._search_policy(model, dataset, config, env, ctx)

        pruned = result.model
        before = self._costs(env, env.resources.table.full_counts, ctx)
        after = self._costs(env, result.counts, ctx)
        ctx.log(
            f"amc: kept {after['flops'] / before['flops']:.1%} of the FLOPs, "
            f"{after['params'] / before['params']:.1%} of the parameters; validation accuracy "
            f"{result.unpruned_accuracy:.4f} -> {result.info['accuracy']:.4f} before fine-tuning"
        )
        metrics: dict[str, Any] = {}
        if self.config["finetune"] > 0:
            finetuned = finetune(pruned, ctx, self.config, teacher=pre_compression(module))
            pruned = finetuned.model
            metrics.update(torch_accuracy=finetuned.test_accuracy)
            finetuning = {
                "epochs": self.config["finetune"],
                "test_accuracy": finetuned.test_accuracy,
                "history": finetuned.history,
            }
        else:
            from adl.passes.train.loop import evaluate

            metrics.update(torch_accuracy=evaluate(pruned, dataset.x_test, dataset.y_test))
            finetuning = {"epochs": 0, "test_accuracy": metrics["torch_accuracy"], "history": []}
        measured_flops = sum(layer.flops for layer in describe_model(pruned, (1, *dataset.input_shape)))
        if abs(measured_flops - after["flops"]) > 1e-6 * after["flops"] + 1:  # the cost model of the search lied
            raise PassError(
                f"internal error: the pruned network has {measured_flops} FLOPs, the search priced it "
                f"at {after['flops']:.0f}"
            )
        channels = {env.graph.groups[d.group].name: [int(result.counts[d.group]), d.size] for d in env.decisions}
        return (
            module.evolve(model=pruned, reference=pre_compression(module))
            .with_metrics(
                **metrics,
                amc={
                    "search": config.strategy,
                    "budgets": budgets,
                    "reward": config.reward,
                    "multiple": config.multiple,
                    "episodes": config.episodes if config.strategy == "ddpg" else 0,
                    "ratios": result.ratios,
                    "channels": channels,
                    "before": before,
                    "after": after,
                    "kept": {r: after[r] / before[r] for r in before if before[r]},
                    "budget_met": all(after[r] <= f * before[r] * (1 + 1e-9) for r, f in budgets.items()),
                    "val_accuracy_unpruned": result.unpruned_accuracy,
                    "val_accuracy_pruned": result.info["accuracy"],
                    "finetune": finetuning,
                    "history": result.history,
                },
            )
            .establish("pruned", "trained", "compressed")
        )

    def report(self, metrics: Mapping[str, Any]) -> list[Section]:
        from adl.passes.amc.report import sections

        return sections(metrics["amc"]) if metrics.get("amc") else []

    def _search_policy(self, model: Any, dataset: Any, config: AmcConfig, env: AmcEnv, ctx: PassContext) -> AmcResult:
        """The search's `AmcResult`: the one saved by this compile before it was cut off (during
        fine-tuning), else a new search's, saved before it is used."""
        from adl.passes.amc.search import run_amc

        key = search_key(ctx.current_key, dataclasses.asdict(config))
        saved = load_search_state(ctx.state_dir(), POLICY_FILE, key)
        if saved is not None:
            result = _result_from_state(saved, env)
            ctx.log("amc: reusing the policy found before the interruption")
            return result
        ctx.log(scoring_images_note("amc", dataset, config.val_samples))
        result = run_amc(model, dataset, config, progress=ctx.progress, env=env)
        save_search_state(ctx.state_dir(), POLICY_FILE, key, _state_of_result(result))
        return result

    def _costs(self, env: Any, counts: Any, ctx: PassContext) -> dict[str, float]:
        cost = env.resources.cost(counts, ["flops", "params"])
        if ctx.cost_model is not None:
            cost["latency"] = float(ctx.cost(env.resources.table.descs(counts)).latency_s)
        return cost


def _state_of_result(result: AmcResult) -> dict[str, Any]:
    """What a resumed compile needs of an `AmcResult`: the network is rebuilt from the counts."""
    return {
        "counts": [int(c) for c in result.counts],
        "info": result.info,
        "unpruned_accuracy": result.unpruned_accuracy,
        "history": result.history,
    }


def _result_from_state(saved: Mapping[str, Any], env: AmcEnv) -> AmcResult:
    """The `AmcResult` saved by `_state_of_result`, its pruned network rebuilt by `env`."""
    import numpy as np

    from adl.passes.amc.search import AmcResult

    counts = np.array(saved["counts"], np.float64)
    return AmcResult(
        counts, env.ratios(counts), env.build(counts), saved["info"], saved["unpruned_accuracy"], saved["history"]
    )
