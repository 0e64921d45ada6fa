"""`lmteams job`: files checked before the bus, what submit publishes, status/list/cancel,
and `submit --wait` following a job that a stand-in engine (the real board's transitions)
works through."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import msgspec
import nats.js.errors
import pytest
from nats.js.api import DeliverPolicy

from lmteams.bus import Bus, EmbeddedServer, Subjects, ensure_team_streams, publish_durable
from lmteams.jobs import (
    CancelJob,
    JobOptions,
    JobRequest,
    JobSpec,
    JobStatus,
    SubmitJob,
    build_result,
    open_board,
)
from lmteams.jobs._graph import Subtask, TaskGraph

from .conftest import lmteams

NOWHERE = "nats://127.0.0.1:1"
GOOD = """
name = "pair"
[job]
scheduling = "rounds"
[[subtasks]]
id = "left"
title = "Left half"
[[subtasks]]
id = "right"
title = "Right half"
[[subtasks]]
id = "join"
title = "Join"
deps = ["left", "right"]
prompt = "Combine {{ outputs.left }} and {{ outputs['right'] }}"
"""
BAD_FILES = {
    "cycle": (
        'name = "c"\n[[subtasks]]\nid = "a"\ntitle = "A"\ndeps = ["b"]\n'
        '[[subtasks]]\nid = "b"\ntitle = "B"\ndeps = ["a"]\n',
        ["cycle"],
    ),
    "unknown-dep": (
        'name = "u"\n[[subtasks]]\nid = "a"\ntitle = "A"\ndeps = ["ghost"]\n',
        ["ghost"],
    ),
    "non-dependency": (
        'name = "n"\n[[subtasks]]\nid = "a"\ntitle = "A"\n'
        '[[subtasks]]\nid = "b"\ntitle = "B"\nprompt = "{{ outputs.a }}"\n',
        ["b", "a"],
    ),
    "bad-option": (
        'name = "o"\n[job]\nagents = -1\n[[subtasks]]\nid = "a"\ntitle = "A"\n',
        ["agents"],
    ),
}
_REQUESTS = msgspec.msgpack.Decoder(JobRequest)


def _file(tmp_path: Path, text: str, name: str = "job.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_help_of_every_verb() -> None:
    assert all(v in lmteams("job", "--help").stdout for v in ("submit", "status", "list", "cancel"))
    submit = lmteams("job", "submit", "--help").stdout
    for option in ("--architecture", "--scheduling", "--agents", "--backups", "--no-backups",
                   "--lease", "--choose", "--placement", "--id", "--wait", "--timeout", "--json",
                   "--nats", "--team"):  # fmt: skip
        assert option in submit, option
    assert "--json" in lmteams("job", "status", "--help").stdout
    assert "--json" in lmteams("job", "list", "--help").stdout
    assert "--reason" in lmteams("job", "cancel", "--help").stdout


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_job_file_is_one_line_and_exit_2(invoke, tmp_path: Path, case: str) -> None:  # type: ignore[no-untyped-def]
    text, words = BAD_FILES[case]
    done = invoke("job", "submit", _file(tmp_path, text), "--nats", NOWHERE)
    assert done.exit_code == 2, done.output
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert all(word in lines[0] for word in words), lines[0]


@pytest.mark.parametrize(
    ("extra", "word"),
    [
        (["--architecture", "mesh"], "--architecture"),
        (["--scheduling", "later"], "--scheduling"),
        (["--choose", "dice"], "--choose"),
        (["--placement", "random"], "--placement"),
        (["--placement", "preassigned", "--architecture", "decentralized"], "centralized"),
        (["--lease", "0"], "--lease"),
        (["--agents", "-1"], "--agents"),
        (["--id", "a.b"], "job id"),
        (["--team", "a.b"], "--team"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(  # type: ignore[no-untyped-def]
    invoke, tmp_path: Path, extra: list[str], word: str
) -> None:
    done = invoke("job", "submit", _file(tmp_path, GOOD), "--nats", NOWHERE, *extra)
    assert done.exit_code == 2, done.output
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], done.stderr


async def _requests(bus: Bus, subjects: Subjects) -> list[SubmitJob | CancelJob]:
    js = bus.nc.jetstream()
    count = (await js.stream_info(subjects.jobs_stream)).state.messages
    sub = await js.subscribe(
        subjects.job_requests, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    found = [_REQUESTS.decode((await sub.next_msg(timeout=5)).data) for _ in range(count)]
    await sub.unsubscribe()
    return found


async def test_a_bad_file_publishes_nothing(
    nats_server: EmbeddedServer, bus: Bus, home: dict[str, str], tmp_path: Path
) -> None:
    path = _file(tmp_path, BAD_FILES["cycle"][0])
    done = await anyio.to_thread.run_sync(
        lambda: lmteams(
            "job", "submit", path, "--team", "badjob", "--nats", nats_server.url, env=home
        )
    )
    assert done.returncode == 2 and "cycle" in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(nats.js.errors.NotFoundError):  # it never even connected
        await bus.js.stream_info(Subjects("badjob").jobs_stream)


async def test_submit_publishes_the_file_with_its_options(
    nats_server: EmbeddedServer, bus: Bus, home: dict[str, str], tmp_path: Path
) -> None:
    path = _file(tmp_path, GOOD)
    args = ["--team", "cli", "--nats", nats_server.url, "--id", "job-c", "--agents", "2"]
    args += ["--architecture", "decentralized", "--no-backups", "--lease", "4", "--choose", "model"]
    done = await anyio.to_thread.run_sync(lambda: lmteams("job", "submit", path, *args, env=home))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "job-c"
    [request] = await _requests(bus, Subjects("cli"))
    assert isinstance(request, SubmitJob)
    assert (request.job.id, request.job.graph.name) == ("job-c", "pair")
    assert request.job.options == JobOptions(
        architecture="decentralized",
        scheduling="rounds",  # from the file's [job] table
        agents=2,
        backups=False,
        lease_s=4.0,
        choose="model",
    )


async def test_status_list_and_cancel(
    nats_server: EmbeddedServer, bus: Bus, home: dict[str, str], tmp_path: Path
) -> None:
    team, url = "watch", nats_server.url
    board = await open_board(bus, team)
    graph = TaskGraph(name="duo", subtasks=(Subtask(id="x", title="X"), Subtask(id="y", title="Y")))
    await board.admit(JobSpec(id="job-s", graph=graph), ("w1",))

    def cli(*args: str):  # type: ignore[no-untyped-def]
        return anyio.to_thread.run_sync(
            lambda: lmteams("job", *args, "--team", team, "--nats", url, env=home)
        )

    status = await cli("status", "job-s", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["job"]["spec"]["id"] == "job-s" and shown["result"] is None
    assert [s["id"] for s in shown["subtasks"]] == ["x", "y"]
    table = await cli("status", "job-s")
    assert table.returncode == 0 and "job job-s (duo): running" in table.stdout
    listed = await cli("list", "--json")
    assert [j["id"] for j in json.loads(listed.stdout)] == ["job-s"]
    assert "job-s" in (await cli("list")).stdout
    missing = await cli("status", "job-none")
    assert missing.returncode == 1 and missing.stderr.startswith("error:")
    cancel = await cli("cancel", "job-s", "--reason", "enough")
    assert cancel.returncode == 0 and cancel.stdout.strip() == "job-s", cancel.stderr
    assert await _requests(bus, Subjects(team)) == [CancelJob(job_id="job-s", reason="enough")]


async def _stand_in_engine(bus: Bus, team: str) -> None:
    """What the lead's engine does, by the board's own transitions: admit the one request,
    commit every subtask in order, end the job and publish its result."""
    subjects = Subjects(team)
    await ensure_team_streams(bus, subjects)
    board = await open_board(bus, team)
    sub = await bus.nc.jetstream().subscribe(subjects.job_requests, ordered_consumer=True)
    request = _REQUESTS.decode((await sub.next_msg(timeout=30)).data)
    await sub.unsubscribe()
    assert isinstance(request, SubmitJob)
    job_id = request.job.id
    await board.admit(request.job, ("w1",))
    for index, s in enumerate(request.job.graph.subtasks):
        current = await board.state(job_id, index)
        assert current is not None
        claimed = await board.claim(job_id, index, current[1], "w1")
        assert claimed is not None
        now = time.time()
        await board.commit(
            job_id, index, claimed[0].claim_rev, "w1", output=f"[{s.id}] answer",
            prompt=s.title, tokens_in=5, tokens_out=7, started_at=now, ended_at=now + 1,
        )  # fmt: skip
    await board.end(job_id, JobStatus.DONE)
    view = await board.view(job_id)
    assert view is not None
    await publish_durable(bus, subjects.job_result(job_id), build_result(view), msg_id=job_id)


@pytest.mark.parametrize("json_out", [False, True], ids=["lines", "json"])
async def test_submit_wait_follows_the_job_and_prints_its_result(
    nats_server: EmbeddedServer, bus: Bus, home: dict[str, str], tmp_path: Path, json_out: bool
) -> None:
    path = _file(tmp_path, GOOD)
    team = "waited"
    args = ["--team", team, "--nats", nats_server.url, "--wait", "--timeout", "60"]
    args += ["--json"] if json_out else []
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stand_in_engine, bus, team)
        done = await anyio.to_thread.run_sync(
            lambda: lmteams("job", "submit", path, *args, env=home, timeout=90)
        )
    assert done.returncode == 0, done.stderr
    if json_out:
        result = json.loads(done.stdout)
        assert result["status"] == "done" and result["outputs"] == {"join": "[join] answer"}
        assert result["figures"]["agents"] == 1
        return
    lines = done.stdout.splitlines()
    for subtask in ("left", "right", "join"):  # one plain line per change, not a table
        assert any(line.startswith(f"{subtask} done w1") for line in lines), done.stdout
    assert lines[-1] == "[join] answer"  # the output, brackets kept
    assert "done in" in done.stderr and "work/span bound" in done.stderr
