"""Where compiled TVM code runs and is timed: this machine, or a device reached through TVM RPC.

A :class:`DeviceSession` loads a compiled library on its side, makes tensors on its device,
sets the TVM thread pool there, and is what :func:`library_latency` (a whole adl library, Relax
VM ``main``) and :func:`kernel_latency` (one TIR PrimFunc) time on. :func:`local_session` is this
process; :func:`rpc_session` is a device running TVM's RPC server, reached directly or through an
RPC tracker::

    # on the device (needs the TVM runtime, not torch):
    #   python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190          (anywhere reachable)
    #   python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090 --tracker HOST:9190 --key board
    with rpc_session("HOST:9190", key="board") as session:
        stats = library_latency(session, Path("model.so"), (1, 1, 8, 8), threads=4)

Behaviour of TVM's RPC (0.27) worth knowing:

* An RPC server serves one session at a time. A second client connecting directly gets no answer
  until the first session ends; through a tracker, requests queue until a server with the key is
  free. A session ends when the client's last reference to it (and to every remote module or
  tensor made through it) is gone: :meth:`DeviceSession.close` drops the session's own references
  (and collects garbage), so drop remote modules and tensors before closing.
* Remote threads: each session is a fresh process forked by the server, whose TVM pool size is
  capped by the server's ``TVM_NUM_THREADS`` (TVM's own default when unset);
  :meth:`DeviceSession.set_threads` then picks how many of those workers kernels use.
* TVM's own tracker client retries a refused connection for 60 s and waits forever for a key no
  server has, and its connect has no timeout (it hangs on a busy server or an unreachable host);
  :func:`rpc_session` instead fails within ``timeout_s`` with a :class:`RemoteError`.

This module never imports torch (see :func:`adl.backends.runtime._import_tvm`), and imports TVM
only when a session is opened.
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import socket
import struct
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from adl.backends.runtime import LatencyStats, _first_line, _import_tvm
from adl.ir.spec import available_cores

__all__ = [
    "DeviceSession",
    "LatencyStats",
    "RemoteError",
    "kernel_latency",
    "library_latency",
    "local_session",
    "parse_address",
    "rpc_session",
]

# threading::ThreadGroup::AffinityMode::kBig (all cores are "big" on a homogeneous CPU).
_AFFINITY_BIG = 1
# Upper bound on the calls per timed batch that kernel_latency picks.
_MAX_NUMBER = 10_000_000


class RemoteError(RuntimeError):
    """A device could not be reached or used through TVM RPC; the message says what to check."""


def parse_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9190"`` -> ``("127.0.0.1", 9190)``; ``"[::1]:9190"`` -> ``("::1", 9190)``.

    Raises ValueError for anything that is not ``HOST:PORT`` with a port in 1..65535.
    """
    expected = f"expected an address HOST:PORT (e.g. 127.0.0.1:9190), got {text!r}"
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(expected)
    host, _, port_text = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{expected}: the host is missing")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{expected}: {port_text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{expected}: port {port} is outside 1..65535")
    return host, port


