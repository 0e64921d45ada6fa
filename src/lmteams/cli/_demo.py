"""``lmteams demo``: a bus, three agent processes on a real model, questions, live progress."""

from __future__ import annotations

import time
from typing import Annotated

import anyio
import typer
from rich.live import Live
from rich.table import Table

from lmteams.agents import (
    MemberInfo,
    Membership,
    Progress,
    Result,
    Stage,
    SupervisorConfig,
    open_supervisor,
)
from lmteams.cli._common import check_backend, err, out, positive, run_async, runs_on, setup_logs
from lmteams.cli._jobs import summarize, wait_showing
from lmteams.gossip import open_membership
from lmteams.hardware import BACKEND_KINDS, resolve_model
from lmteams.jobs import JobClient, Subtask, TaskGraph, connect

__all__ = ("demo", "QUESTIONS", "DEMO_JOB")

QUESTIONS = (
    "What is the capital of France? Answer in one sentence.",
    "What do bees make? Answer in one sentence.",
    "How many legs does a spider have? Answer in one sentence.",
    "What colour is the sky on a clear day? Answer in one sentence.",
    "Which planet do we live on? Answer in one sentence.",
    "What is frozen water called? Answer in one sentence.",
)


DEMO_JOB = TaskGraph(
    name="three-words",
    description="three answers in parallel, then one subtask that combines them",
    final="sentence",
    subtasks=(
        Subtask(id="fruit", title="Name one fruit. Answer with one word.", max_tokens=8),
        Subtask(id="colour", title="Name one colour. Answer with one word.", max_tokens=8),
        Subtask(id="animal", title="Name one animal. Answer with one word.", max_tokens=8),
        Subtask(
            id="sentence",
            title="Write one short sentence.",
            deps=("fruit", "colour", "animal"),
            max_tokens=48,
            prompt=(
                "Use these three words: {{ outputs['fruit'] | trim }}, "
                "{{ outputs['colour'] | trim }} and {{ outputs['animal'] | trim }}."
            ),
        ),
    ),
)
"""The demo's team job: its last prompt holds what the first three answered."""

_STYLES: dict[str, str] = {Stage.DONE: "green", Stage.FAILED: "red", Stage.CLAIMED: "yellow"}


class _Board:
    """What the live view shows: the team's live agents and where each question stands."""

    def __init__(self, questions: list[str]) -> None:
        self.agents: dict[str, MemberInfo] = {}
        self.questions = questions
        self.stage: dict[str, str] = {}
        self.who: dict[str, str] = {}
        self.results: dict[str, Result] = {}

    def see(self, view: Membership) -> None:
        """Take the live members of the team's membership view (what ``lmteams status`` shows)."""
        self.agents = {m.name: m for m in view.members() if m.live}

    def on_progress(self, progress: Progress) -> None:
        self.stage[progress.task_id] = progress.stage
        self.who[progress.task_id] = progress.agent

    def table(self, ids: list[str]) -> Table:
        table = Table(title="tasks", title_justify="left", expand=False)
        table.add_column("#", justify="right")
        table.add_column("question")
        table.add_column("agent")
        table.add_column("stage")
        for i, (task_id, question) in enumerate(zip(ids, self.questions, strict=True), 1):
            stage = self.stage.get(task_id, "queued")
            style = _STYLES.get(stage, "")
            shown = f"[{style}]{stage}[/{style}]" if style else stage
            table.add_row(str(i), question, self.who.get(task_id, "-"), shown)
        return table


