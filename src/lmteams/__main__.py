"""``python -m lmteams``: the same as the ``lmteams`` command (agent processes start this way)."""

from lmteams.cli import main

main()
