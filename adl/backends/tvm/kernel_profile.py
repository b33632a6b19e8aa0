"""Per-kernel latency of a built adl library, and which layer each kernel computes.

Relax's VM in TVM 0.27 has no profiler, but `VirtualMachine.set_instrument` sees every call
the VM makes. One instrumented run of `main` records the PrimFuncs it calls, in order, with
copies of their arguments (the VM's own builtins -- allocation, shape checks, tuples -- are
not kernels and are skipped). Each call is then timed alone on those arguments with
`kernel_latency`, the timing behind the `measured` cost model's table, at the thread count
the library runs with. The sum of the kernels is less than the library's latency by the
VM's dispatch overhead, which the report shows as such.

`attribute_kernels` maps kernels to the layers of `adl.ir.layers.describe_model`: the
compute kernels (conv2d, matmul, dense; their bias, activation and residual addition fused
in) go, in call order, to the conv/linear layers in network order, pooling kernels to the
pooling layers. Everything else -- layout transforms, a stand-alone addition, padding -- is
"other". Where the counts of a kind disagree (a layer split over two kernels, say) that
kind is not attributed, and the report says so rather than guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from adl.ir.layers import LayerDesc

__all__ = ["KernelAttribution", "KernelTime", "attribute_kernels", "profile_library"]

_COMPUTE_KERNEL = re.compile(r"conv2d|matmul|dense")


@dataclass(frozen=True)
class KernelTime:
    name: str  # the PrimFunc's symbol in the library
    args: tuple[tuple[tuple[int, ...], str], ...]  # (shape, dtype) of each argument, outputs included
    median_s: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "args": [[list(shape), dtype] for shape, dtype in self.args],
            "median_s": self.median_s,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> KernelTime:
        """The inverse of `as_dict` (the manifest's and the profile record's JSON form)."""
        return cls(record["name"], tuple((tuple(shape), dtype) for shape, dtype in record["args"]), record["median_s"])


def profile_library(
    path: str | Path,
    input_shape: Sequence[int],
    *,
    threads: int | None,
    repeats: int = 30,
    input_dtype: str = "float32",
) -> list[KernelTime]:
    """The kernels `main` of the library at `path` calls on one batch-1 input, in call order,
    each with its median latency on this machine (`threads`: the runtime's thread count)."""
    import tvm
    from tvm import relax

    from adl.backends.tvm.remote import kernel_latency, local_session

    with local_session() as session:
        session.set_threads(threads)
        module = session.load_module(Path(path))
        calls = _recorded_calls(module, relax, tvm, input_shape, input_dtype)
        kernels = []
        for name, owner, arrays in calls:
            args = [session.tensor(a) for a in arrays]
            seconds = kernel_latency(session, owner, name, args, repeats=repeats)
            kernels.append(KernelTime(name, tuple((tuple(a.shape), str(a.dtype)) for a in arrays), seconds))
    return kernels


def _recorded_calls(
    module: Any, relax: Any, tvm: Any, input_shape: Sequence[int], input_dtype: str
) -> list[tuple[str, Any, list[np.ndarray]]]:
    """(PrimFunc name, the module defining it, copies of its arguments) for every kernel call
    of one run of `main`."""
    vm = relax.VirtualMachine(module, tvm.cpu())
    calls: list[tuple[str, Any, list[np.ndarray]]] = []

    def instrument(func: Any, name: str, before_run: bool, ret_value: Any, *args: Any) -> int:
        owner = _defining_module(module, name) if before_run and not name.startswith("vm.builtin.") else None
        if owner is not None:
            calls.append((name, owner, [a.numpy().copy() for a in args]))
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm.set_instrument(instrument)
    x = np.random.default_rng(0).standard_normal(tuple(input_shape)).astype(input_dtype)
    vm["main"](tvm.runtime.tensor(x))
    return calls


def _defining_module(module: Any, name: str) -> Any:
    """The module among `module` and its imports that defines `name` itself (the VM
    executable imports the compiled kernels, and a time evaluator looks in one module only),
    or None: not a kernel of the library but a runtime function the VM resolved elsewhere."""
    pending = [module]
    while pending:
        candidate = pending.pop(0)
        try:
            if candidate.get_function(name, query_imports=False) is not None:
                return candidate
        except Exception:  # not defined here
            pass
        pending.extend(candidate.imports)
    return None


@dataclass(frozen=True)
class KernelAttribution:
    per_layer: list[float | None]  # seconds per layer (None: no kernel of its own, e.g. fused away)
    other: list[KernelTime]  # kernels attributed to no layer
    attributed: bool  # False: the compute kernels did not match the conv/linear layers one to one
    why_not: str = ""

    @property
    def kernels_s(self) -> float:
        return sum(s for s in self.per_layer if s is not None) + sum(k.median_s for k in self.other)


# (kernel names, the layer ops they compute), each matched in call / network order
_KERNEL_CLASSES = ((_COMPUTE_KERNEL, ("conv2d", "dwconv2d", "linear")), (re.compile(r"pool|mean"), ("pool",)))


def attribute_kernels(kernels: Sequence[KernelTime], layers: Sequence[LayerDesc]) -> KernelAttribution:
    """Which layer each kernel computes (see the module docstring)."""
    per_layer: list[float | None] = [None] * len(layers)
    claimed: set[int] = set()
    mismatches, compute_matched = [], True
    for pattern, ops in _KERNEL_CLASSES:
        matching = [(k, kernel) for k, kernel in enumerate(kernels) if pattern.search(kernel.name) and k not in claimed]
        targets = [i for i, layer in enumerate(layers) if layer.op in ops]
        if len(matching) != len(targets):
            mismatches.append(f"{len(matching)} {'/'.join(ops)} kernels for {len(targets)} such layers")
            compute_matched = compute_matched and pattern is not _COMPUTE_KERNEL
            continue
        for i, (k, kernel) in zip(targets, matching):
            per_layer[i] = kernel.median_s
            claimed.add(k)
    other = [kernel for k, kernel in enumerate(kernels) if k not in claimed]
    return KernelAttribution(per_layer, other, compute_matched, "; ".join(mismatches))
