"""Backends of adl: lowering a trained model to a deployable library, and running it.

- :mod:`adl.backends.tvm` lowers a ``torch.nn.Module`` through Apache TVM (Relax) to a shared
  library (needs torch and tvm).
- :mod:`adl.backends.runtime` loads and runs such a library with the TVM runtime only (numpy and
  tvm; it never imports torch).

This package module imports nothing heavy on purpose.
"""
