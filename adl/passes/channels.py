"""Which channels must be pruned together: channel groups found on a `torch.fx` graph.

Every tensor's channel axis (dim 1; the feature axis of a 2-D tensor) is described as a list
of `Segment`s, each a run of one group's channels. A convolution (groups = 1) or a Linear
starts a new group with its output; a depthwise convolution, a BatchNorm, an activation, a
pooling or torchvision's `StochasticDepth` keep their input's segments (a depthwise
convolution ties its input and output channels); an addition (or multiplication) of two
tensors unites the groups at each position (a residual block's branches share their
channels), also when one of them broadcasts over the spatial dims only (a squeeze-and-
excitation scale of shape (N, C, 1, 1) times its (N, C, H, W) input); a concatenation along
the channels appends segments (each keeps its offset in the consumer); a flatten turns each
channel into H*W consecutive features (`unit`). Groups that reach the network's input or
output cannot be pruned.

A parameter-free op the analysis cannot follow (a reshape, a transpose, a channel shuffle, a
chunk, a softmax, a concatenation along another axis, ...) does not stop the analysis: the
groups of its inputs become fixed ("passes through node 'view' (view), which channel pruning
cannot follow"), and its output starts a new fixed group of its channel count (known from
shape propagation). Channels that never meet such an op stay prunable -- in ShuffleNetV2 the
inner channels of every branch. Shapes read from a tensor (`x.size(1)`) count as reaching an
op they are passed to. The reason is recorded on each fixed group (`Group.fixed`).

Refused with a `PruningError` naming the layer or node: a layer with parameters the analysis
does not know how to cut (grouped convolutions other than depthwise, a Linear on a 3-D
tensor, a LayerNorm, ...), a layer with parameters called more than once, an elementwise op
of two tensors that broadcast otherwise than over the spatial dims, an op of unknown
channel count, and a model torch.fx cannot trace. Nothing is skipped silently.

`ChannelGraph.prune(keep)` returns a smaller dense copy of the model (modules resized in
place of the copy: no masks), and `masked(keep)` the same-size original with the pruned
channels' consumer weights zeroed -- the two compute the same function.
"""

from __future__ import annotations

import copy
import operator
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NoReturn, Sequence

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from adl.ir.layers import LayerDesc, describe_model


class PruningError(ValueError):
    """The model has a structure channel pruning does not support; the message names the layer."""


@dataclass(frozen=True)
class Segment:
    group: int
    size: int
    unit: int = 1  # consecutive features per channel (after a flatten: H*W)


@dataclass
class Group:
    """Channels that are kept or dropped together."""

    index: int
    size: int
    name: str  # the layer that produces it (the first, for groups united by additions)
    producers: list[str] = field(default_factory=list)  # conv/linear modules whose output rows are the group
    fixed: str = ""  # why it cannot be pruned ("" = prunable)

    @property
    def prunable(self) -> bool:
        return not self.fixed


@dataclass
class ParamLayout:
    """How a module's parameters map to groups: rows (dim 0) and, for conv/linear, columns (dim 1)."""

    kind: str  # conv | linear | dwconv | bn | constant
    rows: list[Segment]
    cols: list[Segment] = field(default_factory=list)
    axis: int = 0  # a constant's channel axis


Reconstruct = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]  # (layer, weight, kept columns) -> weight


ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.GELU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
ELEMENTWISE_FUNCTIONS = {
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    nn.functional.relu,
    nn.functional.relu6,
    nn.functional.hardtanh,
    nn.functional.silu,
    nn.functional.hardswish,
    nn.functional.gelu,
    nn.functional.dropout,
    nn.functional.max_pool2d,
    nn.functional.avg_pool2d,
    nn.functional.adaptive_avg_pool2d,
    nn.functional.adaptive_max_pool2d,
}
ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}
BINARY = {operator.add, torch.add, operator.mul, torch.mul, operator.sub, torch.sub, operator.truediv, torch.div}
TIES = {operator.add, torch.add, operator.mul, torch.mul}  # of two tensors: ties their channels


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)  # the earlier group names the union


