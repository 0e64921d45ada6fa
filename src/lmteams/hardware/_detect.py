"""What this machine and this llama.cpp build can run, reported without guessing.

Placement needs to know which devices exist and how much memory they have. The CPU side comes
from ``/proc`` (or ``sysctl`` on macOS); the accelerator side comes from llama.cpp's own ggml
device registry, read through ctypes, because only the build knows which backends were compiled
in. Where a source is missing the report says so instead of inventing a value.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import msgspec

__all__ = (
    "DeviceInfo",
    "HardwareInfo",
    "detect",
    "ggml_devices",
    "physical_cores",
    "backend_kind",
)

_SIMD_FLAGS: Final = (
    "sse3",
    "ssse3",
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimddp",
    "asimdhp",
    "i8mm",
    "sve",
    "sve2",
    "bf16",
)

# enum ggml_backend_dev_type in ggml-backend.h, in declaration order.
_DEV_TYPES: Final = ("cpu", "gpu", "igpu", "accel", "meta")


class DeviceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One ggml device as the llama.cpp build sees it."""

    name: str
    """ggml's device name: ``CPU``, ``CUDA0``, ``Metal``, ``Vulkan0``..."""
    description: str
    type: str
    """``cpu`` | ``gpu`` | ``igpu`` | ``accel`` | ``meta``."""
    backend: str
    """The registry that owns it: ``CPU``, ``CUDA``, ``Metal``, ``Vulkan``..."""
    memory_total_bytes: int
    memory_free_bytes: int


class HardwareInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the machine and the llama.cpp build, for people and for placement."""

    cpu_model: str
    arch: str
    physical_cores: int
    logical_cores: int
    simd: tuple[str, ...]
    """SIMD extensions the CPU reports."""
    memory_total_bytes: int
    memory_available_bytes: int
    llama_cpp_python: str | None
    """Package version, or ``None`` when llama-cpp-python is not importable."""
    llama_version: str
    ggml_version: str
    gpu_offload: bool
    """``llama_supports_gpu_offload()``: the build has a GPU backend and it found a device."""
    backends: tuple[str, ...]
    """ggml backend registries compiled into (or loaded by) the build."""
    devices: tuple[DeviceInfo, ...]
    device_enumeration: bool
    """False when this build does not expose ggml's device API; ``devices`` is then empty."""
    build_features: tuple[str, ...]
    """CPU features the llama.cpp build was compiled to use (from its system info)."""
    kinds: tuple[str, ...]
    """Values of ``BackendConfig.kind`` that can open on this machine."""
    notes: tuple[str, ...] = ()


def detect() -> HardwareInfo:
    """Probe the CPU, memory and the llama.cpp build; cheap enough to call at agent start."""
    notes: list[str] = []
    cpu_model, simd = _cpu_model_and_simd()
    total, available = _memory()
    llama = _llama_module()
    backends: tuple[str, ...] = ()
    devices: tuple[DeviceInfo, ...] = ()
    enumerated = False
    offload = False
    llama_version = ggml_version = ""
    features: tuple[str, ...] = ()
    if llama is None:
        notes.append("llama-cpp-python is not importable: only kind='sim' can run")
    else:
        offload = bool(llama.llama_supports_gpu_offload())
        llama_version = _decode(llama.llama_version())
        features = _build_features(_decode(llama.llama_print_system_info()))
        enum = ggml_devices()
        if enum is None:
            notes.append("this llama.cpp build does not expose ggml's device API")
        else:
            enumerated = True
            backends, devices = enum
        ggml_version = _ggml_string("ggml_version")
    if "amx_int8" in simd:
        notes.append(
            "the CPU has AMX: llama.cpp's extra weight buffers are off by default (its AMX path "
            "hung on batched prompts here); BackendConfig(extra_buffers=True) turns them on"
        )
    kinds = ["cpu", "sim"] if llama is not None else ["sim"]
    gpu_kinds = {backend_kind(d.backend) for d in devices if d.type in ("gpu", "igpu")}
    kinds.extend(kind for kind in ("cuda", "metal", "vulkan") if kind in gpu_kinds)
    if llama is not None:
        kinds.insert(0, "auto")
    return HardwareInfo(
        cpu_model=cpu_model,
        arch=platform.machine(),
        physical_cores=physical_cores(),
        logical_cores=os.cpu_count() or 1,
        simd=simd,
        memory_total_bytes=total,
        memory_available_bytes=available,
        llama_cpp_python=_dist_version("llama-cpp-python"),
        llama_version=llama_version,
        ggml_version=ggml_version,
        gpu_offload=offload,
        backends=backends,
        devices=devices,
        device_enumeration=enumerated,
        build_features=features,
        kinds=tuple(kinds),
        notes=tuple(notes),
    )


def backend_kind(backend: str) -> str:
    """Map a ggml registry name (``CUDA``, ``MTL``, ``Vulkan``) onto a ``BackendConfig.kind``."""
    name = backend.lower()
    if name.startswith("cuda"):
        return "cuda"
    if name.startswith(("mtl", "metal")):
        return "metal"
    if name.startswith("vulkan"):
        return "vulkan"
    return name


def _llama_module() -> Any:
    try:
        import llama_cpp  # noqa: PLC0415 - optional at import time; detect() must not need it
    except ImportError:  # pragma: no cover - llama-cpp-python is a hard dependency
        return None
    return llama_cpp


