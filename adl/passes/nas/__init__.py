"""The `nas` pass: hardware-aware architecture search over a MobileNet-style space, in JAX.

    pipeline {
      nas { space = mobilenet(blocks = 4, kernels = [3, 5, 7], expand = [1, 3, 6])
            strategy = proxyless  epochs = 30  latency_weight = 0.1 }
      train { epochs = 20 }
      lower
    }

The supernet (`supernet.py`) is trained by the chosen strategy (`search.py`) on 80 % of the
training split (or of a stratified subset of `samples` images), the architecture parameters on
the other 20 % -- or, when the spec sets `data { validation = ... }`, on the training split and
the validation split (`search_data`); every candidate op is priced
by the target's cost model. The derived network becomes a PyTorch module, with the
supernet's weights, for `train` to fine-tune; its genotype, the architecture weights'
history and its predicted cost go into the metrics (and so into the manifest).
"""

from __future__ import annotations

from typing import Any, Mapping

from adl.ir.module import Module
from adl.ir.options import Option
from adl.ir.passes import Pass, PassContext, PassError
from adl.ir.report import Section
from adl.ir.spec import CallValue

# The DARTS cell space's op vocabulary (`cells.py`); here so that checking a spec imports no JAX.
CELL_OPS = ("sep3", "sep5", "dil3", "dil5", "max3", "avg3", "skip", "none")

SPACES: dict[str, tuple[Option, ...]] = {
    "mobilenet": (
        Option("blocks", "int", 4, "inverted-residual blocks searched", low=1, high=32),
        Option("kernels", "int_list", (3, 5, 7), "depthwise kernel sizes a block may take", low=1, high=31),
        Option("expand", "int_list", (1, 3, 6), "expansion ratios a block may take", low=1, high=64),
        Option("width", "float", 1.0, "width multiplier of every block (not searched)", low=0.1, high=64.0),
        Option("skip", "bool", True, "blocks that keep their shape may be identity (depth search)"),
        Option("stem", "int", 16, "channels of the stem convolution", low=1, high=65536),
        Option("head", "int", 64, "channels of the 1x1 head convolution", low=1, high=65536),
    ),
    "cells": (
        Option("nodes", "int", 4, "intermediate nodes per cell", low=1, high=8),
        Option(
            "ops",
            "name_list",
            ("sep3", "sep5", "dil3", "max3", "avg3", "skip", "none"),
            "candidate ops of every edge",
            choices=CELL_OPS,
            noun="op",
        ),
        Option("cells", "int", 3, "cells stacked (those at 1/3 and 2/3 reduce)", low=1, high=20),
        Option("channels", "int", 8, "channels of the first cell's nodes", low=2, high=65536),
    ),
}


