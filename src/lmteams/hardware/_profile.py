"""Measure what a device does with a model, once, and remember it.

Placement by capacity needs tokens per second per (device, model, threads); measuring takes a
model load and a few generations, so results are cached as JSON beside the models and reused
until someone asks for ``--refresh``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import resource
import sys
from pathlib import Path
from typing import Final

import msgspec
import structlog

from lmteams.hardware._backend import open_backend
from lmteams.hardware._detect import physical_cores
from lmteams.hardware._llama import select_device
from lmteams.hardware._models import cache_dir
from lmteams.hardware._openai import openai_device
from lmteams.hardware._types import BackendConfig, GenerateRequest

__all__ = ("DeviceProfile", "profile", "cached_profiles", "profile_key")

log = structlog.get_logger(__name__)

# A fixed, model-agnostic prompt: short enough for a Pi, long enough to time prompt processing.
_PROMPT: Final = (
    "Distributed systems coordinate independent computers that communicate by passing "
    "messages. They must tolerate failures of machines and networks, agree on shared state, "
    "and keep working while parts of the system are slow. Summarise the main difficulties in "
    "building such systems and how engineers usually address them."
)
_RUNS: Final = 2
_MAX_TOKENS: Final = 64


class DeviceProfile(msgspec.Struct, frozen=True, kw_only=True):
    """Measured speed of one model on one device with one thread count."""

    device: str
    model: str
    threads: int
    load_s: float
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    rss_mb: float
    measured_at: str
    """UTC ISO-8601 timestamp."""


def profile_key(device: str, model: str, threads: int) -> str:
    return f"{device}|{model}|{threads}"


def _profiles_path() -> Path:
    return cache_dir() / "profiles.json"


def cached_profiles() -> dict[str, DeviceProfile]:
    """Every cached profile by key; an unreadable cache counts as empty."""
    path = _profiles_path()
    try:
        return msgspec.json.decode(path.read_bytes(), type=dict[str, DeviceProfile])
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return {}


def _store(key: str, measured: DeviceProfile) -> None:
    path = _profiles_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    profiles = cached_profiles() | {key: measured}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(profiles)))
    os.replace(tmp, path)


def _rss_mb() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak / 1e3


def _expected_device(config: BackendConfig) -> str:
    if config.kind.lower() == "sim":
        return f"sim:{config.sim_device}"
    if config.kind.lower() == "openai":  # one server, measured once, for all its agents
        return openai_device(config.base_url)
    return select_device(config.kind, config.n_gpu_layers)[0]


async def profile(config: BackendConfig, *, refresh: bool = False) -> DeviceProfile:
    """Profile ``config``'s model on its device, from the cache unless ``refresh``."""
    threads = config.n_threads or physical_cores()
    key = profile_key(_expected_device(config), config.model, threads)
    if not refresh and (hit := cached_profiles().get(key)) is not None:
        return hit
    load_s = prompt_s = generation_s = 0.0
    tokens_in = tokens_out = 0
    async with open_backend(config) as backend:
        for run in range(_RUNS + 1):
            # A different first token each run defeats llama.cpp's prompt-prefix cache.
            request = GenerateRequest(
                prompt=f"({run}) {_PROMPT}", max_tokens=_MAX_TOKENS, chat=False, seed=run
            )
            done = await backend.generate(request)
            if run == 0:  # warm-up: reports the load, primes caches
                load_s = done.timings.load_s
                continue
            prompt_s += done.timings.prompt_s
            generation_s += done.timings.generation_s
            tokens_in += done.tokens_in
            tokens_out += done.tokens_out
        device = backend.device
    measured = DeviceProfile(
        device=device,
        model=config.model,
        threads=threads,
        load_s=load_s,
        prompt_tokens_per_s=tokens_in / prompt_s if prompt_s else 0.0,
        generation_tokens_per_s=tokens_out / generation_s if generation_s else 0.0,
        rss_mb=_rss_mb(),
        measured_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    _store(profile_key(device, config.model, threads), measured)
    log.info("hardware.profiled", **msgspec.structs.asdict(measured))
    return measured
