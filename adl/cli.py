"""The `adl` command line.

Exit codes: 0 success (every budget holds), 1 a budget does not hold, 2 a bad spec or
usage, 3 a pass or the runtime failed. Tracebacks only with `--debug`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator, Sequence

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
    c.add_argument("--seed", type=_seed, default=0, help="seed for initialisation and training (default 0)")
    c.add_argument("--cache", type=Path, metavar="DIR", help="checkpoint folder (default: <out>/../.adl-cache)")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    c.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show TVM's, torch's and jax's own messages here instead of in the compile's log file "
        "(<cache>/logs/<out name>-<date>-<time>-<pid>.log)",
    )
    c.add_argument(
        "--depfile",
        type=Path,
        metavar="FILE",
        help="write a Make/Ninja depfile: <out>/manifest.json and the files it depends on",
    )

    k = sub.add_parser("check", help="parse and check a spec (fast: no training, no TVM)")
    k.add_argument("spec", type=Path)

    sub.add_parser("passes", help="list the registered passes and their options")

    h = sub.add_parser("hw", help="hardware cost models")
    hw_sub = h.add_subparsers(dest="hw_command", required=True, metavar="HW_COMMAND")
    hw_sub.add_parser("list", help="list the registered cost models, their options and the targets they support")
    target_help = (
        'the target: "host" (this machine), or a target block\'s settings, e.g. '
        '\'cores = 4  rpc = "10.0.0.5:9190"  key = "board"\''
    )
    lut = hw_sub.add_parser("lut", help="measure the latency table of the `measured` cost model for a spec's layers")
    lut.add_argument("target", nargs="?", help=target_help + " (default: the spec's target)")
    lut.add_argument(
        "--space",
        type=Path,
        required=True,
        metavar="SPEC.adl",
        help="the spec whose networks the table must price (its model)",
    )
    lut.add_argument(
        "--cache", type=Path, metavar="DIR", help="table folder (default: $ADL_LUT_DIR or ~/.cache/adl/lut)"
    )
    lut.add_argument(
        "--no-calibrate",
        action="store_true",
        help="do not compile the spec's model whole to calibrate the per-network overhead",
    )
    cal = hw_sub.add_parser(
        "calibrate", help="measure the roofline's peak, bandwidth and per-layer overhead on a target"
    )
    cal.add_argument("target", nargs="?", default="host", help=target_help)

    r = sub.add_parser("run", help="run a compiled artifact on inputs")
    r.add_argument("artifact", type=Path, help="artifact directory (or its model.so)")
    r.add_argument(
        "--input",
        type=Path,
        required=True,
        help=".npy of inputs (N samples or one), or .npz with 'x' (and optional labels 'y')",
    )
    r.add_argument("--output", type=Path, help="save predicted labels (.npy)")
    r.add_argument(
        "--expect-accuracy",
        action="store_true",
        help="the input is the spec's test split (`adl data --split test`): exit 1 unless the "
        "library's accuracy on it is the one the manifest records",
    )

    lo = sub.add_parser("l2o", help="the learned optimizer (docs/l2o.md)")
    l2o_sub = lo.add_subparsers(dest="l2o_command", required=True, metavar="L2O_COMMAND")
    from adl.passes.train.l2o.config import add_arguments as l2o_arguments

    l2o_arguments(l2o_sub.add_parser("meta-train", help="meta-train the LSTM optimizer's weights (JAX)"))

    d = sub.add_parser("data", help="write the spec's train or test split to an .npz (x, y)")
    d.add_argument("spec", type=Path)
    d.add_argument("-o", "--out", type=Path, required=True)
    d.add_argument("--split", choices=("train", "test"), default="test")
    return parser


def _seed(text: str) -> int:
    """An argparse type: an integer in [0, 2**32 - 1], what numpy and torch seed with."""
    try:
        value = int(text) if len(text) <= 20 else -1
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text[:40]!r}") from None
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {2**32 - 1}, got {text[:40]}")
    return value


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
        from adl.dsl.errors import AdlError
        from adl.ir.passes import PassCrash, PassError

        if args.debug:
            raise
        exc = _as_adl_error(exc)
        if isinstance(exc, AdlError):
            print(exc.render(), file=sys.stderr)
            return EXIT_SPEC
        from rich.markup import escape  # the message is text: "[train]" in it is not markup

        if isinstance(exc, PassCrash):  # its message starts "internal error in pass 'x'"
            err.print(f"[bold red]{escape(str(exc))}[/]", markup=True, soft_wrap=True)
        elif isinstance(exc, PassError):
            err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, soft_wrap=True)
        else:
            err.print(
                f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))}", markup=True, soft_wrap=True
            )
            err.print("rerun with --debug for the traceback")
        return EXIT_FAILURE


def _as_adl_error(exc: Exception) -> Exception:
    """An ArtifactError (a missing, malformed or tampered artifact) as the AdlError it renders as:
    ``path: error: message``, exit 2. Other exceptions unchanged."""
    from adl.backends.artifact import ArtifactError

    if isinstance(exc, ArtifactError):
        return _user_error(exc.path if exc.path is not None else "adl", exc.message)
    return exc


def _cmd_check(args, out, err) -> int:
    from adl.driver.check import load_spec_file
    from adl.dsl.errors import printable

    spec = load_spec_file(args.spec)
    stages = ",".join(s.pass_name for s in spec.pipeline)
    line = (
        f"{args.spec}: ok: spec '{spec.name}', {spec.data.source} data, target {spec.target.name}, "
        f"{len(spec.budgets)} budget(s), pipeline {stages}"
    )
    out.print(printable(line), markup=False)  # a file name is text, not markup ("[x].adl"), and may not be UTF-8
    return EXIT_OK


def _cmd_passes(args, out, err) -> int:
    from adl.ir.passes import default_registry

    for pass_cls in default_registry():
        out.print(_option_table(f"{pass_cls.name}: {pass_cls.summary}", pass_cls.options))
        searchable = "   options may be search domains (docs/hpo.md)" if pass_cls.tunable else ""
        out.print(
            f"  requires: {', '.join(pass_cls.requires) or '-'}   ensures: {', '.join(pass_cls.ensures) or '-'}"
            f"{searchable}\n"
        )
    return EXIT_OK


def _option_table(title: str, options) -> "object":
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False)
    for column in ("option", "kind", "range", "default", "meaning"):
        table.add_column(column)
    for opt in options:
        kind = opt.kind if opt.kind != "name" else "|".join(opt.choices)
        if opt.kind == "call" and opt.calls:
            kind = " | ".join(f"{name}({', '.join(o.name for o in sub)})" for name, sub in opt.calls.items())
        table.add_row(opt.name, kind, opt.describe_range(), opt.describe_default(), opt.doc)
    return table


def _cmd_hw(args, out, err) -> int:
    return {"list": _cmd_hw_list, "lut": _cmd_hw_lut, "calibrate": _cmd_hw_calibrate}[args.hw_command](args, out, err)


def _cmd_hw_lut(args, out, err) -> int:
    import time

    from adl.driver.check import load_spec_file
    from adl.driver.run import initial_module, load_data
    from adl.hwmodels.measured import MeasuredModel, calibrate
    from adl.ir.layers import describe_model
    from adl.ir.progress import RichProgress

    spec = load_spec_file(args.space)
    target = _checked_target(args.target) if args.target else spec.target
    if not args.target:
        from adl.driver.run import preflight_target

        preflight_target(spec)
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
    else:  # a searched spec: every candidate of the spaces its passes search
        from adl.ir.pipeline import Pipeline

        spaces = [
            space
            for p in Pipeline.from_stages(spec.pipeline)
            if (space := p.search_space(tuple(dataset.input_shape), spec.task.classes)) is not None
        ]
        if not spaces:
            err.print(f"{args.space}: no `model` block and no pass that searches a space: nothing to measure")
            return EXIT_SPEC
        for space in spaces:
            space.price(model, target)
        network = spaces[0].reference_network()
        what = spaces[0].description
    layers = describe_model(network, input_shape)
    table = model.table(target)
    out.print(
        f"{table.path}: {len(table.entries)} kernels, {len(table.entries) - before} measured now in "
        f"{time.perf_counter() - start:.1f} s (the rest were in the table)"
    )
    if args.no_calibrate:
        return EXIT_OK
    from adl.backends.tvm.layer_timing import network_latency

    latency = network_latency(
        network, input_shape, target.tvm_target(), threads=target.cores, session_factory=_session_factory(target)
    )
    overhead = calibrate(model, target, [(layers, latency)])
    predicted = model.estimate(layers, target).latency_s
    out.print(
        f"per-network overhead {overhead.seconds * 1e6:.1f} us, calibrated on {what} "
        f"(measured {latency * 1e3:.3f} ms whole; the table now predicts {predicted * 1e3:.3f} ms)"
    )
    return EXIT_OK


def _checked_target(settings: str):
    """The TARGET argument of `adl hw`, its `mcpu`/`triple` checked against LLVM's lists."""
    from adl.backends.tvm.llvm_names import check_target_settings
    from adl.driver.check import load_target

    target = load_target(settings, filename="TARGET")
    check_target_settings(target, "TARGET")
    return target


