"""One gossip member in its own process, for tests that kill or stop a real process.

Usage: python member_proc.py URL TEAM MEMBER PERIOD SUSPICION_MULT. Prints ``ready`` once
joined; SIGTERM leaves the team cleanly, SIGKILL and SIGSTOP are the tests' business.
"""

from __future__ import annotations

import signal
import sys

import anyio

from lmteams.bus import open_bus
from lmteams.gossip import SwimConfig, open_member
from lmteams.logging import configure


async def main(url: str, team: str, name: str, period: float, mult: float) -> None:
    config = SwimConfig(period_s=period, suspicion_mult=mult)
    async with (
        open_bus(url, name=name) as bus,
        open_member(bus, team, name, {"device": "proc", "load": 0.0}, config=config),
    ):
        print("ready", flush=True)
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                return


if __name__ == "__main__":
    url, team, name, period, mult = sys.argv[1:6]
    configure(level="warning")  # stderr: stdout carries the ready line
    anyio.run(main, url, team, name, float(period), float(mult))
