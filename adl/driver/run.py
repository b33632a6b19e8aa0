"""The compile driver: data, initial module, the pass pipeline with checkpoints, budgets, artifact.

Imports every layer below the driver (data, models, hwmodels, passes, backends).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from adl.data import default_data_path, known_input_shape
from adl.driver.checkpoint import CheckpointStore, model_fingerprint, root_key
from adl.dsl.errors import AdlError
from adl.ir import ADL_VERSION
from adl.ir import budgets as budget_checks
from adl.ir.budget_plan import plan_budgets
from adl.ir.files import atomic_write_text, output_lock
from adl.ir.layers import LayerDesc
from adl.ir.module import Module, PassRecord
from adl.ir.passes import BudgetInfeasible, Instrument, Pass, PassContext, PassCrash, PassError, stage_key
from adl.ir.pipeline import Pipeline
from adl.ir.progress import Progress, SilentProgress
from adl.ir.report import Section, Table
from adl.ir.spec import Spec


@dataclass
class CompileResult:
    module: Module
    artifact_dir: Path
    verdicts: list[budget_checks.Verdict]
    manifest: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(v.holds for v in self.verdicts)


def default_out_dir(spec: Spec) -> Path:
    return Path("build") / spec.name


def default_cache_dir(out_dir: Path) -> Path:
    return Path(out_dir).parent / ".adl-cache"


def load_data(spec: Spec):
    """The spec's dataset; a data problem becomes an `AdlError` pointing at the `data` block."""
    from adl.data import DataError, load_dataset

    d = spec.data
    try:
        return load_dataset(
            d.source,
            path=d.path,
            split=d.split,
            seed=d.seed,
            classes=spec.task.classes,
            image_size=d.image_size,
            grayscale=d.grayscale,
            validation=d.validation,
        )
    except DataError as err:
        raise AdlError.at(str(err), d.span, filename=spec.filename, source=spec.source) from None


def initial_module(spec: Spec, dataset: Any, seed: int) -> Module:
    """The module before any pass: the spec, and the `model` block's network freshly initialised."""
    if spec.model is None:
        return Module(spec=spec)
    import torch

    from adl.models import build_model
    from adl.models.families import IMPORTED_FAMILIES

    torch.manual_seed(seed)
    if spec.model.family in IMPORTED_FAMILIES:
        return _imported_module(spec, dataset)
    try:
        model = build_model(
            spec.model.family,
            spec.model.as_dict(),
            input_shape=dataset.input_shape,
            classes=spec.task.classes,
            mean=dataset.mean,
            std=dataset.std,
        )
    except ValueError as err:
        raise AdlError.at(str(err), spec.model.span, filename=spec.filename, source=spec.source) from None
    return Module(spec=spec, model=model)


def _imported_module(spec: Spec, dataset: Any) -> Module:
    """The module of a network the user brings (onnx, torchvision): trained when it arrives with
    weights for this task, and its provenance (file digest, replaced layers) in `model_source`."""
    from adl.models.imported import ModelSourceError, build_imported

    try:
        imported = build_imported(
            spec.model.family,
            spec.model.as_dict(),
            input_shape=dataset.input_shape,
            classes=spec.task.classes,
            mean=dataset.mean,
            std=dataset.std,
        )
    except ModelSourceError as err:
        span = spec.model.value_span(err.key) if err.key else spec.model.span
        raise AdlError.at(str(err), span, filename=spec.filename, source=spec.source) from None
    module = Module(spec=spec, model=imported.model).with_metrics(model_source=imported.record)
    return module.establish("trained") if imported.pretrained else module


