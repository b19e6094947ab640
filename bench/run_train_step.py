"""Training step of the C2W network on a GPU: fused blocks vs plain PyTorch eager and torch.compile, and the loader.

Seed C2W configuration: batch 4, 1×44×256×256 ROI, bf16 autocast, ResNeXt U-Net
(``c2w_resnext``), Dice-Focal loss, AdamW. Three builds of the *same* network and weights:

* ``fused``    — every conv block through ``c2w_fast.ops.conv_norm_act`` / losses with
                 ``backend="auto"`` (the project's Triton kernels where they exist);
* ``eager``    — the same blocks and loss with ``backend="reference"`` (Conv3d →
                 InstanceNorm3d → LeakyReLU and the loss in plain PyTorch ops);
* ``compile``  — ``torch.compile`` of the eager build, network and loss (fresh Dynamo state,
                 static shapes).

For each: median step time (forward + backward + optimiser step) and peak GPU memory in GB
(10^9 bytes, as the target) over the timed steps: held by tensors (``peak_gb``) and by PyTorch's
allocator (``reserved_gb``, what the card must have; the 20 GB target is judged on it). Then the data path: the step fed by the real loader (phantom
cases, worker processes, pinned copies on a side stream, GPU augmentation) vs the same step
on a batch already on the GPU, as mean time per step after the loader's prefetch buffer
(workers × prefetch batches) is used up, so a loader slower than the GPU cannot hide.
Targets (issue 7): fused ≤ 0.5 × compile, peak ≤ 20 GB (RTX 4090), real loader within 10 %
of the pre-loaded batch, each row with its verdict. Rows are printed as they are measured; a
build that fails is recorded with its error and the others still run, and a run stopped by its
time limit saves what it measured, marked incomplete. JSON to ``bench/results/train_step_<gpu>.json``.

Usage: python bench/run_train_step.py [--steps 20] [--loader-cases 8] [--skip-compile]
       python bench/run_train_step.py --cpu-smoke   # a tiny network and ROI on the CPU through the Triton
                                                    # interpreter: checks the script; not a result, not saved
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    from benchlib import add_results_option  # stdlib only: imported before the environment is set

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--loader-cases", type=int, default=8, help="phantom cases (88x640x640) for the loader test")
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run through the Triton interpreter")
    add_results_option(parser)
    return parser.parse_args(argv)


ARGS = parse_args()
if ARGS.cpu_smoke:
    os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

from c2w_fast import config as cfg  # noqa: E402
from c2w_fast.training import checkpoint  # noqa: E402
from c2w_fast.training.loop import Trainer, make_loss  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
BATCH, ROI = 4, (44, 256, 256)
SMOKE_BATCH, SMOKE_ROI, SMOKE_PHANTOM = 1, (4, 16, 16), ((24, 64, 64), (1.25, 1.25, 1.25))
DEVICE = torch.device("cpu" if ARGS.cpu_smoke else "cuda")
WARMUP = 0 if ARGS.cpu_smoke else 2  # steps before the timed ones
PREFETCH = 4  # batches each loader worker keeps ready
LOADER_STEPS = 60  # timed loader steps after the prefetch buffer is used up
COMPILE_TARGET, PEAK_TARGET_GB, LOADER_TARGET = 0.5, 20.0, 1.10  # issue 7: fused/compile, peak, real/pre-loaded
COLUMNS = ["build", "median_ms", "mean_ms", "min_ms", "peak_gb", "reserved_gb", "steps", "target", "error"]


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _set_backend(model: torch.nn.Module, backend: str) -> None:
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = backend


def _loss_with_backend(config, backend: str):
    loss = make_loss(config)
    loss.options["backend"] = backend
    return loss


def time_steps(model, loss_fn, batches, steps: int) -> dict:
    """Median step time (ms) and peak memory over ``steps`` steps after WARMUP untimed ones.

    The peaks are reset after the warm-up, so one-off allocations of the first steps (Triton
    autotuning's buffers, cuDNN's benchmark workspaces) are not counted: ``peak_gb`` is what
    tensors held at most during the timed steps, ``reserved_gb`` what PyTorch's allocator held
    (what the card must have, e.g. 24 GB on an RTX 4090)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4)
    times = []
    for i in range(steps + WARMUP):
        image, target = next(batches)
        _sync()
        if i == WARMUP and DEVICE.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=DEVICE.type == "cuda"):
            out = model(image)
        loss = loss_fn(out, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync()
        if i >= WARMUP:
            times.append((time.perf_counter() - start) * 1e3)
    cuda = DEVICE.type == "cuda"
    return {"median_ms": statistics.median(times), "min_ms": min(times), "steps": steps,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else math.nan,
            "reserved_gb": torch.cuda.max_memory_reserved() / 1e9 if cuda else math.nan}


def network_rows(config, batch: int, roi, steps: int, skip_compile: bool, rows: list[dict]) -> None:
    """Each build's row, appended and printed as soon as it is measured; a build that fails
    (out of memory, a compile error) gets its error as the row and the next one runs."""
    torch.manual_seed(0)
    image = torch.randn(batch, 1, *roi, device=DEVICE)
    target = (torch.rand(batch, *roi, device=DEVICE) > 0.9).long()

    def same_batch():
        while True:
            yield image, target

    weights = None  # the first build's initial weights, on the host, loaded by every build
    fused = "triton" if DEVICE.type == "cpu" else "auto"  # on the CPU only the interpreter runs the kernels
    builds = [("fused", fused, False), ("eager", "reference", False)]
    if not skip_compile:
        builds.append(("compile", "reference", True))
    for name, backend, compiled in builds:
        model = checkpoint.build_from_config(config).to(DEVICE)
        if weights is None:
            weights = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
        model.load_state_dict(weights)
        _set_backend(model, backend)
        loss = _loss_with_backend(config, backend)
        if compiled:
            torch._dynamo.reset()
            runnable, loss = torch.compile(model, dynamic=False), torch.compile(loss, dynamic=False)
        else:
            runnable = model
        try:
            result = time_steps(runnable, loss, same_batch(), steps)
        except Exception as exc:  # noqa: BLE001 - out of memory, a compile failure: recorded, the next build runs
            result = {"median_ms": math.nan, "peak_gb": math.nan, "error": benchlib.error_text(exc)}
        _add(rows, {"build": name, **result})
        del model, runnable, loss
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()


def _add(rows: list[dict], row: dict) -> None:
    rows.append(row)
    print(benchlib.table([row], COLUMNS).splitlines()[-1], flush=True)


def loader_rows(config, steps: int, cases: int, workers: int, rows: list[dict], phantom=(None, None)) -> None:
    """The same training step fed by the real loader vs by one batch kept on the GPU (rows appended and
    printed as measured), then their ratio."""
    from c2w_fast.data.layouts import discover_cases
    from c2w_fast.data.loader import DevicePrefetcher, batches
    from c2w_fast.data.phantom import write_dataset

    with tempfile.TemporaryDirectory(prefix="c2w_bench_") as tmp:  # phantoms are large at full size
        folder = Path(tmp)
        write_dataset(folder / "lasc", "lasc", cases, shape=phantom[0], spacing=phantom[1], progress=False)
        config.data.root = str(folder / "lasc")
        config.roi.center = "ground_truth"   # no localiser run needed: the ROI around the true cavity
        config.train.num_workers = workers
        found = discover_cases(config.data.root)
        trainer = Trainer(config, folder / "run", found, [], device=DEVICE)
        trainer.prepare()
        ipe = trainer.source.iterations_per_epoch
        # the prefetch buffer (workers x prefetch batches) hides a slow loader until it is used up: skip it
        skip = 0 if ARGS.cpu_smoke else workers * PREFETCH + WARMUP
        measured = steps if ARGS.cpu_smoke else max(steps, LOADER_STEPS)
        stream = DevicePrefetcher(batches(trainer.source, 0, math.ceil((skip + measured + 2) / ipe) * ipe,
                                          num_workers=workers, prefetch=PREFETCH, pin_memory=DEVICE.type == "cuda"),
                                  DEVICE)
        measured_rows = []
        for name, feed in (("real loader", lambda: next(stream)), ("pre-loaded batch", None)):
            fixed = next(stream) if feed is None else None
            times = []
            for i in range(skip + measured):
                _sync()
                start = time.perf_counter()  # includes any wait for the loader
                batch = feed() if feed is not None else fixed
                trainer.train_step(trainer.model, batch, 1e-4)
                _sync()
                if i >= skip:
                    times.append((time.perf_counter() - start) * 1e3)
            measured_rows.append({"build": name, "mean_ms": statistics.fmean(times),
                                  "median_ms": statistics.median(times), "min_ms": min(times), "steps": measured})
            _add(rows, measured_rows[-1])
    real, preloaded = measured_rows
    ratio = real["mean_ms"] / preloaded["mean_ms"]
    _add(rows, {"build": "real / pre-loaded", "mean_ms": ratio, "target": _verdict(ratio, LOADER_TARGET)})


def _verdict(ratio: float, target: float) -> str:
    """``<=target met`` or ``NOT met`` (a NaN, from a failed build, is not met)."""
    return f"<={target:g} " + ("met" if ratio <= target else "NOT met")


def ratio_rows(rows: list[dict]) -> None:
    """fused / compile and fused / eager (time, and peak memory), with the issue's targets."""
    by = {r["build"]: r for r in rows}
    fused = by.get("fused")
    if fused is None:
        return
    if "compile" in by:
        ratio = fused["median_ms"] / by["compile"]["median_ms"]
        _add(rows, {"build": "fused / compile", "median_ms": ratio, "target": _verdict(ratio, COMPILE_TARGET)})
    if "eager" in by:
        _add(rows, {"build": "fused / eager", "median_ms": fused["median_ms"] / by["eager"]["median_ms"],
                    "peak_gb": fused["peak_gb"] / by["eager"]["peak_gb"]})
    if DEVICE.type == "cuda":
        _add(rows, {"build": "fused peak (GB)", "peak_gb": fused["peak_gb"], "reserved_gb": fused["reserved_gb"],
                    "target": _verdict(fused["reserved_gb"], PEAK_TARGET_GB) + " (reserved)"})


def main() -> int:
    args = ARGS
    if args.cpu_smoke:
        from c2w_fast.demo import TINY_RESNEXT

        overrides = [*TINY_RESNEXT, "roi.size=[%d,%d,%d]" % SMOKE_ROI]
        batch, roi, steps, cases, workers, phantom = SMOKE_BATCH, SMOKE_ROI, 1, 2, 0, SMOKE_PHANTOM
    elif not torch.cuda.is_available():
        print("run_train_step.py measures GPU training steps (bf16, 44x256x256, batch 4) and needs a CUDA GPU; "
              "none is visible to torch here. Nothing was measured (--cpu-smoke checks the script).",
              file=sys.stderr)
        return 2
    else:
        torch.backends.cudnn.benchmark = True  # the eager and compiled builds get cuDNN's best algorithms
        overrides, batch, roi, steps, cases, workers, phantom = [], BATCH, ROI, args.steps, args.loader_cases, \
            args.workers, (None, None)
    config = cfg.load(CONFIGS / "c2w_cavity.toml", ["roi.center=\"ground_truth\"", *overrides,
                                                     f"train.batch_size={batch}"])
    rows, payload = [], {}
    print(benchlib.table([], COLUMNS), flush=True)  # the header; each row is printed as it is measured

    def measure():
        network_rows(config, batch, roi, steps, args.skip_compile or args.cpu_smoke, rows)
        ratio_rows(rows)
        loader_rows(config, steps, cases, workers, rows, phantom)

    benchlib.run_until_stopped(measure, payload, "the training steps")
    printed = benchlib.table(rows, COLUMNS)
    print(printed)
    if args.cpu_smoke:
        print("CPU smoke run: the script works; these numbers are not results and nothing was saved.")
        return 0
    gpu = torch.cuda.get_device_name().replace(" ", "_")
    path = benchlib.save(f"train_step_{gpu}", {
        **payload,
        "config": {"batch": BATCH, "roi": ROI, "dtype": "bf16", "model": "c2w_resnext", "loss": "dice_focal"},
        "targets": {"fused_vs_compile": COMPILE_TARGET, "peak_gb": PEAK_TARGET_GB,
                    "loader_vs_preloaded": LOADER_TARGET},
        "rows": rows}, printed, args.results)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
