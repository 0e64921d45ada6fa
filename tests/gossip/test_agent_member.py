"""An agent's gossip member carries what the agent says of itself, and leaves when stopped."""

from __future__ import annotations

import anyio

from lmteams.agents import WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import Bus
from lmteams.gossip import MemberState, SwimConfig, SwimMember, gossip_as_agent, open_member
from lmteams.hardware import BackendConfig
from lmteams.testing import wait_until

TEAM = "ga"
FAST = SwimConfig(period_s=0.1, suspicion_mult=4.0)


async def test_agent_member_gossips_its_device_model_and_load(bus: Bus) -> None:
    backend = BackendConfig(kind="sim", sim_device="rtx-4090-cuda", time_scale=0.01)
    async with (
        open_runtime(bus, TEAM) as runtime,
        open_member(bus, TEAM, "observer", config=FAST) as observer,
    ):
        await runtime.spawn(
            lambda: WorkerAgent(WorkerConfig(backend=backend)), actor_id="w1", roles=("worker",)
        )

        def seen() -> dict[str, object]:
            record = observer.member("w1")
            return dict(record.meta or {}) if record else {}

        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: gossip_as_agent(
                    bus, TEAM, "w1", meta={"device": "starting"}, config=FAST, refresh_s=0.1
                )
            )
            await wait_until(lambda: seen().get("device") == "sim:rtx-4090-cuda", timeout=15)
            meta = seen()
            assert meta["state"] == "serving" and meta["load"] == 0.0
            assert meta["model"] and float(meta["tokens_per_s"]) > 0  # type: ignore[arg-type]
            tg.cancel_scope.cancel()  # the daemon stopping its services
        await wait_until(lambda: _state(observer, "w1") is not MemberState.ALIVE, timeout=15)
        assert _state(observer, "w1") is MemberState.LEFT  # a goodbye, not a crash


def _state(member: SwimMember, name: str) -> MemberState | None:
    record = member.member(name)
    return record.state if record else None
