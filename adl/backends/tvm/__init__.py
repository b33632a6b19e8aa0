"""Lowering a PyTorch model through Apache TVM (Relax) to a shared library.

Importing this package is cheap: torch and tvm are imported only when a build starts.
"""

from .build import BuildInfo, LoweringError, build_library, max_abs_difference

__all__ = ["BuildInfo", "LoweringError", "build_library", "max_abs_difference"]
