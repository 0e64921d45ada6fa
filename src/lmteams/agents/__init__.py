"""Agents: actors on the bus, their runtime and supervision, agent daemons, and tasks.

An agent is an actor that serves a team: it pulls tasks from the team's JetStream work
queue, answers them with its hardware backend, and publishes exactly one result per task.
"""

from lmteams.agents._actor import Actor, handler
from lmteams.agents._chunks import Coalescing, PieceSink, streaming_to
from lmteams.agents._client import ClientAuth, TeamClient, connect, open_team, resolve_url
from lmteams.agents._daemon import (
    DaemonConfig,
    MembershipFactory,
    Service,
    daemon_identity,
    identity_path,
    run_daemon,
)
from lmteams.agents._dispatch import (
    Dispatcher,
    DispatcherConfig,
    DispatchStatistics,
    open_dispatcher,
)
from lmteams.agents._identity import (
    AgentIdentity,
    identity_from_file,
    stored_identity,
    verify_vote,
    vote_payload,
)
from lmteams.agents._membership import (
    LIVE_STATES,
    Liveness,
    LocalMembership,
    MemberFacts,
    MemberInfo,
    Membership,
)
from lmteams.agents._messages import (
    NORMALIZERS,
    STRATEGIES,
    AgentAnswer,
    Answer,
    Cancel,
    Chunk,
    Ping,
    Pong,
    Progress,
    Prompt,
    Result,
    Stage,
    Stop,
    Task,
)
from lmteams.agents._ref import ActorRef
from lmteams.agents._runtime import (
    ActorContext,
    ActorState,
    ActorStatistics,
    IdentitySource,
    RestartPolicy,
    Runtime,
    WorkerService,
    dead_letter,
    open_runtime,
)
from lmteams.agents._state import (
    UpState,
    clear_state,
    pid_alive,
    read_state,
    state_dir,
    write_state,
)
from lmteams.agents._strategy import (
    Outcome,
    Strategy,
    StrategyContext,
    agent_seed,
    get_strategy,
    load_strategies,
    register_strategy,
    registered_strategies,
)
from lmteams.agents._streamed import StreamedTask
from lmteams.agents._supervisor import (
    AgentProcessInfo,
    Supervisor,
    SupervisorConfig,
    open_supervisor,
)
from lmteams.agents._tasks import TaskOptions, new_task, salvage_task_id, task_problem
from lmteams.agents._worker import WorkerAgent, WorkerConfig

__all__ = (
    # actors
    "Actor",
    "handler",
    "ActorRef",
    "ActorContext",
    "ActorState",
    "ActorStatistics",
    "RestartPolicy",
    "Runtime",
    "WorkerService",
    "open_runtime",
    "IdentitySource",
    "dead_letter",
    # agents and clients
    "WorkerAgent",
    "WorkerConfig",
    "DaemonConfig",
    "run_daemon",
    "Service",
    "MembershipFactory",
    "daemon_identity",
    "identity_path",
    "Supervisor",
    "SupervisorConfig",
    "AgentProcessInfo",
    "open_supervisor",
    "TeamClient",
    "ClientAuth",
    "connect",
    "open_team",
    "resolve_url",
    "Dispatcher",
    "DispatcherConfig",
    "DispatchStatistics",
    "open_dispatcher",
    "new_task",
    "TaskOptions",
    "task_problem",
    "salvage_task_id",
    "UpState",
    "read_state",
    "write_state",
    "clear_state",
    "pid_alive",
    "state_dir",
    # identity, membership and strategies
    "AgentIdentity",
    "vote_payload",
    "verify_vote",
    "identity_from_file",
    "stored_identity",
    "Membership",
    "LocalMembership",
    "MemberFacts",
    "MemberInfo",
    "Liveness",
    "LIVE_STATES",
    "Strategy",
    "StrategyContext",
    "Outcome",
    "register_strategy",
    "load_strategies",
    "get_strategy",
    "registered_strategies",
    "agent_seed",
    # wire types
    "Task",
    "Result",
    "Stage",
    "Progress",
    "Chunk",
    "StreamedTask",
    "Coalescing",
    "PieceSink",
    "streaming_to",
    "AgentAnswer",
    "Prompt",
    "Answer",
    "Ping",
    "Pong",
    "Stop",
    "Cancel",
    "STRATEGIES",
    "NORMALIZERS",
)
