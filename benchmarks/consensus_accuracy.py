"""Does voting make a team of small models more accurate? An honest curve, not a number.

A seeded generator makes short questions with exact answers at several difficulties
(one-digit sums, two-digit sums, comparisons answered yes/no, small products). Every question
goes through the real system once: a ``vote`` task with 7 agents, each a real SmolLM2-135M
(llama.cpp, one thread) sampling at temperature 0.2 (tuned so one answer is right about
half the time, with the difficulties on both sides of 1/2) with its own seed, over an embedded
nats-server. The configurations are then counted from those 7 real answers per question:
- vote with k = 1, 3, 5, 7 voters (the first k answers; plurality, deterministic ties);
- quorum among 7 (f = 2, commit needs 5 matching votes) with 0..3 answers replaced by
  simulated Byzantine members: ``same`` (all attackers give the same wrong answer) and
  ``random`` (each gives a random wrong number).
Counting subsets of one sample instead of re-asking keeps the run inside minutes on 2 cores
and compares configurations on the same draws; the 7-voter path itself ran end to end.
Each figure's ``baseline`` is, for votes, the binomial (Condorcet) prediction from the measured
single-answer accuracy p, and for quorums p itself (accuracy counts only committed right
answers; ``commit_rate`` and ``wrong_commit_rate`` say how often it committed at all, and
wrongly). For the binomial curve: voting helps where p > 1/2 and hurts where p < 1/2. Plurality over
free-form answers can beat that prediction, because wrong answers scatter over many values.

Run: .venv/bin/python benchmarks/consensus_accuracy.py [--questions 100] [--quick]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, quiet_logs
from lmteams.agents import (
    AgentAnswer,
    Result,
    TeamClient,
    WorkerAgent,
    WorkerConfig,
    load_strategies,
    open_runtime,
)
from lmteams.bus import Subjects, ensure_team_streams, open_bus
from lmteams.consensus import faults_tolerated, majority_probability, normalize, plurality
from lmteams.hardware import BackendConfig, resolve_model
from lmteams.testing import wait_until

VOTERS = 7
TEAM = "accuracy"


class Question(msgspec.Struct, frozen=True):
    text: str
    answer: str
    kind: str  # normalizer
    difficulty: str


def questions(count: int, seed: int) -> list[Question]:
    rng = random.Random(seed)
    makers = [
        lambda: _sum(rng, 1, 9, "easy"),
        lambda: _sum(rng, 10, 49, "medium"),
        lambda: _compare(rng),
        lambda: _product(rng),
    ]
    return [makers[i % len(makers)]() for i in range(count)]


def _sum(rng: random.Random, lo: int, hi: int, level: str) -> Question:
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    return Question(f"What is {a} + {b}? Answer with just the number.", str(a + b), "number", level)


def _compare(rng: random.Random) -> Question:
    a, b = rng.sample(range(10, 99), 2)
    truth = "yes" if a > b else "no"
    return Question(f"Is {a} greater than {b}? Answer yes or no.", truth, "yesno", "comparison")


def _product(rng: random.Random) -> Question:
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return Question(
        f"What is {a} times {b}? Answer with just the number.", str(a * b), "number", "product"
    )


def _attack(
    q: Question, votes: list[str], byzantine: int, mode: str, rng: random.Random
) -> list[str]:
    """Replace the last ``byzantine`` votes with attackers' (always wrong) answers."""
    if byzantine == 0:
        return votes
    if q.kind == "yesno":
        wrong = ["no" if q.answer == "yes" else "yes"] * byzantine
    elif mode == "same":
        wrong = [str(int(q.answer) + 1)] * byzantine
    else:
        wrong = [
            str(int(q.answer) + rng.choice([-3, -2, -1, 1, 2, 3, 10])) for _ in range(byzantine)
        ]
    return votes[: len(votes) - byzantine] + wrong


def _summary(
    name: str, rows: list[tuple[str, bool, int, float]], predicted: float | None, **extra: object
) -> dict[str, object]:
    """rows: (difficulty, correct, tokens, seconds) per question."""
    accuracy = sum(c for _, c, _, _ in rows) / len(rows)
    by_level: dict[str, list[bool]] = {}
    for level, correct, _, _ in rows:
        by_level.setdefault(level, []).append(correct)
    return {
        "name": name,
        "value": round(accuracy, 4),
        "accuracy": round(accuracy, 4),
        "baseline": None if predicted is None else round(predicted, 4),
        "ratio": None if not predicted else round(accuracy / predicted, 4),
        "target": None,  # the point is the curve, not a threshold
        "tokens_per_answer": round(statistics.mean(t for *_, t, _ in rows), 1),
        "seconds_per_answer": round(statistics.mean(s for *_, s in rows), 3),
        "by_difficulty": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_level.items())},
        **extra,
    }


