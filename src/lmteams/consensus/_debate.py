"""``debate``: agents see each other's last answers and may revise, round after round.

Stops as soon as a strict majority agrees (after normalising) or after ``task.rounds`` rounds;
the result keeps every round so the cost of each extra round can be set against what changed.
"""

from __future__ import annotations

from lmteams.agents import AgentAnswer, Answer, Outcome, Prompt, StrategyContext, Task
from lmteams.consensus._fanout import (
    as_agent_answer,
    ask_all,
    choose_agents,
    not_enough_agents,
    prompt_for,
)
from lmteams.consensus._normalize import normalizer
from lmteams.consensus._tally import plurality

__all__ = ("DebateStrategy", "debate_prompt")


def debate_prompt(question: str, own: str | None, others: dict[str, str]) -> str:
    lines = [question, "", "Other agents answered:"]
    lines += [f"- {agent}: {text.strip()}" for agent, text in sorted(others.items())]
    if own is not None:
        lines += ["", f"Your previous answer: {own.strip()}"]
    lines += ["", "Consider their answers, then give your final answer briefly."]
    return "\n".join(lines)


class DebateStrategy:
    name = "debate"

    async def run(self, ctx: StrategyContext, task: Task) -> Outcome:
        agents = await choose_agents(ctx, task)
        if agents is None:
            return not_enough_agents(ctx, task)
        norm = normalizer(task.normalizer)
        transcript: list[AgentAnswer] = []
        last: dict[str, str] = {}
        messages = 0
        rounds = 0
        tally = plurality([])
        for round_ in range(task.rounds):
            rounds = round_ + 1

            def make(agent: str, r: int = round_) -> Prompt:
                if r == 0:
                    return prompt_for(task, agent, round=0)
                others = {a: t for a, t in last.items() if a != agent}
                text = debate_prompt(task.prompt, last.get(agent), others)
                return prompt_for(task, agent, round=r, prompt=text)

            replies = await ask_all(ctx, agents, make)
            answers = [r for r in replies.values() if isinstance(r, Answer)]
            messages += len(agents) + len(answers)
            votes = {a.agent: norm(a.text) for a in answers}
            transcript += [as_agent_answer(a, normalized=votes[a.agent]) for a in answers]
            last.update({a.agent: a.text for a in answers})
            tally = plurality((v, 1.0) for v in votes.values())
            if tally.winner and tally.support * 2 > len(agents):
                break
        agreed = bool(tally.winner) and tally.support * 2 > len(agents)
        winner_text = next(
            (a.text for a in reversed(transcript) if a.normalized == tally.winner), ""
        )
        return Outcome(
            ok=agreed,
            answer=winner_text.strip(),
            error="" if agreed else f"no majority after {rounds} rounds",
            error_kind="" if agreed else "no_agreement",
            answers=tuple(transcript),
            rounds=rounds,
            messages=messages,
            tally=tally.counts,
        )
