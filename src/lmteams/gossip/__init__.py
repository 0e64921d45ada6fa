"""Gossip: SWIM membership and failure detection, with small versioned maps per member.

Members probe each other over the bus (direct ping, ping-req through k others, suspicion,
refutation by incarnation, confirmation), piggyback membership and map updates on those
probes, and repair what dissemination missed by periodic full-state push-pull. Agents put
their device, load and model in their map; ``lmteams status`` reads it back.
"""

from lmteams.gossip._agent import agent_meta, gossip_as_agent
from lmteams.gossip._broadcast import BroadcastQueue
from lmteams.gossip._config import SwimConfig
from lmteams.gossip._faults import pause_member
from lmteams.gossip._member import MemberEvent, SwimMember, open_member
from lmteams.gossip._messages import (
    Ack,
    InboxMessage,
    MemberState,
    MetaValue,
    Ping,
    PingReq,
    Sync,
    SyncState,
    Update,
)
from lmteams.gossip._observe import observe_members
from lmteams.gossip._stats import GossipStatistics
from lmteams.gossip._table import Change, ChangeKind, MembershipTable

__all__ = (
    # members
    "open_member",
    "SwimMember",
    "SwimConfig",
    "MemberEvent",
    "GossipStatistics",
    "observe_members",
    "gossip_as_agent",
    "agent_meta",
    # fault injection (tests, benchmarks)
    "pause_member",
    # state
    "MemberState",
    "ChangeKind",
    "Change",
    "MembershipTable",
    "BroadcastQueue",
    "MetaValue",
    # wire
    "Update",
    "Ping",
    "PingReq",
    "Ack",
    "Sync",
    "SyncState",
    "InboxMessage",
)
