"""The actor: handlers chosen by message type, life-cycle hooks, and an optional body.

An actor never shares memory with another: it receives messages from its bounded mailbox,
one at a time and in order, and talks to the rest of the team through ``ActorRef``s, which
are subjects on the bus. Whether the other actor is in this process or on another machine
makes no difference to the code.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, get_type_hints

import anyio
import msgspec

from lmteams.bus import Codec

if TYPE_CHECKING:
    from lmteams.agents._runtime import ActorContext

__all__ = ("Actor", "handler")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
_MARK = "__lmteams_handler__"


def handler(fn: F) -> F:
    """Mark a method as the handler for the message type its one parameter is annotated with.

    The return value, when it is a Struct and the message was a request, is the reply.
    """
    setattr(fn, _MARK, True)
    return fn


class Actor:
    """Subclass, add ``@handler`` methods, and spawn it on a runtime.

    Hooks: ``on_start`` before the first message, ``run`` as a background body for actors that
    also act on their own (pull work, tick timers), ``on_drain`` when asked to stop gracefully,
    ``on_stop`` last, ``on_failure`` after a crash and before the supervisor restarts it.
    A handler that raises only fails that one message (the caller gets an error reply); an
    exception from ``on_start`` or ``run`` crashes the actor.
    """

    mailbox_size: ClassVar[int] = 64
    _handlers: ClassVar[dict[type[Any], Callable[[Any, Any], Awaitable[Any]]]] = {}
    _codec: ClassVar[Codec[Any] | None] = None
    _context: ActorContext

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        handlers: dict[type[Any], Callable[[Any, Any], Awaitable[Any]]] = {}
        for base in reversed(cls.__mro__):
            for fn in vars(base).values():
                if callable(fn) and getattr(fn, _MARK, False):
                    handlers[_message_type(cls, fn)] = fn
        cls._handlers = handlers
        cls._codec = Codec(*handlers) if handlers else None

    @property
    def context(self) -> ActorContext:
        """Identity, bus and team facts; set by the runtime before ``on_start``."""
        return self._context

    async def on_start(self) -> None:
        """Acquire resources (a model, a consumer) before messages flow."""

    async def run(self) -> None:
        """The actor's own activity beside its mailbox; by default it has none."""
        await anyio.sleep_forever()

    async def on_drain(self) -> None:
        """Stop taking new work and let ``run`` return.

        An actor that overrides this gets its ``run`` awaited (up to the drain timeout) so
        in-flight work can finish; any other ``run`` is cancelled when the actor stops.
        """

    async def on_stop(self) -> None:
        """Release resources; runs on every exit, crash included."""

    async def on_failure(self, exc: BaseException) -> None:
        """Observe a crash before the supervisor restarts the actor."""

    async def dispatch(self, message: msgspec.Struct) -> Any:
        """Run the handler registered for this message's type."""
        return await self._handlers[type(message)](self, message)


def _message_type(cls: type, fn: Callable[..., Any]) -> type[Any]:
    params = list(inspect.signature(fn).parameters)
    if len(params) != 2:
        raise TypeError(f"{cls.__name__}.{fn.__name__}: a handler takes (self, message)")
    try:
        hints = get_type_hints(fn)
    except NameError as err:
        raise TypeError(
            f"{cls.__name__}.{fn.__name__}: cannot resolve the message type ({err}); "
            "define message Structs at module level"
        ) from None
    kind = hints.get(params[1])
    if not (isinstance(kind, type) and issubclass(kind, msgspec.Struct)):
        raise TypeError(
            f"{cls.__name__}.{fn.__name__}: annotate the message parameter with a msgspec "
            "Struct type (tagged), e.g. `async def on_ask(self, msg: Ask) -> Reply`"
        )
    if kind.__struct_config__.tag is None:
        raise TypeError(f"{kind.__name__} must be a tagged Struct (tag=...) to be routed")
    return kind
