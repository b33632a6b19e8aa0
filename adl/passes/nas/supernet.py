"""The MobileNet-space supernet in JAX: one set of weights per candidate op of every block.

Layout NHWC. Every conv is followed by a BatchNorm that normalises with the statistics of the
batch it sees (training and evaluation alike; no running averages), as ProxylessNAS and FBNet
put one in every candidate op: without it, switching a block between candidates of expansion
1..6 and identity changes the scale of everything downstream, and the shared weights of the
later blocks and the head never settle (the supernet stayed at chance accuracy on digits).
A materialised network (`to_torch`) gets the BatchNorms' scale and shift, and running
statistics recalibrated on training data. Block
`b` holds the candidates of `MobileNetSpace.choices(b, width)`: inverted residuals (1x1
expand -> kxk depthwise -> 1x1 project, ReLU6 after the first two, a skip connection when
the shape allows) and, for blocks that keep their shape, identity.

How a block mixes its candidates is the search strategy's business. `mixed_block` is the
DARTS relaxation, sum_i w_i op_i(x): every candidate runs and stays in memory. The
single-path strategies run one (or two) candidates per block, stage by stage from the host
(`paths.PathRunner`), so the others are neither computed nor held.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from adl.models.space import Architecture, Choice, MobileNetSpace

Params = dict[str, Any]


@dataclass(frozen=True)
class Supernet:
    """The shapes of a space at one width, and functions of (params, input)."""

    space: MobileNetSpace
    width: float
    chain = True  # a chain of blocks: single paths can run block by block (`paths.PathRunner`)

    @property
    def choices(self) -> list[list[Choice]]:
        return [self.space.choices(b, self.width) for b in range(self.space.blocks)]

    @property
    def stem(self) -> int:
        return self.space.block_shapes(self.width)[0][0] if self.space.blocks else self.space.stem

    # -- parameters ------------------------------------------------------------------------

    def init(self, seed: int) -> Params:
        """He-normal convolutions and dense layer, BatchNorm scale 1 and shift 0. Drawn with NumPy: JAX would
        compile an initialiser per parameter shape, which costs more than the search's steps."""
        rng = np.random.default_rng(seed)
        channels = self.space.input_shape[0]
        params: Params = {"stem": _conv(rng, 3, 3, channels, self.stem), "blocks": []}
        for (cin, cout, _), choices in zip(self.space.block_shapes(self.width), self.choices):
            ops = []
            for choice in choices:
                if choice.skip:
                    ops.append({})
                    continue
                hidden = cin * choice.expand
                op = {
                    "dw": _conv(rng, choice.kernel, choice.kernel, 1, hidden),
                    "project": _conv(rng, 1, 1, hidden, cout),
                }
                if choice.expand != 1:
                    op["expand"] = _conv(rng, 1, 1, cin, hidden)
                ops.append(op)
            params["blocks"].append(ops)
        last = self.space.block_shapes(self.width)[-1][1] if self.space.blocks else self.stem
        params["head"] = _conv(rng, 1, 1, last, self.space.head)
        w = rng.standard_normal((self.space.head, self.space.classes)) * math.sqrt(1.0 / self.space.head)
        params["classifier"] = {"w": jnp.asarray(w, jnp.float32), "b": jnp.zeros((self.space.classes,))}
        return params

    # -- the network around the blocks -----------------------------------------------------

    def stem_apply(self, p: Params, x: jax.Array) -> jax.Array:
        """NCHW input -> the stem's NHWC activation."""
        return _relu6(_conv_apply(p, jnp.transpose(x, (0, 2, 3, 1)), 1))

    def head_apply(self, head: Params, classifier: Params, h: jax.Array) -> jax.Array:
        """The last block's activation -> logits (1x1 conv, global average pool, dense)."""
        h = jnp.mean(_relu6(_conv_apply(head, h, 1)), axis=(1, 2))
        return h @ classifier["w"] + classifier["b"]

    def forward(
        self, params: Params, x: jax.Array, block_fn: Callable[[int, Params, jax.Array], jax.Array]
    ) -> jax.Array:
        """Logits of NCHW inputs `x`; `block_fn(b, block_params, h)` computes block `b`."""
        h = self.stem_apply(params["stem"], x)
        for b in range(self.space.blocks):
            h = block_fn(b, params["blocks"][b], h)
        return self.head_apply(params["head"], params["classifier"], h)

    def op_fn(self, b: int, i: int) -> Callable[[Params, jax.Array], jax.Array]:
        """Candidate `i` of block `b` as a function of (its params, NHWC input)."""
        choice = self.choices[b][i]
        cin, cout, stride = self.space.block_shapes(self.width)[b]
        if choice.skip:
            return lambda p, h: h
        use_skip = stride == 1 and cin == cout

        def op(p: Params, h: jax.Array) -> jax.Array:
            y = _relu6(_conv_apply(p["expand"], h, 1)) if "expand" in p else h
            y = _relu6(_conv_apply(p["dw"], y, stride, groups=y.shape[-1]))
            y = _conv_apply(p["project"], y, 1)
            return h + y if use_skip else y

        return op

    def mixed_forward(self, params: Params, x: jax.Array, weights: Sequence[jax.Array]) -> jax.Array:
        return self.forward(params, x, lambda b, ops, h: self.mixed_block(b, ops, h, weights[b]))

    def mixed_block(self, b: int, ops: Sequence[Params], h: jax.Array, weights: jax.Array) -> jax.Array:
        """The DARTS relaxation of block `b`: sum_i weights[i] * op_i(h)."""
        return sum(weights[i] * self.op_fn(b, i)(ops[i], h) for i in range(len(ops)))

    # -- a derived network -------------------------------------------------------------------

    def derive(self, alphas: Sequence[Any]) -> list[int]:
        """The strongest candidate of every block."""
        return [int(np.argmax(np.asarray(a))) for a in alphas]

    def architecture(self, indices: Sequence[int]) -> Architecture:
        return Architecture(self.width, tuple(self.choices[b][int(i)] for b, i in enumerate(indices)))

    def derived_forward(self, params: Params, x: jax.Array, indices: Sequence[int]) -> jax.Array:
        """The network of one op per block, as the supernet computes it (no gates)."""
        return self.forward(params, x, lambda b, ops, h: self.op_fn(b, int(indices[b]))(ops[int(indices[b])], h))


