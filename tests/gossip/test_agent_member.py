"""An agent in a runtime given a ``GossipMembership`` is a SWIM member whose map is its facts.

Nobody asks the agent what it is: its membership publisher writes its facts into the view,
the view gossips them, and a process that hosts nobody sees them, with the key the agent
bound. Stopping the agent leaves the team: the members that stay see it left, not dead.
"""

from __future__ import annotations

from lmteams.agents import MemberFacts, WorkerAgent, WorkerConfig, open_runtime
from lmteams.bus import Bus
from lmteams.gossip import GossipMembership, SwimConfig, open_membership
from lmteams.hardware import BackendConfig
from lmteams.testing import wait_until

TEAM = "ga"
FAST = SwimConfig(period_s=0.1, suspicion_mult=4.0)


def _state(view: GossipMembership, name: str) -> str | None:
    member = view.member(name)
    return member.state if member else None


async def test_agent_gossips_its_facts_and_key_and_leaves_when_stopped(bus: Bus) -> None:
    backend = BackendConfig(kind="sim", sim_device="rtx-4090-cuda", time_scale=0.01)
    async with (
        open_membership(bus, TEAM, config=FAST) as view,
        open_membership(bus, TEAM, config=FAST) as observer,
        open_runtime(bus, TEAM, membership=view) as runtime,
    ):
        await view.join("peer", MemberFacts())  # a member that stays: it sees w1 go
        await runtime.spawn(
            lambda: WorkerAgent(WorkerConfig(backend=backend, heartbeat_s=0.1)),
            actor_id="w1",
            roles=("worker",),
        )
        # the observer shows a gossiped key only once it has read the binding, a moment later
        await wait_until(
            lambda: _state(observer, "w1") == "alive" and observer.public_key("w1"), timeout=15
        )
        seen = observer.member("w1")
        assert seen is not None and seen.available
        facts = seen.facts
        assert facts.device == "sim:rtx-4090-cuda" and facts.backend == "sim"
        assert facts.roles == ("worker",) and facts.pid > 0 and facts.model
        assert facts.public_key and not seen.key_conflict
        assert observer.public_key("w1") == facts.public_key == view.public_key("w1")
        assert view.swim("w1") is not None  # hosted here, as a SWIM member
        await runtime.stop("w1")
        await wait_until(lambda: _state(observer, "w1") not in ("alive", "suspect"), timeout=15)
        assert _state(observer, "w1") == "left"  # a goodbye, not a crash
