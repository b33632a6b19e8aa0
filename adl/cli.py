"""The `adl` command line.

Exit codes: 0 success (every budget holds), 1 a budget does not hold, 2 a bad spec or
usage, 3 a pass or the runtime failed. Tracebacks only with `--debug`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_BUDGET, EXIT_SPEC, EXIT_FAILURE = 0, 1, 2, 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adl", description="Compile efficient neural networks from a spec.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="compile a spec into an artifact directory")
    c.add_argument("spec", type=Path, help="the .adl file")
    c.add_argument("-o", "--out", type=Path, help="artifact directory (default: build/<spec name>)")
    c.add_argument("--pipeline", help="override the spec's pipeline, e.g. 'train{epochs=5},lower'")
    c.add_argument("--dump-ir", type=Path, metavar="DIR", help="write a dump of the module after each pass")
    c.add_argument("--seed", type=int, default=0, help="seed for initialisation and training (default 0)")
    c.add_argument("--cache", type=Path, metavar="DIR", help="checkpoint folder (default: <out>/../.adl-cache)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    c.add_argument("--depfile", type=Path, metavar="FILE",
                   help="write a Make/Ninja depfile: <out>/manifest.json and the files it depends on")

    k = sub.add_parser("check", help="parse and check a spec (fast: no training, no TVM)")
    k.add_argument("spec", type=Path)

    sub.add_parser("passes", help="list the registered passes and their options")

    h = sub.add_parser("hw", help="hardware cost models")
    hw_sub = h.add_subparsers(dest="hw_command", required=True, metavar="HW_COMMAND")
    hw_sub.add_parser("list", help="list the registered cost models, their options and the targets they support")
    target_help = ('the target: "host" (this machine), or a target block\'s settings, e.g. '
                   '\'cores = 4  rpc = "10.0.0.5:9190"  key = "board"\'')
    lut = hw_sub.add_parser("lut", help="measure the latency table of the `measured` cost model for a spec's layers")
    lut.add_argument("target", nargs="?", help=target_help + " (default: the spec's target)")
    lut.add_argument("--space", type=Path, required=True, metavar="SPEC.adl",
                     help="the spec whose networks the table must price (its model)")
    lut.add_argument("--cache", type=Path, metavar="DIR", help="table folder (default: $ADL_LUT_DIR or ~/.cache/adl/lut)")
    lut.add_argument("--no-calibrate", action="store_true",
                     help="do not compile the spec's model whole to calibrate the per-network overhead")
    cal = hw_sub.add_parser("calibrate", help="measure the roofline's peak, bandwidth and per-layer overhead on a target")
    cal.add_argument("target", nargs="?", default="host", help=target_help)

    r = sub.add_parser("run", help="run a compiled artifact on inputs")
    r.add_argument("artifact", type=Path, help="artifact directory (or its model.so)")
    r.add_argument("--input", type=Path, required=True,
                   help=".npy of inputs (N samples or one), or .npz with 'x' (and optional labels 'y')")
    r.add_argument("--output", type=Path, help="save predicted labels (.npy)")

    lo = sub.add_parser("l2o", help="the learned optimizer (docs/l2o.md)")
    l2o_sub = lo.add_subparsers(dest="l2o_command", required=True, metavar="L2O_COMMAND")
    from adl.passes.train.l2o.config import add_arguments as l2o_arguments

    l2o_arguments(l2o_sub.add_parser("meta-train", help="meta-train the LSTM optimizer's weights (JAX)"))

    d = sub.add_parser("data", help="write the spec's train or test split to an .npz (x, y)")
    d.add_argument("spec", type=Path)
    d.add_argument("-o", "--out", type=Path, required=True)
    d.add_argument("--split", choices=("train", "test"), default="test")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from rich.console import Console

    out, err = Console(highlight=False, soft_wrap=True), Console(stderr=True, highlight=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return _COMMANDS[args.command](args, out, err)
    except KeyboardInterrupt:
        err.print("interrupted; finished passes are checkpointed and a rerun resumes from them")
        return 130
    except Exception as exc:
        from adl.compiler.passes import PassError
        from adl.dsl.errors import AdlError

        if args.debug:
            raise
        if isinstance(exc, AdlError):
            print(exc.render(), file=sys.stderr)
            return EXIT_SPEC
        from rich.markup import escape  # the message is text: "[train]" in it is not markup

        if isinstance(exc, PassError):
            err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
        else:
            err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}", markup=True,
                      soft_wrap=True)
            err.print("rerun with --debug for the traceback")
        return EXIT_FAILURE


def _cmd_check(args, out, err) -> int:
    from adl.compiler.check import load_spec_file

    spec = load_spec_file(args.spec)
    stages = ",".join(s.pass_name for s in spec.pipeline)
    out.print(f"{args.spec}: ok: spec '{spec.name}', {spec.data.source} data, target {spec.target.name}, "
              f"{len(spec.budgets)} budget(s), pipeline {stages}")
    return EXIT_OK


def _cmd_passes(args, out, err) -> int:
    from adl.compiler.passes import default_registry

    for pass_cls in default_registry():
        out.print(_option_table(f"{pass_cls.name}: {pass_cls.summary}", pass_cls.options))
        out.print(f"  requires: {', '.join(pass_cls.requires) or '-'}   ensures: {', '.join(pass_cls.ensures) or '-'}\n")
    return EXIT_OK


def _option_table(title: str, options) -> "object":
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False)
    for column in ("option", "kind", "default", "meaning"):
        table.add_column(column)
    for opt in options:
        kind = opt.kind if opt.kind != "name" else "|".join(opt.choices)
        if opt.kind == "call" and opt.calls:
            kind = " | ".join(f"{name}({', '.join(o.name for o in sub)})" for name, sub in opt.calls.items())
        table.add_row(opt.name, kind, opt.describe_default(), opt.doc)
    return table


def _cmd_hw(args, out, err) -> int:
    return {"list": _cmd_hw_list, "lut": _cmd_hw_lut, "calibrate": _cmd_hw_calibrate}[args.hw_command](args, out, err)


def _cmd_hw_lut(args, out, err) -> int:
    import time

    from adl.compiler.check import load_spec_file, load_target
    from adl.compiler.driver import initial_module, load_data
    from adl.compiler.layers import describe_model
    from adl.compiler.progress import RichProgress
    from adl.hwmodels.measured import MeasuredModel, calibrate

    spec = load_spec_file(args.space)
    target = load_target(args.target, filename="TARGET") if args.target else spec.target
    dataset = load_data(spec)
    module = initial_module(spec, dataset, seed=0)
    input_shape = (1, *dataset.input_shape)
    model = MeasuredModel(cache=str(args.cache) if args.cache else None)
    model.progress = RichProgress(err)
    start = time.perf_counter()
    before = len(model.table(target).entries)
    if module.model is not None:
        network = module.model
        model.measure_networks([describe_model(network, input_shape)], target)
        what = "the spec's model"
    else:  # a searched spec: every candidate op of its nas stage's space
        from adl.compiler.pipeline import Pipeline

        nas = next((p for p in Pipeline.from_stages(spec.pipeline) if p.name == "nas"), None)
        if nas is None:
            err.print(f"{args.space}: no `model` block and no `nas` stage: nothing to measure")
            return EXIT_SPEC
        from adl.passes.nas import supernet_for
        from adl.passes.nas.pricing import price_candidates, reference_model

        supernet = supernet_for(nas.config["space"], tuple(dataset.input_shape), spec.task.classes)
        price_candidates(supernet, model, target)
        network = reference_model(supernet)
        what = f"the first network of {supernet.space}"
    layers = describe_model(network, input_shape)
    table = model.table(target)
    out.print(f"{table.path}: {len(table.entries)} kernels, {len(table.entries) - before} measured now in "
              f"{time.perf_counter() - start:.1f} s (the rest were in the table)")
    if args.no_calibrate:
        return EXIT_OK
    from adl.backends.tvm.layer_timing import network_latency

    latency = network_latency(network, input_shape, target.tvm_target(), threads=target.cores,
                              session_factory=_session_factory(target))
    overhead = calibrate(model, target, [(layers, latency)])
    predicted = model.estimate(layers, target).latency_s
    out.print(f"per-network overhead {overhead.seconds * 1e6:.1f} us, calibrated on {what} "
              f"(measured {latency * 1e3:.3f} ms whole; the table now predicts {predicted * 1e3:.3f} ms)")
    return EXIT_OK


def _session_factory(target):
    """Where a target's code runs: None (this machine) or a function opening its RPC session."""
    if not target.remote:
        return None
    from adl.backends.tvm.remote import rpc_session

    return lambda: rpc_session(target.rpc, target.key)


