"""The artifact directory: written atomically, loaded through the TVM runtime only.

OUT/
  model.so        the compiled library (TVM export_library)
  manifest.json   schema-versioned record: input, metrics, budgets, layers, passes
  spec.adl        the spec it was compiled from
  report.md       human summary
  report.html     the same with plots, self-contained
  ...             files the passes declare (`Pass.artifact_files`), e.g. weights.packed.npz after `haq`
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from adl.backends.runtime import MAX_THREADS, CompiledLibrary, check_input
from adl.ir.files import default_mode, exchange, fsync_dir, fsync_file, output_lock, sha256_file
from adl.ir.spec import available_cores

LIBRARY_FILE, MANIFEST_FILE, SPEC_FILE, REPORT_FILE = "model.so", "manifest.json", "spec.adl", "report.md"
REPORT_HTML_FILE = "report.html"
SUPPORTED_SCHEMA = 1


class ArtifactError(Exception):
    """A missing, malformed or tampered artifact: `message` says what is wrong with `path` (None: not known).

    The command line renders it as ``path: error: message`` and exits 2.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message if path is None else f"{path}: {message}")
        self.message = message
        self.path = None if path is None else Path(path)


def write_artifact(
    out_dir: Path,
    *,
    library: str | None,
    manifest: dict[str, Any],
    spec_source: str,
    report: str,
    files: dict[str, str] | None = None,
    report_html: str | None = None,
) -> Path:
    """Write the artifact to a temporary sibling folder, then swap it into place atomically.

    A compile killed at any point leaves either the previous artifact or the new one, never
    a half-written folder under the artifact's name (Linux: one ``renameat2(RENAME_EXCHANGE)``;
    elsewhere two renames, and the next write restores the previous artifact if a kill fell
    between them). Leftover ``.NAME.tmp-PID-*`` / ``.NAME.old-PID`` folders of dead processes are
    cleaned up first, under the output folder's lock. An artifact whose content would not
    change (same library, spec and manifest up to pass timings) is left untouched, so its
    timestamps tell a build system that nothing downstream needs rebuilding (Ninja's restat).
    `files` maps further artifact file names to the files to copy there (see `Pass.artifact_files`).
    The library's sha256 is recorded in `manifest` (in place) as ``manifest["library"]["sha256"]``.
    """
    out_dir = Path(out_dir)
    files = {**({LIBRARY_FILE: library} if library is not None else {}), **(files or {})}
    if library is not None:
        manifest["library"] = {**(manifest.get("library") or {}), "sha256": sha256_file(library)}
    with output_lock(out_dir):
        _clean_leftovers(out_dir)
        if _unchanged(out_dir, files, manifest, spec_source):
            return out_dir
        texts = {
            MANIFEST_FILE: json.dumps(manifest, indent=2, sort_keys=False, default=str, allow_nan=False) + "\n",
            SPEC_FILE: spec_source,
            REPORT_FILE: report,
            **({REPORT_HTML_FILE: report_html} if report_html is not None else {}),
        }
        staged = _stage(out_dir, files, texts, library_sha256=(manifest.get("library") or {}).get("sha256"))
        _swap_in(staged, out_dir)
    return out_dir


def _stage(out_dir: Path, files: dict[str, str], texts: dict[str, str], library_sha256: str | None) -> Path:
    """A complete, flushed copy of the new artifact in a fresh ``.NAME.tmp-PID-*`` sibling folder."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    try:
        os.chmod(tmp, default_mode(directory=True))
        for name, source in files.items():
            shutil.copyfile(source, tmp / name)
        if library_sha256 is not None and sha256_file(tmp / LIBRARY_FILE) != library_sha256:
            raise ArtifactError(f"{files[LIBRARY_FILE]} changed while it was copied into the artifact")
        for name, text in texts.items():
            (tmp / name).write_text(text)
        for path in tmp.iterdir():
            fsync_file(path)
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def _swap_in(staged: Path, out_dir: Path) -> None:
    """Make `staged` the artifact: an atomic exchange with the previous one where the system can."""
    if not os.path.lexists(out_dir):
        os.rename(staged, out_dir)
    elif exchange(staged, out_dir):
        shutil.rmtree(staged, ignore_errors=True)  # it now holds the previous artifact
    else:
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.rename(out_dir, old)
        os.rename(staged, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(out_dir.parent)


def _clean_leftovers(out_dir: Path) -> None:
    """Remove what a killed write left beside `out_dir`; if it was killed between the two renames
    of a swap (no artifact, a ``.NAME.old-PID``), put the previous artifact back first."""
    if not out_dir.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.(tmp|old)-(\d+)(-.*)?")
    found = [
        (match.group(1), path)
        for path in out_dir.parent.iterdir()
        if (match := pattern.fullmatch(path.name)) and not _other_live_process(int(match.group(2)))
    ]
    for kind, path in sorted(found, key=lambda item: item[0] != "old"):
        if kind == "old" and not os.path.lexists(out_dir):
            os.rename(path, out_dir)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _other_live_process(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process holds the lock: anything of its own is left over
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _stable(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest without what a rerun that reuses every pass legitimately changes."""
    manifest = json.loads(json.dumps(manifest, default=str))
    manifest["passes"] = [
        {k: v for k, v in p.items() if k not in ("seconds", "reused")} for p in manifest.get("passes", [])
    ]
    return manifest


