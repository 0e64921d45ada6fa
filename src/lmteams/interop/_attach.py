"""Protocol agents as teammates: ``AttachedAgent`` and ``attach``.

An attached agent is a worker agent of the team whose model is a protocol agent elsewhere on
the bus (:class:`~lmteams.interop.ProtocolBackend`). Everything a member does, it does by
the worker's own paths: it pulls queued tasks, answers coordinators' prompts (so it votes,
debates and signs quorum votes with its own key), takes job subtasks when the job service
runs in it, joins the membership with its facts and leaves it when it stops.

Its rates are measured, not announced: a protocol agent tells nothing of its speed, so the
member starts at 0 tokens/s (placement's stand-in rates apply) and then advertises what its
answers took (a moving average of estimated tokens over measured seconds), as a profiled
device would; placement and strategies read that like any member's.
"""

from __future__ import annotations

import contextlib

import msgspec

from lmteams.agents import ActorRef, Runtime, WorkerAgent, WorkerConfig
from lmteams.hardware import Backend, BackendConfig, Completion, GenerateRequest
from lmteams.interop._backend import ProtocolBackendConfig, ProtocolTarget, open_protocol_backend

__all__ = ("PROTOCOL_BACKEND", "AttachedAgent", "attach")

PROTOCOL_BACKEND = "protocol"
"""The ``backend`` an attached member shows in its facts (``lmteams status``)."""

_WEIGHT = 0.3  # of the newest answer in the advertised rates: recent, yet not one outlier


class AttachedAgent(WorkerAgent):
    """A team member answering with a remote protocol agent."""

    def __init__(
        self,
        target: ProtocolTarget,
        *,
        protocol: ProtocolBackendConfig | None = None,
        config: WorkerConfig | None = None,
    ) -> None:
        base = config or WorkerConfig()
        # the facts say where answers come from; open_backend below never reads the kind
        backend = BackendConfig(kind=PROTOCOL_BACKEND, model=target.agent)
        super().__init__(msgspec.structs.replace(base, backend=backend))
        self.target = target
        self.protocol = protocol or ProtocolBackendConfig()

    def open_backend(self) -> contextlib.AbstractAsyncContextManager[Backend]:
        return open_protocol_backend(self.context.bus, self.target, self.protocol)

    async def _generate(self, request: GenerateRequest) -> Completion:
        completion = await super()._generate(request)
        self._measured(completion)
        return completion

    def _measured(self, completion: Completion) -> None:
        timings = completion.timings
        if timings.generation_s > 0 and completion.tokens_out > 0:
            rate = completion.tokens_out / timings.generation_s
            self.tokens_per_s = _average(self.tokens_per_s, rate)
        if timings.prompt_s > 0 and completion.tokens_in > 0:
            rate = completion.tokens_in / timings.prompt_s
            self.prompt_tokens_per_s = _average(self.prompt_tokens_per_s, rate)


def _average(old: float, new: float) -> float:
    return new if old <= 0 else (1 - _WEIGHT) * old + _WEIGHT * new


async def attach(
    runtime: Runtime,
    target: ProtocolTarget,
    *,
    actor_id: str,
    protocol: ProtocolBackendConfig | None = None,
    config: WorkerConfig | None = None,
    drain_timeout: float = 30.0,
) -> ActorRef:
    """Take the protocol agent ``target`` into ``runtime``'s team as member ``actor_id``.

    Returns once the member serves; raises ``ConfigError`` when no single protocol agent on
    the bus matches ``target`` (the message lists those that are there).
    """
    # found first, so a wrong name fails here and not as restarts of a member that cannot start
    async with open_protocol_backend(runtime.bus, target, protocol):
        pass
    return await runtime.spawn(
        lambda: AttachedAgent(target, protocol=protocol, config=config),
        actor_id=actor_id,
        roles=("worker",),
        drain_timeout=drain_timeout,
    )