class DumpIR(Instrument):
    """`--dump-ir DIR`: a readable dump of the module after each pass, `NN-name.txt`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.count = 0

    def after_pass(self, p: Pass, module: Module, ctx: PassContext) -> None:
        from adl.driver.dump import dump_module

        self.count += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.directory / f"{self.count:02d}-{p.name}.txt", dump_module(module, p, ctx))


def run_pipeline(
    module: Module,
    pipeline: Pipeline,
    ctx: PassContext,
    store: CheckpointStore,
    upstream: str,
    on_pass: Callable[[PassRecord], None] = lambda record: None,
) -> Module:
    """Run each pass, or reuse its checkpoint when one exists for the same upstream content."""
    done: list[str] = []
    key = upstream
    for p in pipeline:
        key = stage_key(key, p, ADL_VERSION)
        ctx.current_key = key
        started = time.perf_counter()
        cached = store.load(key)
        if cached is not None:
            record = PassRecord(p.name, str(p), key, time.perf_counter() - started, reused=True)
            module = cached.evolve(log=module.log + (record,))
        else:
            module = _run_one(with_searched_values(p, module), module, ctx, done)
            record = PassRecord(p.name, str(p), key, time.perf_counter() - started)
            module = module.evolve(log=module.log + (record,))
            store.save(key, module)
        for instrument in ctx.instruments:
            instrument.after_pass(p, module, ctx)
        on_pass(record)
        done.append(p.name)
    return module


def link_search_stages(pipeline: Pipeline) -> None:
    """Give each pass that searches the stage after it (`hpo`) that stage, as `searched`."""
    passes = list(pipeline)
    for index, p in enumerate(passes):
        if getattr(p, "searches_next_stage", False):
            p.searched = passes[index + 1] if index + 1 < len(passes) else None


def with_searched_values(p: Pass, module: Module) -> Pass:
    """`p` itself, or, when its options hold search domains, `p` configured with the values the
    `hpo` stage before it chose (the module's ``hpo`` metric)."""
    from adl.ir.domains import has_domains, substitute

    if not has_domains(p.explicit):
        return p
    chosen = (module.metrics.get("hpo") or {}).get("params")
    if chosen is None:
        raise PassError(f"'{p}' has search domains, and no `hpo` stage before it chose their values")
    resolved = type(p)(**substitute(p.explicit, chosen))
    resolved.budget_shares = p.budget_shares
    return resolved


def _run_one(p: Pass, module: Module, ctx: PassContext, done: Sequence[str]) -> Module:
    where = f"while running '{p.name}'" + (f" after [{', '.join(done)}]" if done else "")
    missing = [fact for fact in p.requires if fact not in module.provides()]
    if missing:
        raise PassError(f"{where}: it requires {', '.join(missing)}, which no earlier pass provided")
    for instrument in ctx.instruments:
        instrument.before_pass(p, module, ctx)
    try:
        result = p.run(module, ctx)
    except (AdlError, KeyboardInterrupt):
        raise
    except PassError as err:
        raise PassError(f"{where}: {err}") from err
    except Exception as err:  # not a deliberate PassError: a bug in the pass, reported as one
        raise PassCrash(p.name, done, err) from err
    unmet = [fact for fact in p.ensures if fact not in result.provides()]
    if unmet:
        raise PassError(f"{where}: the pass did not establish {', '.join(unmet)} as it declares")
    return result


def compile_spec(
    spec: Spec,
    *,
    out_dir: Path | None = None,
    pipeline: Pipeline | None = None,
    seed: int = 0,
    dump_ir: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] = lambda message: None,
    on_pass: Callable[[PassRecord], None] = lambda record: None,
    depfile: Path | None = None,
    dataset: Any = None,
    model: Any = None,
    trained: bool = False,
) -> CompileResult:
    """Compile a checked spec into an artifact directory and check its budgets; with `depfile`,
    also write a Make/Ninja depfile naming what the artifact depends on (see `depfile.py`).

    `dataset` (an `adl.data.Dataset`) replaces the spec's data source and `model` (a torch
    module taking raw inputs) the network of its `model` block (`trained`: it is already
    trained, so passes that need a trained network may come first): how `Pipeline.run`
    compiles a user's own network and data without an .adl file.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(spec)
    pipeline = pipeline if pipeline is not None else Pipeline.from_stages(spec.pipeline)
    checked = _check_before_any_pass(spec, pipeline, progress, data_given=dataset is not None)
    cache_dir = prepare_cache(Path(cache_dir) if cache_dir is not None else default_cache_dir(out_dir))
    with _lock_output(out_dir, log):
        return _compile_locked(
            spec,
            out_dir,
            cache_dir,
            pipeline,
            checked,
            seed=seed,
            dump_ir=dump_ir,
            progress=progress,
            log=log,
            on_pass=on_pass,
            depfile=depfile,
            dataset=dataset,
            model=model,
            trained=trained,
        )


@dataclass(frozen=True)
class _Prechecked:
    """What is decided before the cache is touched: a spec that cannot work fails here, leaving
    no cache, lock or artifact behind."""

    cost_model: Any
    plan: Any
    shape: tuple[int, ...] | None  # the input shape, when the source's is known without loading it


def _check_before_any_pass(
    spec: Spec, pipeline: Pipeline, progress: Progress | None, *, data_given: bool
) -> _Prechecked:
    preflight_target(spec)
    cost_model = make_cost_model(spec)
    cost_model.progress = progress or SilentProgress()  # a measured model shows its measuring
    link_search_stages(pipeline)
    plan = plan_budgets(spec, list(pipeline))
    for index, p in enumerate(pipeline):
        p.budget_shares = plan.for_pass(index)
    shape = (
        None
        if data_given
        else known_input_shape(spec.data.source, image_size=spec.data.image_size, grayscale=spec.data.grayscale)
    )
    if shape is not None:  # an impossible budget is refused before the data (and torch) is loaded
        check_feasible(spec, pipeline, DataShape(shape), cost_model)
    return _Prechecked(cost_model, plan, shape)


def prepare_cache(cache_dir: Path) -> Path:
    """The cache folder, created private (0700); one that another user owns or may write to, or a
    cache key that is not private, is an `AdlError` naming it (what a cache holds is trusted)."""
    from adl.ir import seal
    from adl.ir.files import UnsafeDirectory, private_dir

    try:
        private_dir(cache_dir)
        seal.secret_key()
    except UnsafeDirectory as err:
        raise AdlError.at(f"refusing cache directory: it {err.reason}", None, filename=str(err.path)) from None
    except seal.UnsafeKey as err:
        raise AdlError.at(err.reason, None, filename=str(err.path)) from None
    except OSError as err:
        raise AdlError.at(f"cannot create the cache directory: {err.strerror}", None, filename=str(cache_dir)) from None
    return cache_dir


def _lock_output(out_dir: Path, log: Callable[[str], None]) -> contextlib.AbstractContextManager[None]:
    """The output folder's lock, held (waiting, with a log line, while another compile holds it)."""
    from adl.ir.files import lock_path

    held = contextlib.ExitStack()
    try:
        held.enter_context(output_lock(out_dir, on_wait=lambda: log(f"waiting for another compile of {out_dir}")))
    except OSError as err:
        raise AdlError.at(
            f"cannot lock the output folder: {err.strerror}", None, filename=str(lock_path(out_dir))
        ) from None
    return held


