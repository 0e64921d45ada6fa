"""Detection reports this machine and this llama.cpp build without guessing."""

from __future__ import annotations

import llama_cpp
import msgspec
import pytest

from lmteams.errors import ConfigError, DeviceUnavailableError
from lmteams.hardware import BackendConfig, DeviceInfo, HardwareInfo, detect, open_backend
from lmteams.hardware._llama import REBUILD_HINTS, select_device


def test_detect_is_sane_here() -> None:
    info = detect()
    assert info.physical_cores > 0
    assert info.logical_cores >= info.physical_cores
    assert info.memory_total_bytes > 0
    assert info.cpu_model
    assert info.llama_cpp_python
    assert info.device_enumeration
    assert "CPU" in info.backends
    assert any(d.type == "cpu" for d in info.devices)
    assert "cpu" in info.kinds
    assert "sim" in info.kinds
    # what the build itself reports, CPU-only or GPU alike
    assert info.gpu_offload is bool(llama_cpp.llama_supports_gpu_offload())
    gpu_kinds = {"cuda", "metal", "vulkan"} & set(info.kinds)
    gpus = {d.backend for d in info.devices if d.type in ("gpu", "igpu")}
    assert bool(gpu_kinds) == bool(gpus)  # a GPU kind is offered exactly when a GPU is there
    assert not gpu_kinds or info.gpu_offload  # and only on a build that can offload
    roundtrip = msgspec.json.decode(msgspec.json.encode(info), type=HardwareInfo)
    assert roundtrip == info
    amx_noted = any("AMX" in note for note in info.notes)
    assert amx_noted == ("amx_int8" in info.simd)  # the extra-buffers default is explained


def _dev(name: str, backend: str, kind: str = "gpu") -> DeviceInfo:
    return DeviceInfo(
        name=name,
        description=name,
        type=kind,
        backend=backend,
        memory_total_bytes=1,
        memory_free_bytes=1,
    )


CPU = _dev("CPU", "CPU", "cpu")


def test_select_device_prefers_gpus_when_offered() -> None:
    assert select_device("auto", -1, (CPU,)) == ("cpu", 0)
    assert select_device("auto", -1, (CPU, _dev("Vulkan0", "Vulkan"))) == ("vulkan:0", -1)
    both = (CPU, _dev("Vulkan0", "Vulkan"), _dev("CUDA0", "CUDA"))
    assert select_device("auto", 20, both) == ("cuda:0", 20)
    assert select_device("metal", -1, (CPU, _dev("MTL0", "MTL", "igpu"))) == ("metal:0", -1)
    assert select_device("cuda", 0, both) == ("cpu", 0)
    assert select_device("cpu", -1, both) == ("cpu", 0)


@pytest.mark.parametrize("kind", ["cuda", "metal", "vulkan"])
def test_missing_backend_says_how_to_rebuild(kind: str) -> None:
    with pytest.raises(DeviceUnavailableError) as caught:
        select_device(kind, -1, (CPU,))
    assert REBUILD_HINTS[kind] in str(caught.value)
    assert "pip install --force-reinstall --no-cache-dir llama-cpp-python" in str(caught.value)


def test_backend_without_device_points_at_the_driver() -> None:
    registry_only = (CPU, _dev("CUDA0", "CUDA", "accel"))
    with pytest.raises(DeviceUnavailableError, match="driver"):
        select_device("cuda", -1, registry_only)


def test_unknown_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="auto"):
        select_device("tpu", -1, (CPU,))


async def test_open_backend_on_a_device_this_build_lacks() -> None:
    """Whatever the build (no machine has CUDA and Metal at once), the kinds it lacks are
    refused with the rebuild hint."""
    lacking = [kind for kind in ("cuda", "metal") if kind not in detect().kinds]
    assert lacking
    for kind in lacking:
        with pytest.raises(DeviceUnavailableError, match=f"GGML_{kind.upper()}=on"):
            async with open_backend(BackendConfig(kind=kind)):
                pass
