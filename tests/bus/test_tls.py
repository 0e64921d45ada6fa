"""TLS with a CA generated for the test: the secured team works over it, a client without
the CA is refused."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lmteams.agents import TeamClient, WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import (
    BusAuth,
    ServerConfig,
    Subjects,
    open_bus,
    provision_team,
    run_server,
    team_security,
    write_credentials,
)
from lmteams.errors import NotConnectedError
from lmteams.hardware import BackendConfig

TEAM = "tls"
SIM = WorkerConfig(backend=BackendConfig(kind="sim", sim_device="h100-cuda"), fetch_timeout_s=0.2)


def _make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed: (ca, cert, key)."""
    ca_key, ca, key, csr, cert = (
        directory / n for n in ("ca.key", "ca.pem", "s.key", "s.csr", "s.pem")
    )
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "1", "-subj", "/CN=lmteams-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=localhost")  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_secured_team_over_tls(tmp_path: Path) -> None:
    ca, cert, key = _make_ca(tmp_path)
    security = team_security(TEAM, ["a1"])
    files = write_credentials(security, tmp_path / "creds")
    tls = {"tls": {"cert_file": str(cert), "key_file": str(key), "timeout": 5}}
    async with run_server(ServerConfig(extra=security.server_config() | tls)) as server:
        url = server.url.replace("nats://", "tls://")

        def auth(name: str) -> BusAuth:  # what `--nkey-seed FILE --tls-ca CA` builds
            return BusAuth(nkey_seed=str(files[name]), tls_ca=str(ca))

        async with open_bus(url, **auth("admin").options()) as admin:
            await provision_team(admin, Subjects(TEAM))
        async with (
            open_bus(url, name="a1", **auth("a1").options()) as agent_bus,
            open_runtime(agent_bus, TEAM) as runtime,
            open_bus(url, name="client", **auth("client").options()) as client_bus,
        ):
            await runtime.spawn(lambda: WorkerAgent(SIM), actor_id="a1", roles=("worker",))
            result = await TeamClient(client_bus, TEAM).submit("2 + 2?", max_tokens=4, timeout=20)
            assert result.ok and result.agent == "a1"
            assert client_bus.nc.connected_url is not None
            assert client_bus.nc.connected_url.scheme == "tls"
        with pytest.raises(NotConnectedError):  # no CA: the server's certificate is refused
            async with open_bus(url, nkey_seed=str(files["client"]), connect_timeout=2):
                pass
