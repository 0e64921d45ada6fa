"""Every error lmteams raises, rooted at :class:`LmteamsError`.

One module so that callers can catch by layer (``BusError``) or by cause
(``ServerNotFoundError``) without importing private modules, and so that each
message can say what to do next.
"""

from __future__ import annotations

__all__ = (
    "LmteamsError",
    "ConfigError",
    "BusError",
    "ServerNotFoundError",
    "ServerStartError",
    "PortInUseError",
    "NotConnectedError",
    "RequestTimeoutError",
    "NoRespondersError",
    "DecodeError",
    "EncodeError",
    "RevisionMismatchError",
    "AgentError",
    "ActorDeadError",
    "MailboxFullError",
    "RemoteError",
    "TaskFailedError",
    "FencedOutError",
    "HardwareError",
    "ModelNotFoundError",
    "ModelVerificationError",
    "DeviceUnavailableError",
    "BackendError",
    "BackendUnavailableError",
    "GraphError",
)


class LmteamsError(Exception):
    """Root of every lmteams error: catch this to catch them all."""


class ConfigError(LmteamsError):
    """A setting or argument is invalid; the message names it and the accepted values."""


# --- bus -------------------------------------------------------------------------------------


class BusError(LmteamsError):
    """Something went wrong talking to NATS or running the embedded server."""


class ServerNotFoundError(BusError):
    """The nats-server binary is not installed where lmteams looks for it."""


class ServerStartError(BusError):
    """nats-server started but did not become ready; the message carries its last log lines."""


class PortInUseError(ServerStartError):
    """The port asked for is already bound by another process."""


class NotConnectedError(BusError):
    """An operation needs a live connection and there is none (closed or never opened)."""


class RequestTimeoutError(BusError, TimeoutError):
    """No reply arrived within the request's timeout."""


class NoRespondersError(BusError):
    """Nobody is subscribed to the subject a request was sent to."""


class DecodeError(BusError):
    """A message body did not decode into the expected type.

    ``field`` is the JSON path of the offending field (``$.prompt``) or ``""`` when the
    body as a whole is malformed; ``reason`` is msgspec's explanation.
    """

    def __init__(self, reason: str, *, field: str = "", type_tag: str = "") -> None:
        self.reason = reason
        self.field = field
        self.type_tag = type_tag
        where = f" at {field}" if field else ""
        super().__init__(f"cannot decode message{where}: {reason}")


class EncodeError(BusError):
    """A value could not be encoded (unsupported type, or over the server's max payload)."""


class RevisionMismatchError(BusError):
    """A compare-and-set on a KV key lost: the key changed since the revision we read."""


# --- agents ----------------------------------------------------------------------------------


class AgentError(LmteamsError):
    """An actor or agent failed."""


class ActorDeadError(AgentError):
    """The actor was stopped; pending asks fail with this instead of hanging."""


class MailboxFullError(AgentError):
    """The actor's bounded mailbox is full: back off and retry later."""


class RemoteError(AgentError):
    """The remote handler raised; ``kind`` is the remote exception's class name."""

    def __init__(self, kind: str, message: str, *, task_id: str = "") -> None:
        self.kind = kind
        self.remote_message = message
        self.task_id = task_id
        super().__init__(f"{kind}: {message}")


class TaskFailedError(AgentError):
    """A task finished with an error result instead of an answer."""


class FencedOutError(AgentError):
    """A write carried a fencing token older than one already accepted: a newer leader rules."""


# --- hardware --------------------------------------------------------------------------------


class HardwareError(LmteamsError):
    """A backend, device or model problem."""


class ModelNotFoundError(HardwareError):
    """The model file or catalogue name does not exist."""


class ModelVerificationError(HardwareError):
    """A model file's sha256 does not match the catalogue."""


class DeviceUnavailableError(HardwareError):
    """The device asked for is not supported by this llama.cpp build or machine."""


class BackendError(HardwareError):
    """The backend failed while generating (out of memory, context overflow, ...)."""


class BackendUnavailableError(BackendError):
    """The backend's server could not be reached or refused for now (connection, 5xx, timeout).

    Unlike its parent, the same request may succeed later or on another agent, so a worker
    hands the task back for another try instead of ending it with an error result.
    """


# --- study -----------------------------------------------------------------------------------


class GraphError(ConfigError):
    """A task graph is malformed (a cycle, an unknown or repeated id): the message says which."""
