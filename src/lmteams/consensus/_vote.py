"""``vote`` and ``weighted``: independent answers, one tally.

Plurality voting helps where a single agent is right more than half of the time and hurts
below that (the Condorcet jury theorem); ``benchmarks/consensus_accuracy.py`` shows both.
Weighted voting lets confident agents (high mean token log-probability) and agents with a
good record count for more.
"""

from __future__ import annotations

import math

from lmteams.agents import Answer, Outcome, StrategyContext, Task
from lmteams.consensus._fanout import (
    as_agent_answer,
    ask_all,
    choose_agents,
    not_enough_agents,
    prompt_for,
)
from lmteams.consensus._normalize import normalizer
from lmteams.consensus._tally import plurality

__all__ = ("VoteStrategy", "TrackRecord")


class TrackRecord:
    """How often each agent agreed with the team's decision (an exponential average).

    Kept by each coordinator in memory: a cheap, local notion of reputation that needs no
    ground truth. Starts every agent at 1.0 so newcomers are not ignored.
    """

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.scores: dict[str, float] = {}

    def weight(self, agent: str) -> float:
        return self.scores.get(agent, 1.0)

    def update(self, agent: str, agreed: bool) -> None:
        old = self.scores.get(agent, 1.0)
        self.scores[agent] = (1 - self.alpha) * old + self.alpha * (1.0 if agreed else 0.0)


class VoteStrategy:
    """Plurality over ``task.agents`` independent answers; ``weighted`` scales each vote."""

    def __init__(self, *, weighted: bool = False) -> None:
        self.weighted = weighted
        self.name = "weighted" if weighted else "vote"
        self.record = TrackRecord()

    def weight_of(self, answer: Answer) -> float:
        if not self.weighted:
            return 1.0
        confidence = math.exp(answer.mean_logprob) if answer.mean_logprob is not None else 0.5
        return confidence * self.record.weight(answer.agent)

    async def run(self, ctx: StrategyContext, task: Task) -> Outcome:
        agents = await choose_agents(ctx, task)
        if agents is None:
            return not_enough_agents(ctx, task)
        norm = normalizer(task.normalizer)
        replies = await ask_all(ctx, agents, lambda a: prompt_for(task, a, logprobs=self.weighted))
        answers = [r for r in replies.values() if isinstance(r, Answer)]
        ballots = [(norm(a.text), self.weight_of(a)) for a in answers]
        tally = plurality(ballots)
        if self.weighted:
            for answer, (vote, _) in zip(answers, ballots, strict=True):
                self.record.update(answer.agent, vote == tally.winner)
        contributions = tuple(
            as_agent_answer(a, normalized=v, weight=w)
            for a, (v, w) in zip(answers, ballots, strict=True)
        )
        winner_text = next(
            (a.text for a, (v, _) in zip(answers, ballots, strict=True) if v == tally.winner), ""
        )
        failed = len(agents) - len(answers)
        return Outcome(
            ok=bool(tally.winner),
            answer=winner_text.strip(),
            error=""
            if tally.winner
            else f"no readable answer ({failed} of {len(agents)} agents failed)",
            error_kind="" if tally.winner else "no_answer",
            answers=contributions,
            messages=len(agents) + len(answers),
            tally=tally.counts,
        )
