"""Per-pass checkpoints, keyed by a content hash of everything upstream, written atomically.

A checkpoint is a sealed pickle (see `adl.ir.seal`: a `Module` holds an arbitrary torch
model, so it can only be a pickle, and a pickle this user's adl did not write is refused before
it is unpickled). Beside the module it records the sha256 of every output file the module names
(`Module.files`: the library, packed weights), so a file changed or truncated since is noticed
when the checkpoint would be reused: the checkpoint is dropped and its pass runs again.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Mapping

from adl.ir import seal
from adl.ir.files import sha256_file
from adl.ir.module import Module
from adl.ir.spec import Spec


class CheckpointStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / "checkpoints" / f"{key[:32]}.pkl"

    def load(self, key: str) -> Module | None:
        """The module saved under `key`, or None; a file that is foreign, unreadable or whose output
        files changed is reported, deleted and treated as absent."""
        path = self.path(key)
        if not path.exists():
            return None
        saved = self._read(path)
        if saved is None:
            return None
        module, digests = saved
        problem = _changed_output(module.files, digests)
        if problem is not None:
            warnings.warn(f"adl: cached output {problem}; rebuilding", stacklevel=2)
            path.unlink(missing_ok=True)
            return None
        return module

    @staticmethod
    def _read(path: Path) -> tuple[Module, dict[str, str]] | None:
        try:
            saved = seal.load(path)
            module, digests = saved["module"], saved["sha256"]
            if not isinstance(module, Module) or not isinstance(digests, dict):
                raise TypeError("not a checkpoint of this adl")
        except seal.BadSeal:
            warnings.warn(f"adl: refusing checkpoint {path}: not written by this user's adl (bad seal)", stacklevel=3)
        except Exception as err:
            warnings.warn(f"adl: ignoring corrupt checkpoint {path} ({type(err).__name__}: {err})", stacklevel=3)
        else:
            return module, digests
        path.unlink(missing_ok=True)
        return None

    def save(self, key: str, module: Module) -> None:
        digests = {path: sha256_file(path) for path in module.files.values()}
        seal.dump({"module": module, "sha256": digests}, self.path(key))


def _changed_output(files: Mapping[str, str], digests: Mapping[str, str]) -> str | None:
    """What is wrong with the first output file that differs from its recorded sha256, or None."""
    for path in files.values():
        if not Path(path).is_file():
            return f"{path} is missing"
        if digests.get(path) != sha256_file(path):
            return f"{path} changed since it was written"
    return None


_NOT_MEANING = ("span", "value_spans", "source", "text")  # where things are written, not what they say


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items() if k not in _NOT_MEANING}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in _NOT_MEANING}
    return value


def spec_fingerprint(spec: Spec) -> str:
    """Hash of what the spec means (not how it is written), pipeline excluded: spans, comments
    and formatting do not change it; every setting does."""
    meaning = _plain(spec)
    meaning.pop("pipeline", None)
    meaning.pop("filename", None)
    return hashlib.sha256(json.dumps(meaning, sort_keys=True, default=str).encode()).hexdigest()


def root_key(spec: Spec, data_fingerprint: str, seed: int, version: str) -> str:
    text = f"{spec_fingerprint(spec)}\n{data_fingerprint}\n{seed}\n{version}"
    return hashlib.sha256(text.encode()).hexdigest()


def model_fingerprint(model: Any) -> str:
    """Hash of a user-supplied torch module: its class and every parameter and buffer (name, dtype,
    shape, bytes), so checkpoints of a pipeline run on one network are never reused for another."""
    import numpy as np

    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, tensor in model.state_dict().items():
        array = np.ascontiguousarray(tensor.detach().cpu().numpy())
        h.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()
