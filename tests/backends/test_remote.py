"""Tests of adl.backends.tvm.remote: running and timing compiled code here and over TVM RPC.

The `servers` fixture (tests/conftest.py) starts, on loopback, an RPC tracker with one RPC server registered under
the key "board", and a second RPC server reached directly (no tracker), as subprocesses of their
own process groups (killed at teardown). The servers run with torch hidden, as on a device that
has only the TVM runtime (and because importing torch would slow their start by seconds).
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from adl.backends.runtime import LatencyStats
from adl.backends.tvm.remote import (
    RemoteError,
    kernel_latency,
    library_latency,
    local_session,
    parse_address,
    rpc_session,
)

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")

Library = tuple[Path, "torch.nn.Module"]  # the built library and the model it came from


@pytest.fixture(scope="module")
def linear_library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    from adl.backends.tvm import build_library

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    path = tmp_path_factory.mktemp("lib") / "m.so"
    info = build_library(model, np.zeros((1, 4), np.float32), {"kind": "llvm", "num-cores": 2}, path)
    assert info.input_shape == (1, 4) and info.output_shape == (1, 3)
    return path, model


@pytest.fixture(scope="module")
def add_kernel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TIR PrimFunc ``add(A, B, C)``: C = A + B on 4096 floats, exported as a shared library."""
    from tvm import te

    n = 4096
    a = te.placeholder((n,), "float32", name="A")
    b = te.placeholder((n,), "float32", name="B")
    c = te.compute((n,), lambda i: a[i] + b[i], name="C")
    func = te.create_prim_func([a, b, c]).with_attr("global_symbol", "add")
    path = tmp_path_factory.mktemp("kernel") / "add.so"
    tvm.compile(tvm.IRModule({"add": func}), target="llvm").export_library(str(path))
    return path


def _in_fresh_thread(fn: Callable[[], object]) -> object:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]


def _check_stats(stats: LatencyStats, repeats: int) -> None:
    assert isinstance(stats, LatencyStats)
    assert stats.repeats == repeats
    assert math.isfinite(stats.median_s) and stats.median_s > 0
    assert 0 < stats.min_s <= stats.p10_s <= stats.median_s <= stats.p90_s


# -- no servers needed -------------------------------------------------------------------------


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9190") == ("127.0.0.1", 9190)
    assert parse_address("board.local:9090") == ("board.local", 9090)
    assert parse_address("[::1]:9090") == ("::1", 9090)


@pytest.mark.parametrize("text", ["nohost", "h:notaport", ":9190", "h:0", "h:70000", ""])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address(text)


@pytest.mark.parametrize("key", [None, "board"])
def test_closed_port_fails_fast(key: str | None, closed_port: int) -> None:
    address = f"127.0.0.1:{closed_port}"
    start = time.monotonic()
    with pytest.raises(RemoteError) as caught:
        rpc_session(address, key, timeout_s=30)
    assert time.monotonic() - start < 3
    message = str(caught.value)
    assert address in message and "\n" not in message
    assert ("rpc_tracker" if key else "rpc_server") in message


# -- here and through the tracker-------------------------------------------------------------------


def test_library_latency_through_tracker(servers, linear_library: Library) -> None:
    path, _ = linear_library
    tracker = servers.tracker()
    x = np.random.default_rng(1).standard_normal((1, 4)).astype(np.float32)
    with local_session() as local:
        expected = local.run_library(path, x)
    start = time.monotonic()
    with rpc_session(tracker, "board", timeout_s=20) as session:
        assert time.monotonic() - start < 5
        assert session.where == f"rpc://{tracker} key=board"
        _check_stats(library_latency(session, path, (1, 4), threads=1, repeats=11, warmup=3), 11)
        np.testing.assert_array_equal(session.run_library(path, x), expected)


