"""Sealed pickles: cache files that only this user's adl can have written.

Why pickles at all: a checkpoint holds a whole `Module`, whose model is any `torch.nn.Module`
(the model families, NAS networks, HAQ's quantized layers, a user's own network) or a
`torch.fx.GraphModule` (after AMC), and a GraphModule's own unpickling exec()s the Python code
it generated; no data-only format round-trips them all. The NAS search state (optax states)
and the L2O meta-training state are pickles for the same reason.

Why sealed: unpickling runs code, and a cache is a folder on disk (with ``-o /tmp/x`` it is
``/tmp/.adl-cache``). So every pickle adl writes carries an HMAC-SHA256 of its bytes under a
per-user secret key, and a file whose seal does not verify is refused before a byte of it is
unpickled (`BadSeal`): a planted file is never run, only recomputed.

The key: 32 random bytes in ``cache.key`` under ``$ADL_KEY_DIR``, else ``$XDG_CONFIG_HOME/adl``,
else ``~/.config/adl``; created 0600 in a 0700 folder, used only if this user owns both and no one
else can read the key or write the folder (`UnsafeKey` otherwise).

File format: `MAGIC`, the 32-byte tag HMAC(key, MAGIC + payload), the pickled payload.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import pickle
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

from adl.ir.files import PathLike, UnsafeDirectory, atomic_write_bytes, check_private, fsync_file

MAGIC = b"adl sealed pickle 1\n"
KEY_FILE, KEY_BYTES, TAG_BYTES = "cache.key", 32, 32

_keys: dict[str, bytes] = {}
_keys_guard = threading.Lock()


class BadSeal(Exception):
    """A sealed file that this user's adl did not write (or that changed since)."""


class UnsafeKey(Exception):
    """The secret key's file or folder is not private to this user."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def key_dir() -> Path:
    if os.environ.get("ADL_KEY_DIR"):
        return Path(os.environ["ADL_KEY_DIR"])
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "adl"


def secret_key() -> bytes:
    """This user's key (created on first use); raises `UnsafeKey` if it is not private."""
    path = key_dir() / KEY_FILE
    with _keys_guard:
        if str(path) not in _keys:
            _keys[str(path)] = _read_or_create(path)
        return _keys[str(path)]


def _read_or_create(path: Path) -> bytes:
    folder = path.parent
    folder.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    try:
        check_private(folder)
    except UnsafeDirectory as err:
        raise UnsafeKey(err.path, f"the folder of adl's cache key {err.reason}") from None
    if not os.path.lexists(path):
        _create(path)
    return _read(path)


def _create(path: Path) -> None:
    """Write a new key; of two processes creating it at once, the first link wins."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(KEY_BYTES))
        fsync_file(tmp)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _read(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as err:
        raise UnsafeKey(path, f"cannot read adl's cache key ({err.strerror}); delete it (a new one is made)") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise UnsafeKey(path, "adl's cache key is not a file of yours; delete it (a new one is made)")
        if st.st_mode & 0o077:
            raise UnsafeKey(
                path,
                f"adl's cache key is readable by other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}), who could forge cache files; delete it "
                "(a new one is made)",
            )
        key = f.read()
    if len(key) != KEY_BYTES:
        raise UnsafeKey(path, f"adl's cache key is {len(key)} bytes, not {KEY_BYTES}; delete it (a new one is made)")
    return key


def seal(payload: bytes) -> bytes:
    return MAGIC + hmac.digest(secret_key(), MAGIC + payload, "sha256") + payload


def unseal(blob: bytes) -> bytes:
    """The payload of a sealed `blob`; `BadSeal` unless this user's key sealed exactly these bytes."""
    head = len(MAGIC) + TAG_BYTES
    if len(blob) < head or not blob.startswith(MAGIC):
        raise BadSeal("not a sealed adl file")
    tag, payload = blob[len(MAGIC) : head], blob[head:]
    if not hmac.compare_digest(tag, hmac.digest(secret_key(), MAGIC + payload, "sha256")):
        raise BadSeal("its seal does not match this user's key")
    return payload


def dump(obj: Any, path: PathLike) -> None:
    """Pickle `obj` to `path`, sealed, atomically, readable by this user only."""
    atomic_write_bytes(path, seal(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)), mode=0o600)


def load(path: PathLike) -> Any:
    """Unpickle a sealed file; `BadSeal` (before anything is unpickled) if this user's adl did not write it."""
    return pickle.loads(unseal(Path(path).read_bytes()))
