"""How a job runs: its architecture and limits, apart from the wire types that carry it.

Its own module because a task graph file may carry these options (a ``[job]`` table) and
the wire types in ``_messages`` carry the graph: both import from here, neither from the
other. Limits are msgspec constraints, so a bad value in a job file or on the bus is an
error naming its field (``$.job.lease_s``) when it is decoded.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ("Architecture", "Choice", "JobOptions", "Placement", "Scheduling")

Architecture = Literal["centralized", "decentralized"]
"""Who decides which agent runs what: the coordinator-lease holder, or the agents by claiming."""

Scheduling = Literal["async", "rounds"]
"""``async``: the next subtask starts once an agent is free; ``rounds``: the paper's barrier
(every agent takes at most one subtask per round; a round ends when all of its claims are
committed)."""

Choice = Literal["first", "model"]
"""How a decentralized agent picks what to claim: the ready subtask with the longest
remaining chain (``first``), or by asking its model over the job board (``model``: costs
real tokens, and a weak model makes real conflicts)."""


Placement = Literal["greedy", "preassigned"]
"""How a centralized coordinator places subtasks: each ready one on the agent expected to
finish it first (``greedy``), or the paper's pre-assignment (``preassigned``: before the
run, chains kept on one agent and the rest dealt round-robin; each agent then works its own
list in order, and a subtask waits for its agent even when another is idle)."""


class JobOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a job runs; a job file may carry them in a ``[job]`` table, the CLI overrides."""

    architecture: Architecture = "centralized"
    scheduling: Scheduling = "async"
    agents: Annotated[int, msgspec.Meta(ge=0)] = 0
    """How many agents take part; 0: every available worker (at admission)."""
    backups: bool = True
    """Let idle agents near the end run a backup copy of a straggling subtask."""
    lease_s: Annotated[float, msgspec.Meta(ge=0.1, le=86_400)] = 10.0
    """A claim lapses this long after its holder last renewed it (renewed every lease_s/3)."""
    choose: Choice = "first"
    placement: Placement = "greedy"
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """The whole job fails (``timed_out``) if it is not done this long after admission."""

    def __post_init__(self) -> None:
        if self.placement != "greedy" and self.architecture != "centralized":
            raise ValueError(  # msgspec reports it as a validation error naming the struct
                f"placement {self.placement!r} is a coordinator's: it needs a centralized job, "
                f"not {self.architecture}"
            )
