"""An ONNX file as a `torch.fx.GraphModule` of standard torch modules (`model onnx(path = ...)`).

Every adl pass works on a torch network: `train` fine-tunes its parameters, `amc` prunes channels
on its torch.fx graph (`adl/passes/channels.py`), `haq` replaces its Conv2d and Linear modules
and `lower` exports it with torch.export. So each ONNX operator becomes the module or function
those passes know: Conv -> nn.Conv2d, Gemm and MatMul (+ Add) -> nn.Linear, BatchNormalization
-> nn.BatchNorm2d/1d, Relu -> nn.ReLU, Clip(0, 6) -> nn.ReLU6, Add/Sub/Mul/Div ->
`operator.add`/... (a constant operand is a registered buffer read by a `get_attr` node, with its
ONNX shape), Concat -> `torch.cat`, ReduceMean -> `torch.mean`, a reshape that flattens
everything after the batch -> `torch.flatten(x, 1)`, and so on (`TENSOR_OPERATORS`; Gather, Slice,
Transpose, ... only on constants and shape values: `SUPPORTED_OPERATORS`).

Loading parses the protobuf and runs no code from the file. Weights become trainable
`nn.Parameter`s of their modules; BatchNorm statistics and other constants become buffers.

The batch dim is tracked symbolically: `Shape` gives a value whose first entry is the batch
marker, and Gather/Unsqueeze/Concat/Slice/... carry it, so the legacy exporter's
`x.view(x.size(0), -1)` (Shape -> Gather -> Unsqueeze -> Concat -> Reshape) is a flatten. A file
exported with batch 1 (`Reshape` to `[1, -1]`) gives a module that takes any batch size.

Shapes are found by running each converted op on an example batch while the graph is built.
Every problem in the file is collected and reported at once (`OnnxImportError`).
"""

from __future__ import annotations

import hashlib
import keyword
import math
import operator
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import fx, nn


class OnnxImportError(ValueError):
    """A file adl cannot import; the message says what and where (node names)."""


@dataclass(frozen=True)
class ImportedOnnx:
    """An imported ONNX network and what the file says about itself."""

    module: fx.GraphModule  # standard torch modules, in eval() mode, parameters trainable
    input_name: str
    input_shape: tuple[int | None, ...]  # the input's shape without the batch dim; None: a symbolic dim
    output_name: str
    sha256: str  # of the .onnx file's bytes
    opset: int  # of the default (ai.onnx) domain
    producer: str  # producer_name + version
    operators: dict[str, int]  # op type -> count, as in the file (first appearance first)
    path: str = ""  # the file, as given to `import_onnx`
    external_files: tuple[str, ...] = ()  # external data files it read, relative to its folder (in `sha256`)


MIN_OPSET = 7  # numpy-style broadcasting of Add/Sub/Mul/Div
EXAMPLE_BATCH = 2  # the batch the example run (shapes) uses; a check runs another one
PROBE_SIZE = 32  # the example size of a symbolic spatial input dim
MAX_LISTED = 30  # unsupported nodes named in one error
_RESERVED = {"training", "meta", "code", "graph", "forward"}  # not names of submodules or buffers


def import_onnx(path: str | os.PathLike) -> ImportedOnnx:
    """The network in the ONNX file `path` as a `torch.fx.GraphModule` of standard torch modules.

    Raises `OnnxImportError` for a file that is not a readable ONNX model, that does not have one
    float32 input of rank 2 (N, F) or 4 (N, C, H, W) and one output, or that uses operators (or
    attribute values) adl cannot convert: all of those are named in one message, with node names.
    The batch dim may be symbolic or 1; the module takes any batch size. A symbolic H or W is
    given PROBE_SIZE while converting (shape values computed from it would keep that size).
    """
    import onnx

    label = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise OnnxImportError(f"{label} is not a readable ONNX model: {err.strerror or err}") from err
    model, external_files = _parse(onnx, data, Path(path), label)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise OnnxImportError(f"{label} uses ONNX opset {opset}; adl imports opset {MIN_OPSET} and newer")
    graph = model.graph
    input_name, input_dims = _single_input(onnx, graph, label)
    output_name = _single_output(graph, label)
    converter = _Converter(onnx, graph, label, opset, input_name, input_dims)
    module = converter.convert(output_name)
    operators: dict[str, int] = dict(Counter(_op_label(n) for n in graph.node))
    return ImportedOnnx(
        module=module,
        input_name=input_name,
        input_shape=tuple(input_dims[1:]),
        output_name=output_name,
        sha256=_digest(data, Path(path).parent, external_files),
        opset=opset,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        operators=operators,
        path=label,
        external_files=tuple(external_files),
    )


def check_input_shape(imported: ImportedOnnx, data_shape: tuple[int, ...]) -> str | None:
    """None when samples of shape `data_shape` (without the batch dim, like `input_shape`) fit
    the network's input; else a one-line message naming both shapes."""
    expected = imported.input_shape
    data_shape = tuple(int(d) for d in data_shape)
    if len(expected) == len(data_shape) and all(e is None or e == d for e, d in zip(expected, data_shape)):
        return None
    name = Path(imported.path).name if imported.path else "the ONNX model"
    return (
        f"{name} takes input '{imported.input_name}' of shape {_batch_shape(expected)}; "
        f"the data gives {_batch_shape(data_shape)}"
    )


def _batch_shape(dims: Sequence[int | None]) -> str:
    return "(" + ", ".join(["N"] + ["?" if d is None else str(d) for d in dims]) + ")"


# -- reading the file ------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return text or type(err).__name__


