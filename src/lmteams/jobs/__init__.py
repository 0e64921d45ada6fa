"""Jobs: a team works a task graph together, durably, over JetStream.

A job is a task graph whose subtasks' states live in the team's ``jobs`` KV bucket and
change only by compare-and-set; its result carries the outputs and the job measured as a
distributed computation.
"""

from lmteams.jobs._board import MAX_FAILURES, Commit, JobBoard, JobView, open_board
from lmteams.jobs._client import JobClient, JobOverrides, connect, new_job
from lmteams.jobs._figures import build_result
from lmteams.jobs._graph import DEFAULT_WORK_TOKENS, Subtask, TaskGraph
from lmteams.jobs._graphio import (
    SHIPPED_GRAPHS,
    chain_plus_free,
    dumps_toml,
    load_graph,
    load_paper_tasks,
    paper_graphs,
    save_graph,
    shipped_graph,
    shipped_graphs,
)
from lmteams.jobs._messages import (
    AgentTally,
    Architecture,
    Assign,
    CancelJob,
    Choice,
    JobFigures,
    JobOptions,
    JobRecord,
    JobRequest,
    JobResult,
    JobSpec,
    JobStatus,
    Placement,
    Report,
    Scheduling,
    SubmitJob,
    SubtaskRecord,
    SubtaskState,
    SubtaskStatus,
    Withdraw,
    Working,
)
from lmteams.jobs._service import COORDINATOR_ROLE, JobServiceConfig, job_service
from lmteams.jobs._template import check_templates, render_prompt

__all__ = (
    # task graphs and their templates
    "TaskGraph",
    "Subtask",
    "DEFAULT_WORK_TOKENS",
    "load_graph",
    "save_graph",
    "dumps_toml",
    "load_paper_tasks",
    "paper_graphs",
    "chain_plus_free",
    "shipped_graph",
    "shipped_graphs",
    "SHIPPED_GRAPHS",
    "check_templates",
    "render_prompt",
    # wire types
    "Architecture",
    "Placement",
    "Scheduling",
    "Choice",
    "JobOptions",
    "JobSpec",
    "SubmitJob",
    "CancelJob",
    "JobRequest",
    "JobStatus",
    "JobRecord",
    "SubtaskStatus",
    "SubtaskState",
    "AgentTally",
    "Assign",
    "Withdraw",
    "Working",
    "Report",
    "SubtaskRecord",
    "JobFigures",
    "JobResult",
    # state
    "JobBoard",
    "JobView",
    "Commit",
    "open_board",
    "MAX_FAILURES",
    # the engine, as a worker service
    "job_service",
    "JobServiceConfig",
    "COORDINATOR_ROLE",
    # result and client
    "build_result",
    "JobClient",
    "JobOverrides",
    "connect",
    "new_job",
)
