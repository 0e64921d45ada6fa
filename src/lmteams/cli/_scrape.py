"""Reading agents' Prometheus endpoints for ``lmteams top``: what they do, not what they say.

The membership view carries what each agent advertises (its device's rate, its load); the
``--metrics-port`` exposition carries what it did (tokens written, tasks by outcome, its
mailbox). A scrape is a blocking HTTP GET, so it runs in a worker thread with a short
timeout: a hung or dead endpoint costs one frame that long, never the event loop. An
endpoint that cannot be read or parsed is reported as such, never raised: ``top`` is for
looking at a team that may be half broken.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Literal

import anyio
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from lmteams.agents._metrics import OUTCOMES

__all__ = ("AgentSeries", "Endpoint", "Scrape", "metrics_url", "parse", "scrape_all")

SCRAPE_TIMEOUT_S = 2.0
_MAX_BYTES = 8 << 20  # an exposition of a few agents is kilobytes; more is not one of ours

EndpointStatus = Literal["ok", "unreachable", "malformed"]


class AgentSeries(msgspec.Struct, frozen=True, kw_only=True):
    """One agent's series in one scrape (its ``agent`` label, of the team asked about)."""

    agent: str
    url: str = ""  # the endpoint that reported it
    tokens_per_s: float | None = None  # measured by ``top`` between two scrapes; None: one yet
    tokens_in: float = 0.0
    tokens_out: float = 0.0
    tasks: dict[str, int] = {}  # lmteams_tasks_total by outcome
    in_flight: int | None = None
    mailbox: int | None = None


class Endpoint(msgspec.Struct, frozen=True, kw_only=True):
    """How reading one ``--metrics`` URL went, and the team's agents it reported."""

    url: str
    status: EndpointStatus
    error: str = ""
    agents: tuple[str, ...] = ()


class Scrape(msgspec.Struct, frozen=True, kw_only=True):
    """One URL's answer: how it went, the series, and when they were read."""

    endpoint: Endpoint
    series: tuple[AgentSeries, ...]
    at: float  # time.monotonic() when the reply was read


def metrics_url(value: str) -> str:
    """``host:port``, ``http://host:port`` or a full URL, as the URL to GET.

    Only http(s): urllib would also open ``file://`` and ``ftp://``, which no agent serves.
    """
    url = value.strip()
    if "://" not in url:
        url = f"http://{url}"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) metrics URL: {value!r}")
    if parts.path in ("", "/"):
        url = urllib.parse.urlunsplit(parts._replace(path="/metrics"))
    return url


def parse(text: str, team: str, url: str = "") -> tuple[AgentSeries, ...]:
    """The ``team``'s agents in an exposition; ValueError when it is not one."""
    found: dict[str, dict[str, float]] = {}
    tasks: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            agent = s.labels.get("agent")
            if agent is None or s.labels.get("team") != team:
                continue
            if s.name == "lmteams_tasks_total" and s.labels.get("outcome") in OUTCOMES:
                tasks.setdefault(agent, {})[s.labels["outcome"]] = int(s.value)
            elif s.name in _FIELDS:
                found.setdefault(agent, {})[_FIELDS[s.name]] = s.value
    return tuple(
        _series(agent, url, found.get(agent, {}), tasks.get(agent, {}))
        for agent in sorted(found.keys() | tasks.keys())
    )


def _series(agent: str, url: str, values: dict[str, float], tasks: dict[str, int]) -> AgentSeries:
    return AgentSeries(
        agent=agent,
        url=url,
        tokens_in=values.get("tokens_in", 0.0),
        tokens_out=values.get("tokens_out", 0.0),
        tasks=tasks,
        in_flight=_count(values.get("in_flight")),
        mailbox=_count(values.get("mailbox")),
    )


_FIELDS = {
    "lmteams_tokens_in_total": "tokens_in",
    "lmteams_tokens_out_total": "tokens_out",
    "lmteams_tasks_in_flight": "in_flight",
    "lmteams_mailbox_depth": "mailbox",
}


def _count(value: float | None) -> int | None:
    return None if value is None else int(value)


def _read(url: str, team: str) -> Scrape:
    """One GET and parse, in a worker thread; every failure becomes the endpoint's status."""
    try:
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as reply:
            body = reply.read(_MAX_BYTES + 1)
    except urllib.error.HTTPError as e:  # it answered, but not with an exposition
        return _failed(url, "malformed", f"HTTP {e.code}")
    except http.client.HTTPException as e:  # something answered, not in HTTP (a NATS port)
        return _failed(url, "malformed", f"{type(e).__name__}: {e}"[:200])
    except (OSError, ValueError) as e:  # refused, timed out, no such host; a bad URL
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        return _failed(url, "unreachable", str(reason) or type(e).__name__)
    at = time.monotonic()
    if len(body) > _MAX_BYTES:
        return _failed(url, "malformed", f"more than {_MAX_BYTES} bytes")
    try:
        series = parse(body.decode(), team, url)
    except ValueError as e:  # not UTF-8, not the text format (UnicodeDecodeError included)
        return _failed(url, "malformed", str(e)[:200])
    agents = tuple(s.agent for s in series)
    return Scrape(endpoint=Endpoint(url=url, status="ok", agents=agents), series=series, at=at)


def _failed(url: str, status: EndpointStatus, error: str) -> Scrape:
    return Scrape(
        endpoint=Endpoint(url=url, status=status, error=error), series=(), at=time.monotonic()
    )


async def scrape_all(urls: tuple[str, ...], team: str) -> tuple[Scrape, ...]:
    """Every URL at once, each in a worker thread, in the order given."""
    done: list[Scrape | None] = [None] * len(urls)

    async def one(i: int, url: str) -> None:
        done[i] = await anyio.to_thread.run_sync(_read, url, team)

    async with anyio.create_task_group() as tg:
        for i, url in enumerate(urls):
            tg.start_soon(one, i, url)
    return tuple(s for s in done if s is not None)
