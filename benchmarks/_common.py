"""Shared benchmark plumbing: the machine note, medians, interleaved trials, the JSON line.

Machines here are small and noisy (2 cores, shared): every figure is a ratio against a
baseline measured in the same run, trials alternate between the two so drift hits both,
and the median of the trials is reported, never one absolute time.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import logging
import os
import platform
import random
import signal
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec
import structlog

if TYPE_CHECKING:
    from lmteams.agents import Supervisor
    from lmteams.bus import LocalCluster

S = TypeVar("S", bound=msgspec.Struct)


def quiet_logs() -> None:
    """Benchmarks print figures, not log lines."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


@functools.cache
def versions() -> dict[str, str]:
    """The libraries a figure depends on, as installed: a figure means little without them."""
    from lmteams.bus import find_server_binary

    found: dict[str, str] = {}
    for package in ("nats-py", "llama-cpp-python", "msgspec", "lmteams"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    try:
        out = subprocess.run(
            [str(find_server_binary()), "--version"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        found["nats-server"] = out.strip().removeprefix("nats-server: ").removeprefix("v")
    except Exception as exc:  # a missing binary is recorded, not fatal
        found["nats-server"] = f"unknown ({exc.__class__.__name__})"
    return found


def machine() -> dict[str, Any]:
    """Where a figure was measured, library versions included (every benchmark's JSON)."""
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "versions": versions(),
    }


def parse_spec(cls: type[S], description: str) -> S:
    """Command-line options from a benchmark's spec Struct: one ``--field-name`` per field."""
    parser = argparse.ArgumentParser(description=description)
    fields = msgspec.structs.fields(cls)
    for field in fields:
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default
        )
    args = parser.parse_args()
    return cls(**{f.name: getattr(args, f.name) for f in fields})


async def rate(count: int, concurrency: int, one: Callable[[], Awaitable[object]]) -> float:
    """Calls per second for ``count`` calls of ``one`` with ``concurrency`` in flight."""
    per_worker = count // concurrency

    async def worker() -> None:
        for _ in range(per_worker):
            await one()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return per_worker * concurrency / (time.perf_counter() - start)


async def interleaved(
    trials: int,
    subject: Callable[[], Awaitable[float]],
    baseline: Callable[[], Awaitable[float]],
) -> tuple[float, float]:
    """Run ``trials`` rounds of (baseline, subject), alternating; return both medians."""
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(trials):
        if i % 2:
            ours.append(await subject())
            theirs.append(await baseline())
        else:
            theirs.append(await baseline())
            ours.append(await subject())
    return statistics.median(ours), statistics.median(theirs)


def figure(
    name: str, value: float, baseline: float, target: float | None, **extra: Any
) -> dict[str, Any]:
    """One figure: ``ratio`` is value / baseline (higher is better for throughputs).

    ``target`` None marks an informational figure with no goal attached.
    """
    ratio = value / baseline if baseline else float("nan")
    return {
        "name": name,
        "value": round(value, 3),
        "baseline": round(baseline, 3),
        "ratio": round(ratio, 4),
        "target": target,
        "met": None if target is None else ratio >= target,
        **extra,
    }


def emit(figures: list[dict[str, Any]], **context: Any) -> None:
    """Print the human summary, then the JSON last line."""
    for f in figures:
        print(
            f"{f['name']:<40} value={f['value']:<12} baseline={f['baseline']:<12} "
            f"ratio={f['ratio']:<8} target>={f['target']}"
        )
    print(json.dumps({"figures": figures, "machine": machine(), **context}))


def kill_agent(
    supervisor: Supervisor,
    rng: random.Random,
    killed: set[int],
    *,
    among: Collection[str] | None = None,
) -> str | None:
    """kill -9 one live supervised agent (a random one, of ``among`` if given); its name,
    or None when none was alive. ``killed`` holds pids already killed: one not yet reaped
    still looks alive, and must not be counted twice."""
    alive = [
        p
        for p in supervisor.processes()
        if p.running and p.pid and p.pid not in killed and (among is None or p.name in among)
    ]
    if not alive:
        return None
    victim = rng.choice(alive)
    assert victim.pid is not None
    try:
        os.kill(victim.pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    killed.add(victim.pid)
    return victim.name


async def bounce_node(cluster: LocalCluster, rng: random.Random, down_s: float) -> str:
    """Kill one random node of the cluster, and start it again ``down_s`` seconds later."""
    node = rng.choice(cluster.servers)
    await node.kill()
    await anyio.sleep(down_s)
    await node.start()
    return node.config.name
