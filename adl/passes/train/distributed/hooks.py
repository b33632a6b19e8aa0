"""DDP communication hooks: TernGrad's, and torch's own for comparison; and the bytes they send.

Every hook here communicates through the Python collectives of `torch.distributed`
(`all_reduce`, `all_gather`, ...), torch's fp16 and PowerSGD hooks included. `ByteCounter`
wraps those functions inside a worker process and adds up the bytes of the tensors each
call is given, so the figure compared across hooks is the size of what each worker hands
to the collectives per step, measured, not derived from a formula.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

from adl.ir.spec import CallValue
from adl.passes.train.distributed import ternary

_COUNTED = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "broadcast",
    "reduce_scatter_tensor",
    "all_to_all_single",
    "reduce",
    "gather",
    "scatter",
)


def _first_tensor_bytes(name: str, args: tuple, kwargs: dict) -> int:
    """Bytes this worker contributes to one collective call: its input tensor."""
    if name in ("all_gather", "gather"):
        tensor = args[1] if len(args) > 1 else kwargs.get("tensor")
    elif name in ("all_gather_into_tensor", "reduce_scatter_tensor", "all_to_all_single"):
        tensor = args[1] if len(args) > 1 else kwargs.get("input_tensor", kwargs.get("input"))
    else:
        tensor = args[0] if args else kwargs.get("tensor")
    if isinstance(tensor, torch.Tensor):
        return tensor.numel() * tensor.element_size()
    return 0


@dataclass
class ByteCounter:
    """Counts the bytes passed to `torch.distributed` collectives while `active`, per step."""

    active: bool = False
    current: int = 0
    calls: int = 0
    steps: list[int] = field(default_factory=list)
    _originals: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def install(self) -> "ByteCounter":
        for name in _COUNTED:
            original = getattr(dist, name)
            self._originals[name] = original
            setattr(dist, name, self._wrap(name, original))
        return self

    def uninstall(self) -> None:
        for name, original in self._originals.items():
            setattr(dist, name, original)
        self._originals.clear()

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.active:
                self.current += _first_tensor_bytes(name, args, kwargs)
                self.calls += 1
            return original(*args, **kwargs)

        counted.__wrapped__ = original  # type: ignore[attr-defined]
        return counted

    def end_step(self) -> None:
        self.steps.append(self.current)
        self.current = 0

    def median(self) -> float:
        return float(statistics.median(self.steps)) if self.steps else 0.0


@dataclass
class TernGradState:
    """What `terngrad_hook` needs between calls: the group, c, the Bernoulli draws' seed and,
    with error feedback, each parameter's residual (what ternarization left out last step).

    Both are per parameter (by its index in the model): each parameter's draws come from a
    generator seeded by (epoch seed, step, parameter index), and its residual is its own, so
    neither depends on how DDP happens to group gradients into buckets (it regroups them
    after the first step of every run, a resumed one included).
    """

    group: Any = None
    clip: float = 2.5
    error_feedback: bool = False
    param_index: dict[int, int] = field(default_factory=dict)  # id(parameter) -> its index in the model
    seed: int = 0
    step: int = 0
    generator: torch.Generator = field(default_factory=torch.Generator)
    residuals: dict[int, torch.Tensor] = field(default_factory=dict)  # parameter index -> flat residual

    def reseed(self, seed: int) -> None:
        self.seed, self.step = seed, 0

    def index(self, parameter: torch.Tensor) -> int:
        return self.param_index.get(id(parameter), -1)

    def generator_for(self, index: int) -> torch.Generator:
        mixed = ((self.seed * 1_000_003 + self.step) * 1_000_033 + index + 1) & 0x7FFF_FFFF_FFFF_FFFF
        return self.generator.manual_seed(mixed)

    def state_dict(self) -> dict[str, Any]:
        return {"residuals": {k: v.clone() for k, v in self.residuals.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.residuals = dict(state.get("residuals", {}))


def terngrad_hook(state: TernGradState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Ternarize the bucket per gradient tensor, share scalers (all-reduce MAX), all-gather the
    2-bit packed codes and return their average, decoded: s · (Σ_workers t) / workers."""
    flat = bucket.buffer()
    sizes = [g.numel() for g in bucket.gradients()]
    indices = [state.index(p) for p in bucket.parameters()]
    world = dist.get_world_size(state.group)
    grads = list(flat.split(sizes))
    if state.error_feedback:
        grads = [g + state.residuals[i] if i in state.residuals else g for g, i in zip(grads, indices)]
    clipped = [ternary.clip(g, state.clip) for g in grads]
    scalers = ternary.local_scalers(clipped)
    dist.all_reduce(scalers, op=dist.ReduceOp.MAX, group=state.group)  # scaler sharing
    per_tensor = [
        ternary.stochastic_ternary(g, s, state.generator_for(i)) for g, s, i in zip(clipped, scalers, indices)
    ]
    if bucket.is_last():
        state.step += 1
    if state.error_feedback:
        for g, s, t, i in zip(grads, scalers, per_tensor, indices):
            state.residuals[i] = g - s * t
    packed = ternary.pack(torch.cat(per_tensor))
    gathered = [torch.empty_like(packed) for _ in range(world)]
    work = dist.all_gather(gathered, packed, group=state.group, async_op=True)

    def decode(_: torch.futures.Future) -> torch.Tensor:
        total = torch.zeros(flat.numel(), dtype=torch.int8 if world <= 127 else torch.int16)
        for codes_of_worker in gathered:
            total += ternary.unpack(codes_of_worker, flat.numel())
        average = total.to(flat.dtype)
        for segment, scaler in zip(average.split(sizes), (scalers / world).tolist()):
            segment.mul_(scaler)
        return average

    return work.get_future().then(decode)