def _session_factory(target):
    """Where a target's code runs: None (this machine) or a function opening its RPC session."""
    if not target.remote:
        return None
    from adl.backends.tvm.remote import rpc_session

    return lambda: rpc_session(target.rpc, target.key)


def _cmd_hw_calibrate(args, out, err) -> int:
    from adl.backends.tvm.calibrate import measure_roofline
    from adl.hwmodels.calibration import save_calibration
    from adl.ir.progress import RichProgress

    target = _checked_target(args.target)
    values = measure_roofline(
        target.tvm_target(), threads=target.cores, progress=RichProgress(err), session_factory=_session_factory(target)
    )
    path = save_calibration(target, values)
    out.print(
        f"roofline for {target.tvm_target()}: peak {values['gflops']:.1f} GFLOP/s, bandwidth "
        f"{values['bandwidth']:.1f} GB/s, overhead {values['overhead'] * 1e6:.1f} us per layer"
    )
    out.print(f"saved to {path}; `roofline` uses it for the options a spec leaves unset")
    return EXIT_OK


def _cmd_hw_list(args, out, err) -> int:
    from adl.hwmodels import default_registry

    registry = default_registry()
    for name, model_cls in registry.items():
        out.print(_option_table(f"{name}: {model_cls.summary}", model_cls.options))
        out.print(
            f"  supports: {model_cls.targets}   spec: target {{ cost = {name}(...) }}   "
            f"from: {model_cls.__module__}.{model_cls.__qualname__}\n"
        )
    return EXIT_OK


