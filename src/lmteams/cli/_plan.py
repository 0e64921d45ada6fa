"""``lmteams plan``: which team size and architecture to use for a task graph."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import anyio
import msgspec
import typer
from rich.table import Table

from lmteams.bus import open_bus, run_server
from lmteams.cli._common import choice, fail
from lmteams.cli._common import out as _out
from lmteams.errors import LmteamsError
from lmteams.study import (
    ARCHITECTURES,
    OBJECTIVES,
    DeviceRate,
    Overhead,
    Plan,
    TaskGraph,
    Verification,
    measure_llama_profiles,
    plan,
    resolve_graph,
    verify_plan,
)

__all__ = ("plan_cmd",)


class _Request(msgspec.Struct, frozen=True, kw_only=True):
    """What the user asked the planner, apart from the graph."""

    devices: list[str]
    max_agents: int
    architectures: list[str]
    schedulings: list[str]
    objective: str
    token_budget: int | None
    tolerance: float
    straggler_rate: float
    straggler_factor: float
    crash_rate: float
    repetitions: int
    samples: int
    seed: int
    paper_data: Path | None


def _make_plan(graph: TaskGraph, r: _Request, overheads: Mapping[str, Overhead]) -> Plan:
    return plan(
        graph,
        r.devices,
        max_agents=r.max_agents,
        architectures=r.architectures,
        schedulings=r.schedulings,
        overheads=overheads or None,
        objective=r.objective,
        token_budget=r.token_budget,
        tolerance=r.tolerance,
        straggler_rate=r.straggler_rate,
        straggler_factor=r.straggler_factor,
        crash_rate=r.crash_rate,
        repetitions=r.repetitions,
        samples=r.samples,
        seed=r.seed,
        paper_data=r.paper_data,
    )


async def _plan_and_verify(
    graph: TaskGraph, request: _Request, *, time_scale: float, verify: bool, measure: bool
) -> tuple[Plan, Verification | None]:
    if measure:
        await measure_llama_profiles(request.devices)
    if not verify:
        return _make_plan(graph, request, {}), None
    async with run_server() as server, open_bus(server.url, name="plan") as bus:
        return await verify_plan(
            bus,
            graph,
            lambda overheads: _make_plan(graph, request, overheads),
            time_scale=time_scale,
            seed=request.seed,
            paper_data=request.paper_data,
        )


def _rate_line(rate: DeviceRate) -> str:
    """Where a device's rate came from: a planner's figures are only as good as its rates."""
    head = f"rate {rate.device}: {rate.tokens_per_s:.1f} tokens/s, {rate.source}"
    if rate.source == "measured":
        return f"{head} (profile {rate.profile_key}, {rate.measured_at})"
    if rate.source == "assumed":
        return f"{head}: {rate.note}"
    return head


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _print(chosen: Plan, check: Verification | None) -> None:
    one = chosen.baseline_device
    k = chosen.repetitions
    overheads = "; ".join(
        f"{a} "
        + ", ".join(
            f"{x:.2f}" + (f"±{o.error_at(n):.2f}" if o.errors else "") + f"s at n={n}"
            for n, x in zip(o.sizes, o.seconds, strict=True)
        )
        for a, o in chosen.overheads.items()
    )
    table = Table(
        title=f"{chosen.graph}: options (modelled seconds; Monte Carlo, {chosen.samples} runs "
        f"each; overhead per subtask: {overheads})",
        title_justify="left",
    )
    columns = (
        "n", "architecture", "scheduling", "mean s", f"90% of mean-of-{k}", "90% of one run",
        "exact s", f"speedup vs 1x {one}", "capacity", "efficiency", "agent-s", "tokens",
    )  # fmt: skip
    for column in columns:
        left = column in {"architecture", "scheduling"}
        table.add_column(column, justify="left" if left else "right")
    for o in chosen.options:
        mark = " *" if o == chosen.recommended else ""
        p = o.prediction
        table.add_row(
            f"{o.n_agents}{mark}",
            o.architecture,
            o.scheduling,
            f"{o.makespan_s:.1f}",
            f"{p.mean_interval.low:.1f}-{p.mean_interval.high:.1f}",
            f"{p.run_interval.low:.1f}-{p.run_interval.high:.1f}",
            f"{o.deterministic_s:.1f}",
            f"{o.speedup:.2f}",
            f"{o.capacity:.2f}",
            f"{o.efficiency:.0%}",
            f"{o.agent_seconds:.0f}",
            f"{o.tokens}",
        )
    _out.print(table)
    for line in (
        f"mean: over the simulated runs; 90% of mean-of-{k}: where the mean of {k} real runs "
        "should fall; 90% of one run: where a single run should fall",
        "exact: the simulator at mean rates (no variance); * recommended",
        f"speedup: over one {one} agent (the fastest device), {chosen.baseline_s:.1f}s",
        f"capacity: the team's agents' speeds summed, in {one} agents",
        "efficiency: speedup / capacity",
    ):
        _out.print(line, highlight=False)
    for rate in chosen.rates:
        _out.print(_rate_line(rate), highlight=False)
    _out.print(
        f"devices: stragglers {chosen.straggler_rate:.0%} x{chosen.straggler_factor:g}, "
        f"crashes {chosen.crash_rate:.0%} of attempts",
        highlight=False,
    )
    budget = f" (budget {chosen.token_budget} tokens)" if chosen.token_budget is not None else ""
    best = chosen.recommended
    p = best.prediction
    _out.print(
        f"objective: {chosen.objective}{budget}\n"
        f"recommended: {best.n_agents} agents, {best.architecture} ({best.scheduling}): "
        f"{best.makespan_s:.1f}s (mean of {k}: 90% in {p.mean_interval.low:.1f}-"
        f"{p.mean_interval.high:.1f}s), {best.tokens} tokens, {best.speedup:.2f}x over one "
        f"{one} agent",
        highlight=False,
    )
    if check is not None:
        errors = ", ".join(f"{e:+.1%}" for e in check.errors)
        inside = "inside" if check.mean_inside else "OUTSIDE"
        _out.print(
            f"verified {check.n_agents} agents, {check.architecture} ({check.scheduling}), "
            f"{len(check.measured_s)} runs: measured mean {check.measured_mean_s:.1f}s vs "
            f"predicted {check.predicted_s:.1f}s (error {check.relative_error:.1%}, {inside} "
            f"the predicted 90% interval of the mean); per-run errors {errors}; median "
            f"{check.median_error:.1%}, p90 {check.p90_error:.1%}; {check.runs_inside} of "
            f"{len(check.measured_s)} runs inside the one-run interval",
            highlight=False,
        )


def plan_cmd(
    graph: Annotated[str, typer.Argument(help="Graph file, shipped name, or paper key.")],
    *,
    devices: Annotated[
        str,
        typer.Option(
            help="Comma list of device classes, steady, paper[:MODEL], paper-resample[:MODEL] "
            "or llama[:MODEL] (planned at its measured profile); agent i gets device i mod len."
        ),
    ] = "cpu-x86",
    max_agents: Annotated[int, typer.Option(help="Largest team to consider.")] = 8,
    architectures: Annotated[
        str, typer.Option(help=f"Comma list of {', '.join(ARCHITECTURES)}.")
    ] = "centralized-greedy,centralized-preassigned",
    schedulings: Annotated[str, typer.Option(help="Comma list of async, rounds.")] = "async",
    objective: Annotated[
        str, typer.Option(help=f"What the recommendation optimises: {', '.join(OBJECTIVES)}.")
    ] = "fastest",
    token_budget: Annotated[
        int | None, typer.Option(help="Tokens allowed (fastest-within-budget).")
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(help="fastest: take the fewest agents within this fraction of the best."),
    ] = 0.0,
    straggler_rate: Annotated[float, typer.Option(help="Share of calls that straggle.")] = 0.0,
    straggler_factor: Annotated[float, typer.Option(help="How much slower they are.")] = 3.0,
    crash_rate: Annotated[float, typer.Option(help="Share of attempts that crash.")] = 0.0,
    repetitions: Annotated[
        int, typer.Option(help="Runs the option will be averaged over (and --verify runs).")
    ] = 3,
    samples: Annotated[int, typer.Option(help="Monte Carlo runs per option.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of the simulation and the team.")] = 0,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Run the recommendation --repetitions times on a team."),
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
    """Recommend a team size and architecture by an objective, with predicted makespan (and
    its 90% intervals), speedup and token cost."""
    choice(objective, OBJECTIVES, "--objective")
    request = _Request(
        devices=_split(devices),
        max_agents=max_agents,
        architectures=_split(architectures),
        schedulings=_split(schedulings),
        objective=objective,
        token_budget=token_budget,
        tolerance=tolerance,
        straggler_rate=straggler_rate,
        straggler_factor=straggler_factor,
        crash_rate=crash_rate,
        repetitions=repetitions,
        samples=samples,
        seed=seed,
        paper_data=paper_data,
    )
    try:
        task_graph = resolve_graph(graph, paper_data)
        chosen, check = anyio.run(
            lambda: _plan_and_verify(
                task_graph, request, time_scale=time_scale, verify=verify, measure=measure
            )
        )
    except LmteamsError as exc:
        raise fail(exc) from exc
    if json_out:
        payload = {"objective": chosen.objective, "plan": chosen, "verification": check}
        typer.echo(msgspec.json.encode(payload).decode())
        return
    _print(chosen, check)
