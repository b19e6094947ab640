"""The Triton installs the compile tests compile with: the one installed, and the oldest supported.

``make test`` installs the oldest supported Triton (``TRITON_OLDEST`` in the Makefile) into a
folder of its own and names it in ``C2W_TRITON_OLDEST``; a compile subprocess puts that folder
first on ``PYTHONPATH``. Without the variable the ``oldest`` cases skip.
"""
import os
import subprocess
import sys

import pytest

INSTALLS = ["installed", "oldest"]


def compile_env(install: str) -> dict:
    """Environment of a compile subprocess (no interpreter) that imports the chosen Triton."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    if install == "oldest":
        folder = os.environ.get("C2W_TRITON_OLDEST", "")
        if not os.path.isdir(os.path.join(folder, "triton")):
            pytest.skip("C2W_TRITON_OLDEST names no folder holding a Triton install (`make test` sets it)")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (folder, env.get("PYTHONPATH")) if p)
        where = _triton_location(env)
        assert where.startswith(os.path.realpath(folder)), f"the compile subprocess imports Triton from {where}"
    return env


def _triton_location(env: dict) -> str:
    code = "import os, triton; print(os.path.realpath(triton.__file__))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()
