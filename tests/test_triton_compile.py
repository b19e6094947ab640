"""Every Triton kernel of the fused block and the losses compiles to a cubin for sm_80/86/89/90, without a GPU,
with the installed Triton and with the oldest supported one (``tests/triton_installs.py``).

The interpreter tests check the kernels' arithmetic; this checks that the same kernels are valid
for the real compiler (dot shapes, layouts, reshapes, dtypes) on each target architecture. The
compiles run in a subprocess because the interpreter, which conftest enables without a GPU,
replaces ``triton.jit`` functions in this one.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from triton_installs import INSTALLS, compile_env

SCRIPT = Path(__file__).with_name("compile_kernels.py")


@pytest.mark.slow
@pytest.mark.parametrize("install", INSTALLS)
def test_every_kernel_compiles_for_sm80_86_89_90(install):
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=compile_env(install),
                         timeout=600)
    assert run.stdout.strip(), f"the compile script printed nothing:\n{run.stderr[-3000:]}"
    results = json.loads(run.stdout.strip().splitlines()[-1])
    archs = {key.split("@")[1] for key in results}
    assert archs == {"sm_80", "sm_86", "sm_89", "sm_90"}
    failures = {key: value for key, value in results.items() if value != "ok"}
    assert not failures, json.dumps(failures, indent=1)
