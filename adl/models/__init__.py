"""Model families a spec can name in its `model` block (PyTorch), their option schemas
(`families`), the search-space geometry, the integer graph and BatchNorm folding. Imports only
`adl.ir` of adl (layer descriptions, options): the layers above (passes, backends) build on it.

`Normalize` and `build_model` are loaded on first use, so that torch-free parts of the
package (the search-space geometry in `space`, `widths`) import without torch.
"""

from typing import Any

__all__ = ["Normalize", "build_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from adl.models import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module 'adl.models' has no attribute {name!r}")
