"""Studying teams: task graphs, speedup predictions, and the paper's data to test them against.

The paper (arXiv 2603.12229) reads LLM teams as distributed systems and checks Amdahl's law
on them. This package holds what that needs without any agent or bus: the graphs (the
paper's nine and shipped look-alikes), the predictions (Amdahl, work/span, a list-scheduling
simulator with the paper's synchronous rounds), and the paper's measured runs and per-call
latencies. On top of them: team runs on the bus (centralized and decentralized, async or in
rounds, on simulated, paper-replayed or llama.cpp agents), their metrics, experiment sweeps
with plots and a report, and the team-size planner.
"""

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
    write_shipped_graphs,
)
from lmteams.study._experiment import (
    ExperimentConfig,
    FaultSetting,
    count_runs,
    example_config,
    load_experiment,
    resolve_graph,
    run_experiment,
)
from lmteams.study._figures import cost_figure, speedup_figure, write_figures
from lmteams.study._findings import (
    FindingsTable,
    LatencyFit,
    PaperFigure,
    PaperFindings,
    findings_definitions,
    findings_markdown,
    findings_tables,
    paper_findings,
)
from lmteams.study._latency import CommonDraws, LatencyBackend
from lmteams.study._metrics import AgentMetrics, BusTraffic, RunMetrics, bus_traffic
from lmteams.study._montecarlo import (
    CallModel,
    Interval,
    MakespanDistribution,
    call_model,
    sample_makespans,
)
from lmteams.study._paper import (
    PAPER_DATA_ENV,
    LatencySamples,
    LlmCall,
    LognormalFit,
    PaperData,
    PaperRun,
    fit_lognormal,
    llm_call_latencies,
    packaged_paper_data,
    paper_data_dir,
    read_llm_calls,
    read_runs,
)
from lmteams.study._plan import (
    OBJECTIVES,
    Objective,
    OptionPrediction,
    Overhead,
    Plan,
    PlanOption,
    Verification,
    calibrate_overhead,
    calibrate_overheads,
    choose_option,
    plan,
    predict_makespan,
    predict_option,
    verify_plan,
)
from lmteams.study._predict import (
    Prediction,
    amdahl_speedup,
    makespan_lower_bound,
    predict,
    work_span_speedup,
)
from lmteams.study._profiles import DeviceRate, RateSource, measure_llama_profiles
from lmteams.study._report import write_report
from lmteams.study._run import (
    ARCHITECTURES,
    SCHEDULINGS,
    Architecture,
    Scheduling,
    run_team,
)
from lmteams.study._schedule import (
    DEFAULT_TOKENS_PER_S,
    AgentLoad,
    Policy,
    Schedule,
    ScheduledTask,
    paper_preassignment,
    simulate_schedule,
)
from lmteams.study._speedup import (
    GroupStat,
    RunSpeedup,
    SpeedupRow,
    SpeedupStats,
    SpeedupSummary,
    paper_speedups,
    run_speedups,
    speedup_summary,
)
from lmteams.study._stats import (
    CellStat,
    Condition,
    SweepStats,
    TestResult,
    bootstrap_ratio,
    pooled_baselines,
    standard_error,
    sweep_stats,
)
from lmteams.study._team import (
    STEADY_TOKENS_PER_S,
    StudyTeam,
    TeamMember,
    describe_rate,
    device_rate,
    open_team,
    subtask_prompt,
)

__all__ = (
    # sweep statistics and figures
    "CellStat",
    "Condition",
    "SweepStats",
    "TestResult",
    "FaultSetting",
    "bootstrap_ratio",
    "pooled_baselines",
    "standard_error",
    "sweep_stats",
    "speedup_figure",
    "cost_figure",
    "write_figures",
    # task graphs
    "Subtask",
    "TaskGraph",
    "DEFAULT_WORK_TOKENS",
    "load_graph",
    "save_graph",
    "dumps_toml",
    "chain_plus_free",
    "shipped_graph",
    "shipped_graphs",
    "write_shipped_graphs",
    "SHIPPED_GRAPHS",
    "load_paper_tasks",
    "paper_graphs",
    # predictions
    "amdahl_speedup",
    "work_span_speedup",
    "makespan_lower_bound",
    "paper_preassignment",
    "simulate_schedule",
    "predict",
    "Policy",
    "Schedule",
    "ScheduledTask",
    "AgentLoad",
    "Prediction",
    "DEFAULT_TOKENS_PER_S",
    # the paper's data
    "paper_data_dir",
    "packaged_paper_data",
    "PAPER_DATA_ENV",
    "PaperData",
    "PaperRun",
    "read_runs",
    "LlmCall",
    "read_llm_calls",
    "llm_call_latencies",
    "LatencySamples",
    "LognormalFit",
    "fit_lognormal",
    # the paper's speedups
    "paper_speedups",
    "run_speedups",
    "speedup_summary",
    "SpeedupRow",
    "RunSpeedup",
    "SpeedupStats",
    "SpeedupSummary",
    "GroupStat",
    # the paper's other figures
    "paper_findings",
    "PaperFindings",
    "PaperFigure",
    "LatencyFit",
    "FindingsTable",
    "findings_tables",
    "findings_markdown",
    "findings_definitions",
    # team runs on the bus
    "open_team",
    "StudyTeam",
    "TeamMember",
    "device_rate",
    "describe_rate",
    "DeviceRate",
    "RateSource",
    "measure_llama_profiles",
    "subtask_prompt",
    "STEADY_TOKENS_PER_S",
    "CommonDraws",
    "LatencyBackend",
    "run_team",
    "Architecture",
    "Scheduling",
    "ARCHITECTURES",
    "SCHEDULINGS",
    "RunMetrics",
    "AgentMetrics",
    "BusTraffic",
    "bus_traffic",
    # experiments and reports
    "ExperimentConfig",
    "load_experiment",
    "example_config",
    "resolve_graph",
    "count_runs",
    "run_experiment",
    "write_report",
    # planning
    "plan",
    "Plan",
    "PlanOption",
    "predict_makespan",
    "calibrate_overhead",
    "OBJECTIVES",
    "Objective",
    "OptionPrediction",
    "choose_option",
    "predict_option",
    "Overhead",
    "calibrate_overheads",
    "Verification",
    "verify_plan",
    # Monte Carlo predictions
    "CallModel",
    "Interval",
    "MakespanDistribution",
    "call_model",
    "sample_makespans",
)
