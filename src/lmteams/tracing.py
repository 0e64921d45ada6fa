"""Traces: W3C trace context in message headers, OpenTelemetry spans where the work happens.

OpenTelemetry is an optional extra (``pip install lmteams[otel]``) and this module is the only
one that touches it: the bus and the agents call ``span``, ``continued`` and ``headers``,
which cost one test of a module global while tracing is off. Off is the default and is free:
nothing of OpenTelemetry is imported unless the environment asks for traces or the program
imported it first.

``configure`` (called by every runtime and client when it opens) turns tracing on when the
SDK is installed, ``OTEL_SDK_DISABLED`` is not ``true``, and either

- the program installed its own SDK ``TracerProvider`` (lmteams then uses it as it is), or
- the standard variables ask for export: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``;
  ``none`` exports nothing) or ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (OTLP over ``OTEL_EXPORTER_OTLP_PROTOCOL``,
  ``http/protobuf`` unless it says ``grpc``), or
- ``LMTEAMS_TRACING=1`` (spans with no exporter, for a program that adds its own processor).

Spans carry the GenAI semantic conventions on model calls (``gen_ai.*``) and lmteams' own
attributes (``lmteams.team``, ``lmteams.agent``, ``lmteams.task``, ``lmteams.strategy``,
``lmteams.round``, ``lmteams.job``, ``lmteams.subtask``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

__all__ = (
    "Traced",
    "configure",
    "enabled",
    "reset",
    "use",
    "flush",
    "span",
    "continued",
    "headers",
    "ids",
    "TRACEPARENT",
    "TRACESTATE",
    "ENV_TRACING",
    "AttributeValue",
)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
ENV_TRACING = "LMTEAMS_TRACING"
AttributeValue = str | bool | int | float
"""What a span attribute may hold (OpenTelemetry also takes sequences of these)."""

_KINDS = ("internal", "server", "client", "producer", "consumer")


class _State:
    """What tracing holds while on: the tracer and the few OpenTelemetry entry points used."""

    __slots__ = ("current_span", "kinds", "propagator", "provider", "tracer")

    def __init__(self, tracer: Any, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer = tracer
        self.provider = provider  # the provider lmteams installed (flushed at exit), or None
        self.current_span = trace.get_current_span
        self.propagator = TraceContextTextMapPropagator()
        self.kinds = {name: getattr(trace.SpanKind, name.upper()) for name in _KINDS}


class _Switch:
    """The process's tracing state: None while off (the one thing the hot path reads)."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: _State | None = None


_switch = _Switch()


class Traced:
    """A span as lmteams code sees it: attributes set after the work (tokens) and nothing else.

    The one instance for "no span" makes every call a no-op, so callers never branch.
    """

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, attributes: Mapping[str, AttributeValue | tuple[str, ...]]) -> None:
        if self._span is not None:
            self._span.set_attributes(attributes)


_NO_SPAN = Traced(None)
_NOTHING: contextlib.nullcontext[Traced] = contextlib.nullcontext(_NO_SPAN)


def enabled() -> bool:
    return _switch.state is not None


def _wanted() -> str | None:
    """Why the environment asks for traces (the exporter name), or None if it does not."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    if env.get(ENV_TRACING, "").strip().lower() in ("1", "true", "yes", "on"):
        return "none"
    return None


def configure(service: str = "lmteams") -> bool:
    """Turn tracing on if the environment or the program asks for it; returns whether it is on.

    Idempotent and cheap once decided. ``service`` names the process in traces unless
    ``OTEL_SERVICE_NAME`` does.
    """
    if _switch.state is not None:
        return True
    wanted = _wanted()
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if disabled or (wanted is None and "opentelemetry" not in sys.modules):
        return False  # the common case: not asked, and nothing imported to ask
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return False
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):  # the program set one up: use it as it is
        use(current)
        return True
    if wanted is None:
        return False
    resource = Resource.create({"service.name": service, "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)
    for name in (n.strip() for n in wanted.split(",")):
        exporter = _exporter(name)
        if exporter is not None:
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)  # what is batched leaves before the process does
    _switch.state = _State(provider.get_tracer("lmteams"), provider)
    return True


def _exporter(name: str) -> Any:
    """The span exporter ``OTEL_TRACES_EXPORTER`` names; None for ``none`` or an unknown one."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        return None
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol.strip().lower() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter()  # endpoint, headers and timeout from the standard variables


def use(provider: Any) -> None:
    """Trace with this ``TracerProvider`` (a program's or a test's own), global or not."""
    _switch.state = _State(provider.get_tracer("lmteams"), None)


def reset() -> None:
    """Tracing off again in this process (tests and benchmarks compare the two)."""
    _switch.state = None


def flush(timeout_s: float = 5.0) -> None:
    """Export what lmteams' own provider still holds (before a daemon exits)."""
    state = _switch.state
    if state is not None and state.provider is not None:
        state.provider.force_flush(int(timeout_s * 1000))


def headers() -> dict[str, str] | None:
    """``traceparent`` (and ``tracestate``) of the current span, or None: tracing off or no span.

    Formatted here rather than through a propagator: it runs for every message published.
    """
    state = _switch.state
    if state is None:
        return None
    ctx = state.current_span().get_span_context()
    if not ctx.is_valid:
        return None
    out = {TRACEPARENT: f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
    if ctx.trace_state:
        out[TRACESTATE] = ctx.trace_state.to_header()
    return out


def ids() -> tuple[str, str] | None:
    """The current trace and span ids in hex, for log lines; None with no span."""
    state = _switch.state
    if state is None:
        return None
    ctx = state.current_span().get_span_context()
    return (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}") if ctx.is_valid else None


def span(
    name: str,
    *,
    kind: str = "internal",
    parent: Mapping[str, str] | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> contextlib.AbstractContextManager[Traced]:
    """A span around a block, current inside it; a no-op when tracing is off.

    ``parent`` is the headers of the message that caused the work: their trace context (if
    any) is the parent, else the current span is, else the span starts a trace.
    """
    state = _switch.state
    if state is None:
        return _NOTHING
    return _started(state, name, kind, parent, attributes)


def continued(
    message_headers: Mapping[str, str] | None,
    message: msgspec.Struct,
    *,
    agent: str,
    task: str,
    reply: bool,
) -> contextlib.AbstractContextManager[Traced]:
    """The span an actor handles one message in, only when the message carries trace context.

    Heartbeats and pings outside any trace start none; a prompt from a traced coordinator
    continues its trace. Off, or untraced, this is one dictionary lookup.
    """
    state = _switch.state
    if state is None or not message_headers or TRACEPARENT not in message_headers:
        return _NOTHING
    tag = type(message).__struct_config__.tag or type(message).__name__
    attributes: dict[str, AttributeValue] = {"lmteams.agent": agent, "messaging.system": "nats"}
    if task:
        attributes["lmteams.task"] = str(task)
    rnd = getattr(message, "round", None)
    if isinstance(rnd, int):
        attributes["lmteams.round"] = rnd
    kind = "server" if reply else "consumer"
    return _started(state, f"process {tag}", kind, message_headers, attributes)


@contextlib.contextmanager
def _started(
    state: _State,
    name: str,
    kind: str,
    parent: Mapping[str, str] | None,
    attributes: Mapping[str, AttributeValue] | None,
) -> Iterator[Traced]:
    context = None
    if parent and TRACEPARENT in parent:
        context = state.propagator.extract(parent)
    with state.tracer.start_as_current_span(
        name, context=context, kind=state.kinds[kind], attributes=attributes
    ) as current:
        yield Traced(current)
