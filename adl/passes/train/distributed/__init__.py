"""Data-parallel training for the `train` pass: `distributed = terngrad(...) | ddp(...)`.

Workers run `torch.nn.parallel.DistributedDataParallel` over gloo; what differs between
strategies is only the DDP communication hook (`hooks.py`): TernGrad's ternary gradients
(`ternary.py`), or torch's fp32 all-reduce, fp16 compression and PowerSGD for comparison.
`launch.py` starts the workers (local processes, or joins a `torchrun` group) and
`worker.py` is what each of them runs.

This module holds only the option schemas, so `adl check` stays free of torch imports.
"""

from __future__ import annotations

from adl.ir.options import Option

_WORKERS = Option(
    "workers", "int", 2, "worker processes started on this machine (under torchrun: its world size)", low=1, high=256
)
_TIMEOUT = Option(
    "timeout", "time", 60.0, "a worker that stops answering fails the others within this time", low=1.0, high=86_400.0
)

STRATEGIES: dict[str, tuple[Option, ...]] = {
    "none": (),
    "terngrad": (
        _WORKERS,
        Option(
            "clip",
            "float",
            2.5,
            "clip gradients to c standard deviations before ternarizing (0 = off)",
            low=0.0,
            high=1000.0,
        ),
        Option("error_feedback", "bool", False, "carry each worker's ternarization error to its next step"),
        _TIMEOUT,
    ),
    "ddp": (
        _WORKERS,
        Option(
            "compress",
            "name",
            "none",
            "none (fp32 all-reduce), fp16 or powersgd (torch's hooks)",
            choices=("none", "fp16", "powersgd"),
        ),
        Option("rank", "int", 1, "PowerSGD's matrix approximation rank", low=1, high=1024),
        _TIMEOUT,
    ),
}