class DeviceSession:
    """Where compiled code runs: this process (:func:`local_session`) or a device over RPC
    (:func:`rpc_session`). Usable as a context manager, which closes it.

    Attributes
    ----------
    where:
        ``"local"``, or ``"rpc://HOST:PORT"`` (the server) / ``"rpc://HOST:PORT key=KEY"`` (the
        tracker and the key the device was requested with).
    device:
        The TVM device kernels run on: ``tvm.cpu(0)`` or the remote ``cpu(0)``.
    """

    where: str
    device: Any

    def __init__(self, where: str, device: Any):
        self.where = where
        self.device = device
        self._tvm = _import_tvm()
        self._closed = False

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return f"{type(self).__name__}({self.where!r}{state})"

    def __enter__(self) -> DeviceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what subclasses provide -------------------------------------------------------------

    def _global_function(self, name: str) -> Any:
        raise NotImplementedError

    def _load(self, path: Path) -> Any:
        raise NotImplementedError

    # -- the session API ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RemoteError(f"the device session {self.where} is closed")

    def load_module(self, path: str | Path) -> Any:
        """Load a shared library exported by TVM (``export_library``) on this session's side and
        return the (possibly remote) ``tvm.runtime.Module``; over RPC the file is uploaded first."""
        self._check_open()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no compiled library at {path}")
        return self._load(path)

    def set_threads(self, n: int | None) -> None:
        """Make kernels on this session's side use ``n`` threads (``runtime.config_threadpool``
        there); ``None`` leaves the runtime's setting alone.

        Locally the setting applies to the calling thread's pool (TVM pools are per thread); over
        RPC, to the session's server process. If the pool has fewer workers than ``n`` (capped by
        ``TVM_NUM_THREADS`` on that side when the pool was created) a RuntimeWarning says so.
        """
        if n is None:
            return
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"threads must be a positive int or None, got {n!r}")
        self._check_open()
        self._prepare_threads(n)
        self._global_function("runtime.config_threadpool")(_AFFINITY_BIG, n)
        actual = self.num_threads()
        if actual != n:
            warnings.warn(
                f"TVM on {self.where} uses {actual} threads, not the {n} requested: its thread pool "
                f"has {actual} workers (set TVM_NUM_THREADS >= {n} where the kernels run, before "
                f"TVM's first use there)",
                RuntimeWarning,
                stacklevel=2,
            )

    def _prepare_threads(self, n: int) -> None:
        """Hook run before config_threadpool (the local session sizes the pool here)."""

    def num_threads(self) -> int:
        """Threads TVM kernels use on this session's side now (``runtime.NumThreads`` there)."""
        self._check_open()
        return int(self._global_function("runtime.NumThreads")())

    def tensor(self, array: np.ndarray) -> Any:
        """A copy of ``array`` as a TVM tensor on this session's device."""
        self._check_open()
        return self._tvm.runtime.tensor(np.ascontiguousarray(array), self.device)

    def run_library(self, library_path: str | Path, x: np.ndarray) -> np.ndarray:
        """Run the ``main`` of an adl library (a Relax VM library, batch 1) on each sample of
        ``x`` (batch axis first, e.g. ``(N, 1, 8, 8)``) on this session's side; return the
        first outputs stacked, e.g. ``(N, classes)`` for an adl library's logits.

        Uses the VM's stateful API (``set_input``, ``invoke_stateful``, ``get_output``), which
        works over RPC for functions that return tuples; the library is loaded once.
        """
        vm = self._vm(library_path)
        batch = np.asarray(x)
        outputs = []
        for i in range(batch.shape[0]):
            vm.set_input("main", self.tensor(batch[i : i + 1]))
            vm.invoke_stateful("main")
            # Not vm.get_outputs: its recursive closure makes a reference cycle that keeps the VM,
            # and with it an RPC session, alive until the next garbage collection.
            index: list[int] = []
            while vm["get_output_arity"]("main", *index) >= 0:  # a tuple: take its first field
                index.append(0)
            out = vm["get_output"]("main", *index).numpy()
            outputs.append(out[0] if out.ndim >= 1 and out.shape[0] == 1 else out)
        return np.stack(outputs) if outputs else np.empty((0,), np.float32)

    def _vm(self, library_path: str | Path) -> Any:
        module = self.load_module(library_path)
        try:
            return self._tvm.runtime.vm.VirtualMachine(module, self.device)
        except Exception as exc:
            raise RuntimeError(
                f"cannot start the Relax VM for {Path(library_path).name} on {self.where}: {_first_line(exc)}"
            ) from exc

    def close(self) -> None:
        """Drop this session's references to TVM. Over RPC the connection closes once no remote
        module or tensor made through the session is referenced any more."""
        self._closed = True


class _LocalSession(DeviceSession):
    def __init__(self) -> None:
        super().__init__("local", None)
        self.device = self._tvm.cpu(0)

    def _global_function(self, name: str) -> Any:
        return self._tvm.get_global_func(name)

    def _prepare_threads(self, n: int) -> None:
        # A pool reads TVM_NUM_THREADS once, when it is created, and caps the usable workers.
        os.environ.setdefault("TVM_NUM_THREADS", str(max(n, available_cores())))

    def _load(self, path: Path) -> Any:
        try:
            return self._tvm.runtime.load_module(str(path))
        except Exception as exc:
            raise RuntimeError(f"cannot load {path}: {_first_line(exc)}") from exc