class NasPass(Pass):
    name = "nas"
    summary = "differentiable hardware-aware architecture search (darts, gdas, proxyless, random) in JAX"
    options = (
        Option(
            "space",
            "call",
            CallValue("mobilenet"),
            "the search space: mobilenet(blocks, kernels, expand, ...) or cells(nodes, ops, cells, channels)",
            calls=SPACES,
        ),
        Option("strategy", "name", "proxyless", "search strategy", choices=("darts", "gdas", "proxyless", "random")),
        Option("epochs", "int", 30, "passes over the search's training part", low=1, high=100_000),
        Option(
            "samples",
            "int",
            None,
            "training images the search uses: a stratified subset of the "
            "training split, seeded (default: all of it); with the data's validation split, the same "
            "share of it",
            low=20,
            high=2**31 - 1,
        ),
        Option("batch_size", "int", 64, "samples per step", low=1, high=65536),
        Option(
            "lr",
            "float",
            None,
            "learning rate of the supernet's weights (Adam); default 0.01 for darts "
            "(every op learns every step), 0.03 for single-path strategies (an op learns when sampled)",
            low=0.0,
            high=100.0,
        ),
        Option(
            "warmup",
            "int",
            None,
            "epochs training the weights alone on uniformly sampled paths before any "
            "architecture step (ProxylessNAS's warm-up); default a third of the epochs, 0 for darts",
            low=0,
            high=100_000,
        ),
        Option("arch_lr", "float", 0.01, "learning rate of the architecture parameters (Adam)", low=0.0, high=100.0),
        Option("latency_weight", "float", 0.1, "lambda of lambda * log(expected latency)", low=0.0, high=1e6),
        Option("budget", "bool", True, "also hold the expected latency under the spec's latency budget (a hinge)"),
        Option(
            "order",
            "name",
            "first",
            "darts: first- or second-order (unrolled) architecture gradient",
            choices=("first", "second"),
        ),
        Option(
            "estimator",
            "name",
            "two_path",
            "proxyless: architecture gradient estimator",
            choices=("two_path", "reinforce"),
        ),
        Option("tau_max", "float", 10.0, "gdas: initial Gumbel-softmax temperature", low=1e-3, high=1e6),
        Option("tau_min", "float", 0.1, "gdas: final temperature", low=1e-3, high=1e6),
        Option(
            "random_samples", "int", 50, "random: architectures scored with the shared weights", low=1, high=1_000_000
        ),
    )
    requires = ()
    ensures = ("model", "architecture")
    searches_latency = True

    def report(self, metrics: Mapping[str, Any]) -> list[Section]:
        from adl.passes.nas.report import sections

        return sections(metrics["nas"]) if metrics.get("nas") else []

    def search_space(self, input_shape: tuple[int, ...], classes: int) -> Any:
        """The supernet of this pass's `space` for data of `input_shape` (`adl hw lut --space`)."""
        from adl.passes.nas.pricing import PricedSupernet

        return PricedSupernet(supernet_for(self.config["space"], tuple(input_shape), classes))

    def check_feasible(self, spec: Any, data: Any, cost_model: Any) -> None:
        """A latency budget below the fastest network of the space is refused before any search.

        A MobileNet space is priced from its geometry alone, as the search prices it (no torch,
        no JAX: a fraction of a second, unless a `measured` table has entries to measure); the
        cell space through its supernet."""
        budget = self._budget(spec)
        if not self.config["budget"] or budget is None or cost_model is None:
            return
        if len(data.input_shape) != 3:
            return  # run() says why nas cannot search this data
        space = self.config["space"]
        if space.name == "mobilenet":
            from adl.passes.nas.static_pricing import fastest_mobilenet

            mobilenet = mobilenet_space_for(space, tuple(data.input_shape), spec.task.classes)
            fastest = fastest_mobilenet(mobilenet, space.as_dict()["width"], cost_model, spec.target)
        else:
            from adl.passes.nas.pricing import price_candidates

            supernet = supernet_for(space, tuple(data.input_shape), spec.task.classes)
            fastest = _fastest(price_candidates(supernet, cost_model, spec.target))
        self._check_fastest(fastest, budget, spec, cost_model)

    def _budget(self, spec: Any) -> float | None:
        """The latency the search aims at: this pass's share of the spec's budget (looser when
        compression passes follow, see adl.ir.budget_plan), else the spec's budget."""
        return self.budget_shares.get("latency", _latency_budget(spec))

    def _check_fastest(self, fastest: float, budget: float | None, spec: Any, cost_model: Any) -> None:
        from adl.ir.budget_plan import latency_budget
        from adl.ir.passes import BudgetInfeasible

        if budget is not None and fastest > budget:
            spec_budget = _latency_budget(spec)
            share = (
                f" (nas's share of the spec's {spec_budget * 1e3:.3g} ms: compression passes follow)"
                if spec_budget is not None and abs(budget - spec_budget) > 1e-12 * spec_budget
                else ""
            )
            raise BudgetInfeasible(
                f"latency budget {budget * 1e3:.3g} ms{share} is below the fastest network of the nas "
                f"space ({fastest * 1e3:.3g} ms as priced by {cost_model})",
                latency_budget(spec),
                note="no architecture of the space can meet it: "
                "loosen the budget or shrink the space (fewer blocks, smaller kernels)",
            )

    def run(self, module: Module, ctx: PassContext) -> Module:
        from adl.models.zoo import Normalize
        from adl.passes.nas.pricing import price_candidates
        from adl.passes.nas.search import Search

        dataset = ctx.dataset()
        if len(dataset.input_shape) != 3:
            raise PassError(f"nas searches convolutional networks; this data has shape {tuple(dataset.input_shape)}")
        supernet = supernet_for(self.config["space"], tuple(dataset.input_shape), ctx.spec.task.classes)
        if self.config["strategy"] != "darts" and not supernet.chain:
            raise PassError(
                f"strategy {self.config['strategy']} runs single paths through a chain of blocks "
                f"(space = mobilenet(...)); the cell space is searched by darts"
            )
        if ctx.cost_model is None:
            raise PassError("nas needs the target's cost model to price candidate ops")
        latency = price_candidates(supernet, ctx.cost_model, ctx.spec.target)
        budget = self._budget(ctx.spec) if self.config["budget"] else None
        self._check_fastest(_fastest(latency), budget, ctx.spec, ctx.cost_model)
        config = search_config(self.config, budget, ctx.seed)

        data = search_data(dataset, self.config["samples"], ctx.seed)
        with ctx.progress.task(f"nas ({config.strategy})", total=config.epochs) as bar:

            def on_epoch(row: dict[str, Any]) -> None:
                bar.advance(
                    1, accuracy=f"{row['val_accuracy']:.3f}", latency=f"{row['expected_latency_s'] * 1e3:.3f} ms"
                )

            result = Search(supernet, latency, config).run(
                data.x_fit, data.y_fit, data.x_val, data.y_val, state_dir=ctx.state_dir(), on_epoch=on_epoch
            )
        from torch import nn

        model = nn.Sequential(
            Normalize(dataset.mean, dataset.std, channel_dims=len(dataset.input_shape) - 1),
            _to_torch(supernet, result.params, result.indices, data.x_fit, config.batch_size),
        )
        architecture = supernet.architecture(result.indices)
        predicted = latency.of(result.indices)
        ctx.log(
            f"nas: {architecture} -- predicted {predicted * 1e3:.3f} ms by {ctx.cost_model}"
            + (f", budget {budget * 1e3:.3g} ms {'met' if predicted <= budget else 'MISSED'}" if budget else "")
        )
        return (
            module.evolve(model=model)
            .with_metrics(
                nas={
                    "strategy": config.strategy,
                    "space": str(supernet.space),
                    "genotype": _genotype(architecture),
                    "predicted_latency_s": predicted,
                    "latency_budget_s": budget,
                    "budget_met": None if budget is None else predicted <= budget,
                    "history": result.history,
                    "probabilities": result.probabilities,
                }
            )
            .establish("architecture")
        )