# DDP checks the hook's annotations as objects; `from __future__ import annotations` made them strings
terngrad_hook.__annotations__.update(
    bucket=dist.GradBucket, state=TernGradState, **{"return": torch.futures.Future[torch.Tensor]}
)


HOOKS = ("terngrad", "allreduce", "fp16", "powersgd")


def hook_name(strategy: CallValue) -> str:
    """The hook a `distributed = ...` value selects: terngrad, or ddp's compress -> allreduce | fp16 | powersgd."""
    if strategy.name == "terngrad":
        return "terngrad"
    compress = strategy.get("compress", "none")
    return "allreduce" if compress == "none" else compress


def ddp_options(strategy: CallValue) -> dict[str, Any]:
    """DDP constructor options a hook needs.

    torch's PowerSGD hook starts each bucket's second all-reduce (Q) from a future callback;
    with several buckets those callbacks run in a different order on different ranks, and
    gloo then pairs mismatched collectives (it aborted: "Received data size doesn't match
    expected size"). One bucket (a cap above any model here) keeps the order the same.
    """
    return {"bucket_cap_mb": 1 << 20} if hook_name(strategy) == "powersgd" else {}


@dataclass
class HookHandle:
    """A registered hook's state, to reseed per epoch and to save with each checkpoint."""

    name: str
    state: Any

    def reseed(self, seed: int) -> None:
        if isinstance(self.state, TernGradState):
            self.state.reseed(seed)

    def state_dict(self) -> dict[str, Any]:
        if isinstance(self.state, TernGradState):
            return {"terngrad": self.state.state_dict()}
        if isinstance(self.state, powerSGD_hook.PowerSGDState):
            return {"powersgd": self.state.__getstate__()}
        return {}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if isinstance(self.state, TernGradState) and "terngrad" in saved:
            self.state.load_state_dict(saved["terngrad"])
        elif isinstance(self.state, powerSGD_hook.PowerSGDState) and "powersgd" in saved:
            group = self.state.process_group
            self.state.__setstate__(dict(saved["powersgd"]))
            self.state.process_group = group


def register(ddp: torch.nn.parallel.DistributedDataParallel, strategy: CallValue, *, seed: int) -> HookHandle:
    """Register the hook `strategy` names on `ddp`.

    `ddp(compress = none)` registers torch's `allreduce_hook`, the Python twin of DDP's
    built-in fp32 all-reduce (same collective, same bytes), so that its bytes are counted
    like every other hook's.
    """
    name = hook_name(strategy)
    if name == "terngrad":
        state: Any = TernGradState(
            clip=strategy.get("clip", 2.5),
            error_feedback=strategy.get("error_feedback", False),
            param_index={id(p): i for i, p in enumerate(ddp.module.parameters())},
        )
        ddp.register_comm_hook(state, terngrad_hook)
    elif name == "allreduce":
        state = None
        ddp.register_comm_hook(state, default_hooks.allreduce_hook)
    elif name == "fp16":
        state = None
        ddp.register_comm_hook(state, default_hooks.fp16_compress_hook)
    elif name == "powersgd":
        # start_powerSGD_iter = 2: the least torch allows with error feedback, so the rows compare
        # compressed steps (torch's default 1000 would run plain all-reduce for a whole digits run)
        state = powerSGD_hook.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=strategy.get("rank", 1),
            start_powerSGD_iter=2,
            random_seed=seed,
        )
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    else:
        raise ValueError(f"unknown communication hook {name!r}; known: {', '.join(HOOKS)}")
    return HookHandle(name, state)
