"""TernGrad against fp32 all-reduce, fp16 compression and PowerSGD, with real worker processes.

    python bench/terngrad.py [--quick] [--out FILE] [--seeds N] [--no-netns]

Part 1, loopback, digits: for 2 and 4 worker processes (gloo on 127.0.0.1) and each hook --
`ddp(compress = none)` (fp32 all-reduce), `fp16`, `powersgd` (rank 1) and `terngrad` (c = 2.5,
no error feedback) -- train the same MLP for the same epochs (global batch 64, cosine) with
several seeds, with SGD + Nesterov momentum (lr 0.05, the paper's kind of optimizer; the
accuracy goal is judged on it); fp32 and TernGrad also with Adam (lr 3e-3, adl's default).
Reported per row: bytes each worker passed to the collectives per step (counted at the
collectives), final test accuracy (mean, std, per seed), median step time and its ratio to
fp32's in the same run.

Part 2, emulated slow links: every worker in its own network namespace, joined by veth
pairs to a bridge; each veth end shaped with `tc tbf` to 1 Gbit/s and 100 Mbit/s (also
unshaped). The model is a wide MLP (64-2048-2048-10, 4.4 M parameters, 17.4 MB of fp32
gradients) so that communication, not the 8x8 digits' tiny layers, sets the pace. Reported:
median step time, throughput (samples/s) and speedup over fp32 at each bandwidth; and the
bytes each worker put on the wire per step, read from the veth counters (difference of a
2-epoch and a 1-epoch run, so set-up traffic cancels). Needs root and iproute2; if a
namespace cannot be created the JSON says so and this part is skipped.

This machine has 2 cores shared with other work: 4 workers time-share them, so step times
are compared only as ratios within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from provenance import provenance

from adl.data import load_dataset
from adl.ir.passes import PassError
from adl.ir.progress import SilentProgress
from adl.ir.spec import CallValue
from adl.models import build_model
from adl.passes.train.distributed.launch import Placement, train_distributed

# what the figures depend on (`python -m bench.status`): the hooks and launcher, the training loop, the MLP, the data
MEASURES = ("bench/terngrad.py", "adl/passes/train/distributed", "adl/passes/train/loop.py", "adl/models", "adl/data")
HOOKS = ("fp32", "fp16", "powersgd", "terngrad")
OPTIMIZERS = {
    "sgd": CallValue("sgd", (("lr", 0.05), ("momentum", 0.9), ("weight_decay", 0.0005), ("nesterov", True))),
    "adam": CallValue("adam", (("lr", 0.003), ("weight_decay", 0.0))),
}
DIGITS_MODEL = {"hidden": (128, 128)}
WIDE_MODEL = {"hidden": (2048, 2048)}
RATES = (("unlimited", None), ("1gbit", 1_000_000_000), ("100mbit", 100_000_000))
SUBNET = "10.77.0"


def strategy(hook: str, workers: int) -> CallValue:
    if hook == "terngrad":
        return CallValue(
            "terngrad", (("workers", workers), ("clip", 2.5), ("error_feedback", False), ("timeout", 120.0))
        )
    compress = {"fp32": "none", "fp16": "fp16", "powersgd": "powersgd"}[hook]
    return CallValue("ddp", (("workers", workers), ("compress", compress), ("rank", 1), ("timeout", 120.0)))


def train(
    dataset,
    model_options: dict,
    hook: str,
    workers: int,
    epochs: int,
    seed: int,
    placement: Placement | None = None,
    optimizer: str = "sgd",
) -> dict:
    torch.manual_seed(seed)
    model = build_model(
        "mlp", model_options, input_shape=dataset.input_shape, classes=10, mean=dataset.mean, std=dataset.std
    )
    config = {
        "epochs": epochs,
        "batch_size": 64,
        "optimizer": OPTIMIZERS[optimizer],
        "schedule": "cosine",
        "label_smoothing": 0.0,
        "distributed": strategy(hook, workers),
    }
    state_dir = Path(tempfile.mkdtemp(prefix="adl-bench-terngrad-"))
    began = time.perf_counter()
    try:
        result = train_distributed(
            model,
            dataset,
            config,
            seed=seed,
            state_dir=state_dir,
            progress=SilentProgress(),
            log=lambda message: None,
            placement=placement,
        )
    except PassError as err:  # recorded, logs kept; the rows aggregate the runs that completed
        print(f"FAILED: {hook} W={workers} seed {seed}: {err}", flush=True)
        return {
            "hook": hook,
            "optimizer": optimizer,
            "workers": workers,
            "seed": seed,
            "epochs": epochs,
            "error": str(err),
        }
    wall = time.perf_counter() - began
    shutil.rmtree(state_dir, ignore_errors=True)
    return {
        "hook": hook,
        "optimizer": optimizer,
        "workers": workers,
        "seed": seed,
        "epochs": epochs,
        "test_accuracy": result.test_accuracy,
        "bytes_per_worker_per_step": result.bytes_per_worker_per_step,
        "fp32_bytes_per_step": result.fp32_bytes_per_step,
        "step_seconds": result.step_seconds,
        "wall_seconds": wall,
        "final_train_loss": result.history[-1]["loss"],
    }


# --- part 1: loopback, digits ---------------------------------------------------------------------


def loopback(
    dataset, workers_list: tuple[int, ...], seeds: int, epochs: int, optimizer: str, hooks: tuple[str, ...] = HOOKS
) -> tuple[list[dict], list[dict]]:
    runs = []
    for workers in workers_list:
        for hook in hooks:
            for seed in range(seeds):
                run = train(dataset, DIGITS_MODEL, hook, workers, epochs, seed, optimizer=optimizer)
                runs.append(run)
                if "error" in run:
                    continue
                print(
                    f"loopback {optimizer} W={workers} {hook:8s} seed {seed}: acc {run['test_accuracy']:.4f}  "
                    f"{run['bytes_per_worker_per_step']:8.0f} B/step  {run['step_seconds'] * 1e3:6.1f} ms/step  "
                    f"({run['wall_seconds']:.0f} s)",
                    flush=True,
                )
    rows = []
    done = [r for r in runs if "error" not in r]
    for workers in workers_list:
        fp32 = [r for r in done if r["workers"] == workers and r["hook"] == "fp32"]
        fp32_acc = statistics.mean(r["test_accuracy"] for r in fp32)
        fp32_step = statistics.median(r["step_seconds"] for r in fp32)
        for hook in hooks:
            mine = [r for r in done if r["workers"] == workers and r["hook"] == hook]
            accs = [r["test_accuracy"] for r in mine]
            step = statistics.median(r["step_seconds"] for r in mine)
            failed = [r for r in runs if r["workers"] == workers and r["hook"] == hook and "error" in r]
            rows.append(
                {
                    "optimizer": optimizer,
                    "workers": workers,
                    "hook": hook,
                    "seeds": len(mine),
                    "failed_runs": len(failed),
                    "bytes_per_worker_per_step": mine[0]["bytes_per_worker_per_step"],
                    "bytes_vs_fp32": mine[0]["bytes_per_worker_per_step"] / fp32[0]["bytes_per_worker_per_step"],
                    "test_accuracy_mean": statistics.mean(accs),
                    "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "test_accuracy_per_seed": accs,
                    "accuracy_minus_fp32_points": 100 * (statistics.mean(accs) - fp32_acc),
                    "step_seconds_median": step,
                    "step_time_vs_fp32": step / fp32_step,
                }
            )
    return runs, rows


# --- part 2: network namespaces with shaped veth links --------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Netns:
    """A bridge in namespace `adlsw`; worker i in namespace `adlw<i>` at 10.77.0.<i+1> on veth `eth0`;
    this process reaches the bridge at 10.77.0.254 (unshaped: only the rendezvous store talks there)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def __enter__(self) -> "Netns":
        self.close()
        try:
            _ip("netns", "add", "adlsw")
            _ip("-n", "adlsw", "link", "add", "br0", "type", "bridge")
            _ip("-n", "adlsw", "link", "set", "br0", "up")
            for i in range(self.workers):
                ns = f"adlw{i}"
                _ip("netns", "add", ns)
                _ip("link", "add", f"adlw{i}a", "type", "veth", "peer", "name", f"adlw{i}b")
                _ip("link", "set", f"adlw{i}a", "netns", ns)
                _ip("link", "set", f"adlw{i}b", "netns", "adlsw")
                _ip("-n", ns, "link", "set", f"adlw{i}a", "name", "eth0")
                _ip("-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", "adlsw", "link", "set", f"adlw{i}b", "master", "br0", "up")
            _ip("link", "add", "adlroot", "type", "veth", "peer", "name", "adlrootb")
            _ip("link", "set", "adlrootb", "netns", "adlsw")
            _ip("-n", "adlsw", "link", "set", "adlrootb", "master", "br0", "up")
            _ip("addr", "add", f"{SUBNET}.254/24", "dev", "adlroot")
            _ip("link", "set", "adlroot", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", "adlroot"], capture_output=True)
        for ns in ["adlsw", *(f"adlw{i}" for i in range(8))]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def shape(self, rate_bps: int | None) -> None:
        """tbf on both ends of every worker's veth (upload and download), or no shaping."""
        for i in range(self.workers):
            for ns, dev in ((f"adlw{i}", "eth0"), ("adlsw", f"adlw{i}b")):
                subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], capture_output=True)
                if rate_bps is not None:
                    burst = max(rate_bps // 8 // 250, 16_384)  # one 4 ms tick of tokens
                    subprocess.run(
                        [
                            "tc",
                            "-n",
                            ns,
                            "qdisc",
                            "add",
                            "dev",
                            dev,
                            "root",
                            "tbf",
                            "rate",
                            f"{rate_bps}bit",
                            "burst",
                            str(burst),
                            "latency",
                            "100ms",
                        ],
                        check=True,
                        capture_output=True,
                    )

    def tx_bytes(self) -> list[int]:
        """Bytes each worker sent: received by the bridge's end of its veth."""
        out = subprocess.run(
            ["ip", "-n", "adlsw", "-s", "-j", "link", "show"], check=True, capture_output=True, text=True
        ).stdout
        by_name = {link["ifname"]: link["stats64"]["rx"]["bytes"] for link in json.loads(out)}
        return [by_name[f"adlw{i}b"] for i in range(self.workers)]

    def placement(self) -> Placement:
        return Placement(
            store_host=f"{SUBNET}.254",
            prefixes=[("ip", "netns", "exec", f"adlw{i}") for i in range(self.workers)],
            envs=[{"GLOO_SOCKET_IFNAME": "eth0"} for _ in range(self.workers)],
        )


def netns_available() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "not root: network namespaces need CAP_NET_ADMIN"
    for tool in ("ip", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"`{tool}` not found (apt-get install -y iproute2)"
    probe = subprocess.run(["ip", "netns", "add", "adlprobe"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns add` failed: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "adlprobe"], capture_output=True)
    return None


def slow_links(dataset, workers_list: tuple[int, ...], steps: int, rates) -> list[dict]:
    # one epoch = `steps` global batches of 64
    small = dataclasses.replace(dataset, x_train=dataset.x_train[: steps * 64], y_train=dataset.y_train[: steps * 64])
    rows = []
    for workers in workers_list:
        with Netns(workers) as net:
            for rate_name, rate in rates:
                net.shape(rate)
                for hook in HOOKS:
                    before = net.tx_bytes()
                    run = train(
                        small,
                        WIDE_MODEL,
                        hook,
                        workers,
                        epochs=2 if rate is None else 1,
                        seed=0,
                        placement=net.placement(),
                    )
                    sent_two = [a - b for a, b in zip(net.tx_bytes(), before)]
                    if "error" in run:
                        rows.append({"workers": workers, "bandwidth": rate_name, "hook": hook, "error": run["error"]})
                        continue
                    row = {
                        "workers": workers,
                        "bandwidth": rate_name,
                        "hook": hook,
                        "steps": steps * run["epochs"],
                        "bytes_per_worker_per_step": run["bytes_per_worker_per_step"],
                        "step_seconds": run["step_seconds"],
                        "samples_per_second": 64 / run["step_seconds"],
                        "wall_seconds": run["wall_seconds"],
                    }
                    if rate is None:  # wire bytes: a 2-epoch run minus a 1-epoch run = one epoch of steps
                        before = net.tx_bytes()
                        train(small, WIDE_MODEL, hook, workers, epochs=1, seed=0, placement=net.placement())
                        sent_one = [a - b for a, b in zip(net.tx_bytes(), before)]
                        row["wire_bytes_per_worker_per_step"] = [
                            (two - one) / steps for two, one in zip(sent_two, sent_one)
                        ]
                    rows.append(row)
                    print(
                        f"netns W={workers} {rate_name:9s} {hook:8s}: {run['step_seconds'] * 1e3:7.1f} ms/step "
                        f"({run['wall_seconds']:.0f} s)"
                        + (
                            f"  wire {statistics.mean(row['wire_bytes_per_worker_per_step']) / 1e6:.2f} MB/step"
                            if "wire_bytes_per_worker_per_step" in row
                            else ""
                        ),
                        flush=True,
                    )
            for row in rows:
                if row["workers"] != workers or "error" in row:
                    continue
                fp32 = next(
                    r
                    for r in rows
                    if r["workers"] == workers and r["bandwidth"] == row["bandwidth"] and r["hook"] == "fp32"
                )
                row["speedup_vs_fp32"] = fp32["step_seconds"] / row["step_seconds"] if "error" not in fp32 else None
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--no-netns", action="store_true", help="skip the emulated slow links")
    args = parser.parse_args()
    origin = provenance("digits (scikit-learn 8x8; test split 0.2, seed 0)")
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = 3 if args.quick else 15
    workers_list = (2,) if args.quick else (2, 4)
    steps = 3 if args.quick else 6
    rates = RATES[::2] if args.quick else RATES

    dataset = load_dataset("digits", split=0.8, seed=0, classes=10)
    runs, rows = loopback(dataset, workers_list, seeds, epochs, "sgd")
    adam_runs, adam_rows = loopback(dataset, workers_list, seeds, epochs, "adam", hooks=("fp32", "terngrad"))

    why_not = "skipped (--no-netns)" if args.no_netns else netns_available()
    link_rows = [] if why_not else slow_links(dataset, workers_list, steps, rates)
    if why_not:
        print(f"emulated slow links skipped: {why_not}", flush=True)

    goals = {}
    for workers in workers_list:
        tern = next(r for r in rows if r["workers"] == workers and r["hook"] == "terngrad")
        goals[f"bytes_per_step_vs_fp32_w{workers}"] = {
            "value": tern["bytes_vs_fp32"],
            "target": "<= 1/12 (0.0833)",
            "met": tern["bytes_vs_fp32"] <= 1 / 12,
        }
        for optimizer, table in (("sgd", rows), ("adam", adam_rows)):
            diff = next(r for r in table if r["workers"] == workers and r["hook"] == "terngrad")[
                "accuracy_minus_fp32_points"
            ]
            goals[f"accuracy_vs_fp32_points_w{workers}_{optimizer}"] = {
                "value": diff,
                "target": ">= -0.5 (not more than 0.5 points below fp32)",
                "met": diff >= -0.5,
            }
        mine = [r for r in link_rows if r["workers"] == workers and r["hook"] == "terngrad"]
        if mine and all(r.get("speedup_vs_fp32") is not None for r in mine):
            speedups = [r["speedup_vs_fp32"] for r in mine]  # in RATES order: bandwidth shrinking
            goals[f"speedup_grows_as_bandwidth_shrinks_w{workers}"] = {
                "value": {r["bandwidth"]: r["speedup_vs_fp32"] for r in mine},
                "target": "speedup over fp32 increasing from unlimited to 1 Gbit/s to 100 Mbit/s",
                "met": all(a < b for a, b in zip(speedups, speedups[1:])),
            }

    result = {
        "benchmark": "terngrad",
        "provenance": origin,
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "setup": {
            "digits_model": f"mlp(hidden = {list(DIGITS_MODEL['hidden'])})",
            "epochs": epochs,
            "global_batch": 64,
            "schedule": "cosine",
            "seeds": seeds,
            "optimizers": {
                "sgd": "sgd(lr = 0.05, momentum = 0.9, nesterov, weight_decay = 5e-4): all hooks and the slow links",
                "adam": "adam(lr = 0.003): fp32 and terngrad",
            },
            "workers": list(workers_list),
            "terngrad": "clip = 2.5, scaler sharing, no error feedback",
            "powersgd": "rank 1, start_powerSGD_iter = 2 (its first 2 steps are plain all-reduce), error "
            "feedback, one DDP bucket (several buckets made gloo pair mismatched all-reduces)",
            "bytes": "per worker per step, the tensors passed to torch.distributed collectives",
            "slow_link_model": f"mlp(hidden = {list(WIDE_MODEL['hidden'])}), 4.35 M parameters",
            "slow_link_steps_per_run": steps,
            "threads_per_worker": 1,
        },
        "goals": goals,
        "loopback": rows + adam_rows,
        "loopback_runs": runs + adam_runs,
        "slow_links": link_rows if not why_not else {"skipped": why_not},
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps(goals, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