def search_config(options: dict[str, Any], budget: float | None, seed: int) -> Any:
    """The `SearchConfig` of the pass's options, the strategy-dependent defaults filled in."""
    from adl.passes.nas.search import SearchConfig, default_lr, default_warmup

    strategy, epochs = options["strategy"], options["epochs"]
    lr = options["lr"] if options["lr"] is not None else default_lr(strategy)
    warmup = options["warmup"] if options["warmup"] is not None else default_warmup(strategy, epochs)
    if warmup >= epochs:
        raise PassError(f"nas: warmup = {warmup} leaves none of the {epochs} epochs for the architecture")
    return SearchConfig(
        **{
            k: options[k]
            for k in (
                "strategy",
                "epochs",
                "batch_size",
                "arch_lr",
                "latency_weight",
                "order",
                "estimator",
                "tau_max",
                "tau_min",
                "random_samples",
            )
        },
        lr=lr,
        warmup=warmup,
        budget_s=budget,
        seed=seed,
    )


def _latency_budget(spec: Any) -> float | None:
    from adl.ir.budget_plan import latency_budget

    budget = latency_budget(spec)
    return None if budget is None else float(budget.value)


def supernet_for(space: CallValue, input_shape: tuple[int, ...], classes: int) -> Any:
    """The supernet of a `space` option value (mobilenet(...) or cells(...)) for this data."""
    from adl.passes.nas.cells import CellSpace, CellSupernet
    from adl.passes.nas.supernet import Supernet

    options = space.as_dict()
    if space.name == "cells":
        if all(op == "none" for op in options["ops"]):
            raise PassError("cells(ops = ...) needs at least one op other than none")
        return CellSupernet(
            CellSpace(
                input_shape,
                classes,
                nodes=options["nodes"],
                ops=tuple(options["ops"]),
                cells=options["cells"],
                channels=options["channels"],
            )
        )
    return Supernet(mobilenet_space_for(space, input_shape, classes), options["width"])


