"""Hostile input to adl's command line: how much of it is handled (issue 19). Goal: 0 mishandled.

    python bench/fuzz.py [--quick] [--out FILE] [--specs N] [--seed S] [--timeout S]
                         [--artifact DIR] [--runs N] [--run-timeout S]

Section `check`: N spec files (default 10,000; --quick 200) drawn by tests/dsl/fuzzing.py's
Hypothesis strategies: specs built from the grammar with the real vocabulary (mostly valid values,
some hostile: huge, non-finite, deeply nested, of the wrong kind), the example specs damaged
(characters and tokens inserted, deleted, replaced; lines duplicated, dropped, swapped; cut short),
and now and then their bytes broken past UTF-8. Each goes through `adl check` (`adl.cli.main`,
in-process) in a worker process that is killed after --timeout seconds (a hang) and replaced.

Section `run` (only with --artifact DIR, an artifact `adl compile` wrote; nothing is compiled
here): inputs of wrong shapes, dtypes and values (NaN, inf, empty, pickled objects), truncated or
garbage .npy/.npz files, .npz without `x` or with bad labels; and copies of the artifact with
manifest.json broken (cut short, not JSON, keys missing, wrong types) and model.so cut short,
missing or replaced. Each is `adl run COPY --input FILE` in a subprocess, killed after
--run-timeout seconds.

Outcomes: handled (`ok`: exit 0; `spec error`/`error`: exit 2 with a clean message) or mishandled
(internal error, an exception out of `main`, a traceback, another exit code or a signal, a
`check` error without `file:line:col:`/`file:`, a message longer than a screen, a hang, a dead
worker). A section is a function that yields cases and a function that runs one and judges it
(`Section`); add one to SECTIONS. Writes JSON: "goals" (value/target/met), the outcome counts,
a few examples of each outcome, timings, and the run's provenance (CPU, commit, date, command).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from provenance import provenance  # noqa: E402 (bench/ put on sys.path above)

# what the outcomes depend on (`python -m bench.status`): the parser and checker, the CLI, the artifact loader
MEASURES = (
    "bench/fuzz.py",
    "tests/dsl/fuzzing.py",
    "adl/cli.py",
    "adl/dsl",
    "adl/driver/check.py",
    "adl/ir/options.py",
    "adl/backends/artifact.py",
    "adl/backends/runtime.py",
)


def _load_fuzzing():
    """tests/dsl/fuzzing.py (the strategies and the judge `make test` uses), loaded by path."""
    spec = importlib.util.spec_from_file_location("adl_fuzzing", ROOT / "tests" / "dsl" / "fuzzing.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["adl_fuzzing"] = module
    spec.loader.exec_module(module)
    return module


fuzzing = _load_fuzzing()
Outcome = fuzzing.Outcome


@dataclass
class Case:
    label: str  # what was done to the input, for the report
    payload: Any


@dataclass
class Section:
    """One command under fuzz: `cases(args)` yields the inputs, `run(case, args)` runs one and judges it."""

    name: str
    goal: str
    cases: Callable[[argparse.Namespace], Iterator[Case]]
    run: Callable[[Case, argparse.Namespace], Outcome]
    enabled: Callable[[argparse.Namespace], bool] = lambda args: True


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- a worker process with a hang guard ----------------------------------------------------------


def _serve(conn: Connection, handler: Callable[[Any], Outcome]) -> None:
    while True:
        try:
            payload = conn.recv()
        except EOFError:
            return
        conn.send(handler(payload))


class Worker:
    """A forked process that runs `handler` on one payload at a time; killed and replaced after a hang."""

    def __init__(self, handler: Callable[[Any], Outcome]) -> None:
        self._handler = handler
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, self._handler), daemon=True)
        self._process.start()
        child.close()

    def run(self, payload: Any, timeout: float) -> Outcome:
        start = time.monotonic()
        self._conn.send(payload)
        if self._conn.poll(timeout):
            try:
                return self._conn.recv()
            except EOFError:  # the worker died: a signal, os._exit, an interpreter crash
                self._process.join()
                outcome = Outcome("crash", f"worker exit code {self._process.exitcode}", time.monotonic() - start)
                self._start()
                return outcome
        self.close()
        self._start()
        return Outcome("hang", f"no answer in {timeout:g} s", time.monotonic() - start)

    def close(self) -> None:
        self._process.kill()
        self._process.join()
        self._conn.close()


# -- section `check` -----------------------------------------------------------------------------


def check_cases(args: argparse.Namespace) -> Iterator[Case]:
    """`args.specs` spec files drawn by Hypothesis (seeded: the same list for the same seed)."""
    from hypothesis import HealthCheck, Phase, given, seed, settings

    drawn: list[bytes] = []

    @seed(args.seed)
    @settings(
        max_examples=args.specs,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(fuzzing.spec_files())
    def draw(data: bytes) -> None:
        drawn.append(data)

    started = time.monotonic()
    draw()
    log(f"check: drew {len(drawn)} specs in {time.monotonic() - started:.0f} s")
    for i, data in enumerate(drawn):
        yield Case(f"spec {i}", data)


_check = {"worker": None, "folder": None}  # made on first use, removed by `close_check`


def _check_in_worker(data: bytes) -> Outcome:
    path = _check["folder"] / f"fuzz-{os.getpid()}.adl"
    path.write_bytes(data)
    return fuzzing.check_file(path)


def run_check(case: Case, args: argparse.Namespace) -> Outcome:
    if _check["worker"] is None:
        _check["folder"] = Path(tempfile.mkdtemp(prefix="adl-fuzz-check-"))
        _check["worker"] = Worker(_check_in_worker)
    return _check["worker"].run(case.payload, args.timeout)


def close_check() -> None:
    if _check["worker"] is not None:
        _check["worker"].close()
        shutil.rmtree(_check["folder"], ignore_errors=True)
        _check.update(worker=None, folder=None)


# -- section `run` -------------------------------------------------------------------------------


def _input_files(folder: Path, shape: tuple[int, ...]) -> Iterator[tuple[str, Path]]:
    """Input files for `adl run --input`: one valid .npy and .npz, then every kind of wrong one."""
    import numpy as np

    rng = np.random.default_rng(0)
    sample = tuple(shape[1:])
    good = rng.random((4, *sample), dtype=np.float32)

    def file(name: str, suffix: str) -> Path:
        return folder / (re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") + suffix)

    def npy(name: str, array: Any, **kwargs: Any) -> tuple[str, Path]:
        path = file(name, ".npy")
        np.save(path, array, **kwargs)
        return name, path

    def npz(name: str, **arrays: Any) -> tuple[str, Path]:
        path = file(name, ".npz")
        np.savez(path, **arrays)
        return name, path

    def raw(name: str, data: bytes, suffix: str = ".npy") -> tuple[str, Path]:
        path = file(name, suffix)
        path.write_bytes(data)
        return name, path

    yield npy("valid", good)
    yield npz("valid_npz", x=good, y=np.arange(4))
    yield npy("one sample without batch axis", good[0])
    yield npy("empty batch", np.zeros((0, *sample), np.float32))
    yield npy("batch of 1024", rng.random((1024, *sample), dtype=np.float32))
    yield npy("scalar", np.float32(1.0))
    yield npy("flat vector", good.reshape(-1))
    yield npy("extra axis", good[..., None])
    yield npy("sample axes reversed", np.ascontiguousarray(good.transpose(0, *range(len(shape) - 1, 0, -1))))
    yield npy("one element short", good.reshape(-1)[:-1])
    for dtype in ("float64", "float16", "int64", "uint8", "bool", "complex64", "<U3", "datetime64[s]"):
        yield npy(f"dtype {dtype}", good.astype(dtype) if dtype != "<U3" else good.astype(str).astype(dtype))
    yield npy("object array (pickled)", np.array([object()] * 4, dtype=object), allow_pickle=True)
    yield npy("structured dtype", np.zeros(4, dtype=[("a", "f4"), ("b", "i4")]))
    yield npy("NaN", np.full_like(good, np.nan))
    yield npy("inf", np.full_like(good, np.inf))
    yield npy("huge values", np.full_like(good, 3e38))
    valid = file("valid", ".npy").read_bytes()
    yield raw("truncated .npy", valid[: len(valid) // 2])
    yield raw("header only", valid[:128])
    yield raw("garbage bytes", rng.bytes(4096))
    yield raw("empty file", b"")
    archive = file("valid_npz", ".npz").read_bytes()
    yield raw(".npz bytes named .npy", archive)
    yield raw(".npy bytes named .npz", valid, ".npz")
    yield raw("truncated .npz", archive[:300], ".npz")
    yield npz("npz without x", a=good)
    yield npz("npz labels too few", x=good, y=np.arange(3))
    yield npz("npz labels float", x=good, y=np.full(4, 0.5))
    yield npz("npz labels strings", x=good, y=np.array(["a"] * 4))
    yield npz("npz labels 2-d", x=good, y=np.zeros((4, 2), np.int64))
    yield npz("npz x pickled", x=np.array([object()] * 4, dtype=object))
    directory = folder / "a_directory.npy"
    directory.mkdir(exist_ok=True)
    yield "a directory", directory
    yield "missing file", folder / "missing.npy"
    yield "/dev/zero", Path("/dev/zero")


def _manifest_damage(manifest: Any) -> Iterator[tuple[str, str | bytes]]:
    """Broken manifest.json texts: cut short, not JSON, keys missing, wrong types."""
    text = json.dumps(manifest, indent=2)
    yield "manifest cut short", text[: len(text) // 2]
    yield "manifest empty", ""
    yield "manifest not JSON", "{ this is not json"
    yield "manifest is a list", "[]"
    yield "manifest is null", "null"
    yield "manifest NaN", text.replace("{", '{"nan": NaN, ', 1)
    yield "manifest nested 100000 deep", "[" * 100_000 + "]" * 100_000
    yield "manifest not UTF-8", text.encode() + b"\xff"
    if isinstance(manifest, dict):
        for key in manifest:
            yield f"manifest without '{key}'", json.dumps({k: v for k, v in manifest.items() if k != key})
        for key, value in (
            ("schema_version", 99),
            ("schema_version", "1"),
            ("input", []),
            ("library", "x"),
            ("target", None),
            ("metrics", {"runtime_threads": 10**9}),
        ):
            yield f"manifest {key} = {value!r}", json.dumps({**manifest, key: value})
        shape_input = manifest.get("input") if isinstance(manifest.get("input"), dict) else {}
        for key, values in (
            ("shape", ("x", [], [-1], [1, 0], [1, 2**40], [1] * 20, [1, 1.5], [1, True])),
            ("dtype", ("complex128", "object", "nonsense", 7, "float16")),
        ):
            for value in values:
                damaged = {**manifest, "input": {**shape_input, key: value}}
                yield f"manifest input.{key} = {value!r}", json.dumps(damaged)
        library = manifest.get("library") if isinstance(manifest.get("library"), dict) else {}
        yield "manifest sha256 of another file", json.dumps({**manifest, "library": {**library, "sha256": "0" * 64}})


def run_cases(args: argparse.Namespace) -> Iterator[Case]:
    """Damaged inputs against the artifact, then damaged copies of the artifact with a valid input;
    with `args.runs`, that many of them spread evenly over the list."""
    artifact = Path(args.artifact).resolve()
    work = Path(tempfile.mkdtemp(prefix="adl-fuzz-run-"))
    try:
        manifest: Any = json.loads((artifact / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    shape = (manifest.get("input") or {}).get("shape") if isinstance(manifest, dict) else None
    inputs = work / "inputs"
    inputs.mkdir()
    files = list(_input_files(inputs, tuple(shape) if isinstance(shape, list) and shape else (1, 1, 8, 8)))
    valid = dict(files)["valid"]
    plans: list[tuple[str, Path, Callable[[Path], None] | None]] = [
        (f"input: {label}", path, None) for label, path in files
    ]
    plans += [(f"artifact: {label}", valid, damage) for label, damage in _artifact_damage(manifest)]
    if args.runs is not None and args.runs < len(plans):
        plans = [plans[round(i * (len(plans) - 1) / max(1, args.runs - 1))] for i in range(args.runs)]
    try:
        for i, (label, input_path, damage) in enumerate(plans):
            folder = artifact
            if damage is not None:
                folder = work / f"artifact-{i}"
                shutil.copytree(artifact, folder, symlinks=True)
                damage(folder)
            yield Case(label, {"artifact": folder, "input": input_path})
            if damage is not None:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _artifact_damage(manifest: Any) -> Iterator[tuple[str, Callable[[Path], None]]]:
    def write(name: str, content: str | bytes) -> Callable[[Path], None]:
        def apply(folder: Path) -> None:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            path.write_bytes(content if isinstance(content, bytes) else content.encode())

        return apply

    def truncate(name: str) -> Callable[[Path], None]:
        def apply(folder: Path) -> None:
            path = folder / name
            path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])

        return apply

    def remove(name: str) -> Callable[[Path], None]:
        return lambda folder: (folder / name).unlink()

    def make_dir(name: str) -> Callable[[Path], None]:
        def apply(folder: Path) -> None:
            (folder / name).unlink()
            (folder / name).mkdir()

        return apply

    def loop(name: str) -> Callable[[Path], None]:
        def apply(folder: Path) -> None:
            (folder / name).unlink()
            (folder / name).symlink_to(folder / name)

        return apply

    for label, text in _manifest_damage(manifest):
        yield label, write("manifest.json", text)
    yield "manifest.json missing", remove("manifest.json")
    yield "manifest.json a directory", make_dir("manifest.json")
    yield "manifest.json a symlink loop", loop("manifest.json")
    yield "model.so cut short", truncate("model.so")
    yield "model.so missing", remove("model.so")
    yield "model.so garbage", write("model.so", b"\x7fELF" + b"\x00" * 64)
    yield "model.so a directory", make_dir("model.so")
    yield "model.so a symlink loop", loop("model.so")


def run_run(case: Case, args: argparse.Namespace) -> Outcome:
    """`adl run` in a subprocess: exit 0 or 2 without a traceback is handled, anything else not."""
    command = [sys.executable, "-m", "adl", "run", str(case.payload["artifact"]), "--input", str(case.payload["input"])]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=args.run_timeout,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return Outcome("hang", f"no exit in {args.run_timeout:g} s", time.monotonic() - start)
    seconds = time.monotonic() - start
    return judge_run(proc.returncode, proc.stdout, proc.stderr, seconds)


def judge_run(code: int, out: str, err: str, seconds: float = 0.0) -> Outcome:
    if "Traceback" in err or "internal error" in err:
        return Outcome("internal error", err[-300:], seconds)
    if code == 0:
        return Outcome("ok", out[:120], seconds)
    if code == 2:
        lines = err.strip().splitlines()
        if not lines or len(lines) > fuzzing.MAX_LINES:
            return Outcome("not one screen", err[-300:], seconds)
        return Outcome("error", lines[0][:160], seconds)
    if code < 0:
        return Outcome("signal", f"killed by signal {-code}: {err[-200:]}", seconds)
    return Outcome("bad exit", f"exit {code}: {err[-300:]}", seconds)


HANDLED = {"ok", "spec error", "error"}

SECTIONS = (
    Section(
        "check", "check: no spec mishandled (internal error, traceback, unpositioned, hang)", check_cases, run_check
    ),
    Section(
        "run",
        "run: no input or artifact copy mishandled (exit other than 0/2, traceback, hang)",
        run_cases,
        run_run,
        enabled=lambda args: args.artifact is not None,
    ),
)


# -- the report ----------------------------------------------------------------------------------


def run_section(section: Section, args: argparse.Namespace) -> dict:
    counts: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[dict]] = collections.defaultdict(list)
    seconds: list[float] = []
    started = time.monotonic()
    for i, case in enumerate(section.cases(args)):
        outcome = section.run(case, args)
        counts[outcome.kind] += 1
        seconds.append(outcome.seconds)
        keep = 3 if outcome.kind in HANDLED else 20
        if len(examples[outcome.kind]) < keep:
            examples[outcome.kind].append({"case": case.label, "detail": outcome.detail, "input": _shown(case.payload)})
        if outcome.kind not in HANDLED:
            log(f"{section.name}: MISHANDLED {outcome.kind}: {case.label}: {outcome.detail[:200]}")
        if (i + 1) % 500 == 0:
            log(f"{section.name}: {i + 1} cases, {dict(counts)}")
    mishandled = sum(n for kind, n in counts.items() if kind not in HANDLED)
    return {
        "cases": sum(counts.values()),
        "outcomes": dict(counts),
        "mishandled": mishandled,
        "seconds": {
            "total": time.monotonic() - started,
            "mean_per_case": _mean(seconds),
            "max_per_case": max(seconds, default=0.0),
        },
        "examples": dict(examples),
    }


def _shown(payload: Any) -> Any:
    if isinstance(payload, bytes):
        return payload[:400].decode("utf-8", errors="backslashreplace")
    if isinstance(payload, dict):
        return {k: str(v) for k, v in payload.items()}
    return str(payload)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def goals(sections: dict[str, dict], args: argparse.Namespace) -> dict:
    out = {}
    for section in SECTIONS:
        if section.name in sections:
            value = sections[section.name]["mishandled"]
            out[section.goal] = {"value": value, "target": 0, "met": value == 0}
    if "check" in sections:
        cases = sections["check"]["cases"]
        target = 200 if args.quick else 10_000
        out["check: specs fuzzed"] = {"value": cases, "target": f">= {target}", "met": cases >= target}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 specs, 20 `adl run` cases (a smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz.json")
    parser.add_argument("--specs", type=int, default=None, help="specs through `adl check` (default 10000; quick 200)")
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed of the specs")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds before a check counts as a hang")
    parser.add_argument("--artifact", type=Path, default=None, help="a compiled artifact: also fuzz `adl run`")
    parser.add_argument("--runs", type=int, default=None, help="at most this many `adl run` cases (quick 20)")
    parser.add_argument("--run-timeout", type=float, default=120.0, help="seconds before a run counts as a hang")
    args = parser.parse_args()
    args.specs = args.specs or (200 if args.quick else 10_000)
    args.runs = args.runs or (20 if args.quick else None)
    if args.artifact is not None and not (args.artifact / "manifest.json").is_file():
        parser.error(f"--artifact {args.artifact}: no manifest.json there")

    origin = provenance(
        f"hostile specs from tests/dsl/fuzzing.py (Hypothesis seed {args.seed})"
        + (f"; inputs and damaged copies of the artifact {args.artifact}" if args.artifact else "")
    )
    sections: dict[str, dict] = {}
    for section in SECTIONS:
        if not section.enabled(args):
            continue
        log(f"section {section.name}")
        sections[section.name] = run_section(section, args)
    report = {
        "goals": goals(sections, args),
        "sections": sections,
        "settings": {
            "specs": args.specs,
            "seed": args.seed,
            "timeout_s": args.timeout,
            "artifact": str(args.artifact) if args.artifact else None,
            "runs": args.runs,
            "run_timeout_s": args.run_timeout,
            "quick": args.quick,
        },
        "provenance": origin,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    close_check()
    for goal, verdict in report["goals"].items():
        print(f"{goal}: {verdict['value']} (target {verdict['target']}) {'met' if verdict['met'] else 'MISSED'}")
    print(f"wrote {args.out}")
    return 0 if all(v["met"] for v in report["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