def _cmd_compile(args, out, err) -> int:
    from adl.driver.check import load_spec_file
    from adl.driver.run import compile_spec, default_cache_dir, default_out_dir
    from adl.ir.pipeline import Pipeline
    from adl.ir.progress import RichProgress, SilentProgress

    spec = load_spec_file(args.spec)
    pipeline = Pipeline.parse(args.pipeline, filename="--pipeline") if args.pipeline else None
    progress = SilentProgress() if args.quiet else RichProgress(err)
    err.print(f"compiling [bold]{spec.name}[/] from {args.spec}", markup=True)

    def on_pass(record) -> None:
        how = "reused checkpoint" if record.reused else f"{record.seconds:.1f}s"
        err.print(f"  [green]done[/] {record.pipeline_text} ({how})", markup=True)

    out_dir = args.out or default_out_dir(spec)
    with _libraries_logged(args, args.cache or default_cache_dir(out_dir), out_dir.name, err):
        result = compile_spec(
            spec,
            out_dir=out_dir,
            pipeline=pipeline,
            seed=args.seed,
            dump_ir=args.dump_ir,
            cache_dir=args.cache,
            progress=progress,
            log=lambda m: err.print(f"  {m}"),
            on_pass=on_pass,
            depfile=args.depfile,
        )
    _print_summary(result, out)
    return EXIT_OK if result.ok else EXIT_BUDGET