def _parse(onnx: Any, data: bytes, path: Path, label: str) -> tuple[Any, list[str]]:
    """The ModelProto in `data`, with its external data loaded, checked by onnx.checker, and the
    external data files it read (locations relative to the model's folder, sorted)."""
    from onnx import external_data_helper

    try:
        if not data:
            raise ValueError("the file is empty")
        model = onnx.load_model_from_string(data)
        if not model.HasField("graph"):
            raise ValueError("the file has no graph")
        external = [t for t in model.graph.initializer if external_data_helper.uses_external_data(t)]
        locations = sorted({external_data_helper.ExternalDataInfo(t).location for t in external})
        if external:
            external_data_helper.load_external_data_for_model(model, str(path.parent))
        if model.ByteSize() < 2_000_000_000:
            onnx.checker.check_model(model)
        else:  # a protobuf over 2 GB is checked from the file
            onnx.checker.check_model(str(path))
    except Exception as err:  # noqa: BLE001 -- protobuf, onnx.checker and OS errors, all reported alike
        raise OnnxImportError(f"{label} is not a readable ONNX model: {_first_line(err)}") from err
    return model, locations


def _digest(data: bytes, folder: Path, locations: Sequence[str]) -> str:
    """sha256 of the model file and of every external data file it names (weights exported beside
    it, e.g. torch's `net.onnx.data`), so a change to either changes the digest."""
    digest = hashlib.sha256(data)
    for location in locations:
        digest.update(b"\0" + location.encode() + b"\0")
        digest.update((folder / location).read_bytes())
    return digest.hexdigest()


def _dims(onnx: Any, value_info: Any) -> list[int | None]:
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in value_info.type.tensor_type.shape.dim
    ]


def _single_input(onnx: Any, graph: Any, label: str) -> tuple[str, list[int | None]]:
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]  # IR < 4 lists weights as inputs
    if len(inputs) != 1:
        names = ", ".join(f"'{i.name}'" for i in inputs) or "none"
        raise OnnxImportError(f"{label} has {len(inputs)} inputs ({names}); adl imports networks with one input")
    value = inputs[0]
    ttype = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if ttype is None or ttype.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type).name if ttype and ttype.elem_type else "non-tensor"
        raise OnnxImportError(
            f"{label} takes input '{value.name}' of type {kind}; adl imports networks with a float32 input"
        )
    if not ttype.HasField("shape"):
        raise OnnxImportError(f"{label} does not give the shape of its input '{value.name}'")
    dims = _dims(onnx, value)
    shown = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
    if len(dims) not in (2, 4):
        raise OnnxImportError(
            f"{label} takes input '{value.name}' of shape {shown} (rank {len(dims)}); adl imports "
            "inputs of rank 2 (N, features) or 4 (N, C, H, W)"
        )
    if dims[0] not in (None, 1):
        raise OnnxImportError(
            f"{label} takes input '{value.name}' of shape {shown} with a fixed batch of {dims[0]}; adl "
            "needs a symbolic batch dim or batch 1"
        )
    if dims[1] is None:
        raise OnnxImportError(
            f"{label} takes input '{value.name}' of shape {shown} with a symbolic "
            f"{'channel' if len(dims) == 4 else 'feature'} dim; adl needs its size"
        )
    return value.name, dims


def _single_output(graph: Any, label: str) -> str:
    if len(graph.output) != 1:
        names = ", ".join(f"'{o.name}'" for o in graph.output) or "none"
        raise OnnxImportError(
            f"{label} has {len(graph.output)} outputs ({names}); adl imports networks with one output"
        )
    return graph.output[0].name


def _op_label(node: Any) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


# -- values ----------------------------------------------------------------------------------------


class _Batch:
    """The batch size in a shape value (`Shape` of a tensor): copied around, never computed with."""

    def __repr__(self) -> str:
        return "N"

    def _refuse(self, *_: Any) -> Any:
        raise _Unsupported("computes with the batch size")

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _refuse
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = __neg__ = _refuse
    __int__ = __float__ = __index__ = _refuse


BATCH = _Batch()


@dataclass(frozen=True)
class _Tensor:
    """A value computed from the network's input: its fx node and an example (batch first)."""

    node: fx.Node
    example: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.example.shape)

    @property
    def rank(self) -> int:
        return self.example.dim()


class _Poisoned:
    """The output of a node that could not be converted (reported once, at that node)."""


POISONED = _Poisoned()


class _Unsupported(Exception):
    """Why one node cannot be converted (its message completes "<Op> (node 'x'): ...")."""


# -- conversion ------------------------------------------------------------------------------------


