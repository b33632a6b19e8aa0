"""The `train` pass: supervised training in PyTorch on the CPU, deterministic for a seed.

Seams for later work: optimizers come from `OPTIMIZERS` (name -> option schema) and
`adl.passes.train.loop.make_optimizer`; a learned optimizer or a distributed strategy
adds an entry there instead of changing the loop.
"""

from __future__ import annotations

from typing import Any, Mapping

from adl.ir.module import Module
from adl.ir.options import Option
from adl.ir.passes import Pass, PassContext
from adl.ir.spec import CallValue
from adl.passes.train.distributed import STRATEGIES
from adl.passes.train.regularizers import DISTILL, REGULARIZERS, TRANSFER

OPTIMIZERS: dict[str, tuple[Option, ...]] = {
    "adam": (
        Option("lr", "float", 0.003, "learning rate", low=0.0, high=100.0),
        Option("weight_decay", "float", 0.0, "L2 penalty", low=0.0, high=1.0),
    ),
    "adamw": (
        Option("lr", "float", 0.003, "learning rate", low=0.0, high=100.0),
        Option("weight_decay", "float", 0.01, "decoupled weight decay", low=0.0, high=1.0),
    ),
    "sgd": (
        Option("lr", "float", 0.05, "learning rate", low=0.0, high=100.0),
        Option("momentum", "float", 0.9, "momentum", low=0.0, high=1.0),
        Option("weight_decay", "float", 0.0005, "L2 penalty", low=0.0, high=1.0),
        Option("nesterov", "bool", True, "Nesterov momentum"),
    ),
    "l2o": (
        Option("weights", "path", "", "learned optimizer's weights (.npz); default: the shipped ones"),
        Option(
            "scale", "float", 1.0, "multiplier of the learned update (the schedule anneals it)", low=0.0, high=100.0
        ),
    ),
}


DISTILL_OPTION = Option(
    "distill",
    "call",
    CallValue("none"),
    "teacher(temperature, weight): learn the pre-compression network's soft outputs too (docs/distill.md)",
    calls=DISTILL,
)


