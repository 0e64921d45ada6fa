"""Gossip: SWIM membership and failure detection, with small versioned maps per member.

Members probe each other over the bus (direct ping, ping-req through k others, suspicion,
refutation by incarnation, confirmation), piggyback membership and map updates on those
probes, and repair what dissemination missed by periodic full-state push-pull. A process's
agents are members whose maps are their facts (device, model, rates, load, key), and
``GossipMembership`` is the one view of the team that its strategies, dispatch and
``lmteams status`` read; keys are bound to names in the team's ``keys`` bucket.
"""

from lmteams.gossip._broadcast import BroadcastQueue
from lmteams.gossip._config import SwimConfig
from lmteams.gossip._facts import facts_meta, facts_of
from lmteams.gossip._faults import pause_member
from lmteams.gossip._keys import KeyBindings, fingerprint, open_key_bindings
from lmteams.gossip._member import MemberEvent, SwimMember, open_member
from lmteams.gossip._membership import GossipMembership, open_membership
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
from lmteams.gossip._observe import observe_members, sync_once
from lmteams.gossip._stats import GossipStatistics
from lmteams.gossip._table import Change, ChangeKind, MembershipTable

__all__ = (
    # the team's view
    "open_membership",
    "GossipMembership",
    "facts_meta",
    "facts_of",
    "KeyBindings",
    "open_key_bindings",
    "fingerprint",
    # members
    "open_member",
    "SwimMember",
    "SwimConfig",
    "MemberEvent",
    "GossipStatistics",
    "observe_members",
    "sync_once",
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