def _cost(answers: Sequence[AgentAnswer]) -> tuple[int, float]:
    """Tokens of all voters; seconds of the slowest (they answer in parallel)."""
    return sum(a.tokens_in + a.tokens_out for a in answers), max(a.seconds for a in answers)


async def sample(qs: list[Question], threads: int, temperature: float) -> list[Result]:
    path = str(resolve_model("smollm2-135m").path)
    backend = BackendConfig(kind="cpu", model=path, n_threads=threads, n_ctx=512)
    agents = [WorkerAgent(WorkerConfig(backend=backend, heartbeat_s=0.5)) for _ in range(VOTERS)]
    results: dict[int, Result] = {}
    async with open_bus(name="bench") as bus, open_runtime(bus, TEAM) as rt:
        await ensure_team_streams(bus, Subjects(TEAM))
        for i, agent in enumerate(agents):
            await rt.spawn(agent, actor_id=f"voter-{i + 1}", roles=("worker",))
        await wait_until(lambda: len(rt.membership.live()) == VOTERS, timeout=60)
        client = TeamClient(bus, TEAM)
        started = time.monotonic()
        limiter = anyio.Semaphore(2)

        async def one(i: int, q: Question) -> None:
            async with limiter:
                results[i] = await client.submit(
                    q.text, strategy="vote", agents=VOTERS, temperature=temperature,
                    normalizer=q.kind, max_tokens=10, timeout=600, task_id=f"q{i}",
                )  # fmt: skip
                print(
                    f"\r{len(results)}/{len(qs)} questions, {time.monotonic() - started:.0f}s",
                    end="",
                    file=sys.stderr,
                )

        async with anyio.create_task_group() as tg:
            for i, q in enumerate(qs):
                tg.start_soon(one, i, q)
        print(file=sys.stderr)
    return [results[i] for i in range(len(qs))]


async def main(count: int, seed: int, threads: int, temperature: float) -> None:
    quiet_logs()
    load_strategies()  # the vote strategy, for the agents this benchmark hosts
    qs = questions(count, seed)
    by_question = list(zip(qs, await sample(qs, threads, temperature), strict=True))
    rng = random.Random(seed + 1)
    singles = [
        (q, normalize(a.text, q.kind) == q.answer) for q, r in by_question for a in r.answers
    ]
    p = sum(c for _, c in singles) / len(singles)
    p_level: dict[str, float] = {}
    for level in sorted({q.difficulty for q in qs}):
        hits = [c for q, c in singles if q.difficulty == level]
        p_level[level] = sum(hits) / len(hits)
    figures = []
    for k in (1, 3, 5, 7):
        rows = []
        for q, r in by_question:
            chosen = r.answers[:k]
            tally = plurality((normalize(a.text, q.kind), 1.0) for a in chosen)
            rows.append((q.difficulty, tally.winner == q.answer, *_cost(chosen)))
        by_level = {lv: round(majority_probability(pl, k), 3) for lv, pl in p_level.items()}
        figures.append(
            _summary(
                f"vote_{k}", rows, majority_probability(p, k), voters=k,
                predicted_by_difficulty=by_level,
            )
        )  # fmt: skip
    need = 2 * faults_tolerated(VOTERS) + 1
    for mode in ("same", "random"):
        for byz in range(4):
            rows, wrong_commits, commits = [], 0, 0
            for q, r in by_question:
                votes = [normalize(a.text, q.kind) for a in r.answers]
                votes = _attack(q, votes, byz, mode, rng)
                tally = plurality((v, 1.0) for v in votes)
                committed = tally.support >= need
                commits += committed
                wrong_commits += committed and tally.winner != q.answer
                right = committed and tally.winner == q.answer
                rows.append((q.difficulty, right, *_cost(r.answers)))
            figures.append(
                _summary(
                    f"quorum_7_byzantine_{byz}_{mode}", rows, p, voters=VOTERS, byzantine=byz,
                    attack=mode, commit_rate=round(commits / len(rows), 4),
                    wrong_commit_rate=round(wrong_commits / len(rows), 4),
                )
            )  # fmt: skip
    emit(  # emit() prints a line per figure; targets are None: this is a curve
        figures,
        benchmark="consensus_accuracy",
        questions=len(qs),
        single_answer_accuracy=round(p, 4),
        single_answer_accuracy_by_difficulty={k: round(v, 3) for k, v in p_level.items()},
        answers_per_question=Counter(len(r.answers) for _, r in by_question),
        model="smollm2-135m (SmolLM2-135M-Instruct Q4_1)",
        temperature=temperature,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="20 questions")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads per agent")
    parser.add_argument("--temperature", type=float, default=0.2)
    args = parser.parse_args()
    count = 20 if args.quick else args.questions
    anyio.run(main, count, args.seed, args.threads, args.temperature)
