"""A learned optimizer (Andrychowicz et al. 2016): a coordinatewise LSTM meta-trained in JAX.

`l2o(...)` is the rule as an optax transformation, `L2O` the same rule as a
torch.optim.Optimizer, `load_weights` reads a weights file (default: the shipped one).
"""

from __future__ import annotations

from adl.passes.train.l2o.weights import SHIPPED, L2OWeights, L2OWeightsError, load_weights

__all__ = ["SHIPPED", "L2OWeights", "L2OWeightsError", "load_weights", "l2o", "L2O"]


def __getattr__(name: str):  # the optax and torch halves import their frameworks only when used
    if name == "l2o":
        from adl.passes.train.l2o.rule import l2o

        return l2o
    if name == "L2O":
        from adl.passes.train.l2o.torch_optim import L2O

        return L2O
    raise AttributeError(name)
