"""The learned optimizer's weights: a coordinatewise two-layer LSTM, its preprocessing constant and output scale.

Stored as a small `.npz` (numpy arrays only, no pickles). The shipped file, produced by
`python -m adl.passes.train.l2o.meta_train` (see docs/l2o.md), lies next to this module.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from adl.ir.files import atomic_path
from adl.ir.passes import PassError

SHIPPED = Path(__file__).with_name("weights.npz")
FORMAT_VERSION = 2  # 1: one additive output (the paper's); 2: direction and log-magnitude outputs
LAYERS = 2
INPUTS = 2  # the paper's preprocessing: (log-magnitude, sign) or (-1, e^p * g)
OUTPUTS = 2  # direction d and log-magnitude s of the update d * exp(s) (rule.py)
LOG_MAGNITUDE_RANGE = (-20.0, 5.0)  # s is clipped to this: exp(s) from 2e-9 to 148
# name -> shape as a function of the hidden size h; gate order i, f, g, o
_SHAPES = {
    "l0_wx": lambda h: (INPUTS, 4 * h),
    "l0_wh": lambda h: (h, 4 * h),
    "l0_b": lambda h: (4 * h,),
    "l1_wx": lambda h: (h, 4 * h),
    "l1_wh": lambda h: (h, 4 * h),
    "l1_b": lambda h: (4 * h,),
    "out_w": lambda h: (h, OUTPUTS),
    "out_b": lambda h: (OUTPUTS,),
}
ARRAYS = tuple(_SHAPES)


class L2OWeightsError(PassError):
    """A weights file that is missing, unreadable or not an L2O weights file; names the path."""


@dataclass(frozen=True)
class L2OWeights:
    """The LSTM's arrays (float32, by name in `ARRAYS`), the cut-off `p` and the output scale."""

    arrays: Mapping[str, np.ndarray]
    p: float = 10.0
    output_scale: float = 0.1

    @property
    def hidden(self) -> int:
        return int(self.arrays["l0_wh"].shape[0])

    def as_jax(self) -> dict:
        import jax.numpy as jnp

        return {name: jnp.asarray(self.arrays[name]) for name in ARRAYS}


def init_weights(seed: int, hidden: int = 20, p: float = 10.0, output_scale: float = 0.1) -> L2OWeights:
    """A fresh LSTM: uniform(-1/sqrt(h), 1/sqrt(h)) as torch's nn.LSTM, forget-gate bias 1, a small output layer."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(hidden)
    arrays = {name: rng.uniform(-bound, bound, shape(hidden)).astype(np.float32) for name, shape in _SHAPES.items()}
    for layer in range(LAYERS):
        arrays[f"l{layer}_b"][hidden : 2 * hidden] += 1.0  # remember by default
    arrays["out_w"] *= 0.1  # start with small steps, so the first unrolls do not diverge
    arrays["out_b"][:] = 0.0  # and a magnitude factor exp(0) = 1
    return L2OWeights(arrays, p=p, output_scale=output_scale)


def save_weights(weights: L2OWeights, path: str | os.PathLike[str]) -> None:
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:  # a file: savez adds no ".npz" to its name
        np.savez(
            f,
            format_version=np.int64(FORMAT_VERSION),
            p=np.float64(weights.p),
            output_scale=np.float64(weights.output_scale),
            **{name: np.asarray(weights.arrays[name], np.float32) for name in ARRAYS},
        )


def load_weights(path: str | os.PathLike[str] | None = None) -> L2OWeights:
    """Read a weights file (default: the shipped one); raise L2OWeightsError naming the path if it is unusable."""
    path = Path(os.path.expanduser(os.fspath(path))) if path else SHIPPED
    what = f"l2o weights file '{path}'"
    if not path.exists():
        raise L2OWeightsError(f"{what} does not exist")
    if not path.is_file():
        raise L2OWeightsError(f"{what} is not a file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise L2OWeightsError(f"{what} is not a valid .npz ({err})") from None
    missing = [name for name in (*ARRAYS, "p", "output_scale", "format_version") if name not in contents]
    if missing:
        raise L2OWeightsError(f"{what} lacks {', '.join(missing)}: not written by the l2o meta-training")
    if int(contents["format_version"]) != FORMAT_VERSION:
        raise L2OWeightsError(
            f"{what} has format version {int(contents['format_version'])}, "
            f"this adl reads version {FORMAT_VERSION}; meta-train new weights "
            "(adl l2o meta-train, docs/l2o.md)"
        )
    hidden = contents["l0_wh"].shape[0] if contents["l0_wh"].ndim == 2 else -1
    for name, shape in _SHAPES.items():
        if contents[name].shape != shape(hidden):
            raise L2OWeightsError(
                f"{what}: array '{name}' has shape {contents[name].shape}, "
                f"expected {shape(hidden)} for hidden size {hidden}"
            )
        if not np.all(np.isfinite(contents[name])):
            raise L2OWeightsError(f"{what}: array '{name}' holds NaN or infinite values")
    p, scale = float(contents["p"]), float(contents["output_scale"])
    if not (np.isfinite(p) and p > 0 and np.isfinite(scale) and scale > 0):
        raise L2OWeightsError(f"{what}: p and output_scale must be positive, got p={p}, output_scale={scale}")
    return L2OWeights({name: contents[name].astype(np.float32) for name in ARRAYS}, p=p, output_scale=scale)
