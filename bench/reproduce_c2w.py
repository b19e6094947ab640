"""C2W-Tune at full size on a GPU: the demo's pipeline with the real networks, ROI and phantom geometry.

Writes LASC-geometry phantoms (88×640×640 at 0.625 mm), trains the localiser, the cavity
stage (ResNeXt U-Net, 44×256×256 ROI, batch 4, bf16), the wall stage from the cavity run
with progressive unfreezing and the scratch baseline with the presets in ``configs/``,
then prints the C2W paper's Table 1 for the held-out phantoms and saves it to
``bench/results/reproduce_c2w_<gpu>.json``. ``--paper-schedule`` keeps the paper's
unfreezing steps and restart LRs (meant for 1000 epochs); by default a run of
``--epochs`` uses the demo's proportional schedule.

Rerunning the same command continues a run that was stopped (a device call's time limit, a
kill): the phantoms are reused once complete, finished stages are skipped and an unfinished
one resumes from its last checkpoint. Delete ``--out`` to start over.

Usage: python bench/reproduce_c2w.py [--n 40] [--epochs 100] [--out runs/reproduce_c2w] [--paper-schedule]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

from c2w_fast.cli import INTERRUPTED  # noqa: E402
from c2w_fast.data.phantom import write_dataset  # noqa: E402
from c2w_fast.demo import c2w_pipeline, short_run_schedule  # noqa: E402
from c2w_fast.training.evaluation import table1  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="phantom cases, a quarter held out for the test (default 40)")
    parser.add_argument("--epochs", type=int, default=100, help="epochs per stage (default 100)")
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce_c2w"),
                        help="run folder; a rerun continues it (default runs/reproduce_c2w)")
    parser.add_argument("--workers", type=int, default=8, help="loader worker processes (default 8)")
    parser.add_argument("--paper-schedule", action="store_true", help="unfreezing at epochs 61/181, peaks 1e-4/1e-5")
    benchlib.add_results_option(parser)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("reproduce_c2w.py trains the full-size C2W pipeline and needs a CUDA GPU; torch sees none here. "
              "Use `make demo` for the CPU-sized version.", file=sys.stderr)
        return 2
    began = time.perf_counter()
    n_test, final_val = args.n // 4, max(1, args.n // 8)
    data = args.out / "data"
    if not data.is_dir():  # written aside and renamed, so a killed write is never taken as complete
        partial = args.out / "data.partial"
        shutil.rmtree(partial, ignore_errors=True)
        write_dataset(partial, "lasc", args.n)
        partial.rename(data)
    common = [f"data.n_test={n_test}", f"data.final_val={final_val}", "run.device=\"cuda\"",
              f"train.num_workers={args.workers}"]
    wall = [] if args.paper_schedule else short_run_schedule(args.epochs)
    try:
        results = c2w_pipeline(data, args.out, args.epochs, common=common, resnext=[], localizer=[],
                               wall_schedule=wall, device="cuda", resumable=True)
    except KeyboardInterrupt:
        print("\nstopped: the same command continues from the last checkpoint", file=sys.stderr)
        return INTERRUPTED
    printed = table1(results, "wall")
    print(f"\nLA wall on {n_test} held-out full-size phantoms:\n{printed}")
    gpu = torch.cuda.get_device_name().replace(" ", "_")
    path = benchlib.save(f"reproduce_c2w_{gpu}", {
        "cases": args.n, "test_cases": n_test, "epochs": args.epochs, "paper_schedule": args.paper_schedule,
        "minutes_this_invocation": (time.perf_counter() - began) / 60, "per_case": results}, printed, args.results)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