def _cmd_hw_calibrate(args, out, err) -> int:
    from adl.backends.tvm.calibrate import measure_roofline
    from adl.compiler.check import load_target
    from adl.compiler.progress import RichProgress
    from adl.hwmodels.calibration import save_calibration

    target = load_target(args.target, filename="TARGET")
    values = measure_roofline(target.tvm_target(), threads=target.cores, progress=RichProgress(err),
                              session_factory=_session_factory(target))
    path = save_calibration(target, values)
    out.print(f"roofline for {target.tvm_target()}: peak {values['gflops']:.1f} GFLOP/s, bandwidth "
              f"{values['bandwidth']:.1f} GB/s, overhead {values['overhead'] * 1e6:.1f} us per layer")
    out.print(f"saved to {path}; `roofline` uses it for the options a spec leaves unset")
    return EXIT_OK


def _cmd_hw_list(args, out, err) -> int:
    from adl.hwmodels import default_registry

    registry = default_registry()
    for name, model_cls in registry.items():
        out.print(_option_table(f"{name}: {model_cls.summary}", model_cls.options))
        out.print(f"  supports: {model_cls.targets}   spec: target {{ cost = {name}(...) }}   "
                  f"from: {model_cls.__module__}.{model_cls.__qualname__}\n")
    return EXIT_OK


