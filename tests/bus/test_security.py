"""Authentication and least-privilege permissions, checked against a real nats-server.

Every refusal here is the server's: each credential tries what it must not do with plain
nats-py calls, and the team's state is read back with the operator's credential.
"""

from __future__ import annotations

import dataclasses
import io
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import msgspec
import nats
import nats.errors
import pytest
import structlog
from nats.aio.msg import Msg
from nats.js import api

from lmteams.agents import (
    AgentIdentity,
    Chunk,
    MemberFacts,
    Ping,
    Pong,
    Stop,
    TeamClient,
    WorkerAgent,
    WorkerConfig,
    connect,
    open_runtime,
)
from lmteams.bus import (
    KEYS_BUCKET,
    KV,
    Bus,
    BusAuth,
    Codec,
    EmbeddedServer,
    Incoming,
    Role,
    ServerConfig,
    SubjectKind,
    Subjects,
    free_port,
    inbox_prefix,
    load_security,
    new_id,
    new_nkey,
    open_bus,
    open_kv,
    provision_team,
    run_server,
    team_security,
    write_credentials,
)
from lmteams.consensus import LeaderElection
from lmteams.errors import (
    NoRespondersError,
    NotConnectedError,
    RequestTimeoutError,
    RevisionMismatchError,
)
from lmteams.gossip import SwimConfig, open_membership
from lmteams.hardware import BackendConfig
from lmteams.logging import configure
from lmteams.testing import Secured, wait_until

TEAM = "sec"  # the `secured` fixture's team (tests/conftest.py)
SIM = WorkerConfig(
    backend=BackendConfig(kind="sim", sim_device="h100-cuda"), fetch_timeout_s=0.2, heartbeat_s=0.5
)