def _unchanged(out_dir: Path, files: dict[str, str], manifest: dict[str, Any], spec_source: str) -> bool:
    try:
        old = json.loads((out_dir / MANIFEST_FILE).read_text())
        same_spec = (out_dir / SPEC_FILE).read_text() == spec_source
    except (OSError, ValueError):
        return False
    texts = {MANIFEST_FILE, SPEC_FILE, REPORT_FILE, REPORT_HTML_FILE}
    old_files = {path.name for path in out_dir.iterdir() if path.name not in texts}
    same_files = old_files == set(files) and all(
        filecmp.cmp(source, out_dir / name, shallow=False) for name, source in files.items()
    )
    return same_spec and same_files and _stable(old) == _stable(manifest)


class Artifact:
    """A compiled artifact: its manifest, and its library loaded on first use (TVM runtime, no torch).

    The library is loaded only once its sha256 matches the manifest's (``library.sha256``), so a
    truncated, modified or swapped ``model.so`` is refused (ArtifactError) rather than run.
    """

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

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self.manifest["input"].get("dtype", "float32"))

    def check_input(self, x: Any) -> np.ndarray:
        """`x` (N samples or one) as the batch the library takes; ValueError if it does not fit
        the manifest's input: its shape, its dtype (integers are cast to a float input), NaN or inf."""
        arr = np.asarray(x)
        if arr.dtype.kind in "iu" and self.input_dtype.kind == "f":
            arr = arr.astype(self.input_dtype)
        return check_input(arr, self.input_shape, self.input_dtype)[0]

    def _verified_library(self) -> Path:
        """The library file, once its sha256 is the one the manifest records."""
        record = self.manifest.get("library")
        library = self.path / LIBRARY_FILE
        if record and record.get("cross_compiled"):
            triple = (self.manifest.get("target") or {}).get("mtriple")
            raise ArtifactError(
                f"cross-compiled for {triple}: run it there with the TVM runtime (see docs/lowering.md)", self.path
            )
        if not library.is_file():
            why = "its pipeline had no `lower` pass" if record is None else "the manifest records one"
            raise ArtifactError(f"no {LIBRARY_FILE} ({why})", self.path)
        expected = (record or {}).get("sha256")
        if expected is None:
            raise ArtifactError(
                f"no 'library.sha256' to check {LIBRARY_FILE} against: the artifact was written "
                "by an older adl; recompile its spec with this one",
                self.path / MANIFEST_FILE,
            )
        try:
            actual = sha256_file(library)
        except OSError as exc:
            raise ArtifactError(f"cannot read {LIBRARY_FILE}: {exc.strerror or exc}", self.path) from None
        if actual != expected:
            raise ArtifactError(
                f"{LIBRARY_FILE} does not match its manifest (sha256 {actual[:16]}..., the manifest "
                f"records {expected[:16]}...): the library was modified or comes from another "
                "compile",
                self.path,
            )
        return library

    def _threads(self) -> int | None:
        """The manifest's thread count, at most this machine's cores: the count was picked on the
        compiling machine, and TVM workers beyond the cores only cost time (seconds at exit)."""
        threads = (self.manifest.get("metrics") or {}).get("runtime_threads") or (
            self.manifest.get("target") or {}
        ).get("num-cores")
        return None if threads is None else min(threads, available_cores())

    def _lib(self) -> CompiledLibrary:
        if self._library is None:
            library = self._verified_library()
            try:
                self._library = CompiledLibrary(
                    library, self.input_shape, num_threads=self._threads(), input_dtype=str(self.input_dtype)
                )
            except RuntimeError as exc:  # TVM could not load it: another TVM version, another machine
                raise ArtifactError(str(exc), self.path) from exc
        return self._library

    def run(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs (logits), shape (N, classes), for N samples or one.

        ValueError for an input that does not fit the manifest's (see `check_input`);
        ArtifactError for a library that is missing, tampered with or does not take that input."""
        batch = self.check_input(x)
        library = self._lib()
        try:
            return library.run(batch)
        except ValueError as exc:  # the input fits the manifest: the library and its manifest disagree
            raise ArtifactError(
                f"{LIBRARY_FILE} does not take the input its manifest declares: {exc}", self.path
            ) from exc

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class labels (int64) for N samples (or one)."""
        return np.argmax(self.run(x), axis=-1).astype(np.int64)

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r})"


