"""The DARTS cell space (Liu et al., 2019): a stack of cells, each a small DAG searched per edge.

A cell takes the outputs of the two cells before it (1x1-convolved to its width; a
`factorized reduce` when the older one is at twice the resolution) and computes `nodes`
intermediate nodes, node i = sum over j < i + 2 of op_ij(state_j); its output is the
concatenation of the intermediate nodes. Cells at 1/3 and 2/3 of the stack are reduction
cells (stride 2 on the edges leaving the cell's inputs, twice the channels). All normal cells
share one set of architecture weights, all reduction cells another, so a decision of the
search is an edge of the normal or of the reduction cell, and its candidates are `ops`.

Ops: `sepK` (ReLU, depthwise KxK, pointwise, twice), `dilK` (ReLU, depthwise KxK with
dilation 2, pointwise), `max3`/`avg3` (3x3 pooling; the average ignores the padding), `skip`
(identity, or a factorized reduce on a stride-2 edge) and `none` (zero). As in DARTS, every
convolution is followed by a BatchNorm without scale and shift (affine=False) that
normalises by the statistics of the batch it sees, and so is every pooling (DARTS's MixedOp):
the candidates of an edge then reach the sum at one scale, so the architecture weights, not
the ops' output magnitudes, decide the mixture -- without it the parameter-free ops (pooling,
skip) dominate early and the supernet trains slowly. The PyTorch network (`cell_modules.to_torch`) gets
BatchNorms of scale 1 and shift 0 whose running statistics are recalibrated on training
images, as the MobileNet supernet's are.

The derived cell keeps, per node, the two incoming edges whose strongest op other than
`none` weighs most, each with that op (DARTS's genotype); `indices` hold that op per edge
and `DROPPED` (-1) for the edges not kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from adl.passes.nas import CELL_OPS
from adl.passes.nas.supernet import batch_norm, depthwise_conv, probabilities

Params = dict[str, Any]
DROPPED = -1


@dataclass(frozen=True)
class CellSpace:
    input_shape: tuple[int, int, int]
    classes: int
    nodes: int = 4
    ops: tuple[str, ...] = ("sep3", "sep5", "dil3", "max3", "avg3", "skip", "none")
    cells: int = 3
    channels: int = 8  # of the first cell's nodes; doubled at each reduction
    stem_multiplier: int = 3

    def __post_init__(self) -> None:
        unknown = [op for op in self.ops if op not in CELL_OPS]
        if unknown:
            raise ValueError(f"unknown cell op(s) {', '.join(unknown)}; known: {', '.join(CELL_OPS)}")

    @property
    def reductions(self) -> frozenset[int]:
        return frozenset({self.cells // 3, 2 * self.cells // 3})

    @property
    def edges(self) -> list[tuple[int, int]]:
        """(node, input state) of every edge of a cell; states 0 and 1 are the cell's inputs."""
        return [(i, j) for i in range(self.nodes) for j in range(i + 2)]

    def layout(self) -> list[dict[str, Any]]:
        """Per cell: reduction?, whether the older input is at twice the resolution, channels
        of its inputs and nodes, and its input resolution."""
        c_stem = self.stem_multiplier * self.channels
        c_pp, c_p, c = c_stem, c_stem, self.channels
        h, w = self.input_shape[1:]
        reduced_prev, out = False, []
        for k in range(self.cells):
            reduction = k in self.reductions
            if reduction:
                c *= 2
            out.append(
                {"reduction": reduction, "reduced_prev": reduced_prev, "c_pp": c_pp, "c_p": c_p, "c": c, "hw": (h, w)}
            )
            if reduction:
                h, w = -(-h // 2), -(-w // 2)
            c_pp, c_p, reduced_prev = c_p, self.nodes * c, reduction
        return out

    def __str__(self) -> str:
        return f"cells(nodes={self.nodes}, cells={self.cells}, ops=[{', '.join(self.ops)}])"


@dataclass(frozen=True)
class CellGenotype:
    """The derived normal and reduction cells: per node, its two (input state, op) pairs."""

    normal: tuple[tuple[tuple[int, str], ...], ...]
    reduce: tuple[tuple[tuple[int, str], ...], ...]

    def __str__(self) -> str:
        def cell(nodes):
            return "; ".join(f"n{i + 2}=" + "+".join(f"{op}(s{j})" for j, op in node) for i, node in enumerate(nodes))

        return f"normal[{cell(self.normal)}] reduce[{cell(self.reduce)}]"


# -- JAX ops ---------------------------------------------------------------------------------


def _conv_params(rng: np.random.Generator, k: int, cin: int, cout: int) -> Params:
    w = rng.standard_normal((k, k, cin, cout)) * math.sqrt(2.0 / (k * k * cin))
    return {"w": jnp.asarray(w, jnp.float32)}


def _normalise(y: jax.Array) -> jax.Array:
    """DARTS's BatchNorm(affine=False): the batch's own mean and variance, no scale or shift."""
    return batch_norm(y, 1.0, 0.0)


def _conv(p: Params, h: jax.Array, stride: int = 1, dilation: int = 1, groups: int = 1) -> jax.Array:
    """Convolution (no bias), then `_normalise`."""
    k = p["w"].shape[0]
    if groups > 1:  # depthwise: see `depthwise_conv` for why not a grouped convolution
        return _normalise(depthwise_conv(h, p["w"], stride, dilation))
    pad = dilation * (k // 2)
    y = jax.lax.conv_general_dilated(
        h,
        p["w"],
        (stride, stride),
        ((pad, pad), (pad, pad)),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return _normalise(y)


def _pool(h: jax.Array, kind: str, stride: int) -> jax.Array:
    window, strides, pad = (1, 3, 3, 1), (1, stride, stride, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    if kind == "max":
        return jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, window, strides, pad)
    total = jax.lax.reduce_window(h, 0.0, jax.lax.add, window, strides, pad)
    count = jax.lax.reduce_window(jnp.ones(h.shape[:3] + (1,), h.dtype), 0.0, jax.lax.add, window, strides, pad)
    return total / count


def _factorized_reduce(p: Params, h: jax.Array) -> jax.Array:
    h = jax.nn.relu(h)
    shifted = jnp.pad(h[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
    return jnp.concatenate([_conv(p["a"], h, 2), _conv(p["b"], shifted, 2)], axis=-1)


def _op_params(rng: np.random.Generator, op: str, c: int, stride: int) -> Params:
    if op.startswith("sep"):
        k = int(op[3:])
        return {
            "dw1": _conv_params(rng, k, 1, c),
            "pw1": _conv_params(rng, 1, c, c),
            "dw2": _conv_params(rng, k, 1, c),
            "pw2": _conv_params(rng, 1, c, c),
        }
    if op.startswith("dil"):
        k = int(op[3:])
        return {"dw": _conv_params(rng, k, 1, c), "pw": _conv_params(rng, 1, c, c)}
    if op == "skip" and stride == 2:
        return {"a": _conv_params(rng, 1, c, c // 2), "b": _conv_params(rng, 1, c, c - c // 2)}
    return {}


def _op_apply(op: str, p: Params, h: jax.Array, stride: int) -> jax.Array:
    c = h.shape[-1]
    if op.startswith("sep"):
        h = _conv(p["pw1"], _conv(p["dw1"], jax.nn.relu(h), stride, groups=c))
        return _conv(p["pw2"], _conv(p["dw2"], jax.nn.relu(h), 1, groups=c))
    if op.startswith("dil"):
        return _conv(p["pw"], _conv(p["dw"], jax.nn.relu(h), stride, dilation=2, groups=c))
    if op in ("max3", "avg3"):
        return _normalise(_pool(h, op[:3], stride))
    if op == "skip":
        return h if stride == 1 else _factorized_reduce(p, h)
    # none: zeros of the output's shape
    return jnp.zeros_like(h[:, ::stride, ::stride, :])


@dataclass(frozen=True)
class CellSupernet:
    """Every op on every edge of every cell; mixed per edge by the architecture weights."""

    space: CellSpace
    chain = False  # not a chain of blocks: single-path strategies do not apply

    @property
    def choices(self) -> list[tuple[str, ...]]:
        """One decision per edge of the normal cell, then per edge of the reduction cell."""
        return [self.space.ops] * (2 * len(self.space.edges))

    def _stride(self, reduction: bool, j: int) -> int:
        return 2 if reduction and j < 2 else 1

    def init(self, seed: int) -> Params:
        rng = np.random.default_rng(seed)
        space = self.space
        layout = space.layout()
        params: Params = {
            "stem": _conv_params(rng, 3, space.input_shape[0], space.stem_multiplier * space.channels),
            "cells": [],
        }
        for cell in layout:
            c = cell["c"]
            pre0 = (
                {"a": _conv_params(rng, 1, cell["c_pp"], c // 2), "b": _conv_params(rng, 1, cell["c_pp"], c - c // 2)}
                if cell["reduced_prev"]
                else _conv_params(rng, 1, cell["c_pp"], c)
            )
            edges = [
                [_op_params(rng, op, c, self._stride(cell["reduction"], j)) for op in space.ops] for _, j in space.edges
            ]
            params["cells"].append({"pre0": pre0, "pre1": _conv_params(rng, 1, cell["c_p"], c), "edges": edges})
        last = space.nodes * layout[-1]["c"]
        w = rng.standard_normal((last, space.classes)) * math.sqrt(1.0 / last)
        params["classifier"] = {"w": jnp.asarray(w, jnp.float32), "b": jnp.zeros((space.classes,))}  # no BatchNorm
        return params

    def mixed_forward(self, params: Params, x: jax.Array, weights: Sequence[jax.Array]) -> jax.Array:
        """Logits with edge e of a normal (reduction) cell = sum_o weights[e][o] op_o."""
        space, n_edges = self.space, len(self.space.edges)
        h = _conv(params["stem"], jnp.transpose(x, (0, 2, 3, 1)))
        s_pp, s_p = h, h
        for cell, p in zip(space.layout(), params["cells"]):
            reduction = cell["reduction"]
            cell_weights = weights[n_edges:] if reduction else weights[:n_edges]
            s0 = _factorized_reduce(p["pre0"], s_pp) if cell["reduced_prev"] else _conv(p["pre0"], jax.nn.relu(s_pp))
            states = [s0, _conv(p["pre1"], jax.nn.relu(s_p))]
            e = 0
            for _ in range(space.nodes):
                node = 0.0
                for j in range(len(states)):
                    stride = self._stride(reduction, j)
                    node = node + sum(
                        cell_weights[e][o] * _op_apply(op, p["edges"][e][o], states[j], stride)
                        for o, op in enumerate(space.ops)
                    )
                    e += 1
                states.append(node)
            s_pp, s_p = s_p, jnp.concatenate(states[2:], axis=-1)
        return jnp.mean(s_p, axis=(1, 2)) @ params["classifier"]["w"] + params["classifier"]["b"]

    def derive(self, alphas: Sequence[Any]) -> list[int]:
        """DARTS's rule: per node the two incoming edges with the strongest non-`none` op."""
        ops, n_edges = self.space.ops, len(self.space.edges)
        indices: list[int] = []
        for cell_alphas in (alphas[:n_edges], alphas[n_edges:]):
            probs = probabilities(cell_alphas)
            best = [
                max((o for o in range(len(ops)) if ops[o] != "none"), key=lambda o: p[o], default=DROPPED)
                for p in probs
            ]
            chosen = [DROPPED] * n_edges
            start = 0
            for i in range(self.space.nodes):
                incoming = range(start, start + i + 2)
                ranked = sorted((e for e in incoming if best[e] != DROPPED), key=lambda e: -probs[e][best[e]])
                for e in ranked[:2]:
                    chosen[e] = best[e]
                start += i + 2
            indices += chosen
        return indices

    def derived_weights(self, indices: Sequence[int]) -> list[jax.Array]:
        """One-hot weights of a derived network (all zero on dropped edges) for `mixed_forward`."""
        return [
            jnp.zeros(len(self.space.ops)) if i == DROPPED else jax.nn.one_hot(i, len(self.space.ops)) for i in indices
        ]

    def architecture(self, indices: Sequence[int]) -> CellGenotype:
        n_edges, cells = len(self.space.edges), []
        for part in (indices[:n_edges], indices[n_edges:]):
            nodes, e = [], 0
            for i in range(self.space.nodes):
                nodes.append(tuple((j, self.space.ops[part[e + j]]) for j in range(i + 2) if part[e + j] != DROPPED))
                e += i + 2
            cells.append(tuple(nodes))
        return CellGenotype(*cells)