def test_credential_files_are_private(tmp_path: Path) -> None:
    security = team_security(TEAM, ["a1"], mode="nkey")
    files = write_credentials(security, tmp_path / "creds")
    assert stat.S_IMODE((tmp_path / "creds").stat().st_mode) == 0o700
    for path in [*files.values(), tmp_path / "creds" / "security.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert files["a1"].read_text().strip() == security.credential("a1").nkey_seed
    assert load_security(tmp_path / "creds") == security


def test_reprs_hide_secrets() -> None:
    security = team_security(TEAM, ["a1"], mode="password")
    secrets = [c.password for c in security.credentials]
    auth = BusAuth(user="u", password=secrets[0], nkey_seed="/x.nk")
    shown = [repr(security), str(auth), *map(repr, security.credentials)]
    nk = team_security(TEAM, ["a1"])
    shown += [repr(c) for c in nk.credentials]
    secrets += [c.nkey_seed for c in nk.credentials]
    assert not [s for s in secrets for text in shown if s in text]


def test_new_nkeys_are_distinct_user_keys() -> None:
    (seed1, pub1), (seed2, pub2) = new_nkey(), new_nkey()
    assert seed1.startswith("SU") and pub1.startswith("U") and len(pub1) == 56
    assert seed1 != seed2 and pub1 != pub2


def test_permissions_follow_the_subject_tree() -> None:
    security = team_security(TEAM, ["a1", "a2"])
    a1 = security.permissions(security.credential("a1"))
    stream = Subjects(TEAM).all(SubjectKind.STREAM)  # answers' chunks: agents write, clients read
    assert stream in a1["publish"]["allow"] and stream not in a1["subscribe"]["allow"]
    assert "lmt.sec.control.a1" in a1["subscribe"]["allow"]
    assert "lmt.sec.control.a2" not in a1["subscribe"]["allow"]
    assert "lmt.sec.control.>" in a1["publish"]["deny"]
    client = security.permissions(security.credential("client"))
    assert not any(".agent." in s for s in client["subscribe"]["allow"])
    assert stream in client["subscribe"]["allow"]
    assert not any(".stream." in s for s in client["publish"]["allow"])
    assert security.credential("admin").role is Role.ADMIN
    for name in ("a1", "client"):
        perms = security.permissions(security.credential(name))
        allowed = perms["publish"]["allow"] + perms["subscribe"]["allow"]
        # no shared inbox, no verb that changes a stream or a consumer
        assert "_INBOX.>" not in allowed
        assert not [a for a in allowed for v in ("UPDATE", "DELETE", "PURGE") if v in a]
        assert not [a for a in allowed if "STREAM.CREATE" in a or "DURABLE" in a]
        assert "$JS.API.STREAM.UPDATE.>" in perms["publish"]["deny"]
        own = f"{inbox_prefix(security.credential(name).identity)}.>"
        # a client also reads the protocol caller SDK's fixed reply prefix (its answers only)
        sdk = ["_INBOX.agents.>"] if name == "client" else []
        assert [a for a in perms["subscribe"]["allow"] if a.startswith("_INBOX")] == [own, *sdk]


def test_message_ids_are_fork_safe() -> None:
    """A forked child must not repeat its parent's ids (they are ``Nats-Msg-Id`` dedupe keys)."""
    parent_before = new_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the next ids it makes, and leave without cleanup
        os.close(read)
        os.write(write, " ".join(new_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child_ids = pipe.read().decode().split()
    os.waitpid(pid, 0)
    parent_ids = [new_id() for _ in range(3)]
    assert len(child_ids) == 3
    assert not set(child_ids) & set(parent_ids)
    assert child_ids[0][:8] != parent_before[:8]  # a new per-process prefix, not just a count


async def test_unauthenticated_client_is_refused(secured: Secured) -> None:
    with pytest.raises(NotConnectedError, match="refused these credentials"):
        async with open_bus(secured.server.url, connect_timeout=2):
            pass


async def test_unknown_key_and_wrong_password_are_refused(secured: Secured, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.nk"
    stranger.write_text(new_nkey()[0])
    with pytest.raises(NotConnectedError):
        async with open_bus(secured.server.url, nkey_seed=str(stranger), connect_timeout=2):
            pass
    with pytest.raises(NotConnectedError):
        async with open_bus(secured.server.url, user="admin", password="guess", connect_timeout=2):
            pass


async def test_agent_cannot_publish_to_another_agents_control(secured: Secured) -> None:
    s = Subjects(TEAM)
    seen: list[str] = []

    async def record(inc: Incoming[Stop]) -> None:
        seen.append(inc.subject)

    async with (
        open_bus(secured.server.url, name="admin", nkey_seed=secured.seed("admin")) as admin,
        open_bus(secured.server.url, name="a1", nkey_seed=secured.seed("a1")) as a1,
    ):
        await admin.subscribe(s.all(SubjectKind.CONTROL), record, codec=Codec(Stop))
        await a1.publish(s.control("a2"), Stop(reason="takeover"))
        await a1.publish(s.control("a1"), Stop(reason="even my own"))
        await admin.publish(s.control("a2"), Stop(reason="operator"))  # the control path works
        await a1.flush()
        await wait_until(lambda: a1.statistics().permission_violations >= 2)
        await wait_until(lambda: bool(seen))
        assert seen == ["lmt.sec.control.a2"]  # only the operator's message got through

        # a1 may listen on its own control subject, not on a2's inbox or control
        before = a1.statistics().permission_violations
        await a1.subscribe(s.control("a1"), record, codec=Codec(Stop))
        await a1.subscribe(s.agent("a2"), record, codec=Codec(Stop))
        await a1.subscribe(s.control("a2"), record, codec=Codec(Stop))
        await wait_until(lambda: a1.statistics().permission_violations == before + 2)


async def test_client_cannot_impersonate_an_agent(secured: Secured) -> None:
    s = Subjects(TEAM)
    async with (
        open_bus(secured.server.url, name="admin", nkey_seed=secured.seed("admin")) as admin,
        open_bus(secured.server.url, name="client", nkey_seed=secured.seed("client")) as client,
    ):

        async def fake_pong(inc: Incoming[Ping]) -> None:
            await inc.respond(Pong(agent="a1", state="serving", served=999))

        await client.subscribe(s.agent("a1"), fake_pong, codec=Codec(Ping))
        await wait_until(lambda: client.statistics().permission_violations >= 1)
        with pytest.raises(NoRespondersError):
            await admin.request(s.agent("a1"), Ping(), expect=Pong, timeout=1)
        # nor may it speak on agents' subjects
        with pytest.raises(RequestTimeoutError):
            await client.request(s.agent("a2"), Ping(), expect=Pong, timeout=0.5)
        # nor forge a streamed answer's chunks for another client to read
        seen: list[Chunk] = []

        async def read(inc: Incoming[Chunk]) -> None:
            seen.append(inc.body)

        await admin.subscribe(s.stream("t1"), read, codec=Codec(Chunk))
        before = client.statistics().permission_violations
        forged = Chunk(task_id="t1", agent="a1", delivery=1, seq=0, text="forged", last=True)
        await client.publish(s.stream("t1"), forged)
        await wait_until(lambda: client.statistics().permission_violations > before)
        await admin.publish(s.stream("t1"), msgspec.structs.replace(forged, text="real"))
        await wait_until(lambda: bool(seen))
        assert [c.text for c in seen] == ["real"]


async def _refused(bus: Bus, call: Callable[[], object]) -> None:
    """``call`` (a JetStream API request) gets no answer and the server reports a violation."""
    before = bus.statistics().permission_violations
    with pytest.raises(nats.errors.TimeoutError):
        await call()  # type: ignore[misc]
    await wait_until(lambda: bus.statistics().permission_violations > before)


@pytest.mark.parametrize("who", ["client", "a1"])
async def test_no_member_may_change_or_delete_streams_or_consumers(
    secured: Secured, who: str
) -> None:
    s = Subjects(TEAM)
    async with secured.connect("admin") as admin, secured.connect(who) as member:
        await admin.nc.jetstream().publish(s.results("q1"), b'{"type":"result"}')
        before = await admin.js.stream_info(s.results_stream)
        jsm = member.nc.jsm(timeout=1.0)
        shrunk = dataclasses.replace(before.config, max_msgs=1)  # the reviewer's attack
        await _refused(member, lambda: jsm.update_stream(shrunk))
        await _refused(member, lambda: jsm.purge_stream(s.results_stream))
        await _refused(member, lambda: jsm.delete_stream(s.results_stream))
        await _refused(member, lambda: jsm.delete_stream(s.tasks_stream))
        await _refused(member, lambda: jsm.delete_consumer(s.tasks_stream, "workers"))
        thief = api.ConsumerConfig(durable_name="thief", ack_policy=api.AckPolicy.EXPLICIT)
        await _refused(member, lambda: jsm.add_consumer(s.tasks_stream, thief))
        await _refused(member, lambda: jsm.delete_stream(f"KV_{s.kv_bucket('leases')}"))
        # what they may do still works: read the stream's info and the stored result
        assert (await jsm.stream_info(s.results_stream)).config.max_msgs == before.config.max_msgs
        stored = await member.js.get_last_msg(s.results_stream, s.results("q1"))
        assert stored.data == b'{"type":"result"}'
        after = await admin.js.stream_info(s.results_stream)
        assert after.config.max_msgs == before.config.max_msgs and after.state.messages == 1
        names = {c.name for c in await admin.js.consumers_info(s.tasks_stream)}
        assert names == {"workers"}


async def test_each_identity_reads_only_its_own_inbox(secured: Secured) -> None:
    """eve may not listen where task bodies travel: the shared inbox, another identity's
    prefix, the tasks subject, agents' inboxes or roles, or everything."""
    a1_prefix = inbox_prefix(secured.security.credential("a1").identity)
    async with secured.connect("eve") as eve:
        eve_id = secured.security.credential("eve").identity
        assert bytes(eve.nc._inbox_prefix).decode() == inbox_prefix(eve_id)
        seen: list[Msg] = []

        async def record(msg: Msg) -> None:
            seen.append(msg)

        forbidden = ["_INBOX.>", f"{a1_prefix}.>", "lmt.sec.tasks", "lmt.sec.agent.>", ">"]
        for i, subject in enumerate(forbidden):
            await eve.nc.subscribe(subject, cb=record)
            await eve.nc.flush()
            await wait_until(lambda i=i: eve.statistics().permission_violations == i + 1)
        # a request eve makes is answered on her own prefix (the JetStream API, here)
        info = await eve.js.stream_info(Subjects(TEAM).results_stream)
        assert info.config.name == Subjects(TEAM).results_stream
        assert not seen


async def test_a_client_never_sees_another_clients_task_bodies(secured: Secured) -> None:
    s = Subjects(TEAM)
    secret = "the launch code is 0451"
    a1_prefix = inbox_prefix(secured.security.credential("a1").identity)
    snooped: dict[str, list[bytes]] = {"eve": [], "admin": []}
    listens = ["_INBOX.>", f"{a1_prefix}.>", s.tasks, s.all(SubjectKind.AGENT), ">"]
    async with (
        secured.connect("admin") as admin,
        secured.connect("eve") as eve,
        secured.connect("a1") as agent_bus,
        open_runtime(agent_bus, TEAM) as runtime,
    ):
        for who, bus in (("eve", eve), ("admin", admin)):
            for subject in listens:

                async def record(msg: Msg, who: str = who) -> None:
                    snooped[who].append(bytes(msg.data))

                await bus.nc.subscribe(subject, cb=record)
        await eve.nc.flush()
        await wait_until(lambda: eve.statistics().permission_violations == len(listens))
        await runtime.spawn(lambda: WorkerAgent(SIM), actor_id="a1", roles=("worker",))
        async with secured.connect("client") as client_bus:
            result = await TeamClient(client_bus, TEAM).submit(secret, max_tokens=4, timeout=20)
        assert result.ok and result.agent == "a1"
        # eve can read the tasks stream no more than its subject (acked tasks are gone anyway)
        jsm = eve.nc.jsm(timeout=1.0)
        await _refused(eve, lambda: jsm.get_last_msg(s.tasks_stream, s.tasks))
        # the operator, allowed to, did see the body pulled into a1's inbox: eve's
        # subscriptions would have caught it had the server let her make them
        await wait_until(lambda: any(secret.encode() in m for m in snooped["admin"]))
    assert snooped["eve"] == []
    assert agent_bus.statistics().permission_violations == 0


async def test_election_works_under_agent_permissions(secured: Secured) -> None:
    async with secured.connect("a1") as b1, secured.connect("a2") as b2:
        first = LeaderElection(b1, TEAM, candidate="a1", ttl_s=2.0)
        second = LeaderElection(b2, TEAM, candidate="a2", ttl_s=2.0)
        async with anyio.create_task_group() as tg:
            await tg.start(first.run)
            await tg.start(second.run)
            await wait_until(lambda: first.is_leader or second.is_leader)
            leader, other = (first, second) if first.is_leader else (second, first)
            await wait_until(lambda: other.leader == leader.candidate)
            await leader.resign()
            await wait_until(lambda: other.is_leader, timeout=20)
            assert other.token > 0
            tg.cancel_scope.cancel()
        assert b1.statistics().permission_violations == 0
        assert b2.statistics().permission_violations == 0


async def test_claims_work_under_agent_permissions(secured: Secured) -> None:
    """Decentralized claims: create-if-absent on the team's claims bucket, one winner."""
    bucket = Subjects(TEAM).kv_bucket("claims")
    async with secured.connect("a1") as b1, secured.connect("a2") as b2:
        kv1, kv2 = await open_kv(b1, bucket), await open_kv(b2, bucket)
        outcomes: dict[str, int | str] = {}

        async def claim(kv: KV, agent: str) -> None:
            try:
                outcomes[agent] = await kv.create("claim.s1", agent.encode())
            except RevisionMismatchError:
                outcomes[agent] = "lost"

        async with anyio.create_task_group() as tg:
            tg.start_soon(claim, kv1, "a1")
            tg.start_soon(claim, kv2, "a2")
        assert sorted(map(str, outcomes.values())).count("lost") == 1
        winner, winner_kv = ("a1", kv1) if outcomes["a1"] != "lost" else ("a2", kv2)
        loser_kv = kv2 if winner_kv is kv1 else kv1
        entry = await loser_kv.get("claim.s1")
        assert entry is not None and entry.value == winner.encode()
        await winner_kv.delete("claim.s1")  # released: the other may claim it now
        assert await loser_kv.create("claim.s1", b"next") > 0
        assert "claim.s1" in await loser_kv.keys()
        assert b1.statistics().permission_violations == 0
        assert b2.statistics().permission_violations == 0


def test_an_agent_may_write_only_its_own_key_binding() -> None:
    security = team_security(TEAM, ["a1", "a2"])
    keys = Subjects(TEAM).kv_bucket(KEYS_BUCKET)
    a1 = security.permissions(security.credential("a1"))["publish"]["allow"]
    assert f"$KV.{keys}.a1" in a1
    assert not [a for a in a1 if a.startswith(f"$KV.{keys}.") and a != f"$KV.{keys}.a1"]
    assert f"$KV.{Subjects(TEAM).kv_bucket('claims')}.>" in a1  # the other buckets as before
    client = security.permissions(security.credential("client"))["publish"]["allow"]
    assert not [a for a in client if a.startswith("$KV.")]  # a client reads bindings only


async def test_a_key_binding_is_tied_to_the_agents_credential(secured: Secured) -> None:
    """a1 binds its own name; the server refuses its writing a2's, or anyone's, binding."""
    keys = Subjects(TEAM).kv_bucket(KEYS_BUCKET)
    mine, forged = AgentIdentity().public_key, AgentIdentity().public_key
    async with secured.connect("a1") as a1, secured.connect("admin") as admin:
        raw = await a1.nc.jetstream(timeout=1.0).key_value(keys)
        assert await raw.create("a1", mine.encode()) > 0
        await _refused(a1, lambda: raw.create("a2", forged.encode()))
        await _refused(a1, lambda: raw.put("a2", forged.encode()))
        async with secured.connect("client") as client:
            client_kv = await client.nc.jetstream(timeout=1.0).key_value(keys)
            await _refused(client, lambda: client_kv.put("a1", forged.encode()))
        assert (await (await open_kv(admin, keys)).get("a2")) is None
        bound = await (await open_kv(admin, keys)).get("a1")
        assert bound is not None and bound.value == mine.encode()


async def test_membership_works_under_agent_and_client_permissions(secured: Secured) -> None:
    """An agent joins (binding its key, gossiping as a member); a client observes it."""
    key = AgentIdentity().public_key
    fast = SwimConfig(period_s=0.1)
    async with (
        secured.connect("a1") as agent_bus,
        secured.connect("client") as client_bus,
        open_membership(agent_bus, TEAM, config=fast) as view,
        open_membership(client_bus, TEAM, config=fast) as observer,
    ):
        await view.join("a1", MemberFacts(device="sim:h100", public_key=key))
        await wait_until(lambda: observer.live() == ["a1"], timeout=15)
        await wait_until(lambda: observer.public_key("a1") == key, timeout=15)
        seen = observer.member("a1")
        assert seen is not None and seen.facts.device == "sim:h100" and not seen.key_conflict
        assert agent_bus.statistics().permission_violations == 0
        assert client_bus.statistics().permission_violations == 0


@pytest.mark.parametrize("mode", ["nkey", "password"])
async def test_secured_team_serves_tasks(mode: str) -> None:
    security = team_security(TEAM, ["a1"], mode=mode)

    def auth(name: str) -> BusAuth:
        cred = security.credential(name)
        if mode == "password":
            return BusAuth(user=cred.user, password=cred.password)
        return BusAuth(nkey_seed=_seed_file(cred.nkey_seed))

    async with run_server(ServerConfig(extra=security.server_config())) as server:
        async with open_bus(server.url, **auth("admin").options()) as admin:
            await provision_team(admin, Subjects(TEAM))
        await _serve_one_task(server, auth)


async def _serve_one_task(server: EmbeddedServer, auth: Callable[[str], BusAuth]) -> None:
    async with (
        open_bus(server.url, name="a1", **auth("a1").options()) as agent_bus,
        open_runtime(agent_bus, TEAM) as runtime,
    ):
        await runtime.spawn(lambda: WorkerAgent(SIM), actor_id="a1", roles=("worker",))
        client_auth = auth("client")
        async with connect(
            server.url,
            team=TEAM,
            user=client_auth.user,
            password=client_auth.password,
            nkey_seed=client_auth.nkey_seed,
        ) as team:
            result = await team.submit("What is 2 + 2?", max_tokens=4, timeout=20)
        assert result.ok and result.agent == "a1"
        assert agent_bus.statistics().permission_violations == 0


_SEEDS: list[Path] = []


def _seed_file(seed: str) -> str:
    fd, path = tempfile.mkstemp(suffix=".nk")
    os.write(fd, seed.encode())
    os.close(fd)
    _SEEDS.append(Path(path))
    return path


@pytest.fixture(autouse=True)
def _remove_seed_files() -> Iterator[None]:
    yield
    while _SEEDS:
        _SEEDS.pop().unlink(missing_ok=True)


async def test_secrets_never_reach_logs(tmp_path: Path) -> None:
    """The real code paths, logging at debug into a buffer: no secret string in any line."""
    saved = structlog.get_config()
    buffer = io.StringIO()
    configure(json=True, level="debug", stream=buffer)
    try:
        for mode in ("nkey", "password"):
            security = team_security(TEAM, ["a1"], mode=mode)
            files = write_credentials(security, tmp_path / mode)
            a1, cl = security.credential("a1"), security.credential("client")
            a1_auth, client_auth = (
                (BusAuth(nkey_seed=str(files["a1"])), BusAuth(nkey_seed=str(files["client"])))
                if mode == "nkey"
                else (
                    BusAuth(user=a1.user, password=a1.password),
                    BusAuth(user=cl.user, password=cl.password),
                )
            )
            async with run_server(ServerConfig(extra=security.server_config())) as server:
                admin = security.credential("admin")
                admin_auth = (
                    BusAuth(nkey_seed=str(files["admin"]))
                    if mode == "nkey"
                    else BusAuth(user=admin.user, password=admin.password)
                )
                async with open_bus(server.url, **admin_auth.options()) as admin_bus:
                    await provision_team(admin_bus, Subjects(TEAM))
                with pytest.raises(NotConnectedError):  # a refused login logs its failure
                    async with open_bus(server.url, user="a1", password="x" + a1.password):
                        pass
                async with (
                    open_bus(server.url, name="a1", **a1_auth.options()) as bus,
                    open_runtime(bus, TEAM) as runtime,
                ):
                    await runtime.spawn(lambda: WorkerAgent(SIM), actor_id="a1", roles=("w",))
                    structlog.get_logger().info("config", auth=a1_auth, security=security)
                    structlog.get_logger().info("direct", password=a1.password, seed=a1.nkey_seed)
                    async with open_bus(server.url, **client_auth.options()) as client_bus:
                        client = TeamClient(client_bus, TEAM)
                        assert (await client.submit("hi", max_tokens=2, timeout=20)).ok
            text = buffer.getvalue()
            assert "task.done" in text and "config" in text  # the paths really logged
            for cred in security.credentials:
                for secret in (cred.nkey_seed, cred.password):
                    assert not secret or secret not in text, f"{cred.name}'s secret in the logs"
    finally:
        structlog.configure(**saved)


async def test_plain_nats_pub_right_after_bus_up_is_kept(tmp_path: Path) -> None:
    """The README's `nats pub` example, before any agent: `bus up --team` made the stream."""
    port, team = free_port(), "early"
    env = {**os.environ, "LMTEAMS_HOME": str(tmp_path / "home")}
    bus_up = subprocess.Popen(
        [sys.executable, "-m", "lmteams", "bus", "up", "--port", str(port), "--team", team,
         "--store", str(tmp_path / "store")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"nats://127.0.0.1:{port}"
    s = Subjects(team)
    try:
        assert bus_up.stdout is not None
        stdout = bus_up.stdout

        def ready() -> bool:
            line = stdout.readline().decode()
            assert line or bus_up.poll() is None, "bus up exited"
            return "streams ready" in line

        await wait_until(lambda: anyio.to_thread.run_sync(ready), timeout=60)
        raw = await nats.connect(url)  # a plain client, as `nats pub` is
        try:
            task = b'{"type":"task","id":"q1","prompt":"What is 2 + 2?","max_tokens":4}'
            headers = {"Content-Type": "application/json", "Nats-Msg-Id": "q1"}
            await raw.publish(s.tasks, task, headers=headers)
            await raw.flush()
            js = raw.jetstream()

            async def stored() -> bool:
                return (await js.stream_info(s.tasks_stream)).state.messages == 1

            await wait_until(stored)
        finally:
            await raw.close()
        async with open_bus(url, name="a1") as agent_bus, open_runtime(agent_bus, team) as rt:
            await rt.spawn(lambda: WorkerAgent(SIM), actor_id="a1", roles=("worker",))
            client = TeamClient(agent_bus, team)

            async def answered() -> bool:
                found = await client.result("q1")
                return found is not None and found.ok

            await wait_until(answered, timeout=30)
    finally:
        bus_up.send_signal(signal.SIGTERM)
        bus_up.communicate(timeout=60)


@pytest.mark.slow
def test_cli_secure_bus_agent_and_client(tmp_path: Path) -> None:
    """`bus up --secure`, an agent and `task publish` with the printed flags; no secret shows."""
    env = {**os.environ, "LMTEAMS_HOME": str(tmp_path / "home")}
    creds = tmp_path / "creds"
    port = free_port()
    lmteams = [sys.executable, "-m", "lmteams"]
    bus = subprocess.Popen(
        [*lmteams, "bus", "up", "--secure", "--port", str(port), "--creds-dir", str(creds),
         "--team", TEAM, "--agents", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    url = f"nats://127.0.0.1:{port}"
    agent: subprocess.Popen[bytes] | None = None
    outputs: list[str] = []
    try:
        for _ in range(200):
            if (creds / "security.json").exists() and _listening(port):
                break
            assert bus.poll() is None, bus.stderr.read() if bus.stderr else ""
            time.sleep(0.1)
        agent = subprocess.Popen(
            [*lmteams, "agent", "start", "--team", TEAM, "--name", "agent-1", "--nats", url,
             "--backend", "sim", "--sim-device", "h100-cuda", "--json-logs",
             "--nkey-seed", str(creds / "agent-1.nk")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        refused = subprocess.run(
            [*lmteams, "task", "publish", "hi", "--nats", url, "--team", TEAM],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        outputs.append(refused.stdout + refused.stderr)
        assert refused.returncode != 0 and "refused these credentials" in refused.stderr
        done = subprocess.run(
            [*lmteams, "task", "publish", "What is 2 + 2?", "--nats", url, "--team", TEAM,
             "--wait", "--json", "--timeout", "60", "--max-tokens", "4"],
            capture_output=True, text=True, timeout=90, check=False,
            env={**env, "LMTEAMS_NKEY_SEED": str(creds / "client.nk")},
        )  # fmt: skip
        outputs.append(done.stdout + done.stderr)
        assert done.returncode == 0, done.stderr
        assert msgspec.json.decode(done.stdout)["agent"] == "agent-1"
    finally:
        for proc in (agent, bus):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                stdout, stderr = proc.communicate(timeout=60)
                outputs.append((stdout + stderr).decode(errors="replace"))
    security = load_security(creds)
    text = "\n".join(outputs)
    assert "agent.joined" in text and "secured" in text
    for cred in security.credentials:
        assert cred.nkey_seed not in text


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