class _RpcSession(DeviceSession):
    def __init__(self, where: str, rpc: Any):
        super().__init__(where, None)
        self._rpc = rpc
        self.device = rpc.cpu(0)
        self._uploaded: set[str] = set()

    def _global_function(self, name: str) -> Any:
        try:
            return self._rpc.get_function(name)
        except Exception as exc:
            raise RemoteError(
                f"{self.where}: the device's TVM runtime has no function {name}: {_first_line(exc)}"
            ) from exc

    def _load(self, path: Path) -> Any:
        # The remote name carries a content hash: the server's dlopen would return a library
        # already loaded under the same path, so a rebuilt "model.so" needs a new name.
        data = path.read_bytes()
        name = f"{path.stem}-{hashlib.sha1(data).hexdigest()[:12]}{path.suffix or '.so'}"
        try:
            if name not in self._uploaded:
                self._rpc.upload(bytearray(data), target=name)
                self._uploaded.add(name)
            return self._rpc.load_module(name)
        except Exception as exc:
            raise RemoteError(
                f"cannot load {path.name} on {self.where}: {_first_line(exc)} "
                f"(was it built for that device's target, and does its TVM runtime match?)"
            ) from exc

    def close(self) -> None:
        super().close()
        self._rpc = None
        self.device = None
        gc.collect()  # remote objects caught in reference cycles would keep the session open


def local_session() -> DeviceSession:
    """A session on this machine (``tvm.cpu(0)`` in this process)."""
    return _LocalSession()


def _server_hint(port: int | str = 9090, tracker: str | None = None, key: str | None = None) -> str:
    command = f"python -m tvm.exec.rpc_server --host 0.0.0.0 --port {port}"
    if tracker:
        command += f" --tracker {tracker} --key {key}"
    return f"is `{command}` running on the device?"


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.timeout):
        return "no answer"
    return exc.strerror or str(exc) or type(exc).__name__


class _NotAServer(Exception):
    pass


def _probe_server(host: str, port: int, timeout_s: float) -> None:
    """Check within ``timeout_s`` that a TVM RPC server at ``host:port`` is free to take a session.

    TVM's C++ connect has no timeout: it hangs on an unreachable host, and on a server busy with
    another session (servers take one at a time) until that session ends. So first send the RPC
    handshake with a key no server expects: a free server answers "mismatch" at once and goes on
    waiting (logging a "mismatch key" warning), keeping any key a tracker handed out valid; a busy
    one answers only after its session. (A client that takes the server between this probe and
    the connect still makes the connect wait for its session.) Raises OSError (``socket.timeout``
    when there is no answer in time), or _NotAServer.
    """
    from tvm.rpc import base

    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        probe_key = b"client:adl-probe"
        sock.sendall(struct.pack("<ii", base.RPC_MAGIC, len(probe_key)) + probe_key)
        try:
            code = struct.unpack("<i", base.recvall(sock, 4))[0]
        except socket.timeout:
            raise
        except OSError as exc:  # closed on us: the peer does not speak the RPC protocol
            raise _NotAServer(_reason(exc)) from exc
    if code not in (base.RPC_CODE_MISMATCH, base.RPC_CODE_SUCCESS, base.RPC_CODE_DUPLICATE):
        raise _NotAServer(f"unexpected handshake answer {code:#x}")


def _tracker_call(host: str, port: int, message: list, timeout_s: float) -> Any:
    """One request/answer with a TVM RPC tracker on a fresh connection, each step within
    ``timeout_s``. Raises OSError (``socket.timeout`` included) or _NotAServer."""
    from tvm.rpc import base

    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        try:
            magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        except socket.timeout:
            raise
        except OSError as exc:
            raise _NotAServer(_reason(exc)) from exc
        if magic != base.RPC_TRACKER_MAGIC:
            raise _NotAServer("wrong handshake")
        base.sendjson(sock, message)
        try:
            return base.recvjson(sock)
        except ValueError as exc:  # not JSON
            raise _NotAServer(_first_line(exc)) from exc