class _Converter:
    def __init__(
        self, onnx: Any, graph: Any, label: str, opset: int, input_name: str, input_dims: list[int | None]
    ) -> None:
        self.onnx = onnx
        self.onnx_graph = graph
        self.label = label
        self.opset = opset
        self.input_name = input_name
        self.batch_one = input_dims[0] == 1  # exported with batch 1: a leading 1 in a reshape is the batch
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.taken: set[str] = set()
        self.examples: dict[fx.Node, torch.Tensor] = {}
        self.values: dict[str, Any] = {}
        self.buffers: dict[str, fx.Node] = {}  # constant value name -> its get_attr node
        self.unsupported_ops: list[str] = []
        self.problems: list[str] = []
        self.consumers = Counter(name for n in graph.node for name in n.input if name)
        self.consumers.update(o.name for o in graph.output)
        for init in graph.initializer:
            self.values[init.name] = self._array_from_tensor(init)
        example_dims = [EXAMPLE_BATCH] + [PROBE_SIZE if d is None else d for d in input_dims[1:]]
        placeholder = self.graph.placeholder(self._unique(_sanitize(input_name) or "x"))
        self.examples[placeholder] = torch.zeros(example_dims)
        self.values[input_name] = _Tensor(placeholder, self.examples[placeholder])
        self.input_example_dims = example_dims

    # -- driver ----------------------------------------------------------------------------------

    def convert(self, output_name: str) -> fx.GraphModule:
        for index, node in enumerate(self.onnx_graph.node):
            self._convert_node(index, node)
        output = self.values.get(output_name)
        if not self.problems and not self.unsupported_ops:
            if isinstance(output, np.ndarray):
                self.problems.append(f"the output '{output_name}' is a constant, not computed from the input")
            elif not isinstance(output, _Tensor):
                self.problems.append(f"the output '{output_name}' is not produced by any node")
        self._raise_problems()
        assert isinstance(output, _Tensor)
        self.graph.output(output.node)
        module = fx.GraphModule(self.root, self.graph, class_name="OnnxNetwork")
        module.eval()
        self._check_batch(module, output)
        return module

    def _raise_problems(self) -> None:
        parts = []
        if self.unsupported_ops:
            shown = self.unsupported_ops[:MAX_LISTED]
            more = len(self.unsupported_ops) - len(shown)
            listed = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
            parts.append(
                f"unsupported ONNX operators: {listed}; adl imports: {', '.join(sorted(TENSOR_OPERATORS))} "
                f"(and, on constants and shape values only, {', '.join(sorted(set(_FOLDERS) - set(_HANDLERS)))})"
            )
        if self.problems:
            shown = self.problems[:MAX_LISTED]
            more = len(self.problems) - len(shown)
            parts.append("unsupported uses: " + "; ".join(shown) + (f"; and {more} more" if more > 0 else ""))
        if parts:
            raise OnnxImportError(f"{self.label}: " + "\n".join(parts))

    def _check_batch(self, module: fx.GraphModule, output: _Tensor) -> None:
        """The converted network keeps the batch: its output's first dim follows the input's."""
        if output.rank == 0 or output.shape[0] != EXAMPLE_BATCH:
            raise OnnxImportError(
                f"{self.label}: the output '{self.onnx_graph.output[0].name}' has shape {output.shape} "
                f"for a batch of {EXAMPLE_BATCH}; adl imports networks whose output keeps the batch dim first"
            )
        batch = EXAMPLE_BATCH + 1
        with torch.no_grad():
            out = module(torch.zeros([batch] + self.input_example_dims[1:]))
        if not isinstance(out, torch.Tensor) or out.shape[0] != batch or tuple(out.shape[1:]) != output.shape[1:]:
            raise OnnxImportError(
                f"{self.label}: the converted network does not keep the batch dim "
                f"(a batch of {batch} gives {tuple(getattr(out, 'shape', ()))})"
            )
        declared = _dims(self.onnx, self.onnx_graph.output[0])
        if len(declared) == output.rank and any(
            d is not None and d != s for d, s in zip(declared[1:], output.shape[1:])
        ):
            raise OnnxImportError(
                f"{self.label}: the converted network gives outputs of shape (N, "
                f"{', '.join(map(str, output.shape[1:]))}); the file declares {_batch_shape(declared[1:])}"
            )

    def _convert_node(self, index: int, node: Any) -> None:
        op = _op_label(node)
        where = f"{op} (node '{node.name or f'#{index}'}')"
        if op not in _HANDLERS and op not in _FOLDERS:
            self.unsupported_ops.append(where)
            self._poison(node)
            return
        undefined = [name for name in node.input if name and name not in self.values]
        if undefined:
            self.problems.append(f"{where}: input '{undefined[0]}' is not produced by any node")
            self._poison(node)
            return
        inputs = [self.values[name] if name else None for name in node.input]
        if any(v is POISONED for v in inputs):  # follows a node already reported
            self._poison(node)
            return
        if op not in _HANDLERS and any(isinstance(v, _Tensor) for v in inputs):  # constants and shapes only
            self.unsupported_ops.append(where)
            self._poison(node)
            return
        try:
            attrs = self._attributes(node)
            if op in _FOLDERS and all(isinstance(v, np.ndarray) for v in inputs if v is not None):
                outputs = [_as_array(v) for v in _FOLDERS[op](self, attrs, inputs)]
            else:
                outputs = _HANDLERS[op](self, node, attrs, inputs)
        except _Unsupported as err:
            self.problems.append(f"{where}: {err}")
            self._poison(node)
            return
        except Exception as err:  # noqa: BLE001 -- e.g. shapes that do not fit: reported with the node
            self.problems.append(f"{where}: cannot be converted ({type(err).__name__}: {_first_line(err)})")
            self._poison(node)
            return
        for name, value in zip(node.output, outputs):
            if name:
                self.values[name] = value

    def _poison(self, node: Any) -> None:
        for name in node.output:
            if name:
                self.values[name] = POISONED

    def _attributes(self, node: Any) -> dict[str, Any]:
        attrs = {}
        for attr in node.attribute:
            if attr.type == self.onnx.AttributeProto.TENSOR:
                attrs[attr.name] = self._array_from_tensor(attr.t)
            elif attr.type in (self.onnx.AttributeProto.GRAPH, self.onnx.AttributeProto.GRAPHS):
                raise _Unsupported(f"has a subgraph (attribute '{attr.name}')")
            else:
                value = self.onnx.helper.get_attribute_value(attr)
                if isinstance(value, bytes):
                    value = value.decode("utf-8", "replace")
                attrs[attr.name] = value
        return attrs

    def _array_from_tensor(self, tensor: Any) -> np.ndarray:
        from onnx import numpy_helper

        return np.asarray(numpy_helper.to_array(tensor))

    # -- building the fx graph -------------------------------------------------------------------

    def _unique(self, base: str) -> str:
        base = base or "node"
        if keyword.iskeyword(base) or base in _RESERVED:
            base = f"{base}_"
        name, k = base, 2
        while name in self.taken or hasattr(fx.GraphModule, name):
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def _emit(self, op: str, target: Any, args: tuple, kwargs: dict | None = None) -> _Tensor:
        kwargs = kwargs or {}
        node = self.graph.create_node(op, target, args, kwargs)
        real_args = fx.node.map_arg(args, lambda n: self.examples[n])
        real_kwargs = fx.node.map_arg(kwargs, lambda n: self.examples[n])
        with torch.no_grad():
            if op == "call_module":
                example = self.root.get_submodule(target)(*real_args, **real_kwargs)
            else:
                example = target(*real_args, **real_kwargs)
        self.examples[node] = example
        return _Tensor(node, example)

    def module(self, onnx_node: Any, module: nn.Module, *args: fx.Node) -> _Tensor:
        """`module` (named after the ONNX node) applied to `args`."""
        name = self._unique(_module_name(onnx_node))
        self.root.add_module(name, module)
        return self._emit("call_module", name, args)

    def function(self, fn: Callable, *args: Any, **kwargs: Any) -> _Tensor:
        return self._emit("call_function", fn, args, kwargs)

    def constant(self, value_name: str, array: np.ndarray) -> fx.Node:
        """A get_attr node reading `array` (the ONNX value `value_name`) as a registered buffer."""
        if value_name in self.buffers:
            return self.buffers[value_name]
        tensor = _float_tensor(array, "constant")
        name = self._unique(_scoped_name(value_name) or "constant")
        self.root.register_buffer(name, tensor)
        node = self.graph.get_attr(name)
        self.examples[node] = tensor
        self.buffers[value_name] = node
        return node

    def reshaped(self, onnx_node: Any, x: _Tensor, rest: Sequence[int], as_module: bool = False) -> _Tensor:
        """`x` with its non-batch dims reshaped to `rest`: itself, a flatten, or torch.reshape."""
        rest = tuple(int(d) for d in rest)
        if math.prod(rest) != math.prod(x.shape[1:]):
            raise _Unsupported(f"reshapes {x.shape[1:]} to {rest} after the batch dim: the sizes differ")
        if rest == x.shape[1:]:
            return x
        if len(rest) == 1:
            if as_module:
                return self.module(onnx_node, nn.Flatten(), x.node)
            return self.function(torch.flatten, x.node, 1)
        return self.function(torch.reshape, x.node, (-1, *rest))


