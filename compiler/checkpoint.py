"""Per-pass checkpoints, keyed by a content hash of everything upstream, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import warnings
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from adl.compiler.module import Module
from adl.compiler.spec import Spec


class CheckpointStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / "checkpoints" / f"{key[:32]}.pkl"

    def load(self, key: str) -> Module | None:
        """The module saved under `key`, or None; an unreadable file is reported and ignored."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with path.open("rb") as f:
                module = pickle.load(f)
        except Exception as err:
            warnings.warn(f"adl: ignoring corrupt checkpoint {path} ({type(err).__name__}: {err})", stacklevel=2)
            path.unlink(missing_ok=True)
            return None
        if not isinstance(module, Module) or any(not Path(p).exists() for p in module.files.values()):
            return None  # a checkpoint whose output files were cleaned away is as good as none
        return module

    def save(self, key: str, module: Module) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            pickle.dump(module, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items() if k not in ("span", "source", "text")}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in ("span", "source", "text")}
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
