"""`python -m adl.train`: `adl compile` as one rank of a `torchrun` job, for training across machines.

    torchrun --nnodes 2 --nproc-per-node 2 --node-rank 0 --rdzv-backend c10d \\
        --rdzv-endpoint node0.example:29400 -m adl.train examples/digits.adl -o build/digits

(the same on every node, `--node-rank` 0, 1, ...). Every rank loads the spec and the data,
builds the same initial model and runs the pipeline up to the first `train` pass whose
`distributed` is set; there, instead of starting local workers, the pass joins the group
torchrun made (gloo; its world size replaces `workers`). Rank 0 then runs the rest of the
pipeline and writes the artifact exactly as `adl compile` does; the other ranks stop after
training. Every rank checkpoints each epoch (rank 0 under its cache folder, rank r under
`<cache>/rank<r>`), and a rerun resumes from the last epoch all ranks completed.

Takes the options of `adl compile`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from adl.cli import EXIT_FAILURE, EXIT_OK
    from adl.cli import main as cli_main
    from adl.passes.train.distributed.launch import ATTACH_ENV

    argv = list(sys.argv[1:] if argv is None else argv)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        print(
            "adl.train: RANK and WORLD_SIZE are not set: start it with torchrun (see docs/distributed.md); "
            "on one machine `adl compile` starts its own workers",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    os.environ[ATTACH_ENV] = "torchrun"
    if int(os.environ["RANK"]) == 0:
        return cli_main(["compile", *argv])
    try:
        _train_only(argv, int(os.environ["RANK"]))
    except Exception as exc:
        from adl.dsl.errors import AdlError
        from adl.ir.passes import PassError

        if isinstance(exc, AdlError):
            print(exc.render(), file=sys.stderr)
        elif isinstance(exc, PassError):
            print(f"error: {exc}", file=sys.stderr)
        else:
            raise
        return EXIT_FAILURE
    return EXIT_OK


def _train_only(argv: list[str], rank: int) -> None:
    """A rank other than 0: the pipeline up to and including the first distributed `train`, no artifact."""
    from adl import __version__
    from adl.cli import _parser
    from adl.driver.check import load_spec_file
    from adl.driver.checkpoint import CheckpointStore, root_key
    from adl.driver.run import default_out_dir, initial_module, load_data, make_cost_model, prepare_cache, run_pipeline
    from adl.ir.passes import PassContext
    from adl.ir.pipeline import Pipeline

    args = _parser().parse_args(["compile", *argv])
    spec = load_spec_file(args.spec)
    pipeline = (
        Pipeline.parse(args.pipeline, filename="--pipeline") if args.pipeline else Pipeline.from_stages(spec.pipeline)
    )
    stages = []
    for p in pipeline:
        stages.append(p)
        if p.name == "train" and p.config.get("distributed") is not None and p.config["distributed"].name != "none":
            break
    else:
        raise SystemExit(f"adl.train: the pipeline `{pipeline}` has no distributed `train` pass")
    out_dir = Path(args.out) if args.out else default_out_dir(spec)
    cache_dir = prepare_cache(Path(args.cache) if args.cache else out_dir.parent / ".adl-cache") / f"rank{rank}"
    dataset = load_data(spec)
    ctx = PassContext(
        spec=spec,
        work_dir=cache_dir,
        seed=args.seed,
        load_dataset=lambda: dataset,
        log=lambda message: print(f"rank {rank}: {message}", file=sys.stderr),
        cost_model=make_cost_model(spec),
    )
    upstream = root_key(spec, dataset.fingerprint(), args.seed, __version__)
    run_pipeline(initial_module(spec, dataset, args.seed), Pipeline(stages), ctx, CheckpointStore(cache_dir), upstream)


if __name__ == "__main__":
    sys.exit(main())