def _as_array(value: Any) -> np.ndarray:
    """A folded value as an array (numpy gives scalars for some results; a shape value stays object)."""
    if isinstance(value, np.ndarray):
        return value
    return np.asarray(value, dtype=object if isinstance(value, _Batch) else None)


def _tensor(value: Any, what: str = "input") -> _Tensor:
    if not isinstance(value, _Tensor):
        raise _Unsupported(f"needs a tensor computed from the network's input as its {what}")
    return value


def _array(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise _Unsupported(f"needs a constant {what} (an initializer or Constant); this one is computed")
    return value


def _float_tensor(array: np.ndarray, what: str) -> torch.Tensor:
    if array.dtype == object:
        raise _Unsupported(f"uses the batch size as a {what}")
    if array.dtype != np.float32:
        raise _Unsupported(f"has a {array.dtype} {what}; adl imports float32 networks")
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))


def _parameter(array: np.ndarray, what: str) -> nn.Parameter:
    return nn.Parameter(_float_tensor(array, what))


def _scalar(value: Any, what: str) -> float:
    array = _array(value, what)
    if array.size != 1 or array.dtype == object:
        raise _Unsupported(f"needs a scalar {what}; it has shape {array.shape}")
    return float(array.reshape(()))


def _ints(value: Any, what: str) -> list[int]:
    array = _array(value, what)
    if array.dtype == object:
        raise _Unsupported(f"uses the batch size in its {what}")
    return [int(v) for v in array.reshape(-1)]


def _axes(attrs: dict[str, Any], inputs: list[Any], index: int, opset_input: int, opset: int) -> list[int] | None:
    """Axes from the attribute (opset < `opset_input`) or from input `index`; None: not given."""
    if opset < opset_input or "axes" in attrs:
        return list(attrs["axes"]) if "axes" in attrs else None
    if len(inputs) > index and inputs[index] is not None:
        return _ints(inputs[index], "axes")
    return None


# -- names -----------------------------------------------------------------------------------------


def _sanitize(text: str) -> str:
    text = re.sub(r"[^0-9a-zA-Z_]+", "_", text).strip("_").lower()
    return re.sub(r"_+", "_", text)


def _scoped_name(name: str) -> str:
    """'/features/features.0/Conv' -> 'features_0_conv': the torch exporter's scopes, each of which
    repeats its parent's path, merged into one module path, then the node's own name."""
    if "/" not in name:
        return _sanitize(name.removeprefix("node_")) if name.startswith("node_") else _sanitize(name)
    parts = [p for p in name.split("/") if p]
    if not parts:
        return ""
    *scopes, last = parts
    path: list[str] = []
    previous = ""
    for scope in scopes:
        if previous and scope.startswith(previous + "."):
            path.append(scope[len(previous) + 1 :])
        else:
            path.append(scope)
        previous = scope
    return _sanitize(".".join(path + [last]))