class TrainPass(Pass):
    name = "train"
    summary = "train the model on the spec's training split (PyTorch, CPU) and measure test accuracy"
    options = (
        Option("epochs", "int", 30, "passes over the training split", low=1, high=100_000),
        Option("batch_size", "int", 64, "samples per step", low=1, high=65536),
        Option(
            "optimizer",
            "call",
            CallValue("adam", (("lr", 0.003), ("weight_decay", 0.0))),
            "adam(...), adamw(...), sgd(...) or l2o(...) (a learned optimizer, docs/l2o.md)",
            calls=OPTIMIZERS,
        ),
        Option("schedule", "name", "cosine", "learning-rate schedule over the epochs", choices=("cosine", "constant")),
        Option("label_smoothing", "fraction", 0.0, "label smoothing of the cross-entropy loss", low=0.0, high=0.5),
        Option(
            "regularizer",
            "call",
            CallValue("none"),
            "ssl(filters, channels, step): structured sparsity (docs/ssl.md); l2sp(alpha, beta) or "
            "delta(alpha, beta, attention, probe, samples): transfer from pretrained weights (docs/transfer.md)",
            calls=REGULARIZERS,
        ),
        DISTILL_OPTION,
        Option(
            "distributed",
            "call",
            CallValue("none"),
            "data-parallel workers: terngrad(workers, clip, error_feedback, timeout) or "
            "ddp(workers, compress = none|fp16|powersgd, rank, timeout); see docs/distributed.md",
            calls=STRATEGIES,
        ),
    )
    requires = ("model",)
    ensures = ("model", "trained")
    tunable = True  # an `hpo` stage before it may search its options (adl.passes.hpo)

    def run(self, module: Module, ctx: PassContext) -> Module:
        self._check_objective(module)
        if self.config["distributed"].name != "none":
            return self._run_distributed(module, ctx)
        from adl.passes.train.loop import train_model

        result = train_model(
            module.model,
            ctx.dataset(),
            self.config,
            seed=ctx.seed,
            state_dir=ctx.state_dir(),
            progress=ctx.progress,
            threads=ctx.spec.target.cores,
            log=ctx.log,
            teacher=module.reference,
        )
        return (
            module.evolve(model=result.model)
            .with_metrics(
                torch_accuracy=result.test_accuracy,
                train_history=result.history,
                **self._optimizer_record(),
            )
            .establish("trained")
        )

    @classmethod
    def option_requires(cls, options: Mapping[str, Any]) -> dict[str, tuple[tuple[str, ...], str]]:
        needs: dict[str, tuple[tuple[str, ...], str]] = {}
        distill, regularizer = options.get("distill"), options.get("regularizer")
        if distill is not None and distill.name != "none":
            needs["distill"] = (
                ("compressed",),
                "the teacher is the network before `amc`, `haq` or `shrink`: put one first",
            )
        if regularizer is not None and regularizer.name in TRANSFER:
            needs["regularizer"] = (
                ("trained",),
                f"{regularizer.name} pulls the network toward its starting weights: bring pretrained ones "
                "(model torchvision(weights = ...), model onnx(...)) or train it in an earlier stage",
            )
        return needs

    def _check_objective(self, module: Module) -> None:
        """Refuse, before any work, what the loss terms cannot do with this module."""
        from adl.ir.passes import PassError
        from adl.passes.train.regularizers import NO_TEACHER

        regularizer, distill = self.config["regularizer"].name, self.config["distill"].name
        if distill != "none" and module.reference is None:
            raise PassError(f"train: {NO_TEACHER}")
        if regularizer in TRANSFER and "trained" not in module.facts:
            raise PassError(
                f"train: regularizer = {regularizer}(...) pulls the network toward its starting weights, but "
                "this network arrives untrained: give pretrained weights (model torchvision(weights = ...), "
                "model onnx(...)) or train it in an earlier stage"
            )
        if self.config["distributed"].name != "none" and (regularizer != "none" or distill != "none"):
            raise PassError("train: `regularizer` and `distill` are not supported with `distributed` training yet")

    def _optimizer_record(self) -> dict[str, Any]:
        """For the learned optimizer, which weights trained the network (file and digest)."""
        optimizer = self.config["optimizer"]
        if optimizer.name != "l2o":
            return {}
        import hashlib
        from pathlib import Path

        from adl.passes.train.l2o.weights import SHIPPED

        path = Path(optimizer.as_dict()["weights"] or SHIPPED)
        return {
            "l2o_weights": {
                "file": str(path),
                "shipped": path == SHIPPED,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        }

    def _run_distributed(self, module: Module, ctx: PassContext) -> Module:
        from adl.passes.train.distributed.launch import train_distributed

        result = train_distributed(
            module.model,
            ctx.dataset(),
            self.config,
            seed=ctx.seed,
            state_dir=ctx.state_dir(),
            progress=ctx.progress,
            log=ctx.log,
        )
        return (
            module.evolve(model=result.model)
            .with_metrics(
                torch_accuracy=result.test_accuracy,
                train_history=result.history,
                **result.metrics(),
                **self._optimizer_record(),
            )
            .establish("trained")
        )


def finetune_options(epochs: int, lr: float, what: str) -> tuple[Option, ...]:
    """The options of a compression pass's fine-tuning (`finetune`, `batch_size`, `optimizer`,
    `distill`), read by `finetune`; `what` names the fine-tuning in the option's help."""
    return (
        Option("finetune", "int", epochs, f"epochs of {what} (0: none)", low=0, high=100_000),
        Option("batch_size", "int", 64, "fine-tuning samples per step", low=1, high=65536),
        Option(
            "optimizer",
            "call",
            CallValue("adam", (("lr", lr), ("weight_decay", 0.0))),
            "fine-tuning optimizer: adam(...), adamw(...), sgd(...) or l2o(...)",
            calls=OPTIMIZERS,
        ),
        DISTILL_OPTION,
    )


def finetune(model: Any, ctx: PassContext, options: Mapping[str, Any], teacher: Any = None) -> Any:
    """Fine-tune `model` (a compression pass's output) as the pass's `finetune_options` say, the
    `train` loop's defaults for the rest; resumable in the running pass's state folder.
    `teacher` (the network before compression) is what `distill = teacher(...)` learns from.
    Returns the loop's `TrainResult`."""
    from adl.passes.train.loop import train_model

    config = {o.name: o.default for o in TrainPass.options}
    config.update(
        epochs=options["finetune"],
        batch_size=options["batch_size"],
        optimizer=options["optimizer"],
        distill=options["distill"],
    )
    state = ctx.state_dir() / "finetune"
    state.mkdir(exist_ok=True)
    return train_model(
        model,
        ctx.dataset(),
        config,
        seed=ctx.seed,
        state_dir=state,
        progress=ctx.progress,
        threads=ctx.spec.target.cores or 1,
        log=ctx.log,
        teacher=teacher,
    )


def pre_compression(module: Module) -> Any:
    """The network before the first compression pass: what a compression pass records as the
    module's `reference` and what its distillation learns from by default."""
    return module.reference if module.reference is not None else module.model


def scoring_images_note(pass_name: str, dataset: Any, samples: int) -> str:
    """The log line of a pass that scores its choices after training (amc, haq): on how many
    images, and whether the network has trained on them."""
    if dataset.has_validation:
        return f"{pass_name}: scoring policies on {min(samples, len(dataset.y_val))} validation images"
    return (
        f"{pass_name}: scoring policies on {min(samples, len(dataset.y_train))} training images, which the "
        f"network has fit (`data {{ validation = 15 % }}` holds images out for a sharper reward)"
    )
