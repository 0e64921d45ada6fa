"""Where a running ``lmteams up`` records itself, so other commands find its bus.

One small JSON file per team under ``$LMTEAMS_HOME`` (default ``~/.local/state/lmteams``):
``lmteams task publish`` reads the URL from it, ``lmteams down`` the supervisor's pid.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

__all__ = ("UpState", "state_dir", "write_state", "read_state", "clear_state", "pid_alive")


class UpState(msgspec.Struct, frozen=True, kw_only=True):
    team: str
    url: str
    pid: int
    agents: int
    started_at: float


def state_dir() -> Path:
    base = os.environ.get("LMTEAMS_HOME") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "lmteams"
    )
    return Path(base)


def _path(team: str) -> Path:
    return state_dir() / f"up-{team}.json"


def write_state(state: UpState) -> Path:
    path = _path(state.team)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(state))
    tmp.replace(path)
    return path


def read_state(team: str) -> UpState | None:
    """The record of a running ``lmteams up`` for ``team``, or None (stale ones are removed)."""
    path = _path(team)
    try:
        state = msgspec.json.decode(path.read_bytes(), type=UpState)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if not pid_alive(state.pid):
        path.unlink(missing_ok=True)
        return None
    return state


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) is all we know
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def clear_state(team: str) -> None:
    _path(team).unlink(missing_ok=True)
