"""The benches are scripts in bench/, not a package: each imports its siblings (`common`,
`provenance`) by plain name, as `python bench/NAME.py` lets it. These tests import them the
same way, so bench/ goes on the import path for them."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parents[2] / "bench")
if BENCH not in sys.path:
    sys.path.append(BENCH)
