"""lmteams: run and study teams of language models as distributed systems, over NATS.

``async with lmteams.connect(url, team="t") as team: result = await team.submit("...")``
"""

import lmteams.consensus  # noqa: F401 - registers vote, weighted, debate, quorum with local agents
from lmteams.agents import Result, Task, TeamClient, connect
from lmteams.errors import LmteamsError

__version__ = "0.1.0"

__all__ = ("connect", "TeamClient", "Task", "Result", "LmteamsError", "__version__")
