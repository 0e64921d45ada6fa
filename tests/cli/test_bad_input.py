"""Every verb answers bad input with exit code 1 or 2 and one `error:` line naming the field.

Each case is refused before anything starts or connects (no bus is running here, and none
is needed): a case that got past validation would hang, traceback or start processes.
"""

from __future__ import annotations

import pytest

NOWHERE = "nats://127.0.0.1:1"  # nothing listens: a case that connects fails differently

CASES = [
    # (argv, the words the one error line must contain)
    (["task", "publish", "hi", "--rounds", "x", "--nats", NOWHERE], ["--rounds"]),
    (["task", "publish", "hi", "--agents", "0", "--nats", NOWHERE], ["agents", "0"]),
    (["task", "publish", "hi", "--strategy", "zz", "--nats", NOWHERE], ["strategy", "zz"]),
    (["task", "publish", "hi", "--normalizer", "zz", "--nats", NOWHERE], ["normalizer", "zz"]),
    (
        [
            "task",
            "publish",
            "hi",
            "--strategy",
            "debate",
            "--agents",
            "2",
            "--rounds",
            "0",
            "--nats",
            NOWHERE,
        ],
        ["rounds", "0"],
    ),
    (["task", "publish", "hi", "--max-tokens", "0", "--nats", NOWHERE], ["max_tokens"]),
    (["task", "publish", "hi", "--temperature", "9", "--nats", NOWHERE], ["temperature"]),
    (["task", "publish", "hi", "--id", "a.b", "--nats", NOWHERE], ["task id", "a.b"]),
    (["task", "publish", "  ", "--nats", NOWHERE], ["prompt"]),
    (["task", "publish", "hi", "--team", "a.b", "--nats", NOWHERE], ["--team"]),
    (["task", "publish", "hi", "--timeout", "0", "--nats", NOWHERE], ["--timeout"]),
    (["task", "publish"], ["prompt"]),
    (["up", "--agents", "0"], ["--agents"]),
    (["up", "--backend", "zz"], ["--backend", "zz"]),
    (["up", "--backend", "sim", "--sim-device", "zz"], ["--sim-device", "zz"]),
    (["up", "--port", "99999"], ["--port"]),
    (["up", "--team", "a b"], ["--team"]),
    (["up", "--ack-wait", "0"], ["--ack-wait"]),
    (["up", "--replicas", "0"], ["--replicas"]),
    (["down", "--team", "a.b"], ["--team"]),
    (["down", "--timeout", "-1"], ["--timeout"]),
    (["down", "--team", "nobody"], ["nobody"]),
    (["bus", "up", "--port", "99999"], ["--port"]),
    (["bus", "up", "--cluster", "0"], ["--cluster"]),
    (["bus", "up", "--cluster", "3", "--port", "65534"], ["65534"]),
    (["bus", "up", "--team", "a.b"], ["--team"]),
    (["bus", "up", "--agents", "0", "--secure"], ["--agents"]),
    (["agent", "start"], ["--name"]),
    (["agent", "start", "--name", "a.b", "--backend", "sim"], ["--name", "a.b"]),
    (["agent", "start", "--name", "a1", "--backend", "zz"], ["--backend", "zz"]),
    (
        ["agent", "start", "--name", "a1", "--backend", "sim", "--sim-device", "zz"],
        ["--sim-device"],
    ),
    (["agent", "start", "--name", "a1", "--backend", "sim", "--elect", "a.b"], ["--elect"]),
    (
        ["agent", "start", "--name", "a1", "--backend", "sim", "--lease-ttl", "0"],
        ["--lease-ttl"],
    ),
    (
        ["agent", "start", "--name", "a1", "--model", "/nonexistent/m.gguf"],
        ["/nonexistent/m.gguf"],
    ),
    (["status", "--team", "a.b"], ["--team"]),
    (["status", "--wait", "0"], ["--wait"]),
    (["hardware", "--bogus"], ["--bogus"]),
    (["hardware", "profile", "--backend", "zz"], ["--backend", "zz"]),
    (["hardware", "profile", "--threads", "0"], ["--threads"]),
    (["model", "pull", "zz"], ["zz"]),
    (["model", "path", "zz"], ["zz"]),
    (["model", "nope"], ["nope"]),
    (["study", "predict", "zz"], ["zz"]),
    (["study", "nope"], ["nope"]),
    (["plan", "zz"], ["zz"]),
    (["plan", "fully-serial-20", "--devices", "zz"], ["device", "zz"]),
    (["plan", "fully-serial-20", "--architectures", "zz"], ["architecture", "zz"]),
    (["plan", "fully-serial-20", "--max-agents", "0"], ["max_agents"]),
    (["demo", "--agents", "0"], ["--agents"]),
    (["demo", "--questions", "9"], ["--questions"]),
    (["demo", "--backend", "zz"], ["--backend", "zz"]),
    (["demo", "--timeout", "0"], ["--timeout"]),
    (["nope"], ["nope"]),
]


@pytest.mark.parametrize(("argv", "words"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_clear_line(invoke, argv: list[str], words: list[str]) -> None:  # type: ignore[no-untyped-def]
    done = invoke(*argv)
    assert done.exit_code in (1, 2), (done.exit_code, done.output)
    assert "Traceback" not in done.output
    assert not isinstance(done.exception, Exception) or isinstance(done.exception, SystemExit)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:"), lines[0]
    for word in words:
        assert word in lines[0], lines[0]
