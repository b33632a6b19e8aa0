"""Where measured hardware parameters are kept: per target identity, in adl's cache folder.

`adl hw calibrate` measures the roofline's peak, bandwidth and per-layer overhead on the
target with small TVM kernels and stores them here; `roofline` reads them for the options
a spec leaves unset. The identity is the one the measured latency tables use: the TVM target,
where it runs (this machine's CPU model, or the RPC device), TVM's and adl's versions, and a
digest of adl's lowering code (the default schedules decide what a kernel costs, and adl's
version does not change when they do).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from adl.ir.files import atomic_write_text
from adl.ir.spec import TargetSpec


def cache_root() -> Path:
    """``$ADL_CACHE_DIR``, else ``~/.cache/adl``."""
    return Path(os.environ.get("ADL_CACHE_DIR") or Path.home() / ".cache" / "adl")


@functools.cache  # fixed for the process: asked on every pricing
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.cache
def host_cpu() -> str:
    """The CPU model this machine reports (what is measured here is only valid on that CPU)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


#: adl's code that decides what a measured kernel runs (folder adl/backends/tvm)
LOWERING_FILES = (
    "default_schedules.py",
    "register_tiles.py",
    "padding_taps.py",
    "int8_kernels.py",
    "build.py",
    "integer_ops.py",
    "layer_timing.py",
)


@functools.cache
def lowering_digest(folder: Path | None = None) -> str:
    """sha256 (16 hex digits) of `LOWERING_FILES` in `folder` (adl's own by default): tables
    measured with other schedules are not reused."""
    import importlib.util

    if folder is None:
        folder = Path(importlib.util.find_spec("adl.backends.tvm").origin).parent
    digest = hashlib.sha256()
    for name in LOWERING_FILES:
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return digest.hexdigest()[:16]


def target_identity(target: TargetSpec) -> dict[str, Any]:
    """What measurements on `target` depend on."""
    where = (f"rpc:{target.rpc}" + (f"/{target.key}" if target.key else "")) if target.remote else f"local:{host_cpu()}"
    # a tuned target's kernels come from its tuning database as well as the default schedules
    schedules = "default" if target.tune.name == "none" else "default+tuning-database"
    return {
        "target": target.tvm_target(),
        "where": where,
        "schedules": schedules,
        "tvm": _version("apache-tvm"),
        "adl": _version("adl"),
        "lowering": lowering_digest(),
    }


def identity_digest(target: TargetSpec) -> str:
    return hashlib.sha256(json.dumps(target_identity(target), sort_keys=True).encode()).hexdigest()[:16]


def calibration_path(target: TargetSpec) -> Path:
    return cache_root() / "calibration" / f"{target.kind}-{identity_digest(target)}.json"


def load_calibration(target: TargetSpec) -> dict[str, Any] | None:
    """The stored parameters of `target` (None when never calibrated or unreadable)."""
    path = calibration_path(target)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("identity") != target_identity(target):
        return None
    return data


def save_calibration(target: TargetSpec, parameters: dict[str, Any]) -> Path:
    """Store `parameters` for `target` (atomically); returns the file."""
    path = calibration_path(target)
    atomic_write_text(path, json.dumps({"identity": target_identity(target), **parameters}, indent=1))
    return path
