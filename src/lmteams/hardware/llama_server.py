"""``python -m lmteams.hardware.llama_server ARGS``: llama-cpp-python's OpenAI-compatible
server, loading its model as lmteams does.

``python -m llama_cpp.server`` loads with llama.cpp's extra weight buffers on; on a CPU with
AMX its first decode then crashes the server (a segfault, seen here with llama-cpp-python
0.3.36). This runs the same server, with the same arguments, with those buffers off on such
CPUs (elsewhere it changes nothing): the rule :class:`~lmteams.hardware.BackendConfig`'s
``extra_buffers`` default applies to every model lmteams loads.
"""

from __future__ import annotations

import runpy
import sys

from lmteams.hardware._llama import _extra_buffers, _model_params
from lmteams.hardware._types import BackendConfig


def main() -> None:
    sys.argv[0] = "llama_cpp.server"
    with _model_params(extra_buffers=_extra_buffers(BackendConfig())):
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