def probabilities(alphas: Sequence[Any]) -> list[np.ndarray]:
    """softmax of every architecture-parameter vector, on the host in float64 (sampling with
    NumPy needs probabilities that sum to 1 to its tolerance)."""
    out = []
    for a in alphas:
        z = np.exp(np.asarray(a, np.float64) - np.max(np.asarray(a, np.float64)))
        out.append(z / z.sum())
    return out


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Mean cross-entropy of integer labels: the loss of every search step."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default, so a materialised network normalises alike


def _conv(rng: np.random.Generator, kh: int, kw: int, cin: int, cout: int) -> Params:
    """A conv's weights (HWIO) and its BatchNorm's scale `g` and shift `b`."""
    w = rng.standard_normal((kh, kw, cin, cout)) * math.sqrt(2.0 / (kh * kw * cin))
    return {"w": jnp.asarray(w, jnp.float32), "g": jnp.ones((cout,)), "b": jnp.zeros((cout,))}


def _conv_apply(p: Params, h: jax.Array, stride: int, groups: int = 1) -> jax.Array:
    """NHWC x HWIO convolution with 'same'-style padding k//2 (as the PyTorch models pad),
    then BatchNorm with the batch's statistics."""
    kh, kw = p["w"].shape[:2]
    if groups > 1 and groups == h.shape[-1] == p["w"].shape[-1]:
        y = depthwise_conv(h, p["w"], stride)
    else:
        y = jax.lax.conv_general_dilated(
            h,
            p["w"],
            (stride, stride),
            ((kh // 2, kh // 2), (kw // 2, kw // 2)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
        )
    return batch_norm(y, p["g"], p["b"])


def batch_norm(y: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
    """Per-channel normalisation of NHWC `y` by its own batch mean and (biased) variance, as
    torch's BatchNorm2d computes in training mode."""
    mean = jnp.mean(y, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(y - mean), axis=(0, 1, 2))
    return (y - mean) * (scale * jax.lax.rsqrt(var + BN_EPS)) + shift


def depthwise_conv(h: jax.Array, w: jax.Array, stride: int = 1, dilation: int = 1) -> jax.Array:
    """Depthwise NHWC convolution (w: k x k x 1 x C, padding dilation * (k // 2)) as a sum of
    k*k shifted, per-channel-scaled copies of the input. XLA:CPU runs grouped convolutions,
    and worse their gradients, through a slow generic path (fwd + bwd of a 64x8x8x144 3x3
    layer: 340 ms against 26 ms this way); the sum fuses into one elementwise loop."""
    k = w.shape[0]
    pad = dilation * (k // 2)
    padded = jnp.pad(h, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows, cols = -(-h.shape[1] // stride), -(-h.shape[2] // stride)
    out = None
    for i in range(k):
        for j in range(k):
            tap = jax.lax.slice(
                padded,
                (0, i * dilation, j * dilation, 0),
                (
                    h.shape[0],
                    i * dilation + (rows - 1) * stride + 1,
                    j * dilation + (cols - 1) * stride + 1,
                    h.shape[3],
                ),
                (1, stride, stride, 1),
            )
            term = tap * w[i, j, 0]
            out = term if out is None else out + term
    return out


def _relu6(x: jax.Array) -> jax.Array:
    return jnp.clip(x, 0.0, 6.0)


def to_torch(
    supernet: Supernet, params: Params, indices: Sequence[int], calibration: np.ndarray, batch_size: int = 64
) -> Any:
    """The PyTorch model of the derived architecture (`MobileNetSpace.build`) carrying the
    supernet's weights: convs get the weights, BatchNorms the scale and shift. In training
    mode it computes what `derived_forward` computes. The supernet kept no running
    statistics (every path saw different ones), so they are recalibrated on `calibration`
    (NCHW inputs as the supernet saw them, in batches of `batch_size`): the eval-mode model
    normalises by the derived network's own statistics."""
    import torch
    from torch import nn

    arch = supernet.architecture(indices)
    model = supernet.space.build(arch)

    def load(seq: nn.Sequential, p: Params) -> None:
        conv, bn = seq[0], seq[1]
        w = np.array(p["w"])  # HWIO (depthwise: H, W, 1, C)
        conv.weight.data = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))).float()
        bn.weight.data = torch.from_numpy(np.array(p["g"])).float()
        bn.bias.data = torch.from_numpy(np.array(p["b"])).float()

    modules = list(model.children())
    load(modules[0], params["stem"])
    position = 1
    for b, i in enumerate(indices):
        choice = supernet.choices[b][int(i)]
        if choice.skip:
            continue
        block, p = modules[position], params["blocks"][b][int(i)]
        parts = list(block.body.children())
        if choice.expand != 1:
            load(parts.pop(0), p["expand"])
        load(parts[0], p["dw"])
        load(parts[1], p["project"])
        position += 1
    load(modules[position], params["head"])
    classifier = modules[-1]
    classifier.weight.data = torch.from_numpy(np.array(params["classifier"]["w"]).T.copy()).float()
    classifier.bias.data = torch.from_numpy(np.array(params["classifier"]["b"])).float()
    recalibrate_batch_norms(model, calibration, batch_size)
    return model.eval()


def recalibrate_batch_norms(model: Any, x: np.ndarray, batch_size: int) -> None:
    """Set every BatchNorm's running statistics to their average over `x` in batches of
    `batch_size` (BN recalibration of one-shot NAS); the weights are untouched."""
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size]
            if len(batch) > 1 or start == 0:  # a lone trailing sample has no variance
                model(torch.from_numpy(np.ascontiguousarray(batch, np.float32)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