def _cmd_compile(args, out, err) -> int:
    from adl.compiler.check import load_spec_file
    from adl.compiler.driver import compile_spec
    from adl.compiler.pipeline import Pipeline
    from adl.compiler.progress import RichProgress, SilentProgress

    spec = load_spec_file(args.spec)
    pipeline = Pipeline.parse(args.pipeline, filename="--pipeline") if args.pipeline else None
    progress = SilentProgress() if args.quiet else RichProgress(err)
    err.print(f"compiling [bold]{spec.name}[/] from {args.spec}", markup=True)

    def on_pass(record) -> None:
        how = "reused checkpoint" if record.reused else f"{record.seconds:.1f}s"
        err.print(f"  [green]done[/] {record.pipeline_text} ({how})", markup=True)

    result = compile_spec(spec, out_dir=args.out, pipeline=pipeline, seed=args.seed, dump_ir=args.dump_ir,
                          cache_dir=args.cache, progress=progress, log=lambda m: err.print(f"  {m}"),
                          on_pass=on_pass, depfile=args.depfile)
    _print_summary(result, out)
    return EXIT_OK if result.ok else EXIT_BUDGET


def _print_summary(result, out) -> None:
    from rich.table import Table

    m = result.manifest["metrics"]
    table = Table(title=f"{result.artifact_dir}", title_justify="left")
    for column in ("metric", "measured", "budget", "verdict"):
        table.add_column(column)
    by_metric = {v.budget.metric: v for v in result.verdicts}
    shown = {"accuracy": _percent(m.get("accuracy")), "latency": _ms(m.get("latency_s")),
             "size": _kb(m.get("size_bytes"))}
    for metric in dict.fromkeys([*shown, *by_metric]):
        verdict = by_metric.get(metric)
        measured = verdict.measured_text if verdict else shown.get(metric, "-")
        if verdict is None:
            table.add_row(metric, measured, "-", "")
        else:
            mark = "[green]holds[/]" if verdict.holds else "[bold red]FAILS[/]"
            table.add_row(metric, measured, f"{verdict.budget.op} {verdict.budget.text}",
                          f"{mark} ({verdict.margin_text})")
    out.print(table)
    if not result.ok:
        out.print("[bold red]a budget does not hold[/] (the artifact was still written)")


def _percent(value) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _ms(value) -> str:
    return "-" if value is None else f"{value * 1e3:.4g} ms"


def _kb(value) -> str:
    return "-" if value is None else f"{value / 1e3:.1f} KB"


def _cmd_run(args, out, err) -> int:
    import numpy as np

    from adl.backends.artifact import ArtifactError, load

    try:
        artifact = load(args.artifact)
        x, y = _read_inputs(args.input)
        predictions = artifact.predict(x)
    except (ArtifactError, ValueError, OSError) as exc:
        err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
        return EXIT_SPEC
    if args.output:
        np.save(args.output, predictions)
    shown = " ".join(str(int(p)) for p in predictions[:20]) + (" ..." if len(predictions) > 20 else "")
    out.print(f"{len(predictions)} prediction(s): {shown}")
    if y is not None:
        accuracy = float(np.mean(predictions == y))
        out.print(f"accuracy: {100 * accuracy:.2f} % ({int(np.sum(predictions == y))}/{len(y)})")
    return EXIT_OK


def _read_inputs(path: Path):
    import numpy as np

    if path.suffix == ".npz":
        with np.load(path) as archive:
            if "x" not in archive:
                raise ValueError(f"{path} has no array 'x' (found: {', '.join(archive.files)})")
            return archive["x"].astype(np.float32), archive["y"] if "y" in archive else None
    return np.load(path).astype(np.float32), None


def _cmd_data(args, out, err) -> int:
    import numpy as np

    from adl.compiler.check import load_spec_file
    from adl.compiler.driver import load_data

    spec = load_spec_file(args.spec)
    ds = load_data(spec)
    x, y = (ds.x_test, ds.y_test) if args.split == "test" else (ds.x_train, ds.y_train)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, x=x, y=y)
    out.print(f"wrote {len(y)} {args.split} samples {tuple(x.shape[1:])} to {args.out}")
    return EXIT_OK


def _cmd_l2o(args, out, err) -> int:
    from adl.passes.train.l2o.meta_train import run

    return run(args)


_COMMANDS = {"compile": _cmd_compile, "check": _cmd_check, "passes": _cmd_passes, "hw": _cmd_hw,
             "run": _cmd_run, "data": _cmd_data, "l2o": _cmd_l2o}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
