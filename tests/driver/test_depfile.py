"""Depfiles for build systems, and artifacts left untouched when their content would not change."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from adl.backends.artifact import write_artifact
from adl.driver.check import load_spec_file
from adl.driver.depfile import dependencies, render_depfile, write_depfile
from adl.driver.run import compile_spec
from adl.ir.options import Option
from adl.ir.passes import Pass
from adl.ir.pipeline import Pipeline
from adl.ir.spec import CallValue
from adl.passes.train import TrainPass


class Annotate(Pass):
    """A pass defined outside adl (here: in this test file), with a file-valued option."""

    name = "annotate"
    options = (Option("notes", "path", "", "a file of notes"),)

    def run(self, module, ctx):
        return module.with_metrics(annotated=True)


def _npz_spec(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "my data.npz", x=rng.random((40, 1, 4, 4), dtype=np.float32), y=np.arange(40) % 10)
    spec = tmp_path / "s.adl"
    spec.write_text(
        'spec s\ntask classify { classes = 10 }\ndata npz { path = "my data.npz" }\n'
        "model mlp(hidden = [8])\npipeline { train { epochs = 1 } }\n"
    )
    return spec


def test_dependencies_name_the_spec_data_file_options_and_plugin_sources(tmp_path):
    spec = load_spec_file(_npz_spec(tmp_path))
    weights = tmp_path / "w.npz"
    train = TrainPass(optimizer=CallValue("l2o", (("weights", str(weights)),)))
    deps = dependencies(spec, [train, Annotate(notes=str(tmp_path / "notes.txt"))])
    assert deps == [
        (tmp_path / "s.adl").resolve(),
        (tmp_path / "my data.npz").resolve(),
        weights.resolve(),
        (tmp_path / "notes.txt").resolve(),
        Path(__file__).resolve(),
    ]
    # built-in passes and an l2o optimizer without a weights file add nothing
    assert dependencies(spec, [TrainPass(optimizer=CallValue("l2o", ()))]) == deps[:2]


def test_a_data_folder_contributes_every_file_in_it(tmp_path):
    spec = load_spec_file(_npz_spec(tmp_path))
    folder = tmp_path / "images"
    for name in ("b/2.png", "a/1.png"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    import dataclasses

    spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, path=str(folder)))
    assert dependencies(spec, [])[1:] == [(folder / "a/1.png").resolve(), (folder / "b/2.png").resolve()]


def test_render_escapes_what_make_would_misread(tmp_path):
    text = render_depfile("out dir/manifest.json", [Path("/a b/#1/$x.npz"), Path("/c.adl")])
    assert text == "out\\ dir/manifest.json: \\\n  /a\\ b/\\#1/$$x.npz \\\n  /c.adl\n"
    write_depfile(tmp_path / "sub" / "x.d", "out/manifest.json", [Path("/c.adl")])
    assert (tmp_path / "sub" / "x.d").read_text() == "out/manifest.json: \\\n  /c.adl\n"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["x.d"]  # no temporary file left


def test_compile_writes_the_depfile_for_the_manifest(tmp_path):
    spec = load_spec_file(_npz_spec(tmp_path))
    compile_spec(spec, out_dir=tmp_path / "out", pipeline=Pipeline([Annotate()]), depfile=tmp_path / "out.d")
    first, *rest = (tmp_path / "out.d").read_text().split(" \\\n  ")
    assert first == f"{tmp_path / 'out' / 'manifest.json'}:"
    assert [line.strip() for line in rest] == [
        str((tmp_path / "s.adl").resolve()),
        str((tmp_path / "my\\ data.npz").resolve()),
        str(Path(__file__).resolve()),
    ]


def _write(out: Path, library: Path, manifest: dict) -> None:
    write_artifact(out, library=str(library), manifest=manifest, spec_source="spec s\n", report="r\n")


def test_an_artifact_whose_content_would_not_change_keeps_its_timestamps(tmp_path):
    library = tmp_path / "lib.so"
    library.write_bytes(b"\x7fELF library")
    manifest = {"metrics": {"accuracy": 0.9}, "passes": [{"name": "train", "seconds": 3.0, "reused": False}]}
    out = tmp_path / "out"
    _write(out, library, manifest)
    past = 1_000_000_000
    for path in (out, *out.iterdir()):
        os.utime(path, (past, past))

    rerun = {**manifest, "passes": [{"name": "train", "seconds": 0.1, "reused": True}]}  # only timings differ
    _write(out, library, rerun)
    assert out.stat().st_mtime == past and (out / "manifest.json").stat().st_mtime == past
    assert json.loads((out / "manifest.json").read_text())["passes"][0]["reused"] is False

    library.write_bytes(b"\x7fELF other library")  # new content: swapped in
    _write(out, library, rerun)
    assert (out / "manifest.json").stat().st_mtime > past
    assert (out / "model.so").read_bytes() == b"\x7fELF other library"
    _write(out, library, {**rerun, "metrics": {"accuracy": 0.8}})
    assert json.loads((out / "manifest.json").read_text())["metrics"] == {"accuracy": 0.8}
