"""The `train` options that add to the loss -- `regularizer` and `distill` -- their schemas, and
the `Objective` they build for the loop.

    train { regularizer = ssl(filters = 0.02, channels = 0.0, step = proximal) }   # docs/ssl.md
    train { regularizer = delta(alpha = 0.01, beta = 0.01) }                       # docs/transfer.md
    train { regularizer = l2sp(alpha = 0.01, beta = 0.01) }
    train { distill = teacher(temperature = 4, weight = 0.7) }                     # docs/distill.md
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from adl.ir.options import Option
from adl.ir.spec import CallValue

if TYPE_CHECKING:  # torch stays out of `adl check`'s imports: the schemas above are all it reads
    from torch import nn

    from adl.passes.train.objective import Objective, Term

REGULARIZERS: dict[str, tuple[Option, ...]] = {
    "none": (),
    "ssl": (
        Option(
            "filters",
            "float",
            0.0,
            "group-lasso strength on whole filters (a channel's producers)",
            low=0.0,
            high=1000.0,
        ),
        Option(
            "channels",
            "float",
            0.0,
            "group-lasso strength on whole input channels (a channel's readers)",
            low=0.0,
            high=1000.0,
        ),
        Option(
            "step",
            "name",
            "proximal",
            "proximal (shrink after each step: exact zeros) or subgradient (the penalty in the loss)",
            choices=("proximal", "subgradient"),
        ),
    ),
    "l2sp": (
        Option(
            "alpha", "float", 0.01, "pull of the pretrained weights toward their starting point", low=0.0, high=1000.0
        ),
        Option("beta", "float", 0.01, "L2 penalty on the new classifier", low=0.0, high=1000.0),
    ),
    "delta": (
        Option(
            "alpha",
            "float",
            0.01,
            "weight of the attention-weighted feature-map distance to the source",
            low=0.0,
            high=1000.0,
        ),
        Option("beta", "float", 0.01, "L2 penalty on the new classifier", low=0.0, high=1000.0),
        Option("attention", "bool", True, "weigh channels by DELTA's supervised attention (false: uniform)"),
        Option("probe", "int", 10, "epochs fitting the new classifier alone before the attention", low=1, high=10_000),
        Option("samples", "int", 1000, "training images that measure the attention", low=1, high=10_000_000),
    ),
}
DISTILL: dict[str, tuple[Option, ...]] = {
    "none": (),
    "teacher": (
        Option("temperature", "float", 4.0, "softmax temperature of both networks' outputs", low=0.01, high=1000.0),
        Option("weight", "fraction", 0.7, "share of the soft (teacher) loss; labels get the rest", low=0.0, high=1.0),
    ),
}
TRANSFER = ("l2sp", "delta")  # regularizers that pull toward the starting weights: they need pretrained ones

NO_TEACHER = (
    "distill = teacher(...) needs a teacher: the network before compression, which `amc` or `haq` "
    "earlier in the pipeline records"
)


def build_objective(
    model: nn.Module,
    config: Mapping[str, Any],
    *,
    dataset: Any,
    teacher: nn.Module | None,
    seed: int,
    log: Callable[[str], None],
) -> Objective:
    """The loss of `train_model`: cross-entropy (with the config's label smoothing) plus the terms
    the config's `regularizer` and `distill` name. Call before the model's hooks are attached."""
    import torch

    from adl.passes.train.objective import Objective

    terms: list[Term] = []
    regularizer: CallValue = config.get("regularizer") or CallValue("none")
    if regularizer.name != "none":
        terms.append(_regularizer(model, regularizer, dataset, seed, log))
    distill: CallValue = config.get("distill") or CallValue("none")
    if distill.name != "none":
        if teacher is None:
            raise ValueError(NO_TEACHER)
        from adl.passes.train.distill import Distill

        args = distill.as_dict()
        terms.append(Distill(teacher, args["temperature"], args["weight"]))
    cross_entropy = torch.nn.CrossEntropyLoss(label_smoothing=config["label_smoothing"])
    return Objective(cross_entropy, terms)


def _regularizer(model: nn.Module, spec: CallValue, dataset: Any, seed: int, log: Callable[[str], None]) -> Term:
    args = spec.as_dict()
    if spec.name == "ssl":
        from adl.passes.train.ssl import SSL

        return SSL(args["filters"], args["channels"], args["step"], dataset.input_shape)
    if spec.name == "l2sp":
        from adl.passes.train.transfer import L2SP

        return L2SP(args["alpha"], args["beta"])
    if spec.name == "delta":
        from adl.passes.train.transfer import Delta

        layers: Sequence[str] = Delta.default_layers(model)
        weights = None
        if args["attention"]:
            log(f"train: DELTA's channel attention at {', '.join(layers)}")
            weights = Delta.attention_weights(
                model,
                layers,
                dataset.x_train,
                dataset.y_train,
                probe_epochs=args["probe"],
                seed=seed,
                samples=args["samples"],
            )
        return Delta(args["alpha"], args["beta"], layers, weights)
    raise ValueError(f"unknown regularizer {spec.name!r}")