def _compile_locked(
    spec: Spec,
    out_dir: Path,
    cache_dir: Path,
    pipeline: Pipeline,
    checked: _Prechecked,
    *,
    seed: int,
    dump_ir: Path | None,
    progress: Progress | None,
    log: Callable[[str], None],
    on_pass: Callable[[PassRecord], None],
    depfile: Path | None,
    dataset: Any,
    model: Any,
    trained: bool,
) -> CompileResult:
    """`compile_spec` once the output folder's lock is held."""
    from adl.backends.artifact import write_artifact
    from adl.driver.manifest import build_manifest, render_report
    from adl.driver.report_html import render_html

    cost_model, plan, shape = checked.cost_model, checked.plan, checked.shape
    dataset = dataset if dataset is not None else load_data(spec)
    ctx = PassContext(
        spec=spec,
        work_dir=cache_dir,
        seed=seed,
        progress=progress or SilentProgress(),
        instruments=[DumpIR(dump_ir)] if dump_ir else [],
        load_dataset=lambda: dataset,
        log=log,
        cost_model=cost_model,
    )
    if shape is None:
        check_feasible(spec, pipeline, DataShape(tuple(dataset.input_shape)), cost_model)
    module = Module(spec=spec, model=model) if model is not None else initial_module(spec, dataset, seed)
    if trained:
        module = module.establish("trained")
    inputs = dataset.fingerprint() + (f"\nmodel {model_fingerprint(model)}" if model is not None else "")
    source = module.metrics.get("model_source")
    if source is not None and source.get("sha256"):  # the imported file's content, not only its path
        inputs += f"\nmodel file {source['sha256']}"
    upstream = root_key(spec, inputs, seed, ADL_VERSION)
    module = run_pipeline(module, pipeline, ctx, CheckpointStore(cache_dir), upstream, on_pass)

    layers = describe_final_model(module, dataset)
    module = module.with_metrics(**_model_metrics(module, layers))
    cost = price(cost_model, spec, layers, module.metrics.get("latency_s"), module.metrics.get("kernels"))
    verdicts = budget_checks.evaluate(spec.budgets, module.metrics)
    manifest = build_manifest(
        module, pipeline, dataset, verdicts, seed=seed, version=ADL_VERSION, cost=cost, budget_plan=plan.as_list()
    )
    sections = report_sections(pipeline, module)
    artifact_dir = write_artifact(
        out_dir,
        library=module.files.get("library"),
        manifest=manifest,
        spec_source=spec.source,
        report=render_report(manifest, sections),
        files=artifact_files(pipeline, module),
        report_html=render_html(manifest, sections),
    )
    if depfile is not None:
        from adl.driver.depfile import dependencies, write_depfile

        deps = dependencies(spec, pipeline, cost_model, data_path=default_data_path(spec.data.source))
        write_depfile(depfile, artifact_dir / "manifest.json", deps)
    return CompileResult(module, artifact_dir, verdicts, manifest)


