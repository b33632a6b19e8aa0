"""The driver: checks a spec, runs its pass pipeline with checkpoints, checks the budgets on
what was built, and writes the artifact (manifest, reports). The one layer that imports every
layer below it (see docs/architecture.md); `adl` (API, CLI) sits on top of it.
"""
