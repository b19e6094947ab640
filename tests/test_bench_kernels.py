"""bench/run_kernels.py's method: a fast wrong answer is never "met", and a failing row or part loses no other.

The script is imported in its CPU smoke mode (tiny shapes; the Triton interpreter, which conftest turns
on where there is no GPU); timing is replaced where a test needs one side fast and the other slow.
"""
import copy
import math
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"
SHAPE = dict(batch=1, channels=16, size=(2, 6, 6), groups=4)

# the smoke mode turns the Triton interpreter on for the whole process: never where real kernels run
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="imports the script in its CPU smoke mode")


@pytest.fixture
def kernels(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(sys, "argv", ["run_kernels.py", "--cpu-smoke"])  # the script reads its options when imported
    import run_kernels

    monkeypatch.setattr(run_kernels.args, "cpu_smoke", False)  # verdicts are given outside the smoke mode only
    return run_kernels


def fast_only(ours):
    """A stand-in for ``timed`` (wall clock): 1 ms for the side whose build is ``ours`` or runs it, 100 ms
    for every other."""
    def timed(build, gpu=False):
        return {"ms": 1.0 if ours in (build.func, getattr(build.args[0], "func", None)) else 100.0}
    return timed


def test_shared_inputs_are_the_same_numbers_on_every_side_with_no_gradient_at_the_kink(kernels):
    template = kernels.block_template(SHAPE["channels"], SHAPE["groups"])
    x, grad = kernels.shared_inputs(template, 1, 16, (2, 6, 6))
    for dtype, channels_last in ((torch.float32, False), (torch.bfloat16, True)):
        mine, my_grad = kernels.side_inputs((x, grad), dtype, channels_last)
        assert torch.equal(mine.double(), x.double()) and torch.equal(my_grad.double(), grad.double())
        assert mine.requires_grad and not x.requires_grad  # each side differentiates its own copy
    before_activation = template.norm(template.conv(x.float()))
    assert (grad[before_activation.abs() < kernels.KINK] == 0).all()
    assert 0 < float((grad == 0).float().mean()) < 0.05
    assert all(torch.equal(p.bfloat16().float(), p) for p in template.parameters())


def test_the_fused_block_in_the_interpreter_agrees_with_the_fp32_eager_block(kernels):
    template = kernels.block_template(SHAPE["channels"], SHAPE["groups"])
    shared = kernels.shared_inputs(template, 1, 16, (2, 6, 6))
    assert kernels.checked(partial(kernels.ours_side, template, shared),
                           partial(kernels.eager_side, template, shared, torch.float32, False),
                           kernels.CONV_RESULTS) == "yes"


@pytest.mark.parametrize("ours, agrees, target", [
    ("right", "yes", ">=2x met"),
    ("shifted", "y differs", ">=2x NOT met: answers differ"),
    ("failing", "not checked: RuntimeError: CUDA error", ">=2x NOT met: answers not checked"),
])
def test_a_conv_row_is_met_only_when_ours_gives_the_fp32_blocks_answer(kernels, monkeypatch, ours, agrees, target):
    def fake_ours(template, shared):  # eager bf16 autocast: a right answer, or one with the norm's bias shifted
        if ours == "failing":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        block = copy.deepcopy(template)
        if ours == "shifted":
            block.norm.bias.data += 0.5
        return kernels.eager_side(block, shared, torch.bfloat16, True, autocast=True)

    monkeypatch.setattr(kernels, "ours_side", fake_ours)
    monkeypatch.setattr(kernels, "timed", fast_only(fake_ours))  # 100x faster than every peer
    row = {}
    kernels.conv_row(row, bandwidth=1e9, **SHAPE)
    assert row["peer/ours"] == 100.0
    assert row["agrees"].startswith(agrees)
    assert row["target"] == target


@pytest.mark.parametrize("scale, gpu_ms, agrees, target", [
    (1.0, 1.0, "yes", "met"),
    (1.001, 1.0, "value differs", "NOT met: answers differ"),
    (1.0, 3.1, "yes", "NOT met"),  # fast on the wall clock, but its kernels more than 3x the floor
    (1.0, None, "yes", "no verdict: our GPU time was not measured"),
])
def test_a_loss_row_is_met_only_when_ours_gives_monais_answer_near_the_floor(kernels, monkeypatch, scale, gpu_ms,
                                                                            agrees, target):
    import monai

    real = kernels.dice_focal_loss

    def ours(logits, target, backend):
        return real(logits, target, backend=backend) * scale

    wall = fast_only(ours)
    shape = kernels.SMOKE_LOSS_SHAPES[0]
    floor_ms = (3 * 4 * math.prod(shape) + 2 * math.prod(shape) // shape[1]) / 1e9 * 1e3  # fp32 logits, uint8 labels

    def timed(build, gpu=False):
        if not gpu:
            return wall(build)
        return {**wall(build), "gpu_ms": gpu_ms * floor_ms if gpu_ms else "failed: RuntimeError: torch.profiler"}

    monkeypatch.setattr(kernels, "dice_focal_loss", ours)
    monkeypatch.setattr(kernels, "timed", timed)
    row = {"loss": "dice_focal"}
    kernels.loss_row(row, monai, shape, torch.float32, bandwidth=1e9)
    assert (row["peer"], row["peer/ours"]) == ("MONAI DiceFocalLoss", 100.0)
    assert row.get("ours_gpu/floor") == (pytest.approx(gpu_ms) if gpu_ms else None)
    assert row["agrees"].startswith(agrees)
    assert row["target"] == ">=15x, <=3x floor " + target


def test_verdicts(kernels):
    verdict = kernels.verdict
    assert verdict(True, "yes") == "met"
    assert verdict(False, "yes") == "NOT met"
    assert verdict(True, "dx differs: 3 of 9 values") == "NOT met: answers differ"
    assert verdict(True, "yes", ["compile bf16 cl"]) == "INCOMPLETE (compile bf16 cl failed)"
    assert verdict(False, "yes", ["compile bf16 cl"]) == "NOT met"


def test_a_memory_row_that_fails_records_its_error_and_the_next_row_runs(kernels, monkeypatch, capsys):
    real_template = kernels.block_template

    def template(channels, groups):
        if channels == 16:
            raise RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB\nmore")
        return real_template(channels, groups)

    def ours(template, shared):
        raise RuntimeError("Triton Error [CUDA]: out of resource")

    monkeypatch.setattr(kernels, "SMOKE_STAGES", [(16, (2, 6, 6), 4), (8, (2, 4, 4), 2)])
    monkeypatch.setattr(kernels, "block_template", template)
    monkeypatch.setattr(kernels, "ours_side", ours)
    monkeypatch.setattr(kernels, "untuned_eager_peaks", lambda: {"error": "untuned process failed: X"})
    monkeypatch.setattr(kernels.args, "cpu_smoke", True)
    rows = []
    kernels.memory_rows(rows)
    assert [row["shape"] for row in rows] == ["1x16x2x6x6/g4", "1x8x2x4x4/g2"]
    assert rows[0]["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 9.00 GiB"
    second = rows[1]
    assert "error" not in second
    assert second["fused_MiB"] == second["fused_unsplit_MiB"] == "RuntimeError: Triton Error [CUDA]: out of resource"
    assert second["eager_cf_MiB"] == "untuned process failed: X"
    assert math.isnan(second["eager_cl_tuned_MiB"]) and second["eager_min"] == "cf, benchmark on"
    assert "fused/eager_min" not in second
    assert "CUDA out of memory" in capsys.readouterr().out  # each row is printed as it comes


def test_eager_peaks_with_cudnn_benchmark_off_come_from_a_fresh_process(kernels, monkeypatch):
    monkeypatch.setattr(kernels.args, "cpu_smoke", True)  # passed on to the process
    peaks = kernels.untuned_eager_peaks()
    assert list(peaks) == ["1x16x2x6x6/g4"] and sorted(peaks["1x16x2x6x6/g4"]) == ["cf", "cl"]
    assert all(math.isnan(mib) for mib in peaks["1x16x2x6x6/g4"].values())  # no device memory on the CPU


def test_an_interrupted_row_keeps_what_it_measured(kernels):
    rows = []

    def interrupted(row):
        row["ours_ms"] = 1.5
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        kernels.add_row(rows, kernels.CONV_COLUMNS, {"shape": "s"}, interrupted)
    assert rows == [{"shape": "s", "ours_ms": 1.5, "error": "stopped by the time limit"}]


def test_only_the_time_limit_stops_the_remaining_parts(kernels, monkeypatch, capsys):
    def fails(rows):
        rows.append({"shape": "first"})
        raise RuntimeError("Triton Error: out of resource")

    def measures(bandwidth, rows):
        rows.append({"loss": "dice_ce"})

    def interrupted(bandwidth, rows):
        raise KeyboardInterrupt

    monkeypatch.setattr(kernels.args, "cpu_smoke", True)  # nothing is saved
    monkeypatch.setattr(kernels, "memory_rows", fails)
    monkeypatch.setattr(kernels, "loss_rows", measures)
    monkeypatch.setattr(kernels, "conv_rows", interrupted)
    kernels.main()
    out = capsys.readouterr().out
    assert "failed during memory (RuntimeError: Triton Error: out of resource)" in out
    assert "== loss ==\nloss" in out and "dice_ce" in out  # the part after the failure ran
    assert "stopped during conv by its time limit" in out

    monkeypatch.setattr(kernels, "memory_rows", lambda rows: interrupted(None, rows))
    monkeypatch.setattr(kernels, "loss_rows", lambda bandwidth, rows: pytest.fail("ran after the time limit"))
    kernels.main()
    assert "== loss ==" not in capsys.readouterr().out
