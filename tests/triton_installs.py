"""The compile tests' runs of ``tests/compile_kernels.py``, with the installed Triton or the oldest supported one.

``make test`` installs the oldest supported Triton (``TRITON_OLDEST`` in the Makefile) into a
folder of its own and names it in ``C2W_TRITON_OLDEST``; a compile subprocess puts that folder
first on ``PYTHONPATH``. Without the variable the ``oldest`` cases skip.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

INSTALLS = ["installed", "oldest"]
SCRIPT = Path(__file__).with_name("compile_kernels.py")
ARCHS = {"sm_80", "sm_86", "sm_89", "sm_90"}


def assert_every_variant_compiles(env: dict, *script_args: str, timeout: int) -> None:
    """Run the compile script in ``env`` (from :func:`compile_env`): every variant, on all ARCHS, must be "ok"."""
    run = subprocess.run([sys.executable, str(SCRIPT), *script_args], capture_output=True, text=True,
                         env=env, timeout=timeout)
    assert run.stdout.strip(), f"the compile script printed nothing:\n{run.stderr[-3000:]}"
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert {key.split("@")[1] for key in results} == ARCHS
    failures = {key: value for key, value in results.items() if value != "ok"}
    assert not failures, json.dumps(failures, indent=1)[:6000]


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
