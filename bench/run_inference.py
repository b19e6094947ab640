"""Inference timing study: c2w_fast's engine and pipelines vs MONAI sliding_window_inference, per 44×640×640 volume.

Side by side in one run, on one GPU, with the same networks and the same (random) weights,
the same overlap, the same precision (bf16 autocast), the same windows per forward pass and
Gaussian weighting with σ = patch / 8 in both:

* **network** — ``mbas_stage2`` (20×256×256 windows, 4 classes) over one 44×640×640 volume
  already on the GPU: ``c2w_fast.infer.sliding_window`` vs ``monai.inferers.sliding_window_inference``;
  windows, median time, peak GPU memory.
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
  compared with ours at fp32 (voxel agreement and Dice per label). One more row per setting:
  ours over the timed volumes as a folder, ``c2w_fast.predict``'s way (the next volume read
  and the last one written in I/O threads while the current one runs), mean per volume; the
  target is checked on the one-after-the-other rows, like for like with MONAI.

Both sides run the same network module (the fused Triton blocks on CUDA); ``--peer-blocks
reference`` gives MONAI's side the plain PyTorch/cuDNN blocks instead (same weights), as a
MONAI user without this package would run them. Everything at overlap 0.5 and 0 (stride
1.0). Target (issue 8): end to end ≥ 3× MONAI at overlap 0.5, labels equal to ours at fp32
within tolerance (≥ 99.9 % of voxels).

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
import warnings
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
from c2w_fast.infer import NO_TIMER, PHASES, PhaseTimer, WindowRunner, sliding_window, window_count  # noqa: E402
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
AGREEMENT_TOLERANCE = 0.999
TARGET = 3.0


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volumes", type=int, default=3, help="synthetic volumes timed per method (after a warm-up)")
    p.add_argument("--batch-size", type=int, default=2, help="windows per forward pass, both engines")
    p.add_argument("--pipelines", nargs="+", choices=sorted(PIPELINES), default=sorted(PIPELINES))
    p.add_argument("--overlaps", nargs="+", type=float, default=[0.5, 0.0])
    p.add_argument("--no-cuda-graph", action="store_true", help="skip the rows of ours with CUDA graphs")
    p.add_argument("--peer-blocks", choices=("same", "reference"), default="same",
                   help="MONAI's side: the same network module, or its blocks in plain PyTorch (cuDNN)")
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


def monai_components() -> str:
    """Which library MONAI's KeepLargestConnectedComponent will use here; exits naming what is missing."""
    import importlib.util

    missing = [name for name in ("monai",) if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit("bench/run_inference.py compares against MONAI: pip install -e \".[bench]\" (monai, scikit-image)")
    problem = benchlib.monai_gpu_problem()
    if problem is None:
        return "cuCIM (GPU)"
    if importlib.util.find_spec("skimage") is not None:
        return f"scikit-image (CPU; cuCIM unusable: {problem})"
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
        box = Box.around(native_to_stage(centre, spacing, trained), config.roi.size)
        roi = crop(self.stage_input("c2w_cavity", x, spacing), box)
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


def agreement(labels: np.ndarray, reference: np.ndarray) -> dict:
    """Fraction of equal voxels and Dice per label present in either map."""
    out = {"agreement": float((labels == reference).mean())}
    for value in sorted(set(np.unique(reference)) | set(np.unique(labels)) - {0}):
        a, b = labels == value, reference == value
        out[f"dice_{int(value)}"] = float(2 * (a & b).sum() / max(int(a.sum() + b.sum()), 1))
    return out


def end_to_end_rows(args, runs, paths, device, out_root: Path, rows: list[dict],
                    bars: list[tuple[str, dict]]) -> None:
    precision = "bf16" if device.type == "cuda" else "fp32"
    release(device)  # the network rows' model and graphs
    # overlap 0.5 (the target's) for every pipeline first: a run stopped by its time limit loses overlap 0
    for overlap, kind in itertools.product(args.overlaps, args.pipelines):
        model = runs[PIPELINES[kind][-1]]
        methods = {"ours fp32 (reference)": ("ours", dict(precision="fp32")),
                   f"ours {precision}": ("ours", dict(precision=precision))}
        if device.type == "cuda" and not args.no_cuda_graph:
            methods[f"ours {precision} + CUDA graph"] = ("ours", dict(precision=precision, cuda_graph=True))
        methods[f"MONAI {precision}"] = ("monai", {})
        reference = None
        for label, (engine, settings) in methods.items():
            out = out_root / f"{kind}_{overlap}_{len(rows)}"
            out.mkdir(parents=True)

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
                row = {"pipeline": kind, "overlap": overlap, "method": label,
                       **per_volume(build(NO_TIMER), paths, device)}
                timer = PhaseTimer()
                predict_with_timer = build(timer)
                predict_with_timer(paths[0])  # warm: CUDA-graph capture and autotuning are one-off costs
                timer.totals.clear()
                predict_with_timer(paths[1])
                del predict_with_timer  # its models would count in the next method's peak memory
            release(device)
            row.update({f"{phase}_s": timer.totals.get(phase, 0.0) for phase in PHASES})
            if graph_failures(caught):  # a "+ CUDA graph" row that ran eagerly says so
                row["note"] = "CUDA graph capture failed: ran eagerly"
            labels = read_volume(out / paths[1].name).array
            reference = labels if reference is None else reference
            row.update(agreement(labels, reference))
            rows.append(row)
            bars.append((f"{kind} o={overlap:g} {label}", {p: timer.totals.get(p, 0.0) for p in PHASES}))
            print(benchlib.table([row], ["pipeline", "overlap", "method", "median_s", "peak_gib", "network_s",
                                         "agreement"]).splitlines()[-1], flush=True)
        monai = rows[-1]
        best = min(rows[-len(methods):-1], key=lambda r: r["median_s"])
        rows.append(folder_row(args, model, kind, overlap, paths, device, out_root, reference,
                               cuda_graph="CUDA graph" in best["method"], precision=precision))
        release(device)
        for row in rows[-len(methods) - 1:]:
            row["speedup_vs_monai"] = monai["median_s"] / row["median_s"]
        if overlap == 0.5 and not args.cpu_smoke:
            best["target"] = f">={TARGET:g}x " + ("met" if best["speedup_vs_monai"] >= TARGET else "NOT met")


def folder_row(args, model, kind, overlap, paths, device, out_root, reference, *, cuda_graph, precision) -> dict:
    """``predict_cases`` over the timed volumes as one folder (reading the next volume and writing
    the last one while the current runs): mean seconds per volume."""
    out = out_root / f"{kind}_{overlap}_folder"
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
    row = {"pipeline": kind, "overlap": overlap, "volumes": len(cases[1:]), "median_s": seconds, "min_s": seconds,
           "method": f"ours {precision}{' + CUDA graph' if cuda_graph else ''}, folder (I/O overlapped, mean)",
           **agreement(read_volume(out / paths[1].name).array, reference)}
    print(benchlib.table([row], ["pipeline", "overlap", "method", "median_s", "agreement"]).splitlines()[-1],
          flush=True)
    return row


def network_rows(args, runs, device, rows: list[dict]) -> None:
    """mbas_stage2 over one volume on the device: our engine vs MONAI's, same module and weights."""
    from monai.inferers import sliding_window_inference

    model, config, *_ = checkpoint.load_stage(runs["mbas_stage2"] / "final" / "checkpoint_best.pt")
    model = model.to(device).eval()
    patch = tuple(config.train.patch_size)
    shape = (SMOKE if args.cpu_smoke else FULL)["shape"]
    torch.manual_seed(0)
    image = torch.randn(1, *shape, device=device)
    precision = "bf16" if device.type == "cuda" else "fp32"
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    for overlap in args.overlaps:
        calls = []

        def predictor(batch):
            calls.append(len(batch))
            with torch.autocast(**autocast):
                out = model(batch)
            return (out[0] if isinstance(out, (list, tuple)) else out).float()

        graphed = WindowRunner(model, precision=precision, cuda_graph=True)  # captured once, replayed after

        def ours(graph=False):
            if graph:
                return sliding_window(graphed, image, patch, step=1 - overlap, batch_size=args.batch_size)
            return sliding_window(model, image, patch, step=1 - overlap, precision=precision,
                                  batch_size=args.batch_size)

        def monai():
            with torch.no_grad():
                return sliding_window_inference(image[None], patch, args.batch_size, predictor, overlap=overlap,
                                                mode="gaussian", sigma_scale=0.125)[0]

        timing = dict(repeats=1 if args.cpu_smoke else 5, warmup=1, cuda=device.type == "cuda")
        variants = {"ours": ours, "MONAI": monai}
        if device.type == "cuda" and not args.no_cuda_graph:
            variants["ours + CUDA graph"] = lambda: ours(graph=True)
        results = {}
        for name, fn in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            calls.clear()
            held = torch.cuda.memory_allocated() if device.type == "cuda" else 0  # the model, the image
            results[name] = benchlib.time_call(fn, **timing)
            results[name]["peak_gib"] = ((torch.cuda.max_memory_allocated() - held) / 2**30
                                         if device.type == "cuda" else float("nan"))  # what the variant adds
            if name == "MONAI":
                results[name]["windows"] = sum(calls) // (timing["repeats"] + timing["warmup"])
        reference = ours().float()
        difference = float((monai() - reference).abs().max())
        for name, result in results.items():
            rows.append({"network": "mbas_stage2", "overlap": overlap, "method": name,
                         "windows": result.get("windows", window_count(shape, patch, 1 - overlap)),
                         "median_ms": result["median_ms"], "peak_gib": result["peak_gib"],
                         "ratio": results["MONAI"]["median_ms"] / result["median_ms"],
                         "max_abs_logit_diff_vs_ours": 0.0 if name.startswith("ours") else difference})
            print(benchlib.table([rows[-1]], NETWORK_COLUMNS).splitlines()[-1], flush=True)


NETWORK_COLUMNS = ["network", "overlap", "method", "windows", "median_ms", "peak_gib", "ratio",
                   "max_abs_logit_diff_vs_ours"]


def main() -> None:
    args = parse_args()
    device = device_for(args)
    labelling = monai_components()
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
        if not benchlib.run_until_stopped(lambda: network_rows(args, runs, device, network), payload, "network"):
            benchlib.run_until_stopped(lambda: end_to_end_rows(args, runs, paths, device, tmp / "out", rows, bars),
                                       payload, "end to end")
    columns = ["pipeline", "overlap", "method", "median_s", "speedup_vs_monai", "peak_gib", *[f"{p}_s" for p in PHASES],
               "agreement", "target", "note"]
    printed = benchlib.table(network, NETWORK_COLUMNS) + "\n\n" + benchlib.table(rows, columns)
    print("\n" + benchlib.table(rows, columns))
    for row in rows:
        if row["agreement"] < AGREEMENT_TOLERANCE:
            verdict = "outside the tolerance" if row["method"].startswith("ours") else \
                "(MONAI: information only; its Gaussian map is floored at 1e-3 and its window starts differ)"
            print(f"labels vs ours at fp32: {row['pipeline']} overlap {row['overlap']} {row['method']}: "
                  f"{100 * row['agreement']:.3f} % of voxels equal {verdict}")
    if args.cpu_smoke:
        print("CPU smoke run: the script works; these numbers are not results and nothing was saved.")
        return
    gpu = torch.cuda.get_device_name().replace(" ", "_")
    payload = {**payload, "geometry": geometry, "volumes": args.volumes, "batch_size": args.batch_size,
               "peer_blocks": args.peer_blocks, "monai_largest_component": labelling,
               "agreement_tolerance": AGREEMENT_TOLERANCE, "target": TARGET,
               "network": network, "end_to_end": rows}
    print("saved", benchlib.save(f"inference_{gpu}", payload, printed, args.results))
    if bars:
        print("saved", benchlib.save_bar_chart(f"inference_{gpu}", bars, ylabel="seconds per volume (synchronised pass)",
                                               title=f"Inference per 44×640×640 volume, ours vs MONAI ({gpu})",
                                               folder=args.results))


if __name__ == "__main__":
    main()