def test_local_session(linear_library: Library, add_kernel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, model = linear_library
    monkeypatch.setenv("TVM_NUM_THREADS", "2")  # set_threads would set it for the rest of the run
    with local_session() as session:
        assert session.where == "local"
        # TVM pools are per thread: check set_threads in a fresh one, leaving pytest's alone.
        assert _in_fresh_thread(lambda: (session.set_threads(1), session.num_threads())[1]) == 1
        _check_stats(library_latency(session, path, (1, 4), threads=None, repeats=7, warmup=2), 7)
        x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(session.run_library(path, x), expected, rtol=1e-5, atol=1e-6)

        module = session.load_module(add_kernel)
        args = [session.tensor(np.ones(4096, np.float32)), session.tensor(np.full(4096, 2, np.float32))]
        args.append(session.tensor(np.zeros(4096, np.float32)))
        seconds = kernel_latency(session, module, "add", args, repeats=5)
        assert math.isfinite(seconds) and 0 < seconds < 1e-3
        np.testing.assert_array_equal(args[2].numpy(), 3.0)


def test_module_never_imports_torch(linear_library: Library) -> None:
    path, _ = linear_library
    code = (
        "import sys, numpy as np\n"
        "from adl.backends.tvm import remote\n"
        "assert 'tvm' not in sys.modules\n"
        "with remote.local_session() as s:\n"
        f"    stats = remote.library_latency(s, {str(path)!r}, (1, 4), threads=1, repeats=3, warmup=1)\n"
        "    assert stats.repeats == 3\n"
        f"    assert s.run_library({str(path)!r}, np.zeros((1, 4), np.float32)).shape == (1, 3)\n"
        "try:\n"
        "    remote.rpc_session('127.0.0.1:1', timeout_s=1)\n"
        "except remote.RemoteError:\n"
        "    pass\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_remote_threads(servers) -> None:
    with rpc_session(servers.tracker(), "board", timeout_s=20) as session:
        assert session.num_threads() == servers.threads  # a fresh session: the server's TVM_NUM_THREADS
        session.set_threads(1)
        assert session.num_threads() == 1
        session.set_threads(None)  # leaves it alone
        assert session.num_threads() == 1
        with pytest.warns(RuntimeWarning, match="uses 2 threads, not the 4"):
            session.set_threads(4)  # the pool's size is the server's TVM_NUM_THREADS
        assert session.num_threads() == servers.threads


def test_kernel_latency_through_tracker(servers, add_kernel: Path) -> None:
    with rpc_session(servers.tracker(), "board", timeout_s=20) as session:
        module = session.load_module(add_kernel)
        a = session.tensor(np.arange(4096, dtype=np.float32))
        c = session.tensor(np.zeros(4096, np.float32))
        seconds = kernel_latency(session, module, "add", [a, a, c], repeats=5, min_batch_s=1e-4)
        assert math.isfinite(seconds) and 0 < seconds < 1e-3
        np.testing.assert_array_equal(c.numpy(), 2 * np.arange(4096, dtype=np.float32))
        del module, a, c


def test_unknown_key_times_out(servers) -> None:
    tracker = servers.tracker()
    start = time.monotonic()
    with pytest.raises(RemoteError, match="'nokey'") as caught:
        rpc_session(tracker, "nokey", timeout_s=0.5)
    assert time.monotonic() - start < 4
    message = str(caught.value)
    assert tracker in message and "--key nokey" in message and "registered keys: board" in message


def test_busy_key_times_out(servers) -> None:
    tracker = servers.tracker()
    with rpc_session(tracker, "board", timeout_s=20):
        start = time.monotonic()
        with pytest.raises(RemoteError, match="busy"):
            rpc_session(tracker, "board", timeout_s=0.5)
        assert time.monotonic() - start < 4
    with rpc_session(tracker, "board", timeout_s=20) as session:  # free again once closed
        assert session.num_threads() >= 1


# -- a server without tracker ------------------------------------------------------------------


def test_direct_server(servers, linear_library: Library, add_kernel: Path) -> None:
    path, _ = linear_library
    address = servers.direct()
    x = np.ones((1, 4), np.float32)
    with local_session() as local:
        expected = local.run_library(path, x)
    with rpc_session(address, timeout_s=20) as session:
        assert session.where == f"rpc://{address}"
        np.testing.assert_array_equal(session.run_library(path, x), expected)
        _check_stats(library_latency(session, path, (1, 4), threads=2, repeats=5, warmup=1), 5)
        # A server takes one session at a time: a second client gets a bounded wait, not a hang.
        start = time.monotonic()
        with pytest.raises(RemoteError, match="one session at a time"):
            rpc_session(address, timeout_s=0.5)
        assert time.monotonic() - start < 4
    with rpc_session(address, timeout_s=20) as session:  # closing the first made it free again
        module = session.load_module(add_kernel)
        args = [session.tensor(np.ones(4096, np.float32)) for _ in range(3)]
        assert kernel_latency(session, module, "add", args, repeats=3) > 0
        del module, args


def test_direct_connect_to_tracker_is_refused(servers) -> None:
    tracker = servers.tracker()
    with pytest.raises(RemoteError, match="not a TVM RPC server") as caught:
        rpc_session(tracker, timeout_s=5)
    assert tracker in str(caught.value)