class ChannelGraph:
    """The channel groups of a model traced by torch.fx, for one input shape (batch included)."""

    def __init__(self, model: nn.Module, input_shape: Sequence[int]) -> None:
        self.input_shape = tuple(input_shape)
        gm = model if isinstance(model, fx.GraphModule) else _trace(model)
        gm = copy.deepcopy(gm).eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(self.input_shape))
        self.module = gm
        self._modules = dict(gm.named_modules())
        self._uf = _UnionFind()
        self._raw: list[dict[str, Any]] = []  # per raw group: size, name, producers, fixed
        self._node_segs: dict[str, list[Segment] | None] = {}  # None: not a tensor (a shape, a tuple)
        self._meta: dict[str, set[int]] = {}  # non-tensor node -> raw groups whose channel count it depends on
        self._shapes: dict[str, tuple[int, set[int]]] = {}  # a tensor's shape (x.shape, x.size()): rank, groups
        self._multi: dict[str, str] = {}  # an unsupported op's tuple of tensors (x.chunk) -> the op's description
        self._layouts: dict[str, ParamLayout] = {}
        self._constants: dict[str, str] = {}  # get_attr node -> attribute path
        self._walk()
        self._resolve()

    # -- analysis --------------------------------------------------------------------------------

    def _new_group(self, size: int, name: str, producer: str | None = None, fixed: str = "") -> list[Segment]:
        index = self._uf.add()
        self._raw.append({"size": size, "name": name, "producers": [producer] if producer else [], "fixed": fixed})
        return [Segment(index, size)]

    def _fix(self, raw_group: int, why: str) -> None:
        if not self._raw[raw_group]["fixed"]:
            self._raw[raw_group]["fixed"] = why

    def _walk(self) -> None:
        seen_modules: set[str] = set()
        for node in self.module.graph.nodes:
            if node.op == "placeholder":
                self._node_segs[node.name] = self._new_group(_shape(node)[1], "input", fixed="the network's input")
            elif node.op == "output":
                for arg in _flat_nodes(node.args):
                    for seg in self._segs(arg, node):
                        self._fix(seg.group, "feeds the network's output")
            elif node.op == "call_module":
                if node.target in seen_modules and _has_state(self._modules[node.target]):
                    raise PruningError(
                        f"layer '{node.target}' is called more than once; channel pruning needs "
                        "each layer with weights to be used once"
                    )
                seen_modules.add(node.target)
                self._node_segs[node.name] = self._module(node)
            elif node.op == "call_function":
                self._node_segs[node.name] = self._function(node)
            elif node.op == "call_method":
                self._node_segs[node.name] = self._method(node)
            elif node.op == "get_attr":  # a constant (e.g. a per-channel mean): followed where it is used
                self._constants[node.name] = str(node.target)
            else:
                raise PruningError(f"node '{node.name}' ({node.op} {node.target}) is not supported by channel pruning")

    def _segs(self, arg: Any, user: fx.Node) -> list[Segment]:
        if not isinstance(arg, fx.Node) or self._node_segs.get(arg.name) is None:
            raise PruningError(f"node '{user.name}' takes a value channel pruning cannot follow ({arg!r})")
        return self._node_segs[arg.name]

    def _depends(self, arg: fx.Node) -> set[int]:
        """The raw groups whose channel count `arg` (a tensor or a value computed from shapes) depends on."""
        if self._node_segs.get(arg.name) is not None:
            return {seg.group for seg in self._node_segs[arg.name]}
        return set(self._meta.get(arg.name, ()))

    def _opaque(self, node: fx.Node, what: str) -> list[Segment] | None:
        """A parameter-free op the analysis cannot follow: what it reads is fixed, what it makes is a
        new fixed group (or, for a tuple of tensors, one per item taken from it)."""
        label = f"layer '{node.target}' ({what})" if node.op == "call_module" else f"node '{node.name}' ({what})"
        for arg in _flat_nodes((node.args, node.kwargs)):
            for group in self._depends(arg):
                self._fix(group, f"passes through {label}, which channel pruning cannot follow")
        meta = node.meta.get("tensor_meta")
        if isinstance(meta, (tuple, list)) and meta and all(isinstance(m, TensorMetadata) for m in meta):
            self._multi[node.name] = label
            return None
        return self._made_by(node, label)

    def _made_by(self, node: fx.Node, label: str) -> list[Segment]:
        """A new fixed group: the channels of `node`, made by the op `label` the analysis cannot follow."""
        shape = _shape(node)
        if len(shape) < 2:
            raise PruningError(
                f"node '{node.name}' is a {len(shape)}-D tensor made by {label}; channel pruning cannot follow it"
            )
        name = str(node.target) if node.op == "call_module" else node.name
        return self._new_group(shape[1], name, fixed=f"made by {label}, which channel pruning cannot follow")

    def _metadata(self, node: fx.Node) -> None:
        """A value that is not a tensor (a shape, a size, arithmetic on them): remembers which groups'
        channel counts it depends on -- a reshape it is passed to fixes them."""
        args = node.args
        source = args[0] if args and isinstance(args[0], fx.Node) else None
        deps: set[int] = set()
        if source is not None and self._node_segs.get(source.name) is not None:  # read from a tensor
            rank, groups = len(_shape(source)), self._depends(source)
            dim = args[1] if len(args) > 1 else node.kwargs.get("dim")  # x.size(dim); getattr's attribute
            if (node.target is getattr and dim == "shape") or (node.target == "size" and dim is None):
                self._shapes[node.name] = (rank, groups)  # the whole shape: its items are told apart below
                deps = groups
            elif node.target == "size":
                deps = groups if not isinstance(dim, int) or dim % rank == 1 else set()
            elif node.target == "dim" or (node.target is getattr and dim in ("dtype", "device", "ndim")):
                deps = set()
            else:
                deps = groups
        elif node.target is operator.getitem and source is not None and source.name in self._shapes:
            rank, groups = self._shapes[source.name]
            index = args[1]
            if isinstance(index, int):
                deps = groups if index % rank == 1 else set()
            elif isinstance(index, slice):
                deps = groups if 1 in range(rank)[index] else set()
            else:
                deps = groups
        else:
            deps = set().union(*(self._depends(a) for a in _flat_nodes((args, node.kwargs))))
        self._meta[node.name] = deps
        return None

    def _module(self, node: fx.Node) -> list[Segment] | None:
        mod = self._modules[node.target]
        name = str(node.target)
        if not _is_tensor(node):
            if _has_state(mod):
                self._refuse_module(mod, name)
            return self._opaque(node, type(mod).__name__)
        segs = self._segs(node.args[0], node)
        if isinstance(mod, nn.Conv2d):
            if mod.groups == 1:
                self._layouts[name] = ParamLayout("conv", [], segs)
                out = self._new_group(mod.out_channels, name, producer=name)
                self._layouts[name].rows = out
                return out
            if mod.groups == mod.in_channels == mod.out_channels:
                self._layouts[name] = ParamLayout("dwconv", segs)
                return segs
            raise PruningError(
                f"layer '{name}' is a grouped convolution (groups={mod.groups}, "
                f"{mod.in_channels}->{mod.out_channels} channels); channel pruning supports "
                "groups=1 and depthwise convolutions"
            )
        if isinstance(mod, nn.Linear):
            if len(_shape(node.args[0])) != 2:
                raise PruningError(
                    f"layer '{name}' applies a Linear to a {len(_shape(node.args[0]))}-D tensor; "
                    "channel pruning supports Linear layers on (batch, features) inputs"
                )
            self._layouts[name] = ParamLayout("linear", [], segs)
            out = self._new_group(mod.out_features, name, producer=name)
            self._layouts[name].rows = out
            return out
        if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
            self._layouts[name] = ParamLayout("bn", segs)
            return segs
        if isinstance(mod, nn.Flatten):
            return self._flatten(node, segs, mod.start_dim, mod.end_dim)
        if isinstance(mod, ELEMENTWISE_MODULES) or isinstance(mod, _torchvision_channel_preserving_modules()):
            return segs
        if _has_state(mod):
            self._refuse_module(mod, name)
        return self._opaque(node, type(mod).__name__)

    @staticmethod
    def _refuse_module(mod: nn.Module, name: str) -> NoReturn:
        raise PruningError(
            f"layer '{name}' ({type(mod).__name__}) is not supported by channel pruning: it has weights "
            "the analysis does not know how to cut"
        )

    def _flatten(self, node: fx.Node, segs: list[Segment], start: int, end: int) -> list[Segment] | None:
        shape = _shape(node.args[0])
        if start != 1 or end not in (-1, len(shape) - 1):
            return self._opaque(node, f"a flatten of dims {start}..{end}")
        unit = int(np.prod(shape[2:], dtype=np.int64))
        if unit != 1 and any(s.unit != 1 for s in segs):
            return self._opaque(node, "a flatten of an already flattened tensor")
        return [Segment(s.group, s.size, s.unit * unit) for s in segs]

    def _function(self, node: fx.Node) -> list[Segment] | None:
        target = node.target
        name = getattr(target, "__name__", str(target))
        if target is operator.getitem and isinstance(node.args[0], fx.Node) and node.args[0].name in self._multi:
            return self._made_by(node, self._multi[node.args[0].name])
        if "tensor_meta" not in node.meta:  # no tensor: a shape, a size, arithmetic on them
            return self._metadata(node)
        if not _is_tensor(node):  # a tuple of tensors (x.chunk)
            return self._opaque(node, name)
        if target in BINARY:
            return self._binary(node, name, ties=target in TIES)
        if target in ELEMENTWISE_FUNCTIONS or target in _torchvision_channel_preserving_functions():
            return self._segs(node.args[0], node)
        if target is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self._flatten(node, self._segs(node.args[0], node), start, end)
        if target is torch.cat:
            tensors = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim % len(_shape(node)) != 1:
                return self._opaque(node, f"cat along dim {dim}")
            return [seg for t in tensors for seg in self._segs(t, node)]
        if target is torch.mean:
            return self._mean(node, node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"))
        return self._opaque(node, name)

    def _method(self, node: fx.Node) -> list[Segment] | None:
        if "tensor_meta" not in node.meta:  # no tensor: a shape, a size, arithmetic on them
            return self._metadata(node)
        if not _is_tensor(node):  # a tuple of tensors (x.chunk)
            return self._opaque(node, str(node.target))
        if node.target in ELEMENTWISE_METHODS:
            return self._segs(node.args[0], node)
        if node.target == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            return self._flatten(node, self._segs(node.args[0], node), start, end)
        if node.target == "mean":
            return self._mean(node, node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"))
        if node.target in ("add", "mul"):
            return self._binary(node, str(node.target), ties=True)
        return self._opaque(node, str(node.target))

    def _binary(self, node: fx.Node, what: str, ties: bool) -> list[Segment] | None:
        """A tensor with scalars or per-channel constants keeps its channels; two tensors are tied
        (`ties`: an addition or multiplication); anything else is an op the analysis cannot follow."""
        args = _flat_nodes((node.args, node.kwargs))
        tensors = [a for a in args if self._node_segs.get(a.name) is not None]
        constants = [a for a in args if a.name in self._constants]
        shapes = [a for a in args if a not in tensors and a not in constants]  # values computed from shapes
        if any(self._depends(a) for a in shapes):  # x * x.size(1): the value changes with the channels
            return self._opaque(node, what)
        if len(tensors) == 1:
            segs = self._node_segs[tensors[0].name]
            for constant in constants:
                if not self._follow_constant(node, constant, segs):
                    value = _attribute(self.module, self._constants[constant.name])
                    return self._opaque(node, f"{what} with a constant of shape {tuple(value.shape)}")
            return segs
        if len(tensors) == 2 and ties and not constants:
            return self._tie(node, tensors)
        return self._opaque(node, what)

    def _follow_constant(self, node: fx.Node, constant: fx.Node, segs: list[Segment]) -> bool:
        """A constant combined with a tensor: a per-channel constant is sliced with the channels.
        False for a constant of another shape (the op is then one the analysis cannot follow)."""
        target = self._constants[constant.name]
        value = _attribute(self.module, target)
        rank = len(_shape(node))
        if value.numel() == 1:
            return True
        shape = (1,) * (rank - value.dim()) + tuple(value.shape)
        if value.dim() > rank or any(d != 1 for i, d in enumerate(shape) if i != 1):
            return False
        self._layouts[target] = ParamLayout("constant", segs, axis=1 - (rank - value.dim()))
        return True

    def _tie(self, node: fx.Node, tensors: list[fx.Node]) -> list[Segment] | None:
        """An elementwise op of two tensors: the channels at each position are one group. The two may
        differ in their spatial dims only where one of them is 1 (a squeeze-and-excitation scale)."""
        a, b = (self._segs(t, node) for t in tensors)
        sa, sb = _shape(tensors[0]), _shape(tensors[1])
        if sa != sb and not _broadcasts_spatially(sa, sb):
            raise PruningError(
                f"node '{node.name}' combines tensors of shapes {sa} and {sb} (broadcasting); channel "
                "pruning supports equal shapes and broadcasting over the spatial dims (batch and channels equal)"
            )
        if [(s.size, s.unit) for s in a] != [(s.size, s.unit) for s in b]:
            return self._opaque(node, "an elementwise op of tensors whose channels are concatenated differently")
        for seg_a, seg_b in zip(a, b, strict=True):
            self._uf.union(seg_a.group, seg_b.group)
        return a

    def _mean(self, node: fx.Node, dims: Any) -> list[Segment] | None:
        rank = len(_shape(node.args[0]))
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        if rank < 3 or sorted(d % rank for d in dims) != list(range(2, rank)):
            return self._opaque(node, f"a mean over dims {dims}")
        return self._segs(node.args[0], node)

    def _resolve(self) -> None:
        """Union-find roots become the final groups, numbered in order of appearance."""
        roots: dict[int, int] = {}
        self.groups: list[Group] = []
        for raw_index, raw in enumerate(self._raw):
            root = self._uf.find(raw_index)
            if root not in roots:
                roots[root] = len(self.groups)
                base = self._raw[root]
                self.groups.append(Group(len(self.groups), base["size"], base["name"]))
            group = self.groups[roots[root]]
            group.producers += raw["producers"]
            if raw["fixed"] and not group.fixed:
                group.fixed = raw["fixed"]

        def remap(segs: list[Segment]) -> list[Segment]:
            return [Segment(roots[self._uf.find(s.group)], s.size, s.unit) for s in segs]

        self._node_segs = {k: remap(v) for k, v in self._node_segs.items() if v is not None}
        for layout in self._layouts.values():
            layout.rows, layout.cols = remap(layout.rows), remap(layout.cols)

    # -- queries ---------------------------------------------------------------------------------

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def fixed_summary(self, limit: int = 6) -> str:
        """Why the groups that cannot be pruned are fixed, one clause per group (the first `limit`)."""
        fixed = [g for g in self.groups if g.fixed]
        clauses = [f"'{g.name}' ({g.size} channels): {g.fixed}" for g in fixed[:limit]]
        if len(fixed) > limit:
            clauses.append(f"and {len(fixed) - limit} more")
        return "; ".join(clauses)

    def node_segments(self, node_name: str) -> list[Segment]:
        return self._node_segs[node_name]

    @property
    def layouts(self) -> Mapping[str, ParamLayout]:
        return self._layouts

    def importance(self, criterion: str = "l1") -> dict[int, np.ndarray]:
        """Per prunable group, a score per channel: the L1 or L2 norm of the filters producing it
        (convolutions, depthwise convolutions and Linear rows), each layer's norms divided by their
        mean so that layers of different scale weigh alike in a tied group."""
        scores = {g.index: np.zeros(g.size) for g in self.prunable}
        for name, layout in self._layouts.items():
            if layout.kind not in ("conv", "linear", "dwconv"):
                continue
            weight = self._modules[name].weight.detach().flatten(1)
            norms = (weight.abs().sum(1) if criterion == "l1" else weight.pow(2).sum(1).sqrt()).double().numpy()
            norms = norms / max(norms.mean(), 1e-12)
            offset = 0
            for seg in layout.rows:
                if seg.group in scores:
                    scores[seg.group] += norms[offset : offset + seg.size]
                offset += seg.size
        return scores

    def select(self, counts: Mapping[int, int], criterion: str = "l1") -> dict[int, np.ndarray]:
        """The channels to keep per group: the `counts[g]` most important ones, in ascending order."""
        scores = self.importance(criterion)
        keep = {}
        self._check_keep(counts)
        for g, count in counts.items():
            count = int(min(max(count, 1), self.groups[g].size))
            keep[g] = np.sort(np.argsort(-scores[g], kind="stable")[:count])
        return keep

    # -- applying a selection --------------------------------------------------------------------

    def _indices(self, segs: list[Segment], keep: Mapping[int, np.ndarray]) -> torch.Tensor | None:
        """Kept positions along an axis laid out as `segs` (None: all of them)."""
        if not any(s.group in keep for s in segs):
            return None
        out, offset = [], 0
        for s in segs:
            chosen = keep.get(s.group, np.arange(s.size))
            positions = (offset + chosen[:, None] * s.unit + np.arange(s.unit)[None, :]).reshape(-1)
            out.append(positions)
            offset += s.size * s.unit
        return torch.from_numpy(np.concatenate(out).astype(np.int64))

    def _check_keep(self, keep: Mapping[int, Any]) -> None:
        """Refuses a selection that cuts a fixed group (a `select` count or a `prune`/`masked` keep)."""
        for g in keep:
            if not self.groups[g].prunable:
                raise ValueError(f"group {g} ({self.groups[g].name}) cannot be pruned: {self.groups[g].fixed}")

    def prune(self, keep: Mapping[int, np.ndarray], reconstruct: Reconstruct | None = None) -> fx.GraphModule:
        """A dense copy of the model with only the `keep` channels of each group in `keep` (prunable
        groups only: a fixed one is refused).

        `reconstruct(layer, weight, kept_columns)`, when given, returns a conv/linear layer's new
        weight over its kept input columns (default: the old weight's kept columns).
        """
        self._check_keep(keep)
        model = copy.deepcopy(self.module)
        with torch.no_grad():
            for name, layout in self._layouts.items():
                cut = _Cut(
                    model, name, layout, self._indices(layout.rows, keep), self._indices(layout.cols, keep), reconstruct
                )
                _PRUNERS[layout.kind](cut)
        model.recompile()
        return model

    def masked(self, keep: Mapping[int, np.ndarray]) -> fx.GraphModule:
        """The original-size model with every consumer's weights on pruned channels set to zero."""
        self._check_keep(keep)
        model = copy.deepcopy(self.module)
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, layout in self._layouts.items():
                if layout.kind not in ("conv", "linear"):
                    continue
                cols = self._indices(layout.cols, keep)
                if cols is not None:
                    mask = torch.ones(modules[name].weight.shape[1], dtype=torch.bool)
                    mask[cols] = False
                    modules[name].weight[:, mask] = 0.0
        return model

    # -- costs -----------------------------------------------------------------------------------

    def layer_table(self) -> "LayerTable":
        return LayerTable(self)


@dataclass(frozen=True)
class _Cut:
    """One layer's (or constant's) share of `ChannelGraph.prune`: the kept positions along its axes."""

    model: fx.GraphModule  # the copy being pruned, resized in place
    name: str  # the module (or, for a constant, the attribute path)
    layout: ParamLayout
    rows: torch.Tensor | None  # kept output channels (None: all of them)
    cols: torch.Tensor | None  # kept input channels of a conv/linear (None: all of them)
    reconstruct: Reconstruct | None

    @property
    def module(self) -> nn.Module:
        return self.model.get_submodule(self.name)


def _kept(tensor: torch.Tensor, axis: int, positions: torch.Tensor) -> torch.Tensor:
    """A detached copy of `tensor` with only `positions` along `axis`."""
    return tensor.detach().index_select(axis, positions).clone()


def _prune_bias(mod: nn.Module, rows: torch.Tensor) -> None:
    if mod.bias is not None:
        mod.bias = nn.Parameter(_kept(mod.bias, 0, rows))


def _pruned_dense_weight(cut: _Cut) -> torch.Tensor:
    """A conv/linear weight over its kept inputs (refitted by `reconstruct` if given) and outputs; the
    bias follows the outputs."""
    mod = cut.module
    weight = mod.weight.detach()
    if cut.cols is not None:
        weight = (
            cut.reconstruct(cut.name, weight, cut.cols)
            if cut.reconstruct is not None
            else weight.index_select(1, cut.cols)
        )
    if cut.rows is not None:
        weight = weight.index_select(0, cut.rows)
        _prune_bias(mod, cut.rows)
    return weight


def _prune_conv(cut: _Cut) -> None:
    mod, weight = cut.module, _pruned_dense_weight(cut)
    mod.weight = nn.Parameter(weight.clone())
    mod.out_channels, mod.in_channels = weight.shape[0], weight.shape[1]


def _prune_linear(cut: _Cut) -> None:
    mod, weight = cut.module, _pruned_dense_weight(cut)
    mod.weight = nn.Parameter(weight.clone())
    mod.out_features, mod.in_features = weight.shape[0], weight.shape[1]


def _prune_depthwise(cut: _Cut) -> None:
    if cut.rows is None:
        return
    mod = cut.module
    mod.weight = nn.Parameter(_kept(mod.weight, 0, cut.rows))
    _prune_bias(mod, cut.rows)
    mod.in_channels = mod.out_channels = mod.groups = len(cut.rows)


def _prune_batchnorm(cut: _Cut) -> None:
    if cut.rows is None:
        return
    mod = cut.module
    for attr in ("weight", "bias"):
        if getattr(mod, attr) is not None:
            setattr(mod, attr, nn.Parameter(_kept(getattr(mod, attr), 0, cut.rows)))
    for attr in ("running_mean", "running_var"):  # buffers, not parameters
        if getattr(mod, attr) is not None:
            setattr(mod, attr, getattr(mod, attr).index_select(0, cut.rows).clone())
    mod.num_features = len(cut.rows)


def _prune_constant(cut: _Cut) -> None:
    """A per-channel constant (a `get_attr` tensor) loses the pruned channels along its channel axis."""
    if cut.rows is None:
        return
    owner, _, attr = cut.name.rpartition(".")
    parent = cut.model.get_submodule(owner)
    setattr(parent, attr, _kept(getattr(parent, attr), cut.layout.axis, cut.rows))


_PRUNERS: dict[str, Callable[[_Cut], None]] = {  # ParamLayout.kind -> how such a layer is pruned
    "conv": _prune_conv,
    "linear": _prune_linear,
    "dwconv": _prune_depthwise,
    "bn": _prune_batchnorm,
    "constant": _prune_constant,
}


class LayerTable:
    """The model's `LayerDesc`s, re-derived for any channel counts per group without pruning.

    FLOPs and parameters are vectorised over the layers: a conv or Linear layer's cost is its
    full cost times (kept inputs / inputs) * (kept outputs / outputs); a depthwise conv, a
    pooling or an addition scale with their channels only.
    """

    def __init__(self, graph: ChannelGraph) -> None:
        self.graph = graph
        self.layers = describe_model(graph.module, graph.input_shape)
        nodes: dict[str, list[fx.Node]] = {}  # a parameter-free layer (a pooling) may be called several times
        for n in graph.module.graph.nodes:
            if n.op in ("call_module", "call_function", "call_method"):
                nodes.setdefault(str(n.target) if n.op == "call_module" else n.name, []).append(n)
        groups = len(graph.groups)
        self.full_counts = np.array([g.size for g in graph.groups], np.float64)
        self.in_coef = np.zeros((len(self.layers), groups))
        self.out_coef = np.zeros((len(self.layers), groups))
        self.uses_in = np.zeros(len(self.layers), bool)
        for i, layer in enumerate(self.layers):
            node = nodes[layer.name].pop(0)  # describe_model lists the layers in the graph's order
            for seg in graph.node_segments(node.args[0].name):
                self.in_coef[i, seg.group] += seg.unit
            for seg in graph.node_segments(node.name):
                self.out_coef[i, seg.group] += seg.unit
            self.uses_in[i] = layer.op in ("conv2d", "linear")
        self.full_in = self.in_coef @ self.full_counts
        self.full_out = self.out_coef @ self.full_counts
        self.flops_full = np.array([layer.flops for layer in self.layers], np.float64)
        weights = np.array(
            [layer.params - (_out_channels(layer) if layer.has_bias else 0) for layer in self.layers], np.float64
        )
        self.weight_full = weights
        self.bias = np.array(
            [1.0 if layer.has_bias and layer.op in ("conv2d", "dwconv2d", "linear") else 0.0 for layer in self.layers]
        )
        # which groups each layer's cost depends on
        self.depends = (self.in_coef * self.uses_in[:, None] + self.out_coef) > 0

    def _ratios(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rin = np.where(self.uses_in, (self.in_coef @ counts) / np.maximum(self.full_in, 1), 1.0)
        rout = (self.out_coef @ counts) / np.maximum(self.full_out, 1)
        return rin, rout

    def flops_per_layer(self, counts: np.ndarray) -> np.ndarray:
        rin, rout = self._ratios(counts)
        return self.flops_full * rin * rout

    def params_per_layer(self, counts: np.ndarray) -> np.ndarray:
        rin, rout = self._ratios(counts)
        return self.weight_full * rin * rout + self.bias * (self.out_coef @ counts)

    def descs(self, counts: np.ndarray) -> list[LayerDesc]:
        """The LayerDescs of the model pruned to `counts` channels per group."""
        import dataclasses

        ins, outs = self.in_coef @ counts, self.out_coef @ counts
        result = []
        for layer, cin, cout in zip(self.layers, ins, outs, strict=True):
            cin, cout = int(round(cin)), int(round(cout))
            axis = -1 if layer.op == "linear" else 1
            in_shape, out_shape = list(layer.input_shape), list(layer.output_shape)
            in_shape[axis], out_shape[axis] = cin, cout
            groups = cout if layer.op == "dwconv2d" else layer.groups
            result.append(
                dataclasses.replace(layer, input_shape=tuple(in_shape), output_shape=tuple(out_shape), groups=groups)
            )
        return result


def _out_channels(layer: LayerDesc) -> int:
    return layer.output_shape[-1] if layer.op == "linear" else layer.output_shape[1]


def _has_state(mod: nn.Module) -> bool:
    """Whether a layer has parameters or buffers (weights or statistics the analysis would have to cut)."""
    return any(True for _ in mod.parameters()) or any(True for _ in mod.buffers())


def _is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("tensor_meta"), TensorMetadata)


def _broadcasts_spatially(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Shapes of equal rank (>= 3) with the same batch and channel dims, one of them 1 in every
    other dim: a per-channel scale of shape (N, C, 1, 1) times an (N, C, H, W) map."""
    if len(a) != len(b) or len(a) < 3 or a[:2] != b[:2]:
        return False
    return all(d == 1 for d in a[2:]) or all(d == 1 for d in b[2:])


def _torchvision_channel_preserving_functions() -> tuple[Callable, ...]:
    """torchvision's `stochastic_depth` (fx keeps it as one call): the identity in eval mode, a
    per-sample (or whole-batch) scaling in training -- the channels are kept. Looked up among the
    imported modules, never imported: a model that holds one has imported torchvision, and channel
    pruning must not need it (nor pay for importing it)."""
    module = sys.modules.get("torchvision.ops.stochastic_depth")
    function = getattr(module, "stochastic_depth", None)
    return (function,) if function is not None else ()


def _torchvision_channel_preserving_modules() -> tuple[type, ...]:
    """torchvision's `StochasticDepth` module (a leaf only for a custom tracer): as the function above."""
    module = sys.modules.get("torchvision.ops.stochastic_depth")
    cls = getattr(module, "StochasticDepth", None)
    return (cls,) if isinstance(cls, type) else ()


def _attribute(module: nn.Module, target: str) -> torch.Tensor:
    owner, _, attr = target.rpartition(".")
    return getattr(module.get_submodule(owner), attr)


def _shape(node: fx.Node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise PruningError(f"node '{node.name}' does not produce a single tensor; channel pruning cannot follow it")
    return tuple(meta.shape)


def _flat_nodes(args: Any) -> list[fx.Node]:
    if isinstance(args, fx.Node):
        return [args]
    if isinstance(args, (list, tuple)):
        return [n for a in args for n in _flat_nodes(a)]
    if isinstance(args, dict):
        return [n for a in args.values() for n in _flat_nodes(a)]
    return []


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as err:  # data-dependent control flow and the like
        raise PruningError(
            f"torch.fx cannot trace the model for channel pruning: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from err
