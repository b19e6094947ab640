"""Every Triton kernel of the fused block and the losses compiles to a cubin for sm_80/86/89/90, without a GPU,
with the installed Triton and with the oldest supported one (``tests/triton_installs.py``).

The interpreter tests check the kernels' arithmetic; this checks that the same kernels are valid
for the real compiler (dot shapes, layouts, reshapes, dtypes) on each target architecture. The
compiles run in a subprocess because the interpreter, which conftest enables without a GPU,
replaces ``triton.jit`` functions in this one.
"""
import pytest

from triton_installs import INSTALLS, assert_every_variant_compiles, compile_env


@pytest.mark.slow
@pytest.mark.parametrize("install", INSTALLS)
def test_every_kernel_compiles_for_sm80_86_89_90(install):
    assert_every_variant_compiles(compile_env(install), timeout=600)