def demo(
    *,
    agents: Annotated[int, typer.Option(min=1, max=64, help="How many agent processes.")] = 3,
    questions: Annotated[
        int, typer.Option(min=1, max=len(QUESTIONS), help="How many questions to ask.")
    ] = 3,
    model: Annotated[str, typer.Option(help="Catalogue name or .gguf path.")] = "smollm2-135m",
    backend: Annotated[
        str, typer.Option(help=f"Where the model runs: {'|'.join(BACKEND_KINDS)}.")
    ] = "auto",
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per answer.")] = 48,
    timeout: Annotated[
        float, typer.Option(callback=positive, help="Seconds to wait for everything.")
    ] = 600.0,
) -> None:
    """Start a bus and a team of agents on a real model, ask questions, show who did what."""
    setup_logs()
    check_backend(backend, "cpu-x86")
    asked = list(QUESTIONS[:questions])
    board = _Board(asked)

    async def main() -> None:
        out.rule("lmteams demo")
        out.print(
            f"An embedded NATS bus with JetStream, {agents} agent processes on "
            f"{runs_on(backend, model, 'cpu-x86')}, and {len(asked)} questions through the "
            "team's task queue.",
            highlight=False,
        )
        path = (
            model
            if backend == "sim"
            else str(
                resolve_model(model, progress=lambda msg: err.print(msg, highlight=False)).path
            )
        )
        config = SupervisorConfig(team="demo", agents=agents, model=model, backend=backend, port=0)
        with anyio.fail_after(timeout):
            async with (
                open_supervisor(config) as supervisor,
                connect(supervisor.url, team="demo", name="demo") as team,
                open_membership(team.bus, "demo") as view,
            ):
                await supervisor.start_agents(path)
                started = time.monotonic()
                with out.status("starting agents") as status:
                    while len(board.agents) < agents:
                        status.update(f"starting agents: {len(board.agents)}/{agents} live")
                        with anyio.move_on_after(0.5):
                            await view.wait_changed()
                        board.see(view)
                out.print(
                    f"{agents} agents live in {time.monotonic() - started:.1f}s: "
                    + ", ".join(
                        f"{m.name} ({m.facts.device}, pid {m.facts.pid})"
                        for m in board.agents.values()
                    )
                )
                ids = [f"demo-{i + 1}-{int(time.time() * 1000)}" for i in range(len(asked))]
                async with team.watch_progress(board.on_progress):
                    with Live(board.table(ids), console=out, refresh_per_second=8) as live:

                        async def ask(task_id: str, question: str) -> None:
                            board.results[task_id] = await team.submit(
                                question, max_tokens=max_tokens, task_id=task_id, timeout=timeout
                            )

                        async with anyio.create_task_group() as tg:
                            for task_id, question in zip(ids, asked, strict=True):
                                tg.start_soon(ask, task_id, question)
                            while len(board.results) < len(ids):
                                live.update(board.table(ids))
                                await anyio.sleep(0.1)
                        live.update(board.table(ids))
                out.print()
                _report(board, ids)
                await _team_job(team, agents, timeout)
                out.print("stopping: agents drain and leave, then the bus stops")

    try:
        run_async(main)
    except TimeoutError:
        err.print(f"[red]error:[/red] the demo did not finish within {timeout:g}s")
        raise typer.Exit(code=1) from None


async def _team_job(team: JobClient, agents: int, timeout: float) -> None:
    """One small job: the team answers three subtasks at once, then one agent combines them."""
    out.rule("a team job")
    out.print(
        "Three subtasks run in parallel on the team; a fourth, whose prompt is rendered from "
        "their outputs, combines them. The coordinator (the agent holding the team's lease) "
        "assigns each subtask to the agent expected to finish it first.",
        highlight=False,
    )
    job_id = await team.submit_job(DEMO_JOB, agents=agents)
    result = await wait_showing(team, job_id, timeout)
    summarize(result)
    final = next((r for r in result.subtasks if r.id == DEMO_JOB.final), None)
    if final is not None:
        out.print(f"[bold]its prompt[/bold] ({final.agent}): {final.prompt}", highlight=False)


def _report(board: _Board, ids: list[str]) -> None:
    out.rule("answers")
    for task_id, question in zip(ids, board.questions, strict=True):
        result = board.results[task_id]
        answer = result.answer.strip() if result.ok else f"[red]failed: {result.error}[/red]"
        out.print(f"[bold]Q:[/bold] {question}\n[bold]A[/bold] ({result.agent}): {answer}\n")
    table = Table(title="per agent", title_justify="left")
    for column in (
        "agent",
        "device",
        "model",
        "tasks",
        "tokens in",
        "tokens out",
        "seconds",
        "tok/s",
    ):
        table.add_column(
            column, justify="right" if column not in ("agent", "device", "model") else "left"
        )
    for name in sorted(board.agents):
        info = board.agents[name]
        mine = [r for r in board.results.values() if r.agent == name]
        gen_s = sum(r.generation_s for r in mine)
        tokens_out = sum(r.tokens_out for r in mine)
        table.add_row(
            name,
            info.facts.device,
            info.facts.model,
            str(len(mine)),
            str(sum(r.tokens_in for r in mine)),
            str(tokens_out),
            f"{sum(r.total_s for r in mine):.2f}",
            f"{tokens_out / gen_s:.0f}" if gen_s else "-",
        )
    out.print(table)
