"""`lmteams task publish`: checked before it connects, and every option reaches the Task."""

from __future__ import annotations

import anyio
import nats.js.errors
import pytest

from lmteams.agents import Task
from lmteams.bus import Bus, Codec, EmbeddedServer, Subjects, last_message

from .conftest import lmteams


async def test_invalid_task_is_refused_before_the_bus(
    nats_server: EmbeddedServer, bus: Bus, home: dict[str, str]
) -> None:
    """A live bus is there to be used: only validation before connecting keeps it untouched
    (`task publish` creates the team's streams as soon as it connects)."""
    done = await anyio.to_thread.run_sync(
        lambda: lmteams(
            "task",
            "publish",
            "hi",
            "--agents",
            "0",
            "--team",
            "refused",
            "--nats",
            nats_server.url,
            env=home,
        )
    )
    assert done.returncode == 2, done.stderr
    assert "agents must be at least 1" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(nats.js.errors.NotFoundError):
        await bus.js.stream_info(Subjects("refused").tasks_stream)


async def test_published_task_carries_every_option(
    nats_server: EmbeddedServer, bus: Bus, home: dict[str, str]
) -> None:
    """Read back from the JetStream tasks stream: rounds and normalizer were once dropped."""
    done = await anyio.to_thread.run_sync(
        lambda: lmteams(
            "task",
            "publish",
            "Is 7 prime?",
            "--team",
            "opts",
            "--nats",
            nats_server.url,
            "--id",
            "opt-1",
            "--strategy",
            "debate",
            "--agents",
            "2",
            "--rounds",
            "2",
            "--normalizer",
            "yesno",
            "--system",
            "Be brief.",
            "--max-tokens",
            "9",
            "--temperature",
            "0.5",
            "--seed",
            "7",
            env=home,
        )
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "opt-1"
    subjects = Subjects("opts")
    stored = await last_message(bus, subjects.tasks_stream, subjects.tasks)
    assert stored is not None
    task = bus.decode_raw(stored[0], stored[1], Codec(Task))
    assert (task.id, task.prompt, task.system) == ("opt-1", "Is 7 prime?", "Be brief.")
    assert (task.strategy, task.agents, task.rounds, task.normalizer) == ("debate", 2, 2, "yesno")
    assert (task.max_tokens, task.temperature, task.seed) == (9, 0.5, 7)
    assert task.submitted_at > 0
