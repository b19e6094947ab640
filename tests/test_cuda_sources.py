"""Every CUDA C kernel compiles with nvcc for Ampere, Ada and Hopper, and with NVRTC where CuPy is installed
(no GPU needed for either)."""
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


def _nvrtc():
    """CuPy's NVRTC binding (no GPU or driver needed to compile), or a skip."""
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception as error:  # cupy absent, or its NVRTC library missing
        pytest.skip(f"CuPy's NVRTC is unavailable: {error}")
    return nvrtc


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_cuda_source_compiles_with_nvrtc_as_at_run_time(source, arch):
    """The run-time path: NVRTC with the launcher's options and no host headers (nvcc has them)."""
    from c2w_fast.kernels._nvrtc import NVRTC_OPTIONS

    nvrtc = _nvrtc()
    program = nvrtc.createProgram(source.read_text(), source.name, [], [])
    try:
        try:
            nvrtc.compileProgram(program, [*NVRTC_OPTIONS, f"--gpu-architecture={arch}"])
        except Exception as error:
            pytest.fail(f"{error}\n{nvrtc.getProgramLog(program)}")
        assert nvrtc.getProgramLog(program).strip() == "", "NVRTC warned"
        assert b".entry" in nvrtc.getPTX(program), "no kernel in the PTX"
    finally:
        nvrtc.destroyProgram(program)
