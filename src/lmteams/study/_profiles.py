"""Rates of real devices for the study and the planner: measured profiles, or a stated guess.

A simulated device's rate is its class's by definition; a real llama.cpp device's is whatever
``lmteams hardware profile`` measured for that model, device and thread count. The study
measures a missing profile once before a team runs (it is about to load the model anyway);
the planner, which may run where no model is, falls back to the cpu-x86 class's rate and
says so, naming the command that measures the real one. Every rate a plan used carries its
source, so a prediction built on a guess cannot pass for one built on a measurement.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal

import msgspec

from lmteams.hardware import (
    DEVICE_CLASSES,
    BackendConfig,
    DeviceProfile,
    cached_profiles,
    profile,
)
from lmteams.hardware._profile import profile_key

__all__ = (
    "ASSUMED_CLASS",
    "DEFAULT_LLAMA_MODEL",
    "DeviceRate",
    "RateSource",
    "assumption_note",
    "is_llama",
    "llama_config",
    "llama_profile",
    "llama_rates",
    "measure_llama_profiles",
)

DEFAULT_LLAMA_MODEL: Final = "smollm2-135m"
ASSUMED_CLASS: Final = "cpu-x86"
"""The device class whose rates stand in for an unprofiled llama device."""
_LLAMA_DEVICE: Final = "cpu"  # study llama agents run on the CPU, one thread each
_LLAMA_THREADS: Final = 1

RateSource = Literal["modelled", "measured", "assumed"]


class DeviceRate(msgspec.Struct, frozen=True, kw_only=True):
    """The rates a prediction used for one device spec, and where they came from."""

    device: str
    tokens_per_s: float
    """Effective rate for the graph (prompt time included), as the simulator uses it."""
    generation_tokens_per_s: float
    prompt_tokens_per_s: float
    source: RateSource
    """``modelled`` (a simulated or paper device), ``measured`` (a cached profile) or
    ``assumed`` (a llama device nobody has profiled: the cpu-x86 class's rates)."""
    profile_key: str = ""
    measured_at: str = ""
    note: str = ""


def is_llama(spec: str) -> bool:
    return spec.partition(":")[0] == "llama"


def _model(spec: str) -> str:
    return spec.partition(":")[2] or DEFAULT_LLAMA_MODEL


def llama_config(spec: str, *, seed: int = 0) -> BackendConfig:
    """How a study agent on ``llama[:MODEL]`` opens its model, and so which profile fits it."""
    return BackendConfig(
        kind=_LLAMA_DEVICE, model=_model(spec), n_threads=_LLAMA_THREADS, seed=seed
    )


def _key(spec: str) -> str:
    return profile_key(_LLAMA_DEVICE, _model(spec), _LLAMA_THREADS)


def llama_profile(spec: str) -> DeviceProfile | None:
    """The cached profile for a ``llama[:MODEL]`` spec, or None when none was measured."""
    return cached_profiles().get(_key(spec))


def assumption_note(spec: str) -> str:
    cls = DEVICE_CLASSES[ASSUMED_CLASS]
    return (
        f"no measured profile for {spec} ({_key(spec)}): assuming the {ASSUMED_CLASS} class's "
        f"{cls.generation_tokens_per_s:g} tokens/s; measure it with `lmteams hardware profile "
        f"--backend {_LLAMA_DEVICE} --threads {_LLAMA_THREADS} --model {_model(spec)}` "
        "(or `lmteams plan --measure`)"
    )


def llama_rates(spec: str) -> tuple[float, float, DeviceProfile | None]:
    """(generation, prompt) tokens/s of a llama spec and the profile they came from, if any."""
    measured = llama_profile(spec)
    if measured is not None and measured.generation_tokens_per_s > 0:
        return measured.generation_tokens_per_s, measured.prompt_tokens_per_s, measured
    cls = DEVICE_CLASSES[ASSUMED_CLASS]
    return cls.generation_tokens_per_s, cls.prompt_tokens_per_s, None


async def measure_llama_profiles(specs: Iterable[str]) -> dict[str, DeviceProfile]:
    """Profile every llama spec among ``specs`` that has no cached profile yet (once each).

    Loads the model, so the model must be available here (pulled, or a path).
    """
    done: dict[str, DeviceProfile] = {}
    for spec in dict.fromkeys(s for s in specs if is_llama(s)):
        hit = llama_profile(spec)
        done[spec] = hit if hit is not None else await profile(llama_config(spec))
    return done
