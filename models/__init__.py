"""Model families a spec can name in its `model` block (PyTorch). Imports nothing else of adl."""

from adl.models.zoo import Normalize, build_model

__all__ = ["Normalize", "build_model"]
