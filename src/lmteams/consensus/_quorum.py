"""``quorum``: Byzantine-tolerant agreement with signed votes.

With n >= 3f + 1 agents, an answer is committed only when 2f + 1 valid votes match, so f
faulty or lying agents can neither force a wrong answer nor block a right one held by the
honest 2f + 1. Every vote is signed with its agent's ed25519 key over (task, round, agent,
text): a vote cannot be forged under another agent's name or replayed on another task, and
it counts only when signed with the key the team's membership has bound to that name (a
member cannot sign with a second key, nor sign as another member).
Agents also broadcast their signed vote on ``lmt.<team>.vote.<task>``; two different signed
votes from one agent are equivocation: that agent is flagged and none of its votes count.
The result keeps every signed vote, so any client can re-check the commit (``verify_quorum``).
"""

from __future__ import annotations

import anyio

from lmteams.agents import (
    AgentAnswer,
    Answer,
    Outcome,
    Result,
    StrategyContext,
    Task,
    dead_letter,
    verify_vote,
    vote_payload,
)
from lmteams.bus import Codec, Incoming, RawMsg
from lmteams.consensus._fanout import (
    as_agent_answer,
    ask_all,
    choose_agents,
    not_enough_agents,
    prompt_for,
)
from lmteams.consensus._normalize import normalizer
from lmteams.consensus._tally import plurality
from lmteams.errors import DecodeError

__all__ = ("QuorumStrategy", "faults_tolerated", "verify_quorum")

_VOTES: Codec[Answer] = Codec(Answer)
MAX_BROADCAST = 1024
"""Broadcast votes kept per task; honest agents send one each, forgers no more than this."""
BROADCAST_GRACE_S = 0.3
"""After the last reply, how long broadcast votes may still arrive to reveal equivocation."""


def faults_tolerated(n: int) -> int:
    """The largest f with n >= 3f + 1."""
    return max(0, (n - 1) // 3)


def _valid(answer: Answer, *, task_id: str, agent: str, key: str) -> bool:
    return (
        answer.agent == agent
        and answer.task_id == task_id
        and bool(key)
        and answer.public_key == key
        and verify_vote(
            key, vote_payload(task_id, answer.round, agent, answer.text), answer.signature
        )
    )


class QuorumStrategy:
    name = "quorum"

    async def run(self, ctx: StrategyContext, task: Task) -> Outcome:
        agents = await choose_agents(ctx, task)
        if agents is None:
            return not_enough_agents(ctx, task)
        f = faults_tolerated(len(agents))
        need = 2 * f + 1
        norm = normalizer(task.normalizer)
        broadcast: list[Answer] = []

        async def on_vote(inc: Incoming[Answer]) -> None:
            if len(broadcast) < MAX_BROADCAST:  # anyone may publish here: bounded, not a sink
                broadcast.append(inc.body)

        async def on_bad_vote(msg: RawMsg, err: DecodeError) -> None:
            await dead_letter(ctx.bus, ctx.subjects, msg, "decode", str(err))

        sub = await ctx.bus.subscribe(
            ctx.subjects.vote(task.id), on_vote, codec=_VOTES, on_decode_error=on_bad_vote
        )
        try:
            replies = await ask_all(ctx, agents, lambda a: prompt_for(task, a, sign=True))
            await anyio.sleep(BROADCAST_GRACE_S)
        finally:
            await sub.unsubscribe()
        flagged: set[str] = set()
        seen: dict[str, set[str]] = {}  # agent -> texts it validly signed
        votes: dict[str, Answer] = {}
        bound = ctx.membership.public_key  # the key the team bound to a name, never the vote's
        for agent, reply in replies.items():
            if not isinstance(reply, Answer):
                continue  # a missing or late vote: it simply does not count
            if not _valid(reply, task_id=task.id, agent=agent, key=bound(agent)):
                flagged.add(agent)  # forged, replayed, or signed with a key not its own
                continue
            votes[agent] = reply
            seen.setdefault(agent, set()).add(reply.text)
        for vote in broadcast:
            key = bound(vote.agent)
            if vote.agent in seen and _valid(vote, task_id=task.id, agent=vote.agent, key=key):
                seen[vote.agent].add(vote.text)
        flagged |= {agent for agent, texts in seen.items() if len(texts) > 1}
        counted = {a: v for a, v in votes.items() if a not in flagged}
        ballots = {a: norm(v.text) for a, v in counted.items()}
        tally = plurality((b, 1.0) for b in ballots.values())
        committed = bool(tally.winner) and tally.support >= need
        contributions: tuple[AgentAnswer, ...] = tuple(
            as_agent_answer(v, normalized=ballots.get(a, "")) for a, v in votes.items()
        )
        winner_text = next((counted[a].text for a, b in ballots.items() if b == tally.winner), "")
        return Outcome(
            ok=committed,
            answer=winner_text.strip() if committed else "",
            error="" if committed else (
                f"no quorum: {tally.support:.0f} of {len(agents)} agents agree, "
                f"{need} needed (f = {f})"
            ),
            error_kind="" if committed else "no_quorum",
            answers=contributions,
            messages=2 * len(agents) + len(broadcast),
            tally=tally.counts,
            flagged=tuple(sorted(flagged)),
        )  # fmt: skip


def verify_quorum(result: Result, keys: dict[str, str], *, normalizer_name: str = "auto") -> bool:
    """Re-check a committed quorum from its signed votes and the agents' known keys."""
    if not result.ok or result.strategy != "quorum":
        return False
    n = len(keys) if keys else len(result.answers)
    need = 2 * faults_tolerated(n) + 1
    norm = normalizer(normalizer_name)
    target = norm(result.answer)
    good = {
        a.agent
        for a in result.answers
        if a.agent in keys
        and a.public_key == keys[a.agent]
        and verify_vote(
            keys[a.agent], vote_payload(result.task_id, a.round, a.agent, a.text), a.signature
        )
        and norm(a.text) == target
    }
    return len(good) >= need