def _module_name(node: Any) -> str:
    """A readable module name for an ONNX node: from the dynamo exporter's name scopes (the torch
    module's path) when present, else from the node's scoped name, else its op type."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = re.findall(r"'([^']*)'", prop.value)
            if len(scopes) >= 2 and scopes[-2]:  # the torch module's path, then the op
                return _sanitize(f"{scopes[-2]}_{node.op_type}")
            if scopes and scopes[-1]:  # an op of the top-level module: its aten name
                return _sanitize(scopes[-1])
    return _scoped_name(node.name) or _sanitize(node.op_type)


# -- operators on tensors --------------------------------------------------------------------------


Handler = Callable[[_Converter, Any, dict, list], list]


def _pads(attrs: dict[str, Any], spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
          dilations: Sequence[int]) -> tuple[int, int]:  # fmt: skip
    """Symmetric padding (top/bottom, left/right) from `pads` or `auto_pad`."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto == "VALID":
        return (0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            if total % 2:
                raise _Unsupported(f"auto_pad={auto} pads asymmetrically here (total padding {total})")
            pads.append(total // 2)
        return (pads[0], pads[1])
    if auto != "NOTSET":
        raise _Unsupported(f"auto_pad={auto}")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise _Unsupported(f"asymmetric pads {pads} (adl imports equal padding on both sides)")
    return (pads[0], pads[1])


def _spatial_attrs(attrs: dict[str, Any], kernel: Sequence[int]) -> tuple[list[int], list[int]]:
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    if len(strides) != 2 or len(dilations) != 2:
        raise _Unsupported(f"strides {strides} / dilations {dilations} are not 2-D")
    if "kernel_shape" in attrs and list(attrs["kernel_shape"]) != list(kernel):
        raise _Unsupported(f"kernel_shape {list(attrs['kernel_shape'])} differs from the weight's {list(kernel)}")
    return strides, dilations


def _conv(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    w = _array(inputs[1], "weight")
    if w.ndim != 4:
        raise _Unsupported(f"is a {w.ndim - 2}-D convolution; adl imports 2-D convolutions")
    if x.rank != 4:
        raise _Unsupported(f"convolves a rank-{x.rank} tensor; adl imports 2-D convolutions of (N, C, H, W)")
    bias = _array(inputs[2], "bias") if len(inputs) > 2 and inputs[2] is not None else None
    groups = int(attrs.get("group", 1))
    kernel = tuple(int(k) for k in w.shape[2:])
    strides, dilations = _spatial_attrs(attrs, kernel)
    padding = _pads(attrs, x.shape[2:], kernel, strides, dilations)
    cin, cout = int(w.shape[1]) * groups, int(w.shape[0])
    if x.shape[1] != cin:
        raise _Unsupported(f"has weights for {cin} input channels; its input has {x.shape[1]}")
    if cout % groups:
        raise _Unsupported(f"has {cout} output channels, not divisible by group={groups}")
    conv = nn.Conv2d(cin, cout, kernel, tuple(strides), padding, tuple(dilations), groups, bias=bias is not None)
    conv.weight = _parameter(w, "weight")
    if bias is not None:
        conv.bias = _parameter(bias.reshape(-1), "bias")
    return [c.module(node, conv, x.node)]


def _batchnorm(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    if attrs.get("training_mode", 0):
        raise _Unsupported("training_mode=1 (adl imports inference graphs)")
    if any(name and c.consumers[name] for name in node.output[1:]):
        raise _Unsupported("uses the running statistics it outputs (a training graph)")
    scale, bias, mean, var = (_array(v, what) for v, what in zip(inputs[1:5], ("scale", "bias", "mean", "var")))
    channels = int(scale.size)
    if x.rank not in (2, 3, 4) or x.shape[1] != channels:
        raise _Unsupported(f"normalizes {channels} channels of a tensor of shape {x.shape}")
    kind = nn.BatchNorm2d if x.rank == 4 else nn.BatchNorm1d
    momentum = 1.0 - float(attrs.get("momentum", 0.9))
    bn = kind(channels, eps=float(attrs.get("epsilon", 1e-5)), momentum=momentum)
    bn.weight = _parameter(scale.reshape(-1), "scale")
    bn.bias = _parameter(bias.reshape(-1), "bias")
    bn.running_mean = _float_tensor(mean.reshape(-1), "mean")
    bn.running_var = _float_tensor(var.reshape(-1), "var")
    bn.eval()
    return [c.module(node, bn, x.node)]


def _gemm(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    if x.rank != 2:
        raise _Unsupported(f"multiplies a rank-{x.rank} tensor; Gemm takes (N, features)")
    if attrs.get("transA", 0):
        raise _Unsupported("transA=1 (the input transposed)")
    b = _array(inputs[1], "weight B")
    if b.ndim != 2:
        raise _Unsupported(f"has a weight of shape {b.shape}")
    weight = b if attrs.get("transB", 0) else b.T
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if alpha != 1.0:
        weight = (weight * np.float32(alpha)).astype(b.dtype)
    out_features, in_features = int(weight.shape[0]), int(weight.shape[1])
    if x.shape[1] != in_features:
        raise _Unsupported(f"has weights for {in_features} features; its input has {x.shape[1]}")
    bias = None
    if len(inputs) > 2 and inputs[2] is not None:
        cvalue = _array(inputs[2], "bias C")
        if cvalue.size not in (1, out_features) or (cvalue.ndim == 2 and cvalue.shape[0] != 1) or cvalue.ndim > 2:
            raise _Unsupported(f"has a bias C of shape {cvalue.shape} (adl imports one bias per output)")
        bias = (np.broadcast_to(cvalue.reshape(-1), (out_features,)) * np.float32(beta)).astype(cvalue.dtype)
    linear = nn.Linear(in_features, out_features, bias=bias is not None)
    linear.weight = _parameter(np.ascontiguousarray(weight), "weight")
    if bias is not None:
        linear.bias = _parameter(bias, "bias")
    return [c.module(node, linear, x.node)]


def _matmul(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    if isinstance(inputs[0], np.ndarray):
        raise _Unsupported("multiplies a constant by a tensor (adl imports tensor @ constant weight)")
    x = _tensor(inputs[0])
    if isinstance(inputs[1], _Tensor):
        raise _Unsupported("multiplies two tensors (adl imports tensor @ constant weight)")
    w = _array(inputs[1], "weight")
    if w.ndim != 2 or x.rank < 2:
        raise _Unsupported(f"multiplies shapes {x.shape} and {w.shape}; adl imports (..., K) @ (K, M)")
    if x.shape[-1] != w.shape[0]:
        raise _Unsupported(f"multiplies shapes {x.shape} and {w.shape}: the inner sizes differ")
    linear = nn.Linear(int(w.shape[0]), int(w.shape[1]), bias=False)
    linear.weight = _parameter(np.ascontiguousarray(w.T), "weight")
    return [c.module(node, linear, x.node)]


_BINARY = {"Add": operator.add, "Sub": operator.sub, "Mul": operator.mul, "Div": operator.truediv}


def _binary(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    fn = _BINARY[node.op_type]
    a, b = inputs[0], inputs[1]
    if isinstance(a, _Tensor) and isinstance(b, _Tensor):
        if a.rank != b.rank:
            raise _Unsupported(f"broadcasts tensors of shapes {a.shape} and {b.shape} (ranks differ)")
        return [c.function(fn, a.node, b.node)]
    tensor, const_index = (a, 1) if isinstance(a, _Tensor) else (b, 0)
    tensor = _tensor(tensor)
    const = _array(inputs[const_index], "operand")
    if const.ndim > tensor.rank or (const.ndim == tensor.rank and const.shape[0] != 1):
        raise _Unsupported(
            f"combines a tensor of shape {tensor.shape} with a constant of shape {const.shape}, which "
            "broadcasts over the batch dim"
        )
    if node.op_type == "Add" and const_index == 1 and (fused := _fuse_bias(c, node.input[0], tensor, const)):
        return [fused]
    const_node = c.constant(node.input[const_index], const)
    args = (tensor.node, const_node) if const_index == 1 else (const_node, tensor.node)
    return [c.function(fn, *args)]


def _fuse_bias(c: _Converter, name: str, x: _Tensor, const: np.ndarray) -> _Tensor | None:
    """A Linear without bias (MatMul) whose output `name` only feeds the Add of a per-feature
    constant: one Linear with that bias."""
    node = x.node
    if node.op != "call_module" or len(node.users) or c.consumers[name] != 1 or const.dtype != np.float32:
        return None
    linear = c.root.get_submodule(node.target)
    if not isinstance(linear, nn.Linear) or linear.bias is not None:
        return None
    if const.size != linear.out_features or any(d != 1 for d in const.shape[:-1]):
        return None
    linear.bias = _parameter(const.reshape(-1), "bias")
    with torch.no_grad():
        example = linear(c.examples[node.args[0]])
    c.examples[node] = example
    return _Tensor(node, example)


def _simple(module: Callable[[dict, _Tensor], nn.Module]) -> Handler:
    def handler(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
        x = _tensor(inputs[0])
        return [c.module(node, module(attrs, x), x.node)]

    return handler


def _gelu(attrs: dict, x: _Tensor) -> nn.Module:
    approximate = attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise _Unsupported(f"approximate={approximate}")
    return nn.GELU(approximate=approximate)


def _softmax(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    axis = int(attrs.get("axis", 1 if c.opset < 13 else -1))
    axis = axis + x.rank if axis < 0 else axis
    if axis <= 0 or axis >= x.rank:
        raise _Unsupported(f"axis={attrs.get('axis')} on a tensor of shape {x.shape} (over the batch)")
    if c.opset < 13 and math.prod(x.shape[axis + 1 :]) != 1:  # opset < 13: over all dims from `axis` on
        raise _Unsupported(f"axis={axis} of opset {c.opset} normalizes over several dims of shape {x.shape}")
    kind = nn.Softmax if node.op_type == "Softmax" else nn.LogSoftmax
    return [c.module(node, kind(dim=axis), x.node)]


def _clip(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    if c.opset < 11:
        low, high = float(attrs.get("min", -math.inf)), float(attrs.get("max", math.inf))
    else:
        low = _scalar(inputs[1], "min") if len(inputs) > 1 and inputs[1] is not None else -math.inf
        high = _scalar(inputs[2], "max") if len(inputs) > 2 and inputs[2] is not None else math.inf
    low = -math.inf if low <= -3e38 else low
    high = math.inf if high >= 3e38 else high
    if low == 0.0 and high == 6.0:
        module: nn.Module = nn.ReLU6()
    elif low == 0.0 and high == math.inf:
        module = nn.ReLU()
    elif math.isfinite(low) and math.isfinite(high):
        module = nn.Hardtanh(low, high)
    else:
        return [c.function(torch.clamp, x.node, min=None if math.isinf(low) else low,
                           max=None if math.isinf(high) else high)]  # fmt: skip
    return [c.module(node, module, x.node)]


def _hardsigmoid(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    alpha, beta = float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))
    if abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
        return [c.module(node, nn.Hardsigmoid(), x.node)]
    scaled = c.function(operator.mul, x.node, alpha)
    shifted = c.function(operator.add, scaled.node, beta)
    return [c.module(node, nn.Hardtanh(0.0, 1.0), shifted.node)]


def _pool(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    if x.rank != 4:
        raise _Unsupported(f"pools a tensor of shape {x.shape}; adl imports 2-D pooling of (N, C, H, W)")
    if len(node.output) > 1 and node.output[1] and c.consumers[node.output[1]]:
        raise _Unsupported("uses the indices it outputs")
    kernel = [int(k) for k in attrs.get("kernel_shape", [])]
    if len(kernel) != 2:
        raise _Unsupported(f"kernel_shape {kernel} is not 2-D")
    strides, dilations = _spatial_attrs(attrs, kernel)
    padding = _pads(attrs, x.shape[2:], kernel, strides, dilations)
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if any(p > e // 2 for p, e in zip(padding, effective)):
        raise _Unsupported(f"pads {list(padding)} more than half the kernel {kernel}")
    if node.op_type == "MaxPool":
        if attrs.get("storage_order", 0):
            raise _Unsupported("storage_order=1")
        pool: nn.Module = nn.MaxPool2d(tuple(kernel), tuple(strides), padding, tuple(dilations), ceil_mode=ceil_mode)
    else:
        if dilations != [1, 1]:
            raise _Unsupported(f"dilations {dilations} (average pooling takes none)")
        include = bool(attrs.get("count_include_pad", 0))
        pool = nn.AvgPool2d(tuple(kernel), tuple(strides), padding, ceil_mode=ceil_mode, count_include_pad=include)
    return [c.module(node, pool, x.node)]


def _global_pool(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    if x.rank != 4:
        raise _Unsupported(f"pools a tensor of shape {x.shape}; adl imports (N, C, H, W)")
    pool = nn.AdaptiveAvgPool2d(1) if node.op_type == "GlobalAveragePool" else nn.AdaptiveMaxPool2d(1)
    return [c.module(node, pool, x.node)]


def _reduce_mean(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    axes = _axes(attrs, inputs, 1, 18, c.opset)
    keepdims = bool(attrs.get("keepdims", 1))
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return [x]
        raise _Unsupported("reduces over all dims, the batch included")
    dims = sorted({a + x.rank if a < 0 else a for a in axes})
    if dims[0] <= 0 or dims[-1] >= x.rank:
        raise _Unsupported(f"reduces over axes {axes} of a tensor of shape {x.shape} (the batch dim is 0)")
    return [c.function(torch.mean, x.node, dims, keepdim=keepdims)]


def _flatten(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    axis = int(attrs.get("axis", 1))
    axis = axis + x.rank if axis < 0 else axis
    if axis != 1:
        raise _Unsupported(f"axis={attrs.get('axis')} merges the batch dim (adl imports axis=1)")
    return [c.reshaped(node, x, (math.prod(x.shape[1:]),), as_module=True)]


def _reshape(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    target = list(_array(inputs[1], "shape").reshape(-1))
    allowzero = bool(attrs.get("allowzero", 0))
    shown = "[" + ", ".join(str(t) for t in target) + "]"
    items: list[Any] = []
    for i, t in enumerate(target):
        if t is not BATCH and int(t) == 0 and not allowzero:
            if i >= x.rank:
                raise _Unsupported(f"copies dim {i} of a rank-{x.rank} tensor")
            items.append(BATCH if i == 0 else x.shape[i])
        else:
            items.append(t if t is BATCH else int(t))
    if not items:
        raise _Unsupported(f"reshapes to {shown}, which drops the batch dim")
    first, rest = items[0], items[1:]
    if any(r is BATCH for r in rest):
        raise _Unsupported(f"reshapes to {shown}, which moves the batch dim")
    inner = math.prod(x.shape[1:])
    if first is BATCH or (first == 1 and c.batch_one):
        pass
    elif first == -1 and -1 not in rest and math.prod(rest) == inner:
        pass
    else:
        raise _Unsupported(f"reshapes to {shown}, which does not keep the batch dim first")
    if rest.count(-1) > 1:
        raise _Unsupported(f"reshapes to {shown} (two -1)")
    if -1 in rest:
        known = math.prod(r for r in rest if r != -1)
        if known == 0 or inner % known:
            raise _Unsupported(f"reshapes {x.shape[1:]} to {shown}: the sizes do not fit")
        rest = [inner // known if r == -1 else r for r in rest]
    return [c.reshaped(node, x, rest)]


def _squeeze(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    axes = _axes(attrs, inputs, 1, 13, c.opset)
    if axes is None:
        dims = [i for i in range(1, x.rank) if x.shape[i] == 1]
    else:
        dims = sorted({a + x.rank if a < 0 else a for a in axes})
    if 0 in dims:
        raise _Unsupported(f"squeezes axes {axes}, the batch dim included")
    if any(x.shape[d] != 1 for d in dims):
        raise _Unsupported(f"squeezes axes {axes} of shape {x.shape}, which are not 1")
    rest = [s for i, s in enumerate(x.shape) if i not in dims][1:]
    return [c.reshaped(node, x, rest)]


def _unsqueeze(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    axes = _axes(attrs, inputs, 1, 13, c.opset)
    if not axes:
        raise _Unsupported("has no axes")
    rank = x.rank + len(axes)
    dims = sorted({a + rank if a < 0 else a for a in axes})
    if 0 in dims:
        raise _Unsupported(f"inserts axis 0 before the batch dim (axes {axes})")
    shape = list(x.shape)
    for d in dims:
        shape.insert(d, 1)
    return [c.reshaped(node, x, shape[1:])]


def _concat(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    tensors = [v for v in inputs if v is not None]
    if not all(isinstance(v, _Tensor) for v in tensors):
        raise _Unsupported("concatenates tensors with constants (adl imports tensors only)")
    rank = tensors[0].rank
    axis = int(attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        raise _Unsupported("concatenates along the batch dim (axis 0)")
    if any(t.rank != rank for t in tensors):
        raise _Unsupported("concatenates tensors of different ranks")
    return [c.function(torch.cat, [t.node for t in tensors], axis)]


def _passthrough(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1] and c.consumers[node.output[1]]:
        raise _Unsupported("uses its mask output")
    return [x]


def _cast(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    if attrs.get("to") != c.onnx.TensorProto.FLOAT:
        name = c.onnx.helper.tensor_dtype_to_np_dtype(attrs.get("to")).name if attrs.get("to") else "?"
        raise _Unsupported(f"casts a tensor to {name} (adl imports float32 networks)")
    return [x]


def _shape(c: _Converter, node: Any, attrs: dict, inputs: list) -> list:
    x = _tensor(inputs[0])
    dims = np.array([BATCH, *x.shape[1:]], dtype=object)
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    return [dims[start : (int(end) if end is not None else None)]]


_HANDLERS: dict[str, Handler] = {
    "Conv": _conv,
    "BatchNormalization": _batchnorm,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _binary,
    "Sub": _binary,
    "Mul": _binary,
    "Div": _binary,
    "Relu": _simple(lambda a, x: nn.ReLU()),
    "Sigmoid": _simple(lambda a, x: nn.Sigmoid()),
    "Tanh": _simple(lambda a, x: nn.Tanh()),
    "HardSwish": _simple(lambda a, x: nn.Hardswish()),
    "LeakyRelu": _simple(lambda a, x: nn.LeakyReLU(float(a.get("alpha", 0.01)))),
    "Elu": _simple(lambda a, x: nn.ELU(float(a.get("alpha", 1.0)))),
    "Gelu": _simple(_gelu),
    "HardSigmoid": _hardsigmoid,
    "Clip": _clip,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "ReduceMean": _reduce_mean,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Identity": _passthrough,
    "Dropout": _passthrough,
    "Cast": _cast,
    "Shape": _shape,
}


# -- operators on constants and shape values (numpy) -----------------------------------------------


Folder = Callable[[_Converter, dict, list], list]


def _fold_constant(c: _Converter, attrs: dict, inputs: list) -> list:
    if "value" in attrs:
        return [attrs["value"]]
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return [np.array(attrs[key], dtype=dtype)]
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return [np.array(list(attrs[key]), dtype=dtype)]
    raise _Unsupported(f"holds a {', '.join(attrs) or 'missing'} value (adl imports dense tensors)")


def _fold_cast(c: _Converter, attrs: dict, inputs: list) -> list:
    x = inputs[0]
    if x.dtype == object:  # a shape value: stays symbolic (only integer casts make sense of it)
        return [x]
    return [x.astype(c.onnx.helper.tensor_dtype_to_np_dtype(attrs["to"]))]


def _fold_gather(c: _Converter, attrs: dict, inputs: list) -> list:
    data, indices = inputs[0], inputs[1]
    return [np.take(data, indices.astype(np.int64), axis=int(attrs.get("axis", 0)))]


def _fold_unsqueeze(c: _Converter, attrs: dict, inputs: list) -> list:
    axes = _axes(attrs, inputs, 1, 13, c.opset) or []
    rank = inputs[0].ndim + len(axes)
    return [np.expand_dims(inputs[0], tuple(sorted(a + rank if a < 0 else a for a in axes)))]


def _fold_squeeze(c: _Converter, attrs: dict, inputs: list) -> list:
    axes = _axes(attrs, inputs, 1, 13, c.opset)
    return [np.squeeze(inputs[0], axis=None if axes is None else tuple(axes))]


def _fold_concat(c: _Converter, attrs: dict, inputs: list) -> list:
    return [np.concatenate([v for v in inputs if v is not None], axis=int(attrs.get("axis", 0)))]


def _fold_slice(c: _Converter, attrs: dict, inputs: list) -> list:
    data = inputs[0]
    if c.opset < 10:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(inputs[1], "starts"), _ints(inputs[2], "ends")
        axes = _ints(inputs[3], "axes") if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
        steps = _ints(inputs[4], "steps") if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[axis] = slice(start, end, step)
    return [data[tuple(index)]]


def _fold_reshape(c: _Converter, attrs: dict, inputs: list) -> list:
    data, shape = inputs[0], _ints(inputs[1], "shape")
    if not attrs.get("allowzero", 0):
        shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [data.reshape(shape)]


def _fold_flatten(c: _Converter, attrs: dict, inputs: list) -> list:
    data = inputs[0]
    axis = int(attrs.get("axis", 1))
    axis = axis + data.ndim if axis < 0 else axis
    return [data.reshape(math.prod(data.shape[:axis]), -1)]


def _fold_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return (np.trunc(a / b)).astype(a.dtype)
    return a / b


def _fold_elementwise(fn: Callable[..., Any]) -> Folder:
    def folder(c: _Converter, attrs: dict, inputs: list) -> list:
        result = _as_array(fn(*inputs))
        dtype = inputs[0].dtype
        return [result if object in (dtype, result.dtype) else result.astype(dtype)]

    return folder


_FOLDERS: dict[str, Folder] = {
    "Constant": _fold_constant,
    "Identity": lambda c, a, i: [i[0]],
    "Dropout": lambda c, a, i: [i[0]],
    "Cast": _fold_cast,
    "Shape": lambda c, a, i: [np.array(i[0].shape, dtype=np.int64)[a.get("start", 0) : a.get("end")]],
    "Gather": _fold_gather,
    "Unsqueeze": _fold_unsqueeze,
    "Squeeze": _fold_squeeze,
    "Concat": _fold_concat,
    "Slice": _fold_slice,
    "Reshape": _fold_reshape,
    "Flatten": _fold_flatten,
    "Transpose": lambda c, a, i: [np.transpose(i[0], a.get("perm"))],
    "Add": _fold_elementwise(operator.add),
    "Sub": _fold_elementwise(operator.sub),
    "Mul": _fold_elementwise(operator.mul),
    "Div": _fold_elementwise(_fold_divide),
    "Neg": _fold_elementwise(operator.neg),
    "Sqrt": _fold_elementwise(np.sqrt),
    "Reciprocal": _fold_elementwise(lambda x: 1 / x),
    "MatMul": _fold_elementwise(np.matmul),
}

TENSOR_OPERATORS = frozenset(_HANDLERS)  # what adl converts on tensors computed from the input
SUPPORTED_OPERATORS = TENSOR_OPERATORS | frozenset(_FOLDERS)  # Transpose, Gather, ...: constants and shapes only