def search_data(dataset: Any, samples: int | None, seed: int) -> Any:
    """The images the supernet's weights learn from (`x_fit`) and the architecture parameters are
    chosen on (`x_val`), normalised as the derived network's `Normalize` will, labels int32: an
    `adl.data.splits.held_out` split -- the training and validation splits when the spec sets
    `validation`, else 80 % and 20 % of the training split. `samples` caps the training images
    (a stratified, seeded subset: searches on large data sets search on a subset, as ProxylessNAS
    did on ImageNet); only the images used are copied and normalised."""
    import numpy as np

    from adl.data.splits import HeldOut, held_out

    split = held_out(dataset, seed, fraction=0.2, samples=samples)
    mean = np.asarray(dataset.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(dataset.std, np.float32).reshape(-1, 1, 1)

    def normalised(x: Any) -> Any:
        return ((np.asarray(x, np.float32) - mean) / std).astype(np.float32)

    return HeldOut(
        normalised(split.x_fit),
        np.asarray(split.y_fit, np.int32),
        normalised(split.x_val),
        np.asarray(split.y_val, np.int32),
    )


def mobilenet_space_for(space: CallValue, input_shape: tuple[int, ...], classes: int) -> Any:
    """The `MobileNetSpace` of a mobilenet(...) option value (torch-free geometry)."""
    from adl.models.space import MobileNetSpace

    options = space.as_dict()
    return MobileNetSpace(
        input_shape,
        classes,
        blocks=options["blocks"],
        kernels=tuple(options["kernels"]),
        expand=tuple(options["expand"]),
        widths=(options["width"],),
        skip=options["skip"],
        stem=options["stem"],
        head=options["head"],
    )


def _fastest(latency: Any) -> float:
    """The fastest network of a `LatencyTable`: every decision at its cheapest candidate."""
    return latency.of([min(range(len(lat)), key=lat.__getitem__) for lat in latency.per_op])


def _to_torch(supernet: Any, params: Any, indices: list[int], x_train: Any, batch_size: int) -> Any:
    """The derived network in PyTorch with the supernet's weights, its BatchNorms recalibrated
    on `x_train`."""
    if supernet.chain:
        from adl.passes.nas.supernet import to_torch
    else:
        from adl.passes.nas.cell_modules import to_torch  # type: ignore[assignment]
    return to_torch(supernet, params, indices, x_train, batch_size)


def _genotype(architecture: Any) -> Any:
    """Per block the chosen op (mobilenet), or per cell type the kept (input, op) pairs of every node."""
    if hasattr(architecture, "blocks"):
        return {"width": architecture.width, "blocks": [str(c) for c in architecture.blocks]}
    return {
        "normal": [[f"{op}(s{j})" for j, op in node] for node in architecture.normal],
        "reduce": [[f"{op}(s{j})" for j, op in node] for node in architecture.reduce],
    }
