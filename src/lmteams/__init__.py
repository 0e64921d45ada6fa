"""lmteams: run and study teams of language models as distributed systems, over NATS."""

from lmteams.errors import LmteamsError

__version__ = "0.1.0"

__all__ = ("LmteamsError", "__version__")
