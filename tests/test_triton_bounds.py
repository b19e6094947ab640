"""The interpreter's bounds check (tests/triton_bounds.py) sees what it must and nothing else."""
import pytest
import torch

from triton_bounds import BoundsChecker, hooks_problem

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
OWN_BOUNDS_CHECKS = True  # conftest's checker would record these tests' deliberate strays too
pytestmark = pytest.mark.skipif(torch.cuda.is_available() or hooks_problem() is not None,
                                reason=f"the check hooks Triton's interpreter: {hooks_problem()}")


@triton.jit
def _copy_kernel(src_ptr, dst_ptr, n, reach, BLOCK: tl.constexpr):
    """dst[i] = src[i + reach] for i < n, the read masked by ``i < n`` only."""
    i = tl.arange(0, BLOCK)
    tl.store(dst_ptr + i, tl.load(src_ptr + i + reach, mask=i < n, other=0.0), mask=i < n)


@triton.jit
def _max_kernel(src_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.atomic_max(out_ptr + i % 2, tl.load(src_ptr + i, mask=i < n, other=0.0), mask=i < n)


def _copied(src, reach, view=slice(None)):
    dst = torch.zeros(8)
    checker = BoundsChecker()
    with checker.installed():
        _copy_kernel[(1,)](src[view], dst, 5, reach, BLOCK=8)
    return checker


def test_reads_inside_the_launch_tensors_pass_and_reads_past_them_are_counted():
    src = torch.arange(8.0)
    assert not _copied(src, 3).violations  # elements 3..7 of 8
    (violation,) = _copied(src, 5).violations  # elements 5..9: two past the end
    assert (violation.kernel, violation.access, violation.count) == ("_copy_kernel", "load", 2)
    assert violation.first_address == src.data_ptr() + 8 * 4


def test_a_view_bounds_the_reads_at_its_own_elements_not_its_storage():
    src = torch.arange(16.0)
    assert not _copied(src, 0, slice(2, 7)).violations  # the view's five elements
    assert _copied(src, 1, slice(2, 7)).violations[0].count == 1  # src[7]: in the storage, not in the view


def test_atomics_are_checked_and_the_hooks_are_removed_afterwards():
    from triton.runtime import interpreter

    original = interpreter.InterpreterBuilder.create_atomic_rmw
    checker = BoundsChecker()
    with checker.installed():
        _max_kernel[(1,)](torch.arange(6.0), torch.zeros(1), 6, BLOCK=8)  # out[1] is past the one-element out
    assert [(v.access, v.count) for v in checker.violations] == [("atomic", 3)]
    assert "_max_kernel: 3 masked-in atomic address(es)" in checker.report()
    assert interpreter.InterpreterBuilder.create_atomic_rmw is original