def load(path: str | os.PathLike[str]) -> Artifact:
    """The artifact at `path` (its folder, its model.so or its manifest.json), its manifest checked
    by `validate_manifest`; ArtifactError naming the file at fault otherwise."""
    path = Path(path)
    if path.is_file() and path.name in (LIBRARY_FILE, MANIFEST_FILE):
        path = path.parent
    if not path.is_dir():
        raise ArtifactError(
            "no such artifact folder"
            if not os.path.lexists(path)
            else "is not an adl artifact (a file, not an artifact folder)",
            path,
        )
    manifest_path = path / MANIFEST_FILE
    if not os.path.lexists(manifest_path):
        raise ArtifactError(f"is not an adl artifact (no {MANIFEST_FILE})", path)
    try:
        manifest = validate_manifest(_read_json(manifest_path))
    except ValueError as exc:
        raise ArtifactError(str(exc), manifest_path) from None
    return Artifact(path, manifest)


MAX_MANIFEST_BYTES = 64 << 20  # manifests are kilobytes; a bigger file is not one


def _read_json(path: Path) -> Any:
    """The JSON value in `path`; ValueError for a file that is not standard JSON (NaN, Infinity included)."""
    if not path.is_file():
        raise ValueError("not a regular file")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES >> 20} MB: not a manifest")
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError("not valid JSON: nested too deeply") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not valid JSON: {name} is not a JSON number (a manifest holds finite numbers only)")


# -- the manifest's types --------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_threads(value: Any) -> bool:
    return value is None or (_is_int(value) and 1 <= value <= MAX_THREADS)


def _is_shape(value: Any) -> bool:
    return (
        isinstance(value, list)
        and 1 <= len(value) <= 8
        and all(_is_int(d) and 1 <= d <= 1 << 31 for d in value)
        and value[0] == 1
    )


def _is_dtype(value: Any) -> bool:
    """float32: the one input type adl's libraries take (integer libraries quantize inside)."""
    return value == "float32"


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


_THREADS = f"an integer from 1 to {MAX_THREADS} or null"
# The keys the loader reads: (key, required, accepts, what it must be). A child is checked when
# its parent is an object; null is accepted where `accepts` takes None.
MANIFEST_KEYS: tuple[tuple[str, bool, Callable[[Any], bool], str], ...] = (
    (
        "schema_version",
        True,
        lambda v: _is_int(v) and v == SUPPORTED_SCHEMA,
        f"{SUPPORTED_SCHEMA} (the schema this adl reads: recompile the spec with this adl)",
    ),
    ("input", True, lambda v: isinstance(v, dict), "an object"),
    ("input.shape", True, _is_shape, "an array of up to 8 positive integers, batch 1 first, e.g. [1, 1, 8, 8]"),
    ("input.dtype", False, _is_dtype, '"float32" (the input type of every adl library)'),
    ("target", False, lambda v: isinstance(v, dict), "an object"),
    ("target.mtriple", False, lambda v: v is None or isinstance(v, str), "a string or null"),
    ("target.num-cores", False, _is_threads, _THREADS),
    ("metrics", False, lambda v: isinstance(v, dict), "an object"),
    ("metrics.runtime_threads", False, _is_threads, _THREADS),
    ("library", False, lambda v: v is None or isinstance(v, dict), "an object or null"),
    ("library.cross_compiled", False, lambda v: isinstance(v, bool), "true or false"),
    ("library.sha256", False, _is_sha256, "64 lowercase hex digits"),
    ("all_budgets_hold", False, lambda v: isinstance(v, bool), "true or false"),
)


def validate_manifest(manifest: Any) -> dict[str, Any]:
    """`manifest`, once the keys the loader reads (`MANIFEST_KEYS`) have the right types;
    ValueError naming the first that does not, e.g. "'input' must be an object, got null"."""
    if not isinstance(manifest, dict):
        raise ValueError(f"the manifest must be a JSON object, got {_describe(manifest)}")
    for key, required, accepts, expected in MANIFEST_KEYS:
        parent, _, name = key.rpartition(".")
        holder = manifest.get(parent) if parent else manifest
        if not isinstance(holder, dict):
            continue  # an optional parent that is absent or null
        if name not in holder:
            if required:
                raise ValueError(f"'{key}' is missing")
            continue
        if not accepts(holder[name]):
            raise ValueError(f"'{key}' must be {expected}, got {_describe(holder[name])}")
    return manifest


def _describe(value: Any) -> str:
    """A JSON value as a message names it: null, true, 3, "text", [2, 1], an array, an object."""
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value)
    if len(text) <= 40:
        return text
    return "an array" if isinstance(value, list) else text[:36] + '..."'