@contextlib.contextmanager
def _libraries_logged(args, cache_dir: Path, name: str, err) -> Iterator[None]:
    """TVM's, torch's and jax's own messages into ``<cache>/logs/<name>-<date>-<time>-<pid>.log`` while
    the compile runs (see `adl.library_log`), unless `--verbose`; `err` keeps writing to the terminal.
    Where the log is, is said at the end (on a failure even with `--quiet`)."""
    import time

    from adl.driver.run import prepare_cache
    from adl.dsl.errors import printable
    from adl.library_log import LibraryLog

    if args.verbose:
        yield
        return
    fresh = not cache_dir.exists()
    prepare_cache(cache_dir)  # the driver's checks of the folder, before anything is written into it
    # the process id too: two compiles of one output started in the same second keep two logs
    log = LibraryLog(cache_dir / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    failed, console_file = True, err.file  # sys.stderr as it is now: the terminal
    try:
        with log as terminal:
            err.file = terminal
            try:
                yield
                failed = False
            finally:
                err.file = console_file
    finally:
        if fresh:
            _remove_empty_folder(cache_dir)  # a spec refused before any pass leaves no cache behind
        if log.lines and (failed or not args.quiet):
            err.print(
                f"  libraries' messages ({log.lines} lines): {printable(str(log.path))}", markup=False, soft_wrap=True
            )


def _remove_empty_folder(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _print_summary(result, out) -> None:
    from rich.table import Table

    m = result.manifest["metrics"]
    table = Table(title=f"{result.artifact_dir}", title_justify="left")
    for column in ("metric", "measured", "budget", "verdict"):
        table.add_column(column)
    by_metric = {v.budget.metric: v for v in result.verdicts}
    shown = {
        "accuracy": _percent(m.get("accuracy")),
        "latency": _ms(m.get("latency_s")),
        "size": _kb(m.get("size_bytes")),
    }
    for metric in dict.fromkeys([*shown, *by_metric]):
        verdict = by_metric.get(metric)
        measured = verdict.measured_text if verdict else shown.get(metric, "-")
        if verdict is None:
            table.add_row(metric, measured, "-", "")
        else:
            mark = "[green]holds[/]" if verdict.holds else "[bold red]FAILS[/]"
            table.add_row(
                metric, measured, f"{verdict.budget.op} {verdict.budget.text}", f"{mark} ({verdict.margin_text})"
            )
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

    from adl.backends.artifact import load

    artifact = load(args.artifact)  # an ArtifactError is rendered by `main`: exit 2
    x, y = _read_inputs(args.input)
    try:
        batch = artifact.check_input(x)
        if len(batch) == 0:
            raise ValueError(f"x holds no samples (shape {x.shape})")
        labels = None if y is None else _labels(y, len(batch), x.shape)
    except ValueError as exc:
        raise _user_error(args.input, str(exc)) from None
    expected = _manifest_accuracy(artifact.manifest, args.input, labels) if args.expect_accuracy else None
    if args.output is not None:
        _check_writable(args.output)
    predictions = artifact.predict(batch)
    if args.output is not None:
        _write(args.output, lambda f: np.save(f, predictions))
    shown = " ".join(str(int(p)) for p in predictions[:20]) + (" ..." if len(predictions) > 20 else "")
    out.print(f"{len(predictions)} prediction(s): {shown}")
    right = 0
    if labels is not None:
        right = int(np.sum(predictions == labels))
        out.print(f"accuracy: {100 * right / len(labels):.2f} % ({right}/{len(labels)})")
    if expected is not None:
        return _compare_with_manifest(right, *expected, out, err)
    return EXIT_OK


def _manifest_accuracy(manifest: dict, input_path: Path, labels) -> tuple[int, int]:
    """For `adl run --expect-accuracy`: (right answers, samples) of the manifest's test accuracy,
    once the input can be compared with it (labelled, as many samples as the test split)."""
    accuracy = (manifest.get("metrics") or {}).get("accuracy")
    samples = (manifest.get("data") or {}).get("test_samples")
    if labels is None:
        raise _user_error(
            input_path, "--expect-accuracy needs labels: an .npz with 'x' and 'y' (adl data SPEC --split test -o FILE)"
        )
    if not (
        isinstance(accuracy, (int, float))
        and 0 <= accuracy <= 1
        and isinstance(samples, int)
        and not isinstance(samples, bool)
        and samples > 0
    ):
        raise _user_error(
            input_path, "--expect-accuracy: the manifest records no test accuracy (its pipeline did not measure one)"
        )
    if len(labels) != samples:
        raise _user_error(
            input_path,
            f"--expect-accuracy compares with the manifest's test split of {samples} "
            f"samples; the input holds {len(labels)}",
        )
    return round(accuracy * samples), samples


def _compare_with_manifest(right: int, expected: int, samples: int, out, err) -> int:
    """The library alone reproduces the compile's test accuracy (the same samples, so the same
    count of right answers), else exit 1."""
    if right != expected:
        err.print(
            f"error: accuracy {100 * right / samples:.2f} % ({right}/{samples}) differs from the "
            f"manifest's {100 * expected / samples:.2f} % ({expected}/{samples})"
        )
        return EXIT_BUDGET
    out.print(f"reproduces the manifest's accuracy: {100 * expected / samples:.2f} % on {samples} test samples")
    return EXIT_OK


def _user_error(path: Path | str, message: str) -> Exception:
    """A user's mistake about the file `path`: `main` prints ``path: error: message``, exit 2."""
    from adl.dsl.errors import AdlError

    return AdlError.at(message, None, filename=str(path))


def _labels(y, n: int, x_shape: tuple[int, ...]):
    """The labels `y` of `n` inputs as (n,) int64: (n,) or (n, 1) of whole numbers; ValueError otherwise."""
    import numpy as np

    if y.shape not in ((n,), (n, 1)):
        raise ValueError(
            f"labels 'y' of shape {y.shape} do not match inputs 'x' of shape {x_shape}: expected ({n},) or ({n}, 1)"
        )
    whole = y.dtype.kind in "iu" or (y.dtype.kind == "f" and bool(np.all(np.isfinite(y) & (y == np.round(y)))))
    if not whole:
        raise ValueError(f"labels 'y' must be whole class numbers, got dtype {y.dtype}")
    return y.reshape(n).astype(np.int64)


NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


def _read_inputs(path: Path):
    """`(x, y)` from `path`: a .npy (y None) or an .npz with 'x' and optional 'y', told apart by
    their content, whatever the file's name. Pickled (object) arrays are refused."""
    import numpy as np

    if not path.is_file():
        raise _user_error(path, "not a regular file" if path.exists() or path.is_symlink() else "no such file")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except OSError as exc:
        raise _user_error(path, f"cannot read it: {exc.strerror or exc}") from None
    if not magic.startswith(ZIP_MAGIC) and magic != NPY_MAGIC:
        what = "the file is empty" if not magic else "neither a .npy nor an .npz file"
        raise _user_error(path, f"{what}: expected a NumPy array (.npy) or an .npz holding 'x' (and labels 'y')")
    kind = ".npz" if magic.startswith(ZIP_MAGIC) else ".npy"
    try:
        if kind == ".npy":
            return np.load(path, allow_pickle=False), None
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            arrays = {name: archive[name] for name in ("x", "y") if name in names}
    except Exception as exc:  # noqa: BLE001 (numpy and zipfile raise many kinds on damaged files)
        raise _user_error(path, f"not a readable {kind} file: {_first_line(exc)}") from None
    if "x" not in arrays:
        found = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise _user_error(path, f"no array 'x' in the .npz (found: {found or 'nothing'})")
    return arrays["x"], arrays.get("y")


def _first_line(exc: BaseException) -> str:
    """``Type: first line of its text``, or the type alone."""
    from adl.ir.passes import first_line

    line = first_line(exc, limit=None)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _check_writable(path: Path) -> None:
    """Refuse, before any work, an output path whose folder is missing or that is a folder."""
    if path.is_dir():
        raise _user_error(path, "is a directory: give the file to write")
    if not path.parent.is_dir():
        raise _user_error(path, f"the folder {path.parent} does not exist")


def _write(path: Path, save) -> None:
    """`save(file)` into exactly `path` (np.save and np.savez given a name would append .npy/.npz),
    atomically: a killed write leaves the old file or none, never half of one."""
    from adl.ir.files import atomic_path

    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            save(f)
    except OSError as exc:
        raise _user_error(path, f"cannot write it: {exc.strerror or exc}") from None


def _cmd_data(args, out, err) -> int:
    import numpy as np

    from adl.driver.check import load_spec_file
    from adl.driver.run import load_data

    if args.out.is_dir():
        raise _user_error(args.out, "is a directory: give the .npz file to write, e.g. test.npz")
    spec = load_spec_file(args.spec)
    ds = load_data(spec)
    x, y = (ds.x_test, ds.y_test) if args.split == "test" else (ds.x_train, ds.y_train)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _user_error(args.out, f"cannot create the folder {args.out.parent}: {exc.strerror or exc}") from None
    _write(args.out, lambda f: np.savez(f, x=x, y=y))
    out.print(f"wrote {len(y)} {args.split} samples {tuple(x.shape[1:])} to {args.out}", markup=False)
    return EXIT_OK


def _cmd_l2o(args, out, err) -> int:
    from adl.passes.train.l2o.meta_train import run

    return run(args)


_COMMANDS = {
    "compile": _cmd_compile,
    "check": _cmd_check,
    "passes": _cmd_passes,
    "hw": _cmd_hw,
    "run": _cmd_run,
    "data": _cmd_data,
    "l2o": _cmd_l2o,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
