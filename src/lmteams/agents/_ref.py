"""``ActorRef``: the address of an actor, wherever it runs."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from lmteams.bus import Bus, Subjects
from lmteams.errors import ActorDeadError, MailboxFullError, NoRespondersError, RemoteError

__all__ = ("ActorRef",)

T = TypeVar("T")


class ActorRef:
    """Send to an actor by id: ``tell`` for fire-and-forget, ``ask`` for a reply.

    A ref is only a subject; holding one keeps nothing alive. Asking an actor that is not
    running fails fast with ``ActorDeadError`` rather than waiting out the timeout.
    """

    __slots__ = ("_bus", "actor_id", "subject")

    def __init__(self, bus: Bus, subjects: Subjects, actor_id: str) -> None:
        self._bus = bus
        self.actor_id = actor_id
        self.subject = subjects.agent(actor_id)

    def __repr__(self) -> str:
        return f"ActorRef({self.actor_id!r})"

    async def tell(self, message: msgspec.Struct, *, sender: str | None = None) -> None:
        await self._bus.publish(self.subject, message, sender=sender)

    async def ask(
        self,
        message: msgspec.Struct,
        *,
        expect: type[T],
        timeout: float = 10.0,
        sender: str | None = None,
    ) -> T:
        try:
            return await self._bus.request(
                self.subject, message, expect=expect, timeout=timeout, sender=sender
            )
        except NoRespondersError:
            raise ActorDeadError(f"actor {self.actor_id} is not running") from None
        except RemoteError as err:
            if err.kind == "actor_dead":
                raise ActorDeadError(err.remote_message) from None
            if err.kind == "busy":
                raise MailboxFullError(err.remote_message) from None
            raise
