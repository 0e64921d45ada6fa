"""Interop: lmteams agents in the NATS ecosystem's Synadia Agent Protocol, both ways.

``protocol_service()`` makes each worker agent a protocol agent (discoverable with
``$SRV.INFO``, prompted with streamed replies, beating on ``agents.hb.…``); ``attach`` and
:class:`AttachedAgent` take any protocol agent on the bus into a team as a member, through
:class:`ProtocolBackend`. ``agents`` never imports this package: the daemon, ``lmteams agent
attach`` or a user's runtime hand its pieces to the workers, as they hand the job service.
"""

from lmteams.interop._attach import PROTOCOL_BACKEND, AttachedAgent, attach
from lmteams.interop._backend import (
    ProtocolBackend,
    ProtocolBackendConfig,
    ProtocolTarget,
    find_protocol_agent,
    open_protocol_backend,
)
from lmteams.interop._host import (
    AGENT_KIND,
    OPTIONS_FIELD,
    AnswerSource,
    PromptOptions,
    ProtocolServiceConfig,
    protocol_service,
    protocol_subject,
    whole_answer,
)

__all__ = (
    # every agent a protocol agent
    "AGENT_KIND",
    "OPTIONS_FIELD",
    "AnswerSource",
    "PromptOptions",
    "ProtocolServiceConfig",
    "protocol_service",
    "protocol_subject",
    "whole_answer",
    # protocol agents as teammates
    "ProtocolTarget",
    "ProtocolBackendConfig",
    "ProtocolBackend",
    "find_protocol_agent",
    "open_protocol_backend",
    "PROTOCOL_BACKEND",
    "AttachedAgent",
    "attach",
)
