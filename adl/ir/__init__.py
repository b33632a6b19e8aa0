"""The IR and the contracts every layer above shares: the typed `Spec`, options and units,
`Module`, `LayerDesc`, the `Pass` contract and its registry, report sections, and the file
helpers (atomic writes, sealed pickles, resumable search state).

Imports only `adl.dsl` and the standard library at module level (torch lazily, inside the
functions that describe a network), so `adl check` stays fast. See docs/architecture.md.
"""

ADL_VERSION = "0.1.0"  # keys checkpoints and caches; the distribution's version (pyproject.toml)
