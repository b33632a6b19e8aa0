"""The artifact directory: written atomically, loaded through the TVM runtime only.

    OUT/
      model.so        the compiled library (TVM export_library)
      manifest.json   schema-versioned record: input, metrics, budgets, layers, passes
      spec.adl        the spec it was compiled from
      report.md       human summary
      report.html     the same with plots, self-contained
      weights.packed.npz   (after `haq`) the weight codes bit-packed at each layer's width
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

LIBRARY_FILE, MANIFEST_FILE, SPEC_FILE, REPORT_FILE = "model.so", "manifest.json", "spec.adl", "report.md"
REPORT_HTML_FILE = "report.html"
# Files passes produce (`Module.files` key -> name in the artifact) that the artifact carries besides the library.
PASS_FILES = {"packed_weights": "weights.packed.npz"}
SUPPORTED_SCHEMA = 1


class ArtifactError(Exception):
    """A missing or malformed artifact."""


def write_artifact(out_dir: Path, *, library: str | None, manifest: dict[str, Any], spec_source: str,
                   report: str, files: dict[str, str] | None = None, report_html: str | None = None) -> Path:
    """Write the artifact to a temporary sibling folder, then swap it into place.

    A compile killed at any point leaves either the previous artifact or the new one, never
    a half-written folder under the artifact's name. An artifact whose content would not
    change (same library, spec and manifest up to pass timings) is left untouched, so its
    timestamps tell a build system that nothing downstream needs rebuilding (Ninja's restat).
    `files` maps further artifact file names to the files to copy there (see `PASS_FILES`).
    """
    out_dir = Path(out_dir)
    files = {**({LIBRARY_FILE: library} if library is not None else {}), **(files or {})}
    if _unchanged(out_dir, files, manifest, spec_source):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, source in files.items():
        shutil.copyfile(source, tmp / name)
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    (tmp / SPEC_FILE).write_text(spec_source)
    (tmp / REPORT_FILE).write_text(report)
    if report_html is not None:
        (tmp / REPORT_HTML_FILE).write_text(report_html)
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _stable(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest without what a rerun that reuses every pass legitimately changes."""
    manifest = json.loads(json.dumps(manifest, default=str))
    manifest["passes"] = [{k: v for k, v in p.items() if k not in ("seconds", "reused")}
                          for p in manifest.get("passes", [])]
    return manifest


def _unchanged(out_dir: Path, files: dict[str, str], manifest: dict[str, Any], spec_source: str) -> bool:
    try:
        old = json.loads((out_dir / MANIFEST_FILE).read_text())
        same_spec = (out_dir / SPEC_FILE).read_text() == spec_source
    except (OSError, ValueError):
        return False
    carried = {LIBRARY_FILE, *PASS_FILES.values()}
    old_files = {path.name for path in out_dir.iterdir() if path.name in carried}
    same_files = old_files == set(files) and all(filecmp.cmp(source, out_dir / name, shallow=False)
                                                 for name, source in files.items())
    return same_spec and same_files and _stable(old) == _stable(manifest)


class Artifact:
    """A compiled artifact: its manifest, and its library loaded on first use (TVM runtime, no torch)."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._library = None

    @property
    def budgets_hold(self) -> bool:
        return bool(self.manifest.get("all_budgets_hold"))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["input"]["shape"])

    def _lib(self):
        if self._library is None:
            from adl.backends.runtime import CompiledLibrary

            library = self.path / LIBRARY_FILE
            triple = self.manifest.get("target", {}).get("mtriple")
            if (self.manifest.get("library") or {}).get("cross_compiled"):
                raise ArtifactError(f"{self.path} was cross-compiled for {triple}: run it there with the TVM "
                                    "runtime (see docs/lowering.md)")
            if not library.exists():
                raise ArtifactError(f"{self.path} has no {LIBRARY_FILE}: its pipeline had no `lower` pass")
            threads = (self.manifest.get("metrics", {}).get("runtime_threads")
                       or self.manifest.get("target", {}).get("num-cores"))
            self._library = CompiledLibrary(library, self.input_shape, num_threads=threads)
        return self._library

    def run(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs (logits), shape (N, classes), for N samples or one."""
        return self._lib().run(np.asarray(x, dtype=np.float32))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class labels for N samples (or one)."""
        return self._lib().predict(np.asarray(x, dtype=np.float32))

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r})"


def load(path: str | os.PathLike[str]) -> Artifact:
    path = Path(path)
    if path.is_file() and path.name == LIBRARY_FILE:
        path = path.parent
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.exists():
        raise ArtifactError(f"{path} is not an adl artifact (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{manifest_path} is not valid JSON: {err}") from None
    version = manifest.get("schema_version")
    if version != SUPPORTED_SCHEMA:
        raise ArtifactError(f"{manifest_path} has schema_version {version!r}; this adl reads {SUPPORTED_SCHEMA}")
    return Artifact(path, manifest)
