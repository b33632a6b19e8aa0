"""Meta-training settings and their command line (light: no JAX import, so `adl --help` stays fast)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

IN_FAMILY = ("mlp", "cnn", "quadratic")  # the task kinds meta-training draws from (tasks.py)
OUT_OF_FAMILY = ("mlp_relu_wide", "mlp_tanh")  # for the generalization study only
TASKS = IN_FAMILY + OUT_OF_FAMILY


@dataclass(frozen=True)
class MetaConfig:
    seed: int = 0
    iterations: int = 1600  # meta-steps; each advances every task kind by one unroll segment
    unroll: int = 20  # optimizee steps per segment (the truncation of backpropagation)
    curriculum: tuple[int, ...] = (20, 60, 100, 100)  # horizons, each for an equal share of the iterations
    instances: int = 2  # optimizee instances of each task kind per meta-step
    # ... unless given here: a quadratic step costs next to nothing, and its mean loss over
    # problems of very different conditioning needs more of them to be a steady signal
    task_instances: tuple[tuple[str, int], ...] = (("quadratic", 8),)
    tasks: tuple[str, ...] = IN_FAMILY
    hidden: int = 20
    p: float = 10.0
    output_scale: float = 0.1
    lr: float = 3e-3  # Adam on the LSTM's weights, cosine-decayed to lr/10
    clip: float = 1.0  # global-norm clipping of the meta-gradient
    loss_scale: float = 3.0  # each instance's loss is multiplied by a log-uniform factor in [1/s, s]
    checkpoint_every: int = 50  # iterations (rounded up to the next trajectory boundary)
    validate_every: int = 50  # iterations between validations (0: none, return the last weights)
    validation_instances: int = 16  # fixed problems per task kind the weights are chosen on

    def __post_init__(self) -> None:
        if any(h % self.unroll for h in self.curriculum):
            raise ValueError(f"every horizon of {self.curriculum} must be a multiple of unroll={self.unroll}")

    def instances_of(self, task: str) -> int:
        return dict(self.task_instances).get(task, self.instances)

    @property
    def horizon(self) -> int:
        return self.curriculum[-1]

    def horizon_at(self, iteration: int) -> int:
        stage = min(iteration * len(self.curriculum) // self.iterations, len(self.curriculum) - 1)
        return self.curriculum[stage]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = MetaConfig()
    parser.add_argument("--out", type=Path, default=Path("l2o_weights.npz"), help="weights file to write (.npz)")
    parser.add_argument("--curves", type=Path, help="training curves to write (.json; default: next to --out)")
    parser.add_argument(
        "--checkpoint", type=Path, help="checkpoint file (default: <out>.ckpt), resumed if present, removed when done"
    )
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of everything (default {d.seed})")
    parser.add_argument("--iterations", type=int, default=d.iterations, help=f"meta-steps (default {d.iterations})")
    parser.add_argument(
        "--unroll", type=int, default=d.unroll, help=f"steps per truncated segment (default {d.unroll})"
    )
    parser.add_argument(
        "--curriculum",
        type=int,
        nargs="+",
        default=list(d.curriculum),
        help=f"horizons in turn, the last is the horizon (default {' '.join(map(str, d.curriculum))})",
    )
    parser.add_argument(
        "--instances", type=int, default=d.instances, help=f"instances per task kind (default {d.instances})"
    )
    parser.add_argument(
        "--task-instances",
        nargs="*",
        default=list(d.task_instances),
        metavar="TASK=N",
        type=_task_instances,
        help=f"instances per step of these kinds instead (default {' '.join(f'{t}={n}' for t, n in d.task_instances)})",
    )
    parser.add_argument(
        "--validate-every",
        type=int,
        default=d.validate_every,
        help=f"iterations between validations, 0 for none (default {d.validate_every})",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=list(d.tasks),
        choices=TASKS,
        metavar="TASK",
        help=f"task kinds among {', '.join(TASKS)} (default {' '.join(d.tasks)})",
    )
    parser.add_argument("--lr", type=float, default=d.lr, help=f"Adam's learning rate on the LSTM (default {d.lr})")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> MetaConfig:
    return MetaConfig(
        seed=args.seed,
        iterations=args.iterations,
        unroll=args.unroll,
        curriculum=tuple(args.curriculum),
        instances=args.instances,
        task_instances=tuple(args.task_instances),
        validate_every=args.validate_every,
        tasks=tuple(args.tasks),
        lr=args.lr,
    )


def _task_instances(text: str) -> tuple[str, int]:
    task, _, count = text.partition("=")
    if task not in TASKS or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"expected TASK=N with TASK among {', '.join(TASKS)} and N >= 1, got {text!r}")
    return task, int(count)
