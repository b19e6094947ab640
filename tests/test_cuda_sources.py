"""Every CUDA C kernel compiles with nvcc for Ampere, Ada and Hopper (no GPU needed)."""
import shutil
import subprocess
from pathlib import Path

import pytest

SOURCES = sorted((Path(__file__).parents[1] / "kernels").glob("*.cu"))
ARCHITECTURES = ["sm_80", "sm_86", "sm_89", "sm_90"]
NVCC = shutil.which("nvcc")


def test_there_are_cuda_sources():
    assert SOURCES, "kernels/*.cu not found"


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_without_warnings(source, arch, tmp_path):
    # NVRTC compiles these at run time with no host headers; -cubin per target checks the same code.
    command = [NVCC, "-std=c++17", "-cubin", f"-arch={arch}", "--Werror", "all-warnings",
               "-o", str(tmp_path / "kernel.cubin"), str(source)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