@dataclass(frozen=True)
class DataShape:
    """What `Pass.check_feasible` knows of the data: the per-sample input shape."""

    input_shape: tuple[int, ...]


def check_feasible(spec: Spec, pipeline: Pipeline, data: DataShape, cost_model: Any) -> None:
    """Every pass's `check_feasible`, before any pass runs; an impossible budget becomes a spec
    error at that budget."""
    for p in pipeline:
        try:
            p.check_feasible(spec, data, cost_model)
        except BudgetInfeasible as err:  # a SettingInvalid too: its span is the setting's
            raise AdlError.at(str(err), err.span, filename=spec.filename, source=spec.source, note=err.note) from None


def preflight_target(spec: Spec) -> None:
    """The target's `mcpu` and `triple` checked against LLVM's own lists before anything runs
    (TVM would fall back to a generic CPU, or crash, later): a spec error at the setting."""
    if spec.target.mcpu is None and spec.target.triple is None:
        return  # nothing to check, and no TVM to import
    from adl.backends.tvm.llvm_names import check_target

    check_target(spec)


def report_sections(pipeline: Pipeline, module: Module) -> list[Section]:
    """The imported network's provenance (if the `model` block brought one), then every pass's own
    sections of the reports (see `Pass.report`), in pipeline order."""
    source = model_source_section(module.metrics.get("model_source"))
    return source + [section for p in pipeline for section in p.report(module.metrics)]


def model_source_section(record: Mapping[str, Any] | None) -> list[Section]:
    """Where a network the user brought came from (`adl.models.imported`): file, digest, contract,
    and the layers adl replaced; nothing for adl's own families."""
    if not record:
        return []
    what = record.get("file") or record.get("name")
    if record["family"] == "torchvision":
        what = f"torchvision's {record['name']}" + (
            f" with weights {record['weights']}" if record.get("weights") else ""
        )
    lines = [f"Imported ({record['family']}): {what}."]
    if record.get("sha256"):
        lines.append(f"sha256 {record['sha256']}.")
    if record.get("opset") is not None:
        lines.append(f"ONNX opset {record['opset']}, written by {record.get('producer') or 'an unknown producer'}.")
    lines.append(f"Input: {record['input_contract']}.")
    blocks: list[Any] = [" ".join(lines)]
    if record.get("replaced"):
        blocks.append(
            Table(
                ["replaced layer", "before", "after", "initialised"],
                [(r["layer"], r["before"], r["after"], r["init"]) for r in record["replaced"]],
            )
        )
    return [Section("Model", blocks)]


def artifact_files(pipeline: Pipeline, module: Module) -> dict[str, str]:
    """Artifact file name -> the file to copy there: what each pass declares in `Pass.artifact_files`
    of the files the final module names."""
    return {name: module.files[key] for p in pipeline for key, name in p.artifact_files.items() if key in module.files}


