"""Test set-up: Triton kernels run in the interpreter without a GPU; ``cuda`` tests skip there."""
import importlib.util
import os
import zlib

import numpy as np
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Must happen before any Triton kernel module is imported: @triton.jit reads it then.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_sessionstart(session):
    """Stop at once, saying what to install, where Triton's interpreter cannot run the kernels (every
    Triton test would fail with the same InterpreterError)."""
    if HAS_CUDA:
        return
    if importlib.util.find_spec("triton") is None:  # outside Linux the test extra has no Triton; its tests say so
        return
    from c2w_fast.ops._dispatch import interpreter_problem

    problem = interpreter_problem()
    if problem:
        pytest.exit(f"the Triton kernels' tests run in Triton's interpreter on this machine, but {problem}",
                    returncode=pytest.ExitCode.USAGE_ERROR)


FIRST_ON_A_GPU = ("test_gpu_full_size.py", "test_gpu_ops.py", "test_gpu_surface.py", "test_bounding_box.py")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        # the GPU metrics' tests first, in their order: a short GPU session's time limit cuts the last ones
        items.sort(key=lambda item: item.path.name not in FIRST_ON_A_GPU)
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def full_fp32_on_the_gpu():
    """fp32 means fp32 in the tests: torch lets cuDNN convolutions (and so the plain-PyTorch references and
    peers that run them on a GPU) use TF32 by default, whose 10-bit mantissa is outside the fp32 tolerances
    the tests hold the kernels to. Restored after each test."""
    if not HAS_CUDA:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


if not HAS_CUDA:
    from triton_bounds import BoundsChecker, hooks_problem

    BOUNDS_PROBLEM = hooks_problem() if importlib.util.find_spec("triton") else "Triton is not installed"
else:
    BOUNDS_PROBLEM = "kernels run on the GPU (compute-sanitizer's memcheck is the check there)"


@pytest.fixture(autouse=True)
def triton_accesses_in_bounds(request):
    """Every Triton kernel the interpreter runs in a test keeps its masked-in loads, stores and atomics
    inside the tensors of its launch (:mod:`triton_bounds`), checked when the test ends; a module
    with ``OWN_BOUNDS_CHECKS`` (the check's own tests) installs its checkers itself."""
    if BOUNDS_PROBLEM or getattr(request.module, "OWN_BOUNDS_CHECKS", False):
        yield
        return
    checker = BoundsChecker()
    with checker.installed():
        yield
    assert not checker.violations, "out-of-bounds accesses:\n" + checker.report()


@pytest.fixture
def rng(request):
    """A generator seeded from the test's id (plus ``C2W_TEST_SEED``): different inputs for
    every test, the same on a rerun; change ``C2W_TEST_SEED`` to draw new ones."""
    seed = zlib.crc32(request.node.nodeid.encode()) + int(os.environ.get("C2W_TEST_SEED", "0"))
    return np.random.default_rng(seed)


if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on the CI's two cores: one torch thread each, so OpenMP
    # threads do not oversubscribe the cores (spin-waiting makes small ops ten times slower).
    torch.set_num_threads(1)
