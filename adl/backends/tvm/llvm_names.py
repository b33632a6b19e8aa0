"""A target's `mcpu` and `triple` checked against LLVM's own lists, before anything is built.

Unchecked, both fail late or silently: TVM builds an unknown `mcpu` for LLVM's generic CPU
(and the manifest would record the unknown name), and an unknown `triple` crashes TVM with a
segmentation fault when it asks LLVM for the triple's CPUs. So LLVM is asked in a child
process (TVM imported there, torch hidden: about 3 s), where a crash costs only the child,
and a crash on the triple is the answer "LLVM does not know it".
"""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
import warnings
from dataclasses import dataclass

from adl.dsl.errors import AdlError, Diagnostic
from adl.ir.source_spans import target_setting_span
from adl.ir.spec import Spec, TargetSpec

PROBE_TIMEOUT_S = 120.0

# Run in the child: one JSON line about this machine's LLVM, then one with the triple's CPUs
# (the line TVM's crash on an unknown triple never prints).
_PROBE = r"""
import json, sys
for name in ("torch", "torch_c_dlpack_ext"):
    sys.modules.setdefault(name, None)  # tvm_ffi imports torch if it can: seconds, not needed here
import tvm
from tvm.target import codegen
triple = sys.argv[1] or None
print(json.dumps({"system_triple": str(codegen.llvm_get_system_triple()),
                  "system_cpu": str(codegen.llvm_get_system_cpu()),
                  "arches": [str(a) for a in codegen.llvm_get_targets()]}), flush=True)
try:
    target = tvm.target.Target({"kind": "llvm", **({"mtriple": triple} if triple else {})})
    cpus = sorted(str(c) for c in codegen.llvm_get_cpu_archlist(target))
except Exception as err:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    print(json.dumps({"error": f"{type(err).__name__}: {first}"}))
    sys.exit(0)
print(json.dumps({"cpus": cpus}), flush=True)
"""


@dataclass(frozen=True)
class LlvmNames:
    """What LLVM (as built into TVM) knows: this machine's triple and CPU, its architectures,
    and the CPUs of the asked triple (None when LLVM does not know the triple; `why` says how)."""

    system_triple: str
    system_cpu: str
    arches: tuple[str, ...]
    cpus: tuple[str, ...] | None
    why: str = ""


class ProbeFailed(RuntimeError):
    """LLVM could not be asked at all (TVM missing or broken, the child timed out)."""


def probe(triple: str | None, timeout_s: float = PROBE_TIMEOUT_S) -> LlvmNames:
    """Ask LLVM in a child process about this machine and about `triple` (None: this machine's)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, triple or ""], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        raise ProbeFailed(f"asking LLVM took over {timeout_s:.0f} s") from None
    except OSError as err:
        raise ProbeFailed(f"cannot start {sys.executable}: {err.strerror}") from None
    lines = [_json(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    lines = [line for line in lines if line is not None]
    if not lines:
        raise ProbeFailed(f"TVM could not be imported ({_last_line(proc.stderr)})")
    first, rest = lines[0], {k: v for line in lines[1:] for k, v in line.items()}
    why = rest.get("error") or ("" if "cpus" in rest else f"TVM crashed on it ({_signal(proc.returncode)})")
    cpus = tuple(rest["cpus"]) if "cpus" in rest else None
    return LlvmNames(first["system_triple"], first["system_cpu"], tuple(first["arches"]), cpus, why)


def _json(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except ValueError:  # a line the probe did not print (a library's own output)
        return None
    return value if isinstance(value, dict) else None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _signal(returncode: int) -> str:
    return f"signal {-returncode}" if returncode < 0 else f"exit status {returncode}"


def triple_problem(triple: str, names: LlvmNames) -> tuple[str, str] | None:
    """(message, note) when LLVM does not know `triple`, else None."""
    if names.cpus is not None:
        return None
    arch = triple.split("-")[0]
    close = difflib.get_close_matches(arch, names.arches, n=4)
    note = f'a triple is arch-vendor-os, e.g. "aarch64-linux-gnu"; this machine\'s is "{names.system_triple}"'
    if close:
        note += f"; LLVM architectures close to '{arch}': {', '.join(close)}"
    return f'LLVM does not know the target triple "{triple}": {names.why}', note


def cpu_problem(mcpu: str, triple: str | None, names: LlvmNames) -> tuple[str, str] | None:
    """(message, note) when LLVM does not know the CPU `mcpu` for `triple`, else None."""
    if names.cpus is None or mcpu in names.cpus:
        return None
    close = difflib.get_close_matches(mcpu, names.cpus, n=5, cutoff=0.5)
    note = (
        f"close matches: {', '.join(close)}"
        if close
        else f"LLVM knows {len(names.cpus)} CPUs for it, e.g. {', '.join(names.cpus[:5])}"
    )
    if (triple or names.system_triple).split("-")[0] == names.system_triple.split("-")[0]:
        note += f"; this machine's CPU is {names.system_cpu}"
    where = triple or f"this machine ({names.system_triple})"
    return (f'LLVM does not know the CPU "{mcpu}" for {where}: TVM would build for a generic CPU instead', note)


def check_target(spec: Spec) -> None:
    """Raise an `AdlError` at the target's `triple` or `mcpu` when LLVM does not know it, or
    when the triple's cross compiler is missing. If LLVM cannot be asked at all, warn and go
    on (the build will say what is wrong)."""
    problems = _problems_or_warn(spec.target)
    diagnostics = [
        Diagnostic(message, target_setting_span(spec, key) or spec.target.span, note)
        for key, (message, note) in problems
    ]
    if diagnostics:
        raise AdlError(diagnostics, filename=spec.filename, source=spec.source)


def check_target_settings(target: TargetSpec, where: str) -> None:
    """`check_target` for a target given on the command line (`adl hw ... TARGET`): the errors
    name `where` (e.g. "TARGET") instead of a position in a spec."""
    diagnostics = [Diagnostic(f"{key}: {message}", None, note) for key, (message, note) in _problems_or_warn(target)]
    if diagnostics:
        raise AdlError(diagnostics, filename=where)


def _problems_or_warn(target: TargetSpec) -> list[tuple[str, tuple[str, str]]]:
    if target.mcpu is None and target.triple is None:
        return []  # nothing to check, and no LLVM to ask
    try:
        names = probe(target.triple)
    except ProbeFailed as err:
        warnings.warn(f"adl: mcpu/triple not checked against LLVM: {err}", RuntimeWarning, stacklevel=3)
        return []
    return target_problems(target, names)


def target_problems(target: TargetSpec, names: LlvmNames) -> list[tuple[str, tuple[str, str]]]:
    """(setting, (message, note)) for each of the target's `triple` and `mcpu` that cannot work."""
    from adl.backends.tvm.build import missing_cross_compiler

    problems = []
    if target.triple:
        missing = missing_cross_compiler(target.tvm_target())
        problem = triple_problem(target.triple, names) or (
            (missing, "or drop `triple` to build for this machine") if missing else None
        )
        problems += [("triple", problem)] if problem else []
    problem = cpu_problem(target.mcpu, target.triple, names) if target.mcpu else None
    return problems + ([("mcpu", problem)] if problem else [])