def make_cost_model(spec: Spec):
    """The spec's `target { cost = ... }` model; a plug-in gone since the check is an `AdlError`."""
    from adl.hwmodels import UnknownCostModel, default_registry

    try:
        return default_registry().create(spec.target.cost)
    except (UnknownCostModel, TypeError, ValueError) as err:
        raise AdlError.at(
            f"cost model '{spec.target.cost.name}': {err}", spec.target.span, filename=spec.filename, source=spec.source
        ) from None


def describe_final_model(module: Module, dataset: Any) -> list[LayerDesc]:
    if module.model is None:
        return []
    from adl.ir.layers import describe_model

    return describe_model(module.model, (1, *dataset.input_shape))


def price(
    cost_model: Any,
    spec: Spec,
    layers: Sequence[LayerDesc],
    measured_latency_s: float | None,
    kernels: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The manifest's `cost_model` record: the model's prediction for the final layers and,
    when the library was measured, the measured latency and measured / predicted; with the
    library's per-kernel timings (`lower`'s `kernels`), each layer's measured kernel time
    (`measured_s`) beside its prediction."""
    record: dict[str, Any] = {
        "name": cost_model.name,
        "model": str(cost_model),
        "options": dict(cost_model.config),
        "parameters": cost_model.parameters(spec.target),
    }
    cost = cost_model.estimate(layers, spec.target) if layers else None
    if cost is None:  # no model to price (a pipeline without one)
        return {
            **record,
            "predicted_latency_s": None,
            "predicted_energy_j": None,
            "predicted_memory_bytes": None,
            "measured_latency_s": measured_latency_s,
            "measured_over_predicted": None,
            "per_layer": [],
        }
    ratio = measured_latency_s / cost.latency_s if measured_latency_s is not None and cost.latency_s > 0 else None
    per_layer = [c.as_dict() for c in cost.layers]
    record.update(kernel_record(kernels, layers, per_layer) if kernels else {})
    return {
        **record,
        "predicted_latency_s": cost.latency_s,
        "predicted_energy_j": cost.energy_j,
        "predicted_memory_bytes": cost.memory_bytes,
        "weight_bytes": cost.weight_bytes,
        "peak_activation_bytes": cost.peak_activation_bytes,
        "measured_latency_s": measured_latency_s,
        "measured_over_predicted": ratio,
        "per_layer": per_layer,
    }


def kernel_record(
    kernels: Sequence[dict[str, Any]], layers: Sequence[LayerDesc], per_layer: list[dict[str, Any]]
) -> dict[str, Any]:
    """Add each layer's measured kernel time to its `per_layer` row, matched by layer name (in
    place; a cost model may add rows of its own, e.g. the measured model's network overhead),
    and return the manifest's `kernels` summary: what was attributed, the rest, the kernels' sum."""
    from adl.backends.tvm.kernel_profile import KernelTime, attribute_kernels

    times = [KernelTime.from_dict(k) for k in kernels]
    attribution = attribute_kernels(times, layers)
    measured = {layer.name: seconds for layer, seconds in zip(layers, attribution.per_layer)}
    for row in per_layer:
        row["measured_s"] = measured.get(row["name"])
    return {
        "kernels": {
            "attributed": attribution.attributed,
            "why_not": attribution.why_not,
            "kernels_s": attribution.kernels_s,
            "count": len(times),
            "other": [k.as_dict() for k in attribution.other],
        }
    }


def parameter_count(model: Any) -> int:
    """The model's parameters, counting the weights a quantized layer holds as integer codes
    (buffers, not parameters) as the parameters of the layer it computes."""
    count = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        template = getattr(module, "quantized_template", None)
        if template is not None:
            count += sum(p.numel() for p in template.parameters()) - sum(p.numel() for p in module.parameters())
    return count


def _model_metrics(module: Module, layers: Sequence[LayerDesc]) -> dict[str, Any]:
    if module.model is None:
        return {}
    return {
        "layers": [layer.as_row() for layer in layers],
        "flops": sum(layer.flops for layer in layers),
        "params": parameter_count(module.model),
        "accuracy": module.metrics.get("accuracy", module.metrics.get("torch_accuracy")),
    }
