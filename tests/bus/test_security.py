"""Authentication and per-role permissions, checked against a real nats-server."""

from __future__ import annotations

import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest
import structlog

from lmteams.agents import (
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
    BusAuth,
    Codec,
    EmbeddedServer,
    Incoming,
    Role,
    ServerConfig,
    SubjectKind,
    Subjects,
    TeamSecurity,
    ensure_team_streams,
    free_port,
    load_security,
    new_nkey,
    open_bus,
    run_server,
    team_security,
    write_credentials,
)
from lmteams.errors import NoRespondersError, NotConnectedError, RequestTimeoutError
from lmteams.hardware import BackendConfig
from lmteams.logging import configure
from lmteams.testing import wait_until

TEAM = "sec"
SIM = WorkerConfig(
    backend=BackendConfig(kind="sim", sim_device="h100-cuda"), fetch_timeout_s=0.2, heartbeat_s=0.5
)


class Secured(msgspec.Struct, kw_only=True):
    server: EmbeddedServer
    security: TeamSecurity
    files: dict[str, Path]

    def seed(self, name: str) -> str:
        return str(self.files[name])


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    security = team_security(TEAM, ["a1", "a2"])
    files = write_credentials(security, tmp_path / "creds")
    async with run_server(ServerConfig(extra=security.server_config())) as server:
        yield Secured(server=server, security=security, files=files)


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
    assert "lmt.sec.control.a1" in a1["subscribe"]["allow"]
    assert "lmt.sec.control.a2" not in a1["subscribe"]["allow"]
    assert "lmt.sec.control.>" in a1["publish"]["deny"]
    client = security.permissions(security.credential("client"))
    assert not any(".agent." in s for s in client["subscribe"]["allow"])
    assert security.credential("admin").role is Role.ADMIN


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


@pytest.mark.parametrize("mode", ["nkey", "password"])
async def test_secured_team_serves_tasks(mode: str) -> None:
    security = team_security(TEAM, ["a1"], mode=mode)

    def auth(name: str) -> BusAuth:
        cred = security.credential(name)
        if mode == "password":
            return BusAuth(user=cred.user, password=cred.password)
        return BusAuth(nkey_seed=_seed_file(cred.nkey_seed))

    async with (
        run_server(ServerConfig(extra=security.server_config())) as server,
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
                        await ensure_team_streams(client_bus, client.subjects)
                        assert (await client.submit("hi", max_tokens=2, timeout=20)).ok
            text = buffer.getvalue()
            assert "task.done" in text and "config" in text  # the paths really logged
            for cred in security.credentials:
                for secret in (cred.nkey_seed, cred.password):
                    assert not secret or secret not in text, f"{cred.name}'s secret in the logs"
    finally:
        structlog.configure(**saved)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_passes_through(tmp_path: Path) -> None:
    ca_key, ca, key, csr, cert = (
        tmp_path / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem")
    )
    ext = tmp_path / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "1", "-subj", "/CN=lmteams-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=localhost")  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
    security = team_security(TEAM, ["a1"])
    files = write_credentials(security, tmp_path / "creds")
    tls = {"tls": {"cert_file": str(cert), "key_file": str(key), "timeout": 5}}
    async with run_server(ServerConfig(extra=security.server_config() | tls)) as server:
        auth = BusAuth(nkey_seed=str(files["admin"]), tls_ca=str(ca))
        async with open_bus(server.url.replace("nats://", "tls://"), **auth.options()) as bus:
            await ensure_team_streams(bus, Subjects(TEAM))
            assert bus.nc.client_id is not None
        with pytest.raises(NotConnectedError):  # no CA: the server's certificate is refused
            async with open_bus(
                server.url.replace("nats://", "tls://"),
                nkey_seed=str(files["admin"]),
                connect_timeout=2,
            ):
                pass


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
