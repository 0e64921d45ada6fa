"""``lmteams plan``: which team size and architecture to use for a task graph."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import anyio
import msgspec
import typer
from rich.table import Table

from lmteams.bus import open_bus, run_server
from lmteams.cli._common import fail
from lmteams.cli._common import out as _out
from lmteams.errors import LmteamsError
from lmteams.study import (
    ARCHITECTURES,
    DeviceRate,
    Plan,
    TaskGraph,
    calibrate_overhead,
    measure_llama_profiles,
    open_team,
    plan,
    resolve_graph,
    run_team,
)

__all__ = ("plan_cmd",)


class Verification(msgspec.Struct, frozen=True, kw_only=True):
    """The recommended option run on simulated agents, against its prediction."""

    predicted_s: float
    measured_s: float
    relative_error: float
    overhead_s: float


async def _plan_and_verify(
    graph: TaskGraph,
    *,
    devices: list[str],
    max_agents: int,
    architectures: list[str],
    time_scale: float,
    verify: bool,
    measure: bool,
) -> tuple[Plan, Verification | None]:
    if measure:
        await measure_llama_profiles(devices)
    if not verify:
        return plan(graph, devices, max_agents=max_agents, architectures=architectures), None
    async with (
        run_server() as server,
        open_bus(server.url, name="plan") as bus,
        open_team(bus, devices, max_agents, graph=graph, time_scale=time_scale) as team,
    ):
        overhead = await calibrate_overhead(team)
        chosen = plan(
            graph, devices, max_agents=max_agents, architectures=architectures, overhead_s=overhead
        )
        best = chosen.recommended
        run = await run_team(
            team, graph, best.n_agents, architecture=best.architecture, scheduling=best.scheduling
        )
    check = Verification(
        predicted_s=best.makespan_s,
        measured_s=run.makespan_s,
        relative_error=abs(best.makespan_s - run.makespan_s) / run.makespan_s,
        overhead_s=overhead,
    )
    return chosen, check


def _rate_line(rate: DeviceRate) -> str:
    """Where a device's rate came from: a planner's figures are only as good as its rates."""
    head = f"rate {rate.device}: {rate.tokens_per_s:.1f} tokens/s, {rate.source}"
    if rate.source == "measured":
        return f"{head} (profile {rate.profile_key}, {rate.measured_at})"
    if rate.source == "assumed":
        return f"{head}: {rate.note}"
    return head


def plan_cmd(
    graph: Annotated[str, typer.Argument(help="Graph file, shipped name, or paper key.")],
    *,
    devices: Annotated[
        str,
        typer.Option(
            help="Comma list of device classes or llama[:MODEL] (planned at its measured "
            "profile); agent i gets device i mod len."
        ),
    ] = "cpu-x86",
    max_agents: Annotated[int, typer.Option(help="Largest team to consider.")] = 8,
    architectures: Annotated[
        str, typer.Option(help=f"Comma list of {', '.join(ARCHITECTURES)}.")
    ] = "centralized-greedy,centralized-preassigned",
    verify: Annotated[
        bool, typer.Option("--verify", help="Run the recommendation on the team's agents.")
    ] = False,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure", help="Profile llama devices that have no measured profile first."
        ),
    ] = False,
    time_scale: Annotated[float, typer.Option(help="Wall seconds per modelled second.")] = 0.01,
    paper_data: Annotated[Path | None, typer.Option(help="The paper's data directory.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Recommend a team size and architecture with predicted makespan, speedup and cost."""
    try:
        task_graph = resolve_graph(graph, paper_data)
        chosen, check = anyio.run(
            lambda: _plan_and_verify(
                task_graph,
                devices=[d.strip() for d in devices.split(",") if d.strip()],
                max_agents=max_agents,
                architectures=[a.strip() for a in architectures.split(",") if a.strip()],
                time_scale=time_scale,
                verify=verify,
                measure=measure,
            )
        )
    except LmteamsError as exc:
        raise fail(exc) from exc
    if json_out:
        typer.echo(msgspec.json.encode({"plan": chosen, "verification": check}).decode())
        return
    one = chosen.baseline_device
    table = Table(
        title=f"{chosen.graph}: options (modelled seconds, overhead {chosen.overhead_s:.3f}s)",
        title_justify="left",
        caption=f"speedup: over one {one} agent (the fastest device), "
        f"{chosen.baseline_s:.1f}s; capacity: the team's agents' speeds summed, in {one} "
        "agents; efficiency: speedup / capacity",
        caption_justify="left",
    )
    columns = (
        "n", "architecture", "makespan s", f"speedup vs 1x {one}", "capacity", "efficiency",
        "agent-s",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "architecture" else "right")
    for o in chosen.options:
        mark = " *" if o == chosen.recommended else ""
        table.add_row(
            f"{o.n_agents}{mark}",
            o.architecture,
            f"{o.makespan_s:.1f}",
            f"{o.speedup:.2f}",
            f"{o.capacity:.2f}",
            f"{o.efficiency:.0%}",
            f"{o.agent_seconds:.0f}",
        )
    _out.print(table)
    for rate in chosen.rates:
        _out.print(_rate_line(rate), highlight=False)
    best = chosen.recommended
    _out.print(
        f"recommended: {best.n_agents} agents, {best.architecture} ({best.scheduling}): "
        f"{best.makespan_s:.1f}s, {best.speedup:.2f}x over one {one} agent "
        f"(within {chosen.tolerance:.0%} of the best)",
        highlight=False,
    )
    if check is not None:
        _out.print(
            f"verified: measured {check.measured_s:.1f}s vs predicted {check.predicted_s:.1f}s, "
            f"error {check.relative_error:.1%}",
            highlight=False,
        )
