"""Where a benchmark figure came from: the data set, the CPU, the cores, the git commit, the date
and the command line. Every bench writes it under the top-level key "provenance" of its JSON;
`python -m bench.status` reads the commit back to tell fresh results from stale ones.

Standard library only (no torch), so any script can call it:

    from provenance import provenance            # a script run as `python bench/NAME.py`
    report["provenance"] = provenance("digits (sklearn 8x8, split 0.8, seed 0)")

Take it once, when the run starts: the bench then rewrites its own result file, which would
otherwise count as an uncommitted change. A result another tool writes (`adl l2o meta-train
--curves`) is stamped right after it ran:

    python bench/provenance.py RESULT.json --dataset TEXT -- COMMAND LINE OF THE TOOL
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = "bench/results"  # changes here do not make the measured tree dirty
X86_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni")  # plus "amx": any amx_* flag
X86_MACHINES = {"x86_64", "amd64", "i386", "i686"}


def provenance(
    dataset: str, argv: Sequence[str] | None = None, *, cpuinfo: str | None = None, root: Path = ROOT
) -> dict:
    """The "provenance" record of a result. `dataset`: what was measured on, in words ("digits
    (split 0.8, seed 0)", "synthetic: random 1x3x32x32 inputs"); `argv`: the command line
    (default sys.argv); `cpuinfo`: /proc/cpuinfo's text (default: read it)."""
    return {
        "dataset": dataset,
        "cpu": cpu_info(_read_cpuinfo() if cpuinfo is None else cpuinfo),
        "cores": cores(),
        "git": git_state(root),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(sys.argv if argv is None else argv),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def cpu_info(text: str, machine: str | None = None) -> dict:
    """Model name, architecture and the x86 flags that decide which kernels run (None off x86)."""
    fields = _first_fields(text)
    machine = machine or platform.machine()
    model = (
        fields.get("model name")
        or fields.get("hardware")
        or fields.get("cpu model")
        or fields.get("model")
        or platform.processor()
        or machine
    )
    if "flags" not in fields:  # ARM lists "Features", POWER and RISC-V neither: no x86 flags to report
        note = (
            "x86 without a /proc/cpuinfo flags line: flags unknown"
            if machine.lower() in X86_MACHINES
            else f"not x86 ({machine}): AVX/AMX flags do not apply"
        )
        return {"model": model, "architecture": machine, "flags": None, "note": note}
    flags = set(fields["flags"].split())
    found = {flag: flag in flags for flag in X86_FLAGS}
    found["amx"] = any(flag.startswith("amx") for flag in flags)
    return {"model": model, "architecture": machine, "flags": found}


def cores() -> dict:
    """Cores this process may run on (the affinity mask) and cores the machine has."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"usable": usable, "machine": os.cpu_count()}


def git_state(root: Path = ROOT) -> dict:
    """HEAD's commit (None outside a git checkout) of the checkout `root` lies in, and its uncommitted
    paths outside bench/results."""
    top = _git(root, "rev-parse", "--show-toplevel")
    commit = _git(Path(top), "rev-parse", "--verify", "HEAD") if top else None
    if not top or not commit:
        return {"commit": None, "dirty": None, "changed": []}
    status = _git(Path(top), "status", "--porcelain", "--untracked-files=all", "--", ".", f":(exclude){RESULTS}") or ""
    changed = [line[3:].split(" -> ")[-1] for line in status.splitlines() if line.strip()]
    return {"commit": commit, "dirty": bool(changed), "changed": changed}


def _first_fields(text: str) -> dict[str, str]:
    """`key : value` lines of /proc/cpuinfo, keys lower-cased, the first processor's value kept."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.rstrip("\n") if done.returncode == 0 else None  # not strip(): porcelain starts " M"


def main(argv: Sequence[str] | None = None) -> int:
    """Stamp a result that another tool wrote into bench/results (`adl l2o meta-train --curves`)."""
    parser = argparse.ArgumentParser(
        description='add a "provenance" record to a result JSON another tool wrote; run it right after that tool'
    )
    parser.add_argument("result", type=Path)
    parser.add_argument("--dataset", required=True, help="what the tool measured on, in words")
    parser.add_argument("command", nargs="+", help="the tool's command line (after --)")
    args = parser.parse_args(argv)
    report = json.loads(args.result.read_text())
    report["provenance"] = provenance(args.dataset, args.command, root=args.result.resolve().parent)
    args.result.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
