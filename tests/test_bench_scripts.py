"""The GPU benchmark scripts run end to end in their CPU smoke mode (tiny shapes, Triton interpreter).

A GPU session is short and starts bare: a benchmark that breaks there costs the whole call.
These runs check every code path of the scripts that does not need a GPU (argument parsing,
model and loss builds, the peers, the loader, the tables) and that a smoke run saves nothing.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow
@pytest.mark.timeout(2400)  # a smoke run took 150 s on a loaded CI machine: room for one 4x slower
@pytest.mark.parametrize("script, expected", [
    ("run_kernels.py", ["== conv ==", "== memory ==", "== loss ==", "MONAI DiceFocalLoss"]),
    ("run_train_step.py", ["fused / eager", "real / pre-loaded"]),
    ("run_inference.py", ["MONAI fp32", "ours fp32, folder"]),
])
def test_gpu_benchmark_runs_in_cpu_smoke_mode_and_saves_nothing(script, expected):
    results = BENCH / "results"
    before = {p: p.stat().st_mtime_ns for p in results.glob("*")}
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, str(BENCH / script), "--cpu-smoke"], capture_output=True, text=True,
                          env=env, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for text in expected:
        assert text in done.stdout
    assert "smoke run" in done.stdout.lower()  # says that its numbers are not results
    assert {p: p.stat().st_mtime_ns for p in results.glob("*")} == before


def test_results_go_to_the_folder_given_with_results(tmp_path, monkeypatch):
    import argparse
    import json

    monkeypatch.syspath_prepend(str(BENCH))
    import benchlib

    parser = argparse.ArgumentParser()
    benchlib.add_results_option(parser)
    assert parser.parse_args([]).results == BENCH / "results"  # the committed figures by default
    folder = parser.parse_args(["--results", str(tmp_path / "trial")]).results
    path = benchlib.save("metrics_cpu", {"rows": [{"op": "dice"}]}, "op\ndice", folder)
    assert path == tmp_path / "trial" / "metrics_cpu.json"
    assert json.loads(path.read_text())["table"] == ["op", "dice"]
    chart = benchlib.save_bar_chart("inference_x", [("ours", {"network": 1.0})], title="t", ylabel="s", folder=folder)
    assert chart == tmp_path / "trial" / "inference_x.png" and chart.stat().st_size > 0


def test_rows_measured_before_a_failure_or_a_stop_are_kept(monkeypatch, capsys):
    """A GPU session is short: an error no row caught, or the stage's SIGINT, marks the payload
    incomplete (saying which) and returns, so the script still saves the rows it has."""
    monkeypatch.syspath_prepend(str(BENCH))
    import benchlib

    rows, payload = [], {}

    def fails_after_one_row():
        rows.append({"op": "first"})
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    assert benchlib.run_until_stopped(fails_after_one_row, payload, "the GPU rows") is True
    assert rows == [{"op": "first"}]
    assert payload["incomplete"] == ("failed during the GPU rows (RuntimeError: CUDA error: an illegal memory access "
                                     "was encountered); later rows are missing")
    assert "Traceback" in capsys.readouterr().err

    def interrupted():
        raise KeyboardInterrupt

    assert benchlib.run_until_stopped(interrupted, payload, "network") is True
    assert payload["incomplete"].startswith("stopped during network by its time limit")
    assert benchlib.run_until_stopped(lambda: rows.append({}), {}, "x") is False


def test_agreement_pairs_results_across_libraries_and_names_what_differs(monkeypatch):
    """The benchmarks count a fast answer only when it is the peer's: torch (any dtype), NumPy and
    numbers compare on the host, NaN matches NaN, and a difference says how many values and how far."""
    import numpy as np
    import torch

    monkeypatch.syspath_prepend(str(BENCH))
    import benchlib

    assert benchlib.agreement((0.5, torch.tensor([1, 2])), (0.5, np.array([1, 2]))) == "yes"
    ours = torch.tensor([1.0, 2.0, float("nan")], dtype=torch.bfloat16)
    assert benchlib.agreement(ours, np.array([1.004, 2.0, np.nan]), atol=1e-2) == "yes"
    assert benchlib.agreement(ours, np.array([1.0, 2.5, np.nan]), atol=1e-2) == \
        "differs: 1 of 3 values, max |ours - peer| 0.5 (allowed 0.01 + 0 x |peer|)"
    assert benchlib.agreement(ours, np.array([1.0, 2.0, 3.0])).startswith("differs: 1 of 3 values")
    assert benchlib.agreement(np.zeros(3), np.zeros(4)) == "differs: shape (3,) vs the peer's (4,)"
    assert benchlib.agreement((1.0, 2.0), (1.0, 2.1), rtol=0.01) == \
        "differs (result 1): 1 of 1 values, max |ours - peer| 0.1 (allowed 0 + 0.01 x |peer|)"
    assert benchlib.agreement([1], [1, 2]) == "differs: 1 results vs the peer's 2"
    infinite = np.array([np.inf, -np.inf, 1.0])  # an empty mask's HD95: inf on both sides is the same answer
    assert benchlib.agreement(infinite, infinite.copy(), rtol=1e-6) == "yes"
    assert benchlib.agreement(infinite, np.array([np.inf, np.inf, 1.0])).startswith("differs: 1 of 3 values")
    assert benchlib.agreement(infinite, np.array([5.0, -np.inf, 1.0])).startswith("differs: 1 of 3 values")
    for finite, infinity in ((5.0, np.inf), (-np.inf, np.inf), (np.inf, 5.0)):  # a tolerance never reaches inf
        assert benchlib.agreement(finite, infinity, rtol=1e-3) != "yes"
    info = benchlib.machine()
    assert info["packages"]["c2w_fast"] and info["git_commit"]


def test_a_metrics_row_is_met_only_when_ours_gives_the_peers_answer(monkeypatch):
    import itertools

    import numpy as np

    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(sys, "argv", ["run_metrics.py"])  # the script reads its options when imported
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))  # which it sets: restored after
    import run_metrics

    labels = np.array([[0, 1, 1, 0, 2, 2]])
    assert run_metrics.same_partition((labels, 2), labels * 7) == "yes"  # numbered otherwise: the same components
    assert run_metrics.same_partition((labels, 2), np.array([[0, 1, 1, 0, 1, 1]])) == \
        "differs: 2 components vs the peer's 1, 2 overlapping pairs"
    assert run_metrics.same_partition((labels, 2), np.array([[0, 1, 1, 1, 2, 2]])) == \
        "differs: 1 voxels foreground on one side only"

    times = itertools.cycle([1.0, 20.0])  # ms of ours, then of the peer, in each row: no clock, so no load, decides

    def time_call(fn, *, repeats, **_):
        fn()
        ms = next(times)
        return {"median_ms": ms, "min_ms": ms, "cpu_ms": ms, "repeats": repeats}

    monkeypatch.setattr(run_metrics, "time_call", time_call)
    wrong = run_metrics.row("op", lambda: np.ones(4, bool), "peer", lambda: np.zeros(4, bool), 2, repeats=1,
                            check=run_metrics.same_mask)
    assert wrong["ratio"] == 20 and wrong["agrees"].startswith("differs: 4 of 4 values")
    assert wrong["met"] == "NO: the answers differ"
    right = run_metrics.row("op", lambda: np.ones(4, bool), "peer", lambda: np.ones(4, np.uint8), 2, repeats=1,
                            check=run_metrics.same_mask)
    assert (right["ratio"], right["agrees"], right["met"]) == (20, "yes", "yes")
    unchecked = run_metrics.row("op", lambda: 1, "peer", lambda: 1, 2, repeats=1)
    assert unchecked["met"] == "no verdict: answers not compared"

    # on a GPU the floor is held against our GPU time (kernels only), measured apart from the wall times
    import benchlib

    monkeypatch.setattr(benchlib, "device_time", lambda fn, repeats, warmup: {"device_ms": 0.5})
    gpu = run_metrics.with_floor(run_metrics.row("op", lambda: 1, "peer", lambda: 1, 2, repeats=1, cuda=True,
                                                 check=lambda a, b: "yes"), 10**9, 1e12, "triton")
    assert [gpu[key] for key in ("ours_ms", "ours_gpu_ms", "floor_ms", "x_floor", "met")] == [1.0, 0.5, 1.0, 0.5, "yes"]

    def no_profiler(fn, repeats, warmup):
        raise RuntimeError("torch.profiler recorded no GPU activity")

    monkeypatch.setattr(benchlib, "device_time", no_profiler)
    failed = run_metrics.with_floor(run_metrics.row("op", lambda: 1, "peer", lambda: 1, 2, repeats=1, cuda=True,
                                                    check=lambda a, b: "yes"), 10**9, 1e12, "triton")
    assert failed["ours_gpu_ms"].startswith("failed: RuntimeError") and failed["x_floor"] == "-"
    assert failed["met"] == "yes"  # the wall times still decide the speed-up


def test_the_train_step_ratio_takes_the_faster_compile_and_counts_only_when_the_first_steps_agree(monkeypatch):
    """The verdict needs the same first loss and every parameter's gradient (norm and a random projection)
    within GRAD_RTOL of its norm; a wanted compile build missing makes a met ratio INCOMPLETE."""
    import numpy as np

    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(sys, "argv", ["run_train_step.py", "--cpu-smoke"])  # read when imported
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # which it sets: restored after
    import run_train_step

    names = ["conv.weight", "norm.weight"]
    right = (names, np.array([[2.0, 0.5], [1.0, -0.3]]))

    def ratio(compile_cl_loss=None, fused_gradients=right, compile_cf_ms=30.0):
        rows = [{"build": "fused", "median_ms": 10.0, "first_loss": 0.70},
                {"build": "compile cf", "median_ms": compile_cf_ms, "first_loss": 0.70}]
        gradients = {"fused": fused_gradients, "compile cf": right, "compile cl": right}
        if compile_cl_loss is not None:
            rows.append({"build": "compile cl", "median_ms": 25.0, "first_loss": compile_cl_loss})
        run_train_step.ratio_rows(rows, ["compile cf", "compile cl"], gradients)
        return next(row for row in rows if row["build"].startswith("fused / compile"))

    agreeing = ratio(0.705)
    assert (agreeing["build"], agreeing["median_ms"], agreeing["target"]) == ("fused / compile cl", 0.4, "<=0.5 met")
    assert ratio(0.9)["target"].startswith("NOT met: first loss differs: 1 of 1 values")
    close = (names, right[1] + [[0.15, -0.1], [0.0, 0.09]])  # within 0.1 of each norm
    assert ratio(0.70, close)["target"] == "<=0.5 met"
    for wrong in ((names, right[1] * [[1, 1], [0, 0]]), (names, right[1] * [[1, 1], [1, -1]])):  # zero, flipped
        assert ratio(0.70, wrong)["target"].startswith("NOT met: gradients differ: norm.weight by ")
    assert ratio(0.70, None)["target"] == "no verdict: not checked: no gradients recorded"
    deep = (names + ["deep.weight"], np.vstack([right[1], [1e-7, 1e-7]]))  # at initialisation: ~1e-7 of the whole
    rounded = (deep[0], np.vstack([right[1], [2e-7, -1e-7]]))  # bf16 rounding moves it by its own size
    rows = [{"build": "fused", "median_ms": 10.0, "first_loss": 0.70}, {"build": "eager", "median_ms": 30.0,
                                                                         "first_loss": 0.70}]
    assert run_train_step.same_step("fused", "eager", {r["build"]: r for r in rows},
                                    {"fused": rounded, "eager": deep}) == "yes"
    cut = ratio()
    assert (cut["build"], cut["target"]) == ("fused / compile cf", "<=0.5 INCOMPLETE (compile cl not measured)")
    assert ratio(compile_cf_ms=15.0)["target"] == "<=0.5 NOT met"  # a missing build cannot make it met
    rows = [{"build": "fused", "median_ms": 10.0, "first_loss": 0.70}]
    run_train_step.ratio_rows(rows, ["compile cf", "compile cl"], {})
    assert rows[-1] == {"build": "fused / compile", "target": "no verdict: compile cf and compile cl not measured"}


@pytest.mark.cuda
def test_device_time_counts_the_kernels_and_not_the_host_or_the_l2_flush(monkeypatch):
    """A 1 GiB copy's GPU time is its wall time less the host overhead (never more, nor much less), whatever
    the host does between its launches; the flushes between calls are not counted (a 4 KiB fill takes
    microseconds); a call that launches nothing on the GPU is an error, not 0 ms."""
    import time

    import torch

    monkeypatch.syspath_prepend(str(BENCH))
    import benchlib

    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    wall = benchlib.time_call(lambda: dst.copy_(src), repeats=5, cuda=True)["min_ms"]
    device = benchlib.device_time(lambda: dst.copy_(src), repeats=5)["device_ms"]
    assert 0.7 * wall <= device <= 1.05 * wall
    small = torch.empty(4096, dtype=torch.uint8, device="cuda")
    assert 0 < benchlib.device_time(lambda: small.fill_(1))["device_ms"] < 0.02
    with pytest.raises(RuntimeError, match="launched no GPU work"):
        benchlib.device_time(lambda: torch.ones(8).sum())
    slept = benchlib.device_time(lambda: (time.sleep(0.01), dst.copy_(src)), repeats=5)["device_ms"]
    assert slept == pytest.approx(device, rel=0.1)
    bandwidth = benchlib.copy_bandwidth()
    assert 2 * 2**30 / (wall / 1e3) <= bandwidth <= 2 * 2**30 / (0.7 * wall / 1e3)
