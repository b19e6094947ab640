"""Inference timing study: c2w_fast's engine and pipelines vs MONAI sliding_window_inference, per 44×640×640 volume.

Side by side in one run, on one GPU, with the same networks and the same (random) weights,
the same overlap, the same precision (bf16 autocast), the same windows per forward pass and
Gaussian weighting with σ = patch / 8 in both:

* **end to end** — per volume, from the NIfTI file to the written label map:

  - ``mbas``: stage 1 (``mbas_stage1`` at 2.5×0.9737×0.9737 mm, 28×256×224) → largest
    component → dilation r=2 → stage 2 (``mbas_stage2``, native grid) inside that region →
    largest component per class;
  - ``c2w``: localiser (``unet_localizer`` at 2.5 mm) → 44×256×256 ROI around its centre of
    mass → cavity and wall (``c2w_resnext``) → pasted back.

  *ours* is ``c2w_fast.predict`` on run folders of random-weight checkpoints (everything on
  the GPU, optionally with CUDA graphs); *MONAI* does the same steps with MONAI's pieces:
  ``Resize``, ``NormalizeIntensity``, ``sliding_window_inference``, ``AsDiscrete``,
  ``KeepLargestConnectedComponent`` (cuCIM on the GPU when installed, else scikit-image on
  the CPU), and the r=2 ball dilation as a ``conv3d`` (MONAI's ``dilate`` has only box
  elements). Both read and write with ``c2w_fast.data.io``. Per method: median time per
  volume, the breakdown (read, preprocess, network, stitch, postprocess, write) from a
  separate pass synchronised at every phase boundary, peak GPU memory, and the labels
  compared with ours at fp32 and with MONAI's (voxel agreement, Dice per label). One more row
  per setting: ours over the timed volumes as a folder, ``c2w_fast.predict``'s way (the next
  volume read and the last one written in I/O threads while the current one runs), mean per
  volume; the target is checked on the one-after-the-other rows, like for like with MONAI.
* **network** — ``mbas_stage2`` (20×256×256 windows, 4 classes) over one 44×640×640 volume
  already on the GPU: ``c2w_fast.infer.sliding_window`` vs ``monai.inferers.sliding_window_inference``;
  windows, median time, peak GPU memory; the logits of ours checked against MONAI's given the
  same windows and Gaussian, and the CUDA-graph variant's against the plain one.

The end-to-end rows, which carry the target, run first, so that the session's time limit cuts
the informational network rows; a row that fails records its error and the next one runs.
Both sides run the same network module (the fused Triton blocks on CUDA); ``--peer-blocks
reference`` gives MONAI's side the plain PyTorch/cuDNN blocks instead (same weights), as a
MONAI user without this package would run them. Everything at overlap 0.5 and 0 (stride
1.0). Target (issue 8): end to end ≥ 3× MONAI at overlap 0.5, labels equal to ours at fp32
within tolerance (:func:`label_problems`: ≥ 98 % of voxels, and per label Dice ≥ 0.95 and
volume within 2 %); "met" is withheld when the labels differ, and no verdict is given when
MONAI's largest-component step runs on the host (no cuCIM), which would slow the peer.

Usage:
  python bench/run_inference.py [--volumes 3] [--batch-size 2] [--pipelines mbas c2w] [--no-cuda-graph]
  python bench/run_inference.py --cpu-smoke   # tiny volumes and networks on the CPU: checks the
                                              # script runs; its numbers are not results, nothing is saved
Results: bench/results/inference_<gpu>.json and inference_<gpu>.png.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

from c2w_fast import config as cfg  # noqa: E402
from c2w_fast.data.io import affine_from_spacing, read_volume, write_volume  # noqa: E402
from c2w_fast.data.phantom import make_phantom  # noqa: E402
from c2w_fast.data.preprocess import Box, center_of_mass, crop, paste, resampled_shape  # noqa: E402
from c2w_fast.infer import (  # noqa: E402
    NO_TIMER,
    PHASES,
    PhaseTimer,
    WindowRunner,
    gaussian_importance,
    sliding_window,
    window_count,
)
from c2w_fast.ops import ball  # noqa: E402
from c2w_fast.predict import load_pipeline, predict_cases, predict_file  # noqa: E402
from c2w_fast.stages import InferenceOptions, native_to_stage  # noqa: E402
from c2w_fast.training import checkpoint  # noqa: E402
from c2w_fast.training.run import write_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
FULL = {"shape": (44, 640, 640), "spacing": (2.5, 0.625, 0.625)}
SMOKE = {"shape": (12, 48, 48), "spacing": (2.5, 1.25, 1.25)}
TINY = ["model.overrides.features=[4,8,8]", "model.overrides.blocks_per_stage=[1,1,1]",
        "model.overrides.decoder_convs=[1,1]"]
SMOKE_OVERRIDES = {  # CPU-sized versions of the presets (the full run uses the presets as they are)
    "mbas_stage1": TINY + ["model.overrides.strides=[1,[1,2,2],2]", "model.overrides.kernels=[[1,3,3],3,3]",
                           "data.spacing=[2.5,2.0,2.0]", "train.patch_size=[8,16,16]"],
    "mbas_stage2": TINY + ["model.overrides.strides=[1,[1,2,2],2]", "model.overrides.kernels=[[1,3,3],3,3]",
                           "train.patch_size=[8,32,32]"],
    "c2w_localizer": TINY + ["model.overrides.strides=[1,2,2]", "model.overrides.kernels=[3,3,3]",
                             "train.patch_size=[8,16,16]", "data.spacing=[2.5,2.5,2.5]"],
    "c2w_cavity": TINY + ["model.overrides.strides=[1,[1,2,2],2]", "model.overrides.kernels=[3,3,3]",
                          "model.overrides.groups=[1,2,2]", "roi.size=[8,32,32]"],
}
SMOKE_OVERRIDES["c2w_wall"] = SMOKE_OVERRIDES["c2w_cavity"] + ["unfreeze.shallow_stages=1"]  # of its 3 stages
PIPELINES = {"mbas": ("mbas_stage1", "mbas_stage2"), "c2w": ("c2w_localizer", "c2w_cavity", "c2w_wall")}
LABELS = {"mbas": (1, 2, 3), "c2w": (1, 3)}  # the codes each pipeline writes (1 wall, 2 RA, 3 LA)
REFERENCE = "ours fp32 (reference)"
TARGET = 3.0
# Labels vs ours at fp32. bf16 moves only voxels whose top two logits are within its rounding, which random
# weights leave everywhere: measured on the full mbas_stage2 (CPU autocast, one 20x256x256 window), 1.4 % of
# voxels changed class, Dice 0.981-0.991 per class and every class volume within 0.5 %. 98 % equal voxels and
# Dice >= 0.95 allow those flips; a path that loses a few % of a label keeps a high Dice (losing 4 % is Dice
# 0.98) but shrinks it, which the volume bound catches, and a broken path (a class lost, a shifted window,
# wrong stitching) fails Dice or volume. Labels smaller than MIN_LABEL_VOXELS in both maps are listed, not judged.
AGREEMENT_TOLERANCE = 0.98
DICE_TOLERANCE = 0.95
VOLUME_RTOL = 0.02
MIN_LABEL_VOXELS = 1000
# Labels vs MONAI's: its Gaussian is floored at 1e-3, its window starts and (c2w) ROI rounding differ, so with
# random weights its labels legitimately differ at every boundary (Dice 0.56-0.93 in the smoke run): Dice is
# shown as information, and only a class lost or doubled (volume off by more than this factor) counts.
PEER_VOLUME_FACTOR = 2.0
# Logits, x the largest |logit| of the compared side: fp32, summation order only; bf16, tests/test_infer.py's
LOGIT_TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volumes", type=int, default=3,
                   help="synthetic volumes timed per method, after a warm-up (default 3)")
    p.add_argument("--batch-size", type=int, default=2, help="windows per forward pass, both engines (default 2)")
    p.add_argument("--pipelines", nargs="+", choices=sorted(PIPELINES), default=sorted(PIPELINES),
                   help="pipelines to time (default: all)")
    p.add_argument("--overlaps", nargs="+", type=float, default=[0.5, 0.0],
                   help="window overlaps, each a setting (default 0.5 0)")
    p.add_argument("--no-cuda-graph", action="store_true", help="skip the rows of ours with CUDA graphs")
    p.add_argument("--peer-blocks", choices=("same", "reference"), default="same",
                   help="MONAI's side: the same network module, or its blocks in plain PyTorch (cuDNN) "
                        "(default same)")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run that checks the script (not a result)")
    benchlib.add_results_option(p)
    return p.parse_args()


def device_for(args) -> torch.device:
    if args.cpu_smoke:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        sys.exit("bench/run_inference.py needs a CUDA GPU: no GPU is visible here, so there is nothing to measure.\n"
                 "Run it on a GPU machine, or pass --cpu-smoke to check that the script itself works "
                 "(tiny volumes and networks on the CPU; those numbers are not results).")
    torch.backends.cudnn.benchmark = True  # every window has one shape: both sides get cuDNN's best algorithm
    return torch.device("cuda")


def monai_components() -> tuple[str, str | None]:
    """Which library MONAI's KeepLargestConnectedComponent will use here, and why not cuCIM on the GPU
    (None when it does: a host fallback slows the peer, so its speedups get no verdict); exits naming
    what is missing."""
    import importlib.util

    missing = [name for name in ("monai",) if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit("bench/run_inference.py compares against MONAI: pip install -e \".[bench]\" (monai, scikit-image)")
    problem = benchlib.monai_gpu_problem()
    if problem is None:
        return "cuCIM (GPU)", None
    if importlib.util.find_spec("skimage") is not None:
        return f"scikit-image (CPU; cuCIM unusable: {problem})", problem
    sys.exit("MONAI's KeepLargestConnectedComponent needs cuCIM (GPU) or scikit-image (CPU): "
             "pip install -e \".[bench]\"")


# --- inputs: run folders of random-weight checkpoints and synthetic volumes --------------------------------

def make_runs(root: Path, smoke: bool) -> dict[str, Path]:
    """A run folder per preset (``config.toml`` + ``final/checkpoint_best.pt``) with seeded random
    weights, laid out as training writes them, the helper runs recorded in the configs."""
    links = {"mbas_stage2": [f"cascade.stage1=\"{root / 'mbas_stage1'}\""],
             "c2w_cavity": [f"roi.localizer=\"{root / 'c2w_localizer'}\""],
             "c2w_wall": [f"roi.localizer=\"{root / 'c2w_localizer'}\"", f"run.init_from=\"{root / 'c2w_cavity'}\""]}
    runs = {}
    for seed, name in enumerate(("mbas_stage1", "mbas_stage2", "c2w_localizer", "c2w_cavity", "c2w_wall")):
        config = cfg.load(CONFIGS / f"{name}.toml", links.get(name, []) + (SMOKE_OVERRIDES[name] if smoke else []))
        torch.manual_seed(seed)
        model = checkpoint.build_from_config(config)
        folder = root / name
        write_config(config, folder)
        (folder / "final").mkdir(parents=True, exist_ok=True)
        spacing = config.data.spacing or (SMOKE if smoke else FULL)["spacing"]
        checkpoint.save(folder / "final" / "checkpoint_best.pt", {
            "model": model.state_dict(), "config": config.to_dict(), "spacing": list(spacing),
            "architecture": checkpoint.architecture_of(model, config.model.architecture)})
        runs[name] = folder
    return runs


def make_volumes(folder: Path, n: int, geometry: dict) -> list[Path]:
    """``n + 1`` MBAS-geometry phantoms as int16 NIfTI (the first one warms up)."""
    affine = affine_from_spacing(geometry["spacing"])
    paths = []
    for i in range(n + 1):
        phantom = make_phantom(geometry["shape"], geometry["spacing"], seed=100 + i)
        paths.append(write_volume(folder / f"volume_{i}.nii.gz", (phantom.image * 1000).astype(np.int16), affine))
    return paths


# --- the MONAI side ---------------------------------------------------------------------------------------

class MonaiPipeline:
    """The pipelines of the study built from MONAI's components (module docstring), timed by phase."""

    def __init__(self, runs: dict[str, Path], kind: str, device, *, overlap: float, batch_size: int, blocks: str,
                 timer: PhaseTimer = NO_TIMER):
        from monai.data import set_track_meta

        set_track_meta(False)  # plain tensors through the transforms: MONAI's fast path
        self.kind, self.device, self.timer = kind, device, timer
        self.overlap, self.batch_size = overlap, batch_size
        self.stages = {}
        for name in PIPELINES[kind]:
            model, config, spacing, _ = checkpoint.load_stage(runs[name] / "final" / "checkpoint_best.pt")
            if blocks == "reference":
                for module in model.modules():
                    if hasattr(module, "backend"):
                        module.backend = "reference"
            self.stages[name] = (model.to(device).eval(), config, spacing)
        self.autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def sliding(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Logits (K, D, H, W) of stage ``name`` on a (C, D, H, W) input."""
        from monai.inferers import sliding_window_inference

        model, config, _ = self.stages[name]
        patch = tuple(config.train.patch_size or config.roi.size)

        def predictor(batch):
            with self.timer.phase("network"), torch.autocast(**self.autocast):
                out = model(batch)
                return (out[0] if isinstance(out, (list, tuple)) else out).float()

        with self.timer.phase("stitch"), torch.no_grad():
            return sliding_window_inference(x[None], patch, self.batch_size, predictor, overlap=self.overlap,
                                            mode="gaussian", sigma_scale=0.125)[0]

    def stage_input(self, name: str, x: torch.Tensor, spacing) -> torch.Tensor:
        from monai.transforms import NormalizeIntensity, Resize

        _, config, trained = self.stages[name]
        target = tuple(config.data.spacing) or trained
        shape = resampled_shape(x.shape[1:], spacing, target)
        with self.timer.phase("preprocess"):
            if shape != tuple(x.shape[1:]):
                x = Resize(shape, mode="trilinear")(x)
            return NormalizeIntensity()(x)

    def back(self, logits: torch.Tensor, shape) -> torch.Tensor:
        from monai.transforms import Resize

        return logits if tuple(logits.shape[1:]) == tuple(shape) else Resize(shape, mode="trilinear")(logits)

    def predict(self, image: np.ndarray, spacing) -> np.ndarray:
        from monai.transforms import AsDiscrete, KeepLargestConnectedComponent

        largest = KeepLargestConnectedComponent(applied_labels=[1], connectivity=3)
        with self.timer.phase("preprocess"):
            x = torch.from_numpy(image).to(self.device).float()[None]
        if self.kind == "mbas":
            logits = self.sliding("mbas_stage1", self.stage_input("mbas_stage1", x, spacing))
            with self.timer.phase("postprocess"):
                union = largest(AsDiscrete(argmax=True)(self.back(logits, image.shape)))
                kernel = torch.from_numpy(ball(2).astype(np.float32)).to(self.device)[None, None]
                region = F.conv3d(union[None].float(), kernel, padding=2)[0, 0] > 0
            logits = self.sliding("mbas_stage2", self.stage_input("mbas_stage2", x, spacing))
            with self.timer.phase("postprocess"):
                labels = AsDiscrete(argmax=True)(logits)[0]
                labels[~region] = 0
                labels = KeepLargestConnectedComponent(applied_labels=[1, 2, 3], independent=True,
                                                       connectivity=3)(labels[None])[0]
                return labels.to(torch.uint8).cpu().numpy()
        logits = self.sliding("c2w_localizer", self.stage_input("c2w_localizer", x, spacing))
        with self.timer.phase("postprocess"):
            atrium = largest(AsDiscrete(argmax=True)(self.back(logits, image.shape)))[0]
            centre = center_of_mass(atrium) or tuple((n - 1) / 2 for n in image.shape)
        _, config, trained = self.stages["c2w_cavity"]
        with self.timer.phase("preprocess"):
            box = Box.around(native_to_stage(centre, spacing, trained), config.roi.size)
            roi = crop(self.stage_input("c2w_cavity", x, spacing), box)
        with self.timer.phase("postprocess"):
            labels = torch.zeros(image.shape, dtype=torch.uint8, device=self.device)
        for name, code in (("c2w_cavity", 3), ("c2w_wall", 1)):
            logits = self.sliding(name, roi)
            with self.timer.phase("postprocess"):
                labels[paste(AsDiscrete(argmax=True)(logits)[0] > 0, box, image.shape, fill=False)] = code
        with self.timer.phase("postprocess"):
            return labels.cpu().numpy()

    def predict_file(self, path: Path, out: Path) -> None:
        with self.timer.phase("read"):
            volume = read_volume(path)
        labels = self.predict(volume.array, volume.spacing)
        with self.timer.phase("write"):
            write_volume(out / path.name, labels, like=volume)


# --- timing -------------------------------------------------------------------------------------------------

def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def release(device) -> None:
    """Free what the last method left (its models, graphs' static buffers), so the next one's peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def graph_failures(caught: list[warnings.WarningMessage]) -> bool:
    """Whether a CUDA-graph capture failed among the ``caught`` warnings; the others are shown as usual."""
    failed = False
    for warning in caught:
        if "CUDA graph capture failed" in str(warning.message):
            failed = True
        warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return failed


def per_volume(run_file, paths: list[Path], device) -> dict:
    """Median and minimum seconds per volume (after the first, a warm-up) and peak GPU memory (GiB)."""
    run_file(paths[0])
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for path in paths[1:]:
        start = time.perf_counter()
        run_file(path)
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_gib": peak, "volumes": len(times)}


def guarded(fn):
    """``(fn(), None)``, or ``(None, its error's text)`` with the traceback on stderr when it raises: one
    failing row or check (out of memory, a peer's CUDA mismatch, a graph capture) must not cost the rows
    after it. KeyboardInterrupt, the session's time limit, goes through to ``benchlib.run_until_stopped``."""
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 - recorded in its row; the next row runs
        traceback.print_exc()
        return None, benchlib.error_text(exc)


# --- labels compared ----------------------------------------------------------------------------------------

def compare_labels(labels: np.ndarray, reference: np.ndarray) -> dict:
    """Fraction of equal voxels, and per foreground label present in either map its voxels in each and
    Dice, from the maps' joint histogram (one pass over 18 M voxels, not several per label)."""
    size = int(max(labels.max(), reference.max())) + 1
    joint = np.bincount(labels.ravel().astype(np.intp) * size + reference.ravel(), minlength=size * size)
    joint = joint.reshape(size, size)
    voxels, reference_voxels, both = joint.sum(1), joint.sum(0), np.diag(joint)
    per_label = {value: {"voxels": int(voxels[value]), "reference_voxels": int(reference_voxels[value]),
                         "dice": 2 * int(both[value]) / int(voxels[value] + reference_voxels[value])}
                 for value in range(1, size) if voxels[value] + reference_voxels[value]}
    return {"agreement": int(both.sum()) / labels.size, "labels": per_label}


def judged(comparison: dict) -> list[tuple[int, dict]]:
    """The labels of a comparison large enough to judge: MIN_LABEL_VOXELS or more in one of the maps."""
    return [(value, c) for value, c in comparison["labels"].items()
            if max(c["voxels"], c["reference_voxels"]) >= MIN_LABEL_VOXELS]


def label_problems(comparison: dict) -> list[str]:
    """Why labels compared with ours at fp32 are outside the tolerance (none: within it): fewer equal voxels
    than AGREEMENT_TOLERANCE, or a judged label under DICE_TOLERANCE or more than VOLUME_RTOL off in volume."""
    problems = []
    if comparison["agreement"] < AGREEMENT_TOLERANCE:
        problems.append(f"{100 * comparison['agreement']:.2f} % of voxels equal to ours fp32's "
                        f"(< {100 * AGREEMENT_TOLERANCE:g} %)")
    for value, c in judged(comparison):
        voxels, reference_voxels = c["voxels"], c["reference_voxels"]
        if c["dice"] < DICE_TOLERANCE:
            problems.append(f"label {value} Dice {c['dice']:.3f} vs ours fp32 (< {DICE_TOLERANCE:g})")
        if abs(voxels - reference_voxels) > VOLUME_RTOL * reference_voxels:
            change = f" ({100 * (voxels - reference_voxels) / reference_voxels:+.1f} %)" if reference_voxels else ""
            problems.append(f"label {value} {voxels} voxels vs {reference_voxels} in ours fp32{change}, "
                            f"allowed ±{100 * VOLUME_RTOL:g} %")
    return problems


def peer_problems(comparison: dict) -> list[str]:
    """A class lost or doubled in labels compared with MONAI's: a judged label's volumes more than
    PEER_VOLUME_FACTOR apart (boundaries legitimately differ: see the constant)."""
    return [f"label {value} {c['voxels']} voxels vs {c['reference_voxels']} in MONAI's, "
            f"more than {PEER_VOLUME_FACTOR:g}x apart" for value, c in judged(comparison)
            if max(c["voxels"], c["reference_voxels"]) > PEER_VOLUME_FACTOR * min(c["voxels"], c["reference_voxels"])]


def unjudged(comparison: dict, codes) -> list[str]:
    """The labels (the pipeline's ``codes`` and any other found) a comparison says nothing about: absent
    from both maps, or too small in both; the verdict names them rather than count them as agreeing."""
    found = []
    for value in sorted(set(codes) | set(comparison["labels"])):
        c = comparison["labels"].get(value)
        if c is None:
            found.append(f"label {value} absent from both")
        elif max(c["voxels"], c["reference_voxels"]) < MIN_LABEL_VOXELS:
            found.append(f"label {value} too small ({c['voxels']} and {c['reference_voxels']} voxels)")
    return found


def dice_text(comparison: dict, codes) -> str:
    """Dice per label for the table, e.g. ``1: absent, 2: 0.991, 3: 0.987``."""
    return ", ".join(f"{value}: {comparison['labels'][value]['dice']:.3f}" if value in comparison["labels"]
                     else f"{value}: absent" for value in sorted(set(codes) | set(comparison["labels"])))


def label_columns(labels: np.ndarray, reference: np.ndarray | None, monai: np.ndarray | None, codes) -> dict:
    """A row of ours: its labels vs ours at fp32 (``reference``; None for that row itself or when it
    failed) and vs MONAI's (None when it failed), and ``labels_agree``, "yes" or what differs."""
    columns, problems = {}, []
    if reference is not None:
        versus = compare_labels(labels, reference)
        columns.update(agreement=versus["agreement"], dice_vs_fp32=dice_text(versus, codes))
        problems += label_problems(versus)
        unseen = unjudged(versus, codes)
        if unseen:
            columns["not_judged"] = "; ".join(unseen)
    if monai is not None:
        versus = compare_labels(labels, monai)
        columns["dice_vs_monai"] = dice_text(versus, codes)
        problems += peer_problems(versus)
    if reference is not None or monai is not None:
        columns["labels_agree"] = "differs: " + "; ".join(problems) if problems else "yes"
    return columns


def fastest_ours(setting: list[dict]) -> dict | None:
    """The fastest of ours one-after-the-other rows that ran: the target's candidate."""
    ours = [row for row in setting
            if row["method"].startswith("ours") and "folder" not in row["method"] and "error" not in row]
    return min(ours, key=lambda row: row["median_s"], default=None)


def verdict(setting: list[dict], host: str | None) -> tuple[dict | None, str]:
    """The target's candidate among a setting's rows (:func:`fastest_ours`) and the verdict on it: none when
    ours at fp32 (the reference) or MONAI failed, or MONAI's largest-component step ran on the host (``host``:
    why), which slows the peer; "NOT met" when its labels differ (``labels_agree``) or it is under TARGET x."""
    best = fastest_ours(setting)
    failed = [row["method"] for row in setting
              if "error" in row and (row["method"] == REFERENCE or row["method"].startswith("MONAI"))]
    if best is None:
        return None, "no verdict: every row of ours failed"
    if failed:
        return best, f"no verdict: {' and '.join(failed)} failed"
    if host:
        return best, f"no verdict: MONAI's post-processing ran on the host (cuCIM unusable: {host})"
    speed = f"{best['speedup_vs_monai']:.2f}x"
    if best["labels_agree"] != "yes":
        return best, f"NOT met ({speed}): outputs differ: {best['labels_agree'].removeprefix('differs: ')}"
    text = f">={TARGET:g}x {'met' if best['speedup_vs_monai'] >= TARGET else 'NOT met'} ({speed})"
    return best, text + (f"; not judged: {best['not_judged']}" if best.get("not_judged") else "")


# --- end to end ---------------------------------------------------------------------------------------------

def methods(args, device, precision: str) -> dict[str, tuple[str, dict]]:
    """A setting's methods, name → (engine, options): ours at fp32 (the reference) first, MONAI last."""
    found = {REFERENCE: ("ours", dict(precision="fp32")), f"ours {precision}": ("ours", dict(precision=precision))}
    if device.type == "cuda" and not args.no_cuda_graph:
        found[f"ours {precision} + CUDA graph"] = ("ours", dict(precision=precision, cuda_graph=True))
    found[f"MONAI {precision}"] = ("monai", {})
    return found


def method_row(args, runs, kind, overlap, engine, settings, paths, device, out: Path) -> dict:
    """Times per volume and peak memory of one method (:func:`per_volume`), and its phases from a second,
    synchronised pass over the first timed volume; its label maps are written to ``out``."""
    model = runs[PIPELINES[kind][-1]]

    def build(timer):
        if engine == "monai":
            monai = MonaiPipeline(runs, kind, device, overlap=overlap, batch_size=args.batch_size,
                                  blocks=args.peer_blocks, timer=timer)
            return lambda path: monai.predict_file(path, out)
        options = InferenceOptions(step=1 - overlap, batch_size=args.batch_size, **settings)
        pipeline = load_pipeline(model, device=device, options=options, timer=timer)
        return lambda path: predict_file(pipeline, path.name[:-7], path, out)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = per_volume(build(NO_TIMER), paths, device)
        timer = PhaseTimer(device=device)
        predict_with_timer = build(timer)
        predict_with_timer(paths[0])  # warm: CUDA-graph capture and autotuning are one-off costs
        timer.totals.clear()
        predict_with_timer(paths[1])
        del predict_with_timer  # its models would count in the next method's peak memory
    row.update({f"{phase}_s": timer.totals.get(phase, 0.0) for phase in PHASES})
    if graph_failures(caught):  # a "+ CUDA graph" row that ran eagerly says so
        row["note"] = "CUDA graph capture failed: ran eagerly"
    return row


def folder_row(args, model, overlap, paths, device, out: Path, *, cuda_graph, precision) -> dict:
    """``predict_cases`` over the timed volumes as one folder into ``out`` (reading the next volume and
    writing the last one while the current runs): mean seconds per volume."""
    options = InferenceOptions(step=1 - overlap, batch_size=args.batch_size, precision=precision,
                               cuda_graph=cuda_graph)
    pipeline = load_pipeline(model, device=device, options=options)
    cases = [(path.name[:-7], path) for path in paths]
    predict_cases(pipeline, cases[:1], out)  # warm-up
    sync(device)
    start = time.perf_counter()
    failed = predict_cases(pipeline, cases[1:], out)
    sync(device)
    if failed:
        raise RuntimeError(f"folder run failed: {failed}")
    seconds = (time.perf_counter() - start) / len(cases[1:])
    return {"volumes": len(cases[1:]), "median_s": seconds, "min_s": seconds}


def measured_row(kind, overlap, method: str, measure, labels_at: Path, device) -> tuple[dict, np.ndarray | None]:
    """The row of ``method`` from ``measure()`` (its error instead when that fails), printed as it comes,
    and the label map it wrote to ``labels_at``."""
    def run():
        return measure(), read_volume(labels_at).array

    result, error = guarded(run)
    release(device)  # the method's models and graphs would count in the next one's peak memory
    values, labels = result if error is None else ({"error": error}, None)
    row = {"pipeline": kind, "overlap": overlap, "method": method, **values}
    print(benchlib.table([row], LIVE_COLUMNS).splitlines()[-1], flush=True)
    return row, labels


def end_to_end_rows(args, runs, paths, device, out_root: Path, rows: list[dict], bars: list[tuple[str, dict]],
                    host: str | None) -> None:
    """Per setting (overlap 0.5, the target's, for every pipeline first: a run stopped by its time limit
    loses overlap 0): every method's row and the folder row, their labels compared, speedups vs MONAI and,
    at overlap 0.5, the target's verdict (:func:`verdict`; ``host``: see :func:`monai_components`)."""
    precision = "bf16" if device.type == "cuda" else "fp32"
    for overlap, kind in itertools.product(args.overlaps, args.pipelines):
        setting, outputs = [], {}
        for method, (engine, settings) in methods(args, device, precision).items():
            out = out_root / f"{kind}_{overlap}_{len(rows)}"
            out.mkdir(parents=True)
            measure = partial(method_row, args, runs, kind, overlap, engine, settings, paths, device, out)
            row, outputs[method] = measured_row(kind, overlap, method, measure, out / paths[1].name, device)
            setting.append(row)
            rows.append(row)
            if "error" not in row:
                bars.append((f"{kind} o={overlap:g} {method}", {p: row[f"{p}_s"] for p in PHASES}))
        best = fastest_ours(setting)
        graph = best is not None and "CUDA graph" in best["method"]
        out = out_root / f"{kind}_{overlap}_folder"
        method = f"ours {precision}{' + CUDA graph' if graph else ''}, folder (I/O overlapped, mean)"
        measure = partial(folder_row, args, runs[PIPELINES[kind][-1]], overlap, paths, device, out,
                          cuda_graph=graph, precision=precision)
        row, outputs[method] = measured_row(kind, overlap, method, measure, out / paths[1].name, device)
        setting.append(row)
        rows.append(row)
        compare_setting(setting, outputs, LABELS[kind])
        if overlap == 0.5 and not args.cpu_smoke:
            best, text = verdict(setting, host)
            (best or setting[-1])["target"] = text


def compare_setting(setting: list[dict], outputs: dict, codes) -> None:
    """Labels and speedups of a setting's rows: ours vs ours at fp32 and MONAI's (:func:`label_columns`);
    MONAI's vs ours at fp32 as information (its Gaussian and windows differ: see PEER_VOLUME_FACTOR)."""
    monai = next(row for row in setting if row["method"].startswith("MONAI"))
    reference = outputs.get(REFERENCE)
    for row in setting:
        labels = outputs[row["method"]]
        if labels is None:
            continue
        if row is monai:
            if reference is not None:
                versus = compare_labels(labels, reference)
                row.update(agreement=versus["agreement"], dice_vs_fp32=dice_text(versus, codes))
        else:
            row.update(label_columns(labels, None if row["method"] == REFERENCE else reference,
                                     outputs[monai["method"]], codes))
        if "error" not in monai:
            row["speedup_vs_monai"] = monai["median_s"] / row["median_s"]


# --- network ------------------------------------------------------------------------------------------------

def same_windows_volume(patch, overlap: float, device) -> torch.Tensor:
    """A random (1, D, H, W) volume of ``patch`` + MONAI's scan interval (``int(patch * (1 - overlap))``)
    per axis: on it both engines put their windows at 0 and at that interval."""
    torch.manual_seed(1)
    return torch.randn(1, *(p + max(int(p * (1 - overlap)), 1) for p in patch), device=device)


def logit_agreement(ours: torch.Tensor, peer: torch.Tensor, precision: str) -> str:
    """``benchlib.agreement`` of two logit maps within the precision's rounding (LOGIT_TOLERANCE)."""
    return benchlib.agreement(ours, peer, atol=LOGIT_TOLERANCE[precision] * float(peer.abs().max()))


def checked(check) -> str:
    """``check()``'s agreement text, or why the check could not run."""
    text, error = guarded(check)
    return text if error is None else f"not checked: {error}"


def time_variant(fn, calls: list, timing: dict, device) -> dict:
    """``benchlib.time_call`` of ``fn``, the peak GPU memory it adds (GiB) and, when it ran MONAI's
    predictor (which records its batches in ``calls``), the windows it runs per call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    calls.clear()
    held = torch.cuda.memory_allocated() if device.type == "cuda" else 0  # the model, the image
    result = benchlib.time_call(fn, **timing)
    result["peak_gib"] = ((torch.cuda.max_memory_allocated() - held) / 2**30
                          if device.type == "cuda" else float("nan"))  # what the variant adds
    if calls:
        result["windows"] = sum(calls) // (timing["repeats"] + timing["warmup"])
    return result


def network_rows(args, runs, device, rows: list[dict]) -> None:
    """mbas_stage2 over one volume on the device: our engine vs MONAI's, same module and weights. On the
    timed volume MONAI's logits legitimately differ (its Gaussian is floored at 1e-3, its window starts
    differ: information), so ours is checked against MONAI given the same windows and our Gaussian
    (:func:`same_windows_volume`, ``roi_weight_map``), and the CUDA-graph variant against the plain one."""
    from monai.inferers import sliding_window_inference

    release(device)  # what the end-to-end rows left
    model, config, *_ = checkpoint.load_stage(runs["mbas_stage2"] / "final" / "checkpoint_best.pt")
    model = model.to(device).eval()
    patch = tuple(config.train.patch_size)
    shape = (SMOKE if args.cpu_smoke else FULL)["shape"]
    torch.manual_seed(0)
    image = torch.randn(1, *shape, device=device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    weights = gaussian_importance(patch).to(device)
    for overlap in args.overlaps:
        calls = []

        def predictor(batch):
            calls.append(len(batch))
            with torch.autocast(**autocast):
                out = model(batch)
            return (out[0] if isinstance(out, (list, tuple)) else out).float()

        graphed = WindowRunner(model, precision=precision, cuda_graph=True)  # captured once, replayed after

        def ours(volume=image, graph=False):
            if graph:
                return sliding_window(graphed, volume, patch, step=1 - overlap, batch_size=args.batch_size)
            return sliding_window(model, volume, patch, step=1 - overlap, precision=precision,
                                  batch_size=args.batch_size)

        def monai(volume=image, roi_weight_map=None):
            with torch.no_grad():
                return sliding_window_inference(volume[None], patch, args.batch_size, predictor, overlap=overlap,
                                                mode="gaussian", sigma_scale=0.125, roi_weight_map=roi_weight_map)[0]

        timing = dict(repeats=1 if args.cpu_smoke else 5, warmup=1, cuda=device.type == "cuda")
        variants = {"ours": ours, "MONAI": monai}
        if device.type == "cuda" and not args.no_cuda_graph:
            variants["ours + CUDA graph"] = lambda: ours(graph=True)
        results = {}
        for name, fn in variants.items():
            result, error = guarded(partial(time_variant, fn, calls, timing, device))
            results[name] = result if error is None else {"error": error}
            if error:
                release(device)
        same = same_windows_volume(patch, overlap, device)
        checks = {"ours": ("MONAI, same windows and Gaussian",
                           checked(lambda: logit_agreement(ours(same), monai(same, weights), precision)))}
        if "ours + CUDA graph" in variants:
            checks["ours + CUDA graph"] = ("ours, same volume", checked(
                lambda: logit_agreement(ours(same, graph=True), ours(same), precision)))
        difference, _ = guarded(lambda: float((monai() - ours()).abs().max()))
        for name, result in results.items():
            row = {"network": "mbas_stage2", "overlap": overlap, "method": name,
                   "windows": result.get("windows", window_count(shape, patch, 1 - overlap)),
                   **{key: result[key] for key in ("median_ms", "peak_gib", "error") if key in result}}
            if "median_ms" in result and "median_ms" in results["MONAI"]:
                row["ratio"] = results["MONAI"]["median_ms"] / result["median_ms"]
            if name in checks:
                row["checked_against"], row["agrees"] = checks[name]
            if name == "MONAI" and difference is not None:
                row["max_abs_logit_diff_vs_ours"] = difference  # information: floored Gaussian, other windows
            rows.append(row)
            print(benchlib.table([row], NETWORK_COLUMNS).splitlines()[-1], flush=True)


LIVE_COLUMNS = ["pipeline", "overlap", "method", "median_s", "peak_gib", "network_s", "error"]
COLUMNS = ["pipeline", "overlap", "method", "median_s", "speedup_vs_monai", "peak_gib", *[f"{p}_s" for p in PHASES],
           "agreement", "dice_vs_fp32", "dice_vs_monai", "labels_agree", "target", "note", "error"]
NETWORK_COLUMNS = ["network", "overlap", "method", "windows", "median_ms", "peak_gib", "ratio",
                   "max_abs_logit_diff_vs_ours", "checked_against", "agrees", "error"]
LABEL_RULE = (f"labels_agree: vs ours fp32, >= {100 * AGREEMENT_TOLERANCE:g} % of voxels equal and per label of "
              f">= {MIN_LABEL_VOXELS} voxels Dice >= {DICE_TOLERANCE:g} and volume within {100 * VOLUME_RTOL:g} %; "
              f"vs MONAI's, volumes within a factor {PEER_VOLUME_FACTOR:g} (its boundaries differ by design)")


def main() -> None:
    args = parse_args()
    device = device_for(args)
    labelling, host = monai_components()
    geometry = SMOKE if args.cpu_smoke else FULL
    if args.cpu_smoke:
        torch.set_num_threads(1)
    print(f"{'CPU SMOKE RUN — not a result' if args.cpu_smoke else torch.cuda.get_device_name()}: "
          f"{args.volumes} volume(s) of {geometry['shape']} @ {geometry['spacing']} mm, pipelines {args.pipelines}, "
          f"overlaps {args.overlaps}, {args.batch_size} windows per batch; MONAI's largest component: {labelling}",
          flush=True)
    network, rows, bars, payload = [], [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = make_runs(tmp / "runs", args.cpu_smoke)
        paths = make_volumes(tmp / "volumes", args.volumes, geometry)
        if not benchlib.run_until_stopped(lambda: end_to_end_rows(args, runs, paths, device, tmp / "out", rows, bars,
                                                                  host), payload, "end to end"):
            benchlib.run_until_stopped(lambda: network_rows(args, runs, device, network), payload, "network")
    printed = benchlib.table(rows, COLUMNS) + "\n\n" + benchlib.table(network, NETWORK_COLUMNS)
    print("\n" + printed + "\n\n" + LABEL_RULE)
    for row in rows:
        if row.get("labels_agree", "yes") != "yes":
            print(f"labels of {row['pipeline']} overlap {row['overlap']} {row['method']}: {row['labels_agree']}")
        if "target" in row:
            print(f"target, {row['pipeline']} overlap {row['overlap']} ({row['method']}): {row['target']}")
    if args.cpu_smoke:
        print("CPU smoke run: the script works; these numbers are not results and nothing was saved.")
        return
    gpu = torch.cuda.get_device_name().replace(" ", "_")
    payload = {**payload, "geometry": geometry, "volumes": args.volumes, "batch_size": args.batch_size,
               "peer_blocks": args.peer_blocks, "monai_largest_component": labelling, "target": TARGET,
               "label_tolerances": {"agreement": AGREEMENT_TOLERANCE, "dice": DICE_TOLERANCE,
                                    "volume_rtol": VOLUME_RTOL, "min_label_voxels": MIN_LABEL_VOXELS,
                                    "peer_volume_factor": PEER_VOLUME_FACTOR},
               "logit_tolerance": LOGIT_TOLERANCE, "end_to_end": rows, "network": network}
    print("saved", benchlib.save(f"inference_{gpu}", payload, printed, args.results))
    if bars:
        print("saved", benchlib.save_bar_chart(f"inference_{gpu}", bars, folder=args.results,
                                               ylabel="seconds per volume (synchronised pass)",
                                               title=f"Inference per 44×640×640 volume, ours vs MONAI ({gpu})"))


if __name__ == "__main__":
    main()
