"""Consensus: how a team agrees on answers and on who leads.

Importing this package registers nothing: ``strategies()`` lists ``vote``, ``weighted``,
``debate`` and ``quorum``, and ``lmteams.agents.load_strategies()`` (which every agent daemon
calls) registers them with the agents of the process.
"""

from lmteams.consensus._debate import DebateStrategy, debate_prompt
from lmteams.consensus._election import FencedStore, LeaderElection, Leadership
from lmteams.consensus._normalize import Normalizer, normalize, normalizer, register_normalizer
from lmteams.consensus._quorum import QuorumStrategy, faults_tolerated, verify_quorum
from lmteams.consensus._strategies import strategies
from lmteams.consensus._tally import Tally, majority_probability, plurality
from lmteams.consensus._vote import TrackRecord, VoteStrategy

__all__ = (
    # strategies
    "strategies",
    "VoteStrategy",
    "DebateStrategy",
    "QuorumStrategy",
    "TrackRecord",
    "debate_prompt",
    "faults_tolerated",
    "verify_quorum",
    # votes
    "Normalizer",
    "normalize",
    "normalizer",
    "register_normalizer",
    "Tally",
    "plurality",
    "majority_probability",
    # leadership
    "LeaderElection",
    "Leadership",
    "FencedStore",
)