def _no_device_message(host: str, port: int, key: str, timeout_s: float) -> str:
    """Why a request for ``key`` timed out, from the tracker's summary: no such device, or all busy."""
    from tvm.rpc import base

    tracker = f"{host}:{port}"
    try:
        servers = _tracker_call(host, port, [base.TrackerCode.SUMMARY], 2.0)[1]["server_info"]
        keys = [str(item["key"]).removeprefix("server:") for item in servers]
    except Exception:  # the summary only refines the message
        keys = None
    if keys and key in keys:
        return (
            f"the {keys.count(key)} device(s) with key {key!r} at the TVM RPC tracker {tracker} stayed busy "
            f"for {timeout_s:g} s (another client is using them): retry later or allow a longer timeout"
        )
    known = "unknown" if keys is None else (", ".join(sorted(set(keys))) or "none")
    return (
        f"no device with key {key!r} is registered at the TVM RPC tracker {tracker} (waited {timeout_s:g} s; "
        f"registered keys: {known}): {_server_hint(tracker=tracker, key=key)}"
    )


def rpc_session(
    address: str,
    key: str | None = None,
    *,
    timeout_s: float = 60.0,
    session_timeout_s: float | None = None,
) -> DeviceSession:
    """A session on a device running TVM's RPC server.

    ``address`` is ``HOST:PORT``. With ``key`` it is an RPC *tracker*, and a device registered
    there with that key is requested (waiting while all such devices are busy); without, it is
    the RPC server itself. ``timeout_s`` bounds reaching the tracker or server, waiting for a free
    device, and checking that it answers. ``session_timeout_s`` (default: none) makes the server
    end the session after that many seconds, whatever it is doing.

    Raises :class:`RemoteError` (naming the address, the key and what to check) when no session
    could be opened in time; a refused connection fails at once.
    """
    host, port = parse_address(address)
    if key is not None and (not isinstance(key, str) or not key or any(c.isspace() for c in key)):
        raise ValueError(f"key must be a non-empty string without spaces, got {key!r}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    _import_tvm()  # tvm.rpc needs tvm, imported without torch
    from tvm import rpc
    from tvm.rpc import base

    deadline = time.monotonic() + timeout_s

    def left() -> float:
        return max(deadline - time.monotonic(), 0.01)

    tracker = f"{host}:{port}"
    if key is None:
        where, device_host, device_port, matchkey = f"rpc://{tracker}", host, port, ""
    else:
        where = f"rpc://{tracker} key={key}"
        try:
            answer = _tracker_call(host, port, [base.TrackerCode.REQUEST, key, "", 1], left())
        except socket.timeout:
            raise RemoteError(_no_device_message(host, port, key, timeout_s)) from None
        except OSError as exc:
            raise RemoteError(
                f"cannot reach the TVM RPC tracker at {tracker} ({_reason(exc)}) to request key {key!r}: "
                f"is `python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {port}` running there?"
            ) from exc
        except _NotAServer as exc:
            raise RemoteError(f"{tracker} is not a TVM RPC tracker ({exc}); requested key {key!r}") from exc
        if not (isinstance(answer, list) and len(answer) == 2 and answer[0] == base.TrackerCode.SUCCESS):
            raise RemoteError(f"the TVM RPC tracker at {tracker} refused the request for key {key!r}: {answer!r}")
        device_host, device_port, matchkey = answer[1][0], int(answer[1][1]), answer[1][2]

    # Who we talk to, for messages: the server, or the device the tracker handed out.
    server = (
        f"the TVM RPC server at {tracker}"
        if key is None
        else f"the device with key {key!r} at {device_host}:{device_port} (handed out by the tracker {tracker})"
    )
    try:
        _probe_server(device_host, device_port, left())
    except socket.timeout:
        busy = "it serves one session at a time: is another client using it? " if key is None else ""
        raise RemoteError(
            f"{server} did not answer within {timeout_s:g} s: {busy}{_server_hint(device_port)}"
        ) from None
    except OSError as exc:
        hint = (
            _server_hint(port)
            if key is None
            else "is that address reachable from here? (rpc_server --custom-addr sets it)"
        )
        raise RemoteError(f"cannot connect to {server} ({_reason(exc)}): {hint}") from exc
    except _NotAServer as exc:
        raise RemoteError(
            f"{device_host}:{device_port} is not a TVM RPC server ({exc}): {_server_hint(device_port)}"
        ) from exc
    try:
        session = rpc.connect(device_host, device_port, matchkey, session_timeout=session_timeout_s or 0)
    except Exception as exc:  # TVM raises its own error types
        hint = (
            " (a server started with --tracker takes only sessions its tracker hands out: pass the "
            "tracker's address and the key)"
            if key is None
            else ""
        )
        raise RemoteError(f"{server} refused the session: {_first_line(exc)}{hint}") from exc
    return _RpcSession(where, session)


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be a {kind} int, got {value!r}")
    return value


def library_latency(
    session: DeviceSession,
    library_path: str | Path,
    input_shape: tuple[int, ...],
    *,
    threads: int | None,
    repeats: int = 50,
    warmup: int = 10,
    input_dtype: str = "float32",
) -> LatencyStats:
    """Latency of one call of ``main`` of an adl library (Relax VM) on ``session``'s side.

    Loads the library there, starts the VM, sets ``threads`` (``None``: leave alone), sets a
    random input of ``input_shape``, runs ``warmup`` untimed calls, then times ``repeats`` runs
    of one call each with the VM's ``time_evaluator`` (on the device: no network in the timings).
    The statistics are over those runs, as :meth:`adl.backends.runtime.CompiledLibrary.latency`.
    """
    _positive_int("repeats", repeats)
    _positive_int("warmup", warmup, minimum=0)
    shape = tuple(int(d) for d in input_shape)
    dtype = np.dtype(input_dtype)
    vm = session._vm(Path(library_path))
    session.set_threads(threads)
    rng = np.random.default_rng(0)
    if dtype.kind == "f":
        sample = rng.standard_normal(shape).astype(dtype)
    else:
        sample = rng.integers(0, 2, size=shape).astype(dtype)
    try:
        # The stateful API, as TVM advises for RPC: timing "main" itself would send its output
        # (a tuple) back to the caller, which TVM documents as possibly failing over RPC.
        vm.set_input("main", session.tensor(sample))
        for _ in range(warmup):
            vm.invoke_stateful("main")
        timer = vm.time_evaluator("invoke_stateful", session.device, number=1, repeat=repeats)
        results = list(timer("main").results)
    except Exception as exc:
        name = Path(library_path).name
        raise RuntimeError(f"timing {name} on {session.where} failed: {_first_line(exc)}") from exc
    return LatencyStats.of(results)


def kernel_latency(
    session: DeviceSession,
    module: Any,
    name: str,
    args: list,
    *,
    repeats: int,
    min_batch_s: float = 1e-4,
) -> float:
    """Median seconds of one call of the PrimFunc ``name`` of ``module`` (loaded with
    ``session.load_module``) on ``args`` (tensors on ``session.device``).

    Each of the ``repeats`` timed runs makes ``number`` back-to-back calls and reports their mean;
    ``number`` is found by short probes so that one run lasts at least ``min_batch_s``, or tiny
    kernels would measure the timer's overhead.
    """
    _positive_int("repeats", repeats)
    if not min_batch_s >= 0:
        raise ValueError(f"min_batch_s must be >= 0, got {min_batch_s!r}")
    device = session.device

    def per_call(number: int, repeat: int) -> list[float]:
        timer = module.time_evaluator(name, device, number=number, repeat=repeat)
        return [float(r) for r in timer(*args).results]

    try:
        number = 1
        for _ in range(12):
            probe = per_call(number, 1)[0]
            if probe * number >= min_batch_s or number >= _MAX_NUMBER:
                break
            wanted = math.ceil(1.2 * min_batch_s / max(probe, 1e-12))
            number = min(_MAX_NUMBER, max(2 * number, wanted))
        results = per_call(number, repeats)
    except Exception as exc:
        raise RuntimeError(f"timing kernel {name!r} on {session.where} failed: {_first_line(exc)}") from exc
    return float(np.median(results))
