"""Keep TVM from importing tensor intrinsics for accelerators we never target from this host.

`import tvm.s_tir.tensor_intrin` imports every vendor's intrinsics (CUDA's alone take
~40 s here), and MetaSchedule's tuning context and each of its builder worker processes
import it: tuning then times out with "Total trials: 0" and no error. Registering empty
modules for the GPU/DSP families first keeps the x86 (and aarch64) intrinsics and brings
the import to well under a second. Workers get the same through `_worker_site`'s
`sitecustomize`, enabled by an environment variable they inherit.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

SKIPPED = ("cuda", "rocm", "hexagon", "riscv_cpu", "metal")
ENV_FLAG = "ADL_TVM_LIGHT_INTRINSICS"
WORKER_SITE = Path(__file__).with_name("_worker_site")


def install() -> None:
    """Register empty modules for the skipped intrinsic families (idempotent)."""
    for family in SKIPPED:
        sys.modules.setdefault(
            f"tvm.s_tir.tensor_intrin.{family}", types.ModuleType(f"tvm.s_tir.tensor_intrin.{family}")
        )


def install_for_workers() -> None:
    """Make worker processes started from now on install the same stubs at start-up."""
    os.environ[ENV_FLAG] = "1"
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(WORKER_SITE) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(WORKER_SITE), *[p for p in paths if p]])