def _decode(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value or ""


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _build_features(system_info: str) -> tuple[str, ...]:
    return tuple(m.group(1) for m in re.finditer(r"([A-Z0-9_]+) = 1", system_info))


def _ggml_lib() -> Any:
    from llama_cpp import llama_cpp as low  # noqa: PLC0415

    # libllama links libggml, and dlsym on its handle searches that dependency tree.
    return low._lib


def _ggml_string(symbol: str) -> str:
    try:
        fn = _ggml_lib()[symbol]
    except (AttributeError, ImportError):
        return ""
    fn.argtypes = []
    fn.restype = ctypes.c_char_p
    return _decode(fn())


def ggml_devices() -> tuple[tuple[str, ...], tuple[DeviceInfo, ...]] | None:
    """Backend registries and devices from ggml, or ``None`` if the API is not exported."""
    try:
        import llama_cpp  # noqa: PLC0415

        llama_cpp.llama_backend_init()  # loads dynamic backends when the build uses them
        lib = _ggml_lib()
        reg_count = lib["ggml_backend_reg_count"]
        reg_get = lib["ggml_backend_reg_get"]
        reg_name = lib["ggml_backend_reg_name"]
        dev_count = lib["ggml_backend_dev_count"]
        dev_get = lib["ggml_backend_dev_get"]
        dev_name = lib["ggml_backend_dev_name"]
        dev_desc = lib["ggml_backend_dev_description"]
        dev_memory = lib["ggml_backend_dev_memory"]
        dev_type = lib["ggml_backend_dev_type"]
        dev_reg = lib["ggml_backend_dev_backend_reg"]
    except (ImportError, AttributeError):
        return None
    reg_count.argtypes, reg_count.restype = [], ctypes.c_size_t
    reg_get.argtypes, reg_get.restype = [ctypes.c_size_t], ctypes.c_void_p
    reg_name.argtypes, reg_name.restype = [ctypes.c_void_p], ctypes.c_char_p
    dev_count.argtypes, dev_count.restype = [], ctypes.c_size_t
    dev_get.argtypes, dev_get.restype = [ctypes.c_size_t], ctypes.c_void_p
    dev_name.argtypes, dev_name.restype = [ctypes.c_void_p], ctypes.c_char_p
    dev_desc.argtypes, dev_desc.restype = [ctypes.c_void_p], ctypes.c_char_p
    size_p = ctypes.POINTER(ctypes.c_size_t)
    dev_memory.argtypes, dev_memory.restype = [ctypes.c_void_p, size_p, size_p], None
    dev_type.argtypes, dev_type.restype = [ctypes.c_void_p], ctypes.c_int
    dev_reg.argtypes, dev_reg.restype = [ctypes.c_void_p], ctypes.c_void_p

    registries = tuple(_decode(reg_name(reg_get(i))) for i in range(reg_count()))
    devices = []
    for i in range(dev_count()):
        dev = dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = dev_type(dev)
        devices.append(
            DeviceInfo(
                name=_decode(dev_name(dev)),
                description=_decode(dev_desc(dev)),
                type=_DEV_TYPES[kind] if 0 <= kind < len(_DEV_TYPES) else f"type{kind}",
                backend=_decode(reg_name(dev_reg(dev))),
                memory_total_bytes=int(total.value),
                memory_free_bytes=int(free.value),
            )
        )
    return registries, tuple(devices)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _sysctl(name: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["/usr/sbin/sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False
        )
        if done.returncode == 0:
            return done.stdout.strip()
    return ""


@functools.cache
def cpu_simd() -> tuple[str, ...]:
    """SIMD extensions this CPU reports (read once per process)."""
    return _cpu_model_and_simd()[1]


def _cpu_model_and_simd() -> tuple[str, tuple[str, ...]]:
    cpuinfo = _read("/proc/cpuinfo")
    model = ""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    if "asimd" in flags:
        flags.add("neon")
    if "pni" in flags:  # Linux's name for SSE3
        flags.add("sse3")
    if not cpuinfo and platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string")
        if platform.machine() == "arm64":
            flags.update({"neon", "asimddp", "asimdhp"})
            if _sysctl("hw.optional.arm.FEAT_I8MM") == "1":
                flags.add("i8mm")
    model = model or platform.processor() or platform.machine()
    return model, tuple(flag for flag in _SIMD_FLAGS if flag in flags)


def physical_cores() -> int:
    """Physical cores (not hyper-threads): llama.cpp runs best with one thread per core."""
    pairs = set()
    physical = core = None
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not key and core is not None:
            pairs.add((physical, core))
            physical = core = None
    if core is not None:
        pairs.add((physical, core))
    if pairs:
        return len(pairs)
    if platform.system() == "Darwin" and (count := _sysctl("hw.physicalcpu")).isdigit():
        return int(count)
    return os.cpu_count() or 1


def _memory() -> tuple[int, int]:
    info = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            info[key] = int(parts[0]) * 1024
    if "MemTotal" in info:
        return info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
    if platform.system() == "Darwin" and (size := _sysctl("hw.memsize")).isdigit():
        return int(size), 0
    with contextlib.suppress(ValueError, OSError, AttributeError):
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return pages * page, 0
    return 0, 0
