"""The resumable state of a pass's search: a JSON file written once the search is done.

A search pass (`amc`, `haq`) spends most of its time searching a policy and then fine-tunes the
network it chose. It saves the search's outcome in its state folder (`PassContext.state_dir()`)
so that a compile killed during fine-tuning resumes without searching again.

The file holds the state's own fields and, beside them, `KEY_FIELD`: a key naming the search that
wrote it (`search_key`: the pass's checkpoint key and its search configuration). A state is only
reused by a search with the same key; any other state is ignored, and so is a file that is not
valid JSON (with a warning), as if there were none -- the search then runs again and overwrites it.
The file is replaced atomically (`adl.ir.files`), so a kill never leaves half of one.

Only the standard library and `adl.ir.files`: every layer above `adl/ir` may import this module.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Mapping

from adl.ir.files import PathLike, atomic_write_text

KEY_FIELD = "search_key"


def search_key(*parts: Any) -> str:
    """A digest of JSON-serialisable `parts` (e.g. a checkpoint key and a configuration's fields);
    the same for equal parts in every process (mapping keys sorted)."""
    text = json.dumps(list(parts), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_search_state(folder: PathLike, name: str, key: str, state: Mapping[str, Any]) -> Path:
    """Write `state` (JSON-serialisable, without a `KEY_FIELD` entry) as `folder/name` under `key`,
    atomically; returns the file's path."""
    if KEY_FIELD in state:
        raise ValueError(f"a search state may not have a '{KEY_FIELD}' field: it holds the state's key")
    path = Path(folder) / name
    atomic_write_text(path, json.dumps({**state, KEY_FIELD: key}))
    return path


def load_search_state(folder: PathLike, name: str, key: str) -> dict[str, Any] | None:
    """The state saved as `folder/name` under `key` (without its `KEY_FIELD`); None if there is none,
    it was saved under another key (or none), or the file is not a JSON object (with a warning)."""
    path = Path(folder) / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        saved = json.loads(data)
    except ValueError as err:  # includes UnicodeDecodeError: a truncated or overwritten file
        warnings.warn(f"adl: ignoring unreadable search state {path} ({type(err).__name__}: {err})", stacklevel=2)
        return None
    if not isinstance(saved, dict):
        warnings.warn(f"adl: ignoring search state {path}: not a JSON object", stacklevel=2)
        return None
    if saved.pop(KEY_FIELD, None) != key:
        return None
    return saved
