"""Time the metrics, distance transforms and morphology ops against their peers, side by side.

The case is an MBAS-geometry phantom (44x640x640 at 2.5x0.625x0.625 mm): its LA wall is the
ground truth, and the prediction is that wall shifted by one voxel in y and x with a ragged
boundary (30 % of a one-voxel band toggled). Components and dilation run on the binary atria
(wall + cavities of both atria, as after MBAS stage 1) with scattered false-positive specks.

Every row times ours and the peer in the same run (median of --repeats after a warm-up) and
gives peer / ours, and compares the two answers (``agrees``: what the definitions share, within
the peers' float32 rounding; a target is met only when they agree). Threads: ours (OpenMP),
edt (parallel=) and MONAI (torch) get --threads (default 2 on the CPU, every core with
--device cuda); scipy, surface-distance, medpy and cc3d are single-threaded libraries. CPU
targets are those of the project's issue 4 (CPU, 2 cores).

Usage: python bench/run_metrics.py [--threads 2] [--repeats 5] [--device cpu|cuda] [--skip-medpy] [--passive]

``--device cuda`` times our ops on CUDA tensors (the Triton/CUDA backends of c2w_fast.ops, each
GPU backend for the ops that have two) against MONAI's metrics on the GPU and cuCIM (EDT,
label, binary_dilation), with the physical floor of each op (bytes it must move / the device
bandwidth measured by a copy) next to our GPU time (``ours_gpu_ms``: the op's kernels alone, its
inputs evicted from L2 between calls; ``x_floor`` = the two's ratio) and the targets of issue 5,
judged on wall times (``ratio``); a missing peer (cupy, cucim) is named in the table. It needs a
CUDA GPU and says so when there is none.
"""
import argparse
import math
import os
import sys


def parse_args(argv=None):
    from benchlib import add_results_option  # stdlib only: imported before the environment is set

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="threads for ours, edt and MONAI (default 2; every core with "
                                                    "--device cuda)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of ours per row (default 5)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where ours runs (default cpu)")
    parser.add_argument("--seed", type=int, default=3, help="phantom seed (default 3)")
    parser.add_argument("--skip-medpy", action="store_true", help="skip medpy (about 10 s per call)")
    parser.add_argument("--passive", action="store_true",
                        help="OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning "
                             "(much faster on a machine busy with other work)")
    add_results_option(parser)
    return parser.parse_args(argv)


ARGS = parse_args()
ARGS.threads = ARGS.threads or (os.cpu_count() if ARGS.device == "cuda" else 2)
# OpenMP (ours, and torch's pool, which is the same libgomp) reads these when its runtime
# starts: before any import below.
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
if ARGS.passive:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from benchlib import (agreement, copy_bandwidth, device_ms, error_text, host, monai_gpu_problem,  # noqa: E402
                      run_until_stopped, save, table, time_call)
from scipy import ndimage  # noqa: E402

from c2w_fast import metrics  # noqa: E402
from c2w_fast.data.phantom import GEOMETRIES, make_phantom  # noqa: E402
from c2w_fast.metrics import EVALUATE_BATCH  # noqa: E402
from c2w_fast.ops._dispatch import Op  # noqa: E402
from c2w_fast.ops.distance_transform import DISTANCE_TRANSFORM, SIGNED_DISTANCE  # noqa: E402
from c2w_fast.ops.morphology import DILATION, EROSION  # noqa: E402
from c2w_fast.ops import (  # noqa: E402
    BackendFallbackWarning,
    ball,
    binary_dilation,
    binary_erosion,
    distance_transform,
    keep_largest_component,
    label_components,
    signed_distance,
)

SPACING = GEOMETRIES["mbas"][1]
TOLERANCE_MM = 1.0
METRICS_RTOL = 1e-3  # MONAI's quantile and cuCIM's distances are float32; ours are exact in float64
DISTANCE_TOLERANCE = dict(atol=1e-4, rtol=1e-5)  # mm: float32 distance maps of up to ~300 mm


def make_case(seed: int):
    """(pred wall, gt wall, atria union with specks) as numpy bool arrays."""
    shape, spacing = GEOMETRIES["mbas"]
    rng = np.random.default_rng(seed)
    gt = make_phantom(shape, spacing, seed=seed, label_right_atrium=False).labels == 1
    pred = np.roll(gt, (1, -1), axis=(1, 2))
    band = ndimage.binary_dilation(pred) & ~ndimage.binary_erosion(pred)
    pred ^= band & (rng.random(shape) < 0.3)
    atria = make_phantom(shape, spacing, seed=seed + 1).labels > 0
    atria |= rng.random(shape) < 2e-5
    return pred, gt, atria


def peer_surface_distance(pred, gt):
    import surface_distance as sd

    d = sd.compute_surface_distances(gt, pred, SPACING)
    return (sd.compute_dice_coefficient(gt, pred), sd.compute_robust_hausdorff(d, 95),
            sd.compute_average_surface_distance(d), sd.compute_surface_dice_at_tolerance(d, TOLERANCE_MM))


def peer_monai(pred, gt):
    from monai.metrics import (compute_average_surface_distance, compute_dice, compute_hausdorff_distance,
                               compute_surface_dice)

    p, g = pred[None, None].float(), gt[None, None].float()
    kw = {"include_background": True, "spacing": SPACING}
    return (compute_dice(p, g, include_background=True), compute_hausdorff_distance(p, g, percentile=95, **kw),
            compute_average_surface_distance(p, g, symmetric=True, **kw),
            compute_surface_dice(p, g, [TOLERANCE_MM], **kw))


def peer_medpy(pred, gt):
    from medpy.metric import binary

    return binary.hd95(pred, gt, SPACING), binary.assd(pred, gt, SPACING)


def row(name, ours, peer_name, peer, target=None, note="", repeats=5, cuda=False, peer_repeats=None, check=None):
    """Time ``ours`` and ``peer`` (callables) and build one table row; a missing peer is named.

    ``ratio`` = peer / ours in median wall time (what a user waits; ``met`` judges it);
    ``cpu_ratio`` = the same in CPU time summed over threads, which other processes on the
    machine disturb much less, and which understates a multi-threaded side's speed. ``agrees``
    is ``check(ours' answer, the peer's)`` (:func:`benchlib.agreement`'s "yes" or what differs):
    a target is met only by the same answer. An error of either side (out of memory, a peer's
    CUDA mismatch) is the row's ``met``, and the run goes on. A single peer repeat gets no
    warm-up on the CPU (medpy takes 10 s a call); on the GPU it always does (compiles and caches
    would be timed)."""
    entry = {"op": name, "peer": peer_name, "ours_ms": math.nan}
    answers = {}

    def unmeasured(met: str) -> dict:
        return {**entry, "peer_ms": "-", "ratio": "-", "cpu_ratio": "-", "agrees": "-", "target": "-", "met": met,
                "note": note}

    def kept(side, fn):  # the last timed call's answer, for the check
        return lambda: answers.__setitem__(side, fn())

    try:
        mine = time_call(kept("ours", ours), repeats=repeats, cuda=cuda)
    except Exception as exc:  # noqa: BLE001 - recorded; the other rows still run
        return unmeasured(f"ours failed: {error_text(exc)}")
    entry["ours_ms"] = mine["median_ms"]
    if cuda:
        entry["ours_gpu_ms"] = device_ms(ours, repeats=max(repeats, 5))  # kernels only, L2 flushed
    peer_repeats = peer_repeats or repeats
    try:
        theirs = time_call(kept("peer", peer), repeats=peer_repeats, warmup=1 if cuda or peer_repeats > 1 else 0,
                           cuda=cuda)
    except ImportError as exc:
        return unmeasured(f"peer missing: {exc.name}")
    except Exception as exc:  # noqa: BLE001
        return unmeasured(f"peer failed: {error_text(exc)}")
    ratio = theirs["median_ms"] / mine["median_ms"]
    agrees = check(answers["ours"], answers["peer"]) if check else "-"
    met = ("yes" if ratio >= target else "NO") if target else "-"
    if target and agrees != "yes":
        met = "NO: the answers differ" if check else "no verdict: answers not compared"
    entry.update(peer_ms=theirs["median_ms"], ratio=ratio, cpu_ratio=theirs["cpu_ms"] / max(mine["cpu_ms"], 1e-3),
                 agrees=agrees, target=f">= {target}x" if target else "-", met=met, note=note,
                 ours_cpu_ms=mine["cpu_ms"], peer_cpu_ms=theirs["cpu_ms"])
    return entry


# What each comparison holds to: the definitions ours and the peer share.
def same_metrics(ours, peer) -> str:
    """Dice, HD95, ASSD and Surface Dice of ours (:class:`Metrics`) against MONAI's four (1, 1) tensors."""
    return agreement((ours.dice, ours.hd95, ours.assd, ours.surface_dice), [_number(v) for v in peer],
                     rtol=METRICS_RTOL)


def same_surfel_metrics(ours, peer) -> str:
    """Dice, HD95 and Surface Dice against surface-distance's (its ASSD is two directed means, ours their pool)."""
    dice, hd95, _, surface_dice = peer
    return agreement((ours.dice, ours.hd95, ours.surface_dice), (dice, hd95, surface_dice), rtol=METRICS_RTOL)


def same_pooled(ours, peer) -> str:
    """HD95 and ASSD under medpy's pooled percentile rule."""
    return agreement((ours.hd95, ours.assd), peer, rtol=METRICS_RTOL)


def same_dice(ours, peer) -> str:
    """Dice alone, for rows whose distances follow other definitions than the peer's (surfel vs voxel);
    ``ours`` and ``peer`` one pair's results or lists of them."""
    ours, peer = (ours, peer) if isinstance(ours, list) else ([ours], [peer])
    return agreement([m.dice for m in ours], [_number(monai[0]) for monai in peer], rtol=1e-6)


def same_distances(ours, peer) -> str:
    return agreement(ours, peer, **DISTANCE_TOLERANCE)


def same_mask(ours, peer) -> str:
    """The same voxels, bit for bit (a peer's labels count by being nonzero)."""
    return agreement(host(ours) != 0, host(peer) != 0)


def same_partition(ours, peer) -> str:
    """``"yes"`` when ours (``(labels, count)``) and the peer's labels split the same foreground into
    the same components, whatever their numbers."""
    mine, theirs = host(ours[0]).astype(np.int64), host(peer).astype(np.int64)
    if not np.array_equal(mine != 0, theirs != 0):
        return f"differs: {int(((mine != 0) != (theirs != 0)).sum())} voxels foreground on one side only"
    inside = mine != 0
    pairs = np.unique(mine[inside] * (int(theirs.max()) + 1) + theirs[inside]).size
    counts = (np.unique(mine[inside]).size, np.unique(theirs[inside]).size)
    if pairs == counts[0] == counts[1]:
        return "yes"
    return f"differs: {counts[0]} components vs the peer's {counts[1]}, {pairs} overlapping pairs"


def _number(value) -> float:
    return float(host(value).reshape(-1)[0])


def peer_edt(mask, threads):
    import edt

    return edt.edt(mask, anisotropy=SPACING, parallel=threads)


def peer_cc3d_largest(mask):
    import cc3d

    return cc3d.largest_k(mask, k=1, connectivity=26)


def peer_cc3d_label(mask):
    import cc3d

    return cc3d.connected_components(mask, connectivity=26)


def cpu_rows(pred, gt, atria, args):
    """The CPU rows; a peer that is not installed is named in its row (``peer missing``)."""
    reps = args.repeats
    background = ~gt
    element = ball(2.0)
    rows = [
        row("evaluate surfel (dice+hd95+assd+sdice)", lambda: metrics.evaluate(pred, gt, SPACING),
            "surface-distance", lambda: peer_surface_distance(pred, gt), 10, repeats=reps, peer_repeats=3,
            check=same_surfel_metrics),
        row("evaluate voxel (dice+hd95+assd+sdice)",
            lambda: metrics.evaluate(pred, gt, SPACING, convention="voxel"),
            "MONAI CPU", lambda: peer_monai(torch.from_numpy(pred), torch.from_numpy(gt)), 50,
            repeats=reps, peer_repeats=2, check=same_metrics),
    ]
    if not args.skip_medpy:
        rows.append(row("hd95 + assd voxel, pooled rule",
                        lambda: metrics.evaluate(pred, gt, SPACING, convention="voxel", percentile_rule="pooled"),
                        "medpy", lambda: peer_medpy(pred, gt), None, repeats=reps, peer_repeats=1,
                        check=same_pooled))
    rows += [
        row("EDT full volume (distance to the wall)", lambda: distance_transform(background, SPACING),
            f"edt (parallel={args.threads})", lambda: peer_edt(background, args.threads), 1.5, repeats=reps,
            check=same_distances),
        row("EDT full volume (distance to the wall)", lambda: distance_transform(background, SPACING),
            "scipy distance_transform_edt", lambda: ndimage.distance_transform_edt(background, sampling=SPACING),
            3, repeats=reps, peer_repeats=2, check=same_distances),
        row("EDT inside the wall (cropped to its box)", lambda: distance_transform(gt, SPACING),
            f"edt (parallel={args.threads}), full volume",
            lambda: peer_edt(gt, args.threads), None,
            note="ours works in the bounding box + 1 voxel (exact); the peer has no crop", repeats=reps,
            check=same_distances),
        row("signed distance of the atria", lambda: signed_distance(atria, SPACING),
            f"edt (parallel={args.threads}) x2",
            lambda: peer_edt(~atria, args.threads) - peer_edt(atria, args.threads), None, repeats=reps,
            check=same_distances),
        row("keep largest component (26)", lambda: keep_largest_component(atria),
            "cc3d.largest_k(k=1)", lambda: peer_cc3d_largest(atria), 3, repeats=reps, check=same_mask),
        row("label components (26)", lambda: label_components(atria),
            "cc3d.connected_components", lambda: peer_cc3d_label(atria), None, repeats=reps,
            check=same_partition),
        row("binary dilation, ball radius 2 voxels", lambda: binary_dilation(atria, 2),
            "scipy binary_dilation", lambda: ndimage.binary_dilation(atria, structure=element), 20,
            repeats=reps, peer_repeats=2, check=same_mask),
        row("binary erosion, ball radius 2 voxels", lambda: binary_erosion(atria, 2),
            "scipy binary_erosion", lambda: ndimage.binary_erosion(atria, structure=element), None,
            repeats=reps, peer_repeats=2, check=same_mask),
    ]
    return rows


def cupy_view(tensor):
    """A zero-copy cupy view of a CUDA tensor (ImportError names cupy when it is missing)."""
    import cupy

    return cupy.from_dlpack(tensor)


def peer_cucim_edt(mask):
    from cucim.core.operations.morphology import distance_transform_edt

    return distance_transform_edt(cupy_view(mask), sampling=SPACING)


def peer_cucim_label(mask):
    from cucim.skimage.measure import label

    return label(cupy_view(mask), connectivity=3)


def peer_cucim_largest(mask):
    import cupy

    labels = peer_cucim_label(mask)
    sizes = cupy.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def peer_cucim_dilation(mask, footprint):
    from cucim.skimage.morphology import binary_dilation

    return binary_dilation(cupy_view(mask), cupy_view(footprint))


def gpu_backends() -> list[str]:
    """Our GPU backends that can run here (the CUDA C ones need CuPy)."""
    from c2w_fast.ops import backend_problem

    return [b for b in ("triton", "cuda") if backend_problem(b, "cuda") is None]


def with_floor(entry: dict, bytes_moved: int, bandwidth: float, backend: str) -> dict:
    """``entry`` with the backend that ran and the physical floor: the op's unavoidable bytes over the
    measured bandwidth (bytes/s), and how far our GPU time is above it (``x_floor``)."""
    floor_ms = bytes_moved / bandwidth * 1e3
    gpu_ms = entry.get("ours_gpu_ms")
    return {**entry, "backend": backend, "floor_ms": floor_ms,
            "x_floor": gpu_ms / floor_ms if isinstance(gpu_ms, float) else "-"}


def cuda_rows(pred, gt, atria, args, rows: list[dict], payload: dict) -> None:
    """Our GPU backends on CUDA tensors against MONAI's GPU metrics and cuCIM, side by side;
    each row is appended (and printed) as soon as it is measured.

    Targets are those of the project's issue 5. The floor of each row counts the bytes an op
    cannot avoid — read its masks once, write its output once — over the bandwidth measured
    here by a device-to-device copy."""
    dev = lambda a: torch.from_numpy(a).cuda()  # noqa: E731
    p, g, a = dev(pred), dev(gt), dev(atria)
    background = ~g
    n = gt.size
    reps = args.repeats
    bandwidth = copy_bandwidth()
    payload["copy_bandwidth_GBps"] = bandwidth / 1e9
    print(f"device bandwidth (copy): {bandwidth / 1e9:.0f} GB/s")
    monai_problem = monai_gpu_problem()
    if monai_problem:
        print(f"MONAI would compute on the host (SciPy), not the GPU: {monai_problem}; its rows get no verdict")
    batch = 8
    pb, gb = p.expand(batch, *p.shape).contiguous(), g.expand(batch, *g.shape).contiguous()
    footprint = torch.from_numpy(ball(2.0)).cuda()  # on the device before timing, as ours builds its own

    def add(entry, bytes_moved, op: Op | str, monai=False):  # op: what ``auto`` picks on the GPU, or the backend
        entry = with_floor(entry, bytes_moved, bandwidth, op if isinstance(op, str) else op.auto_backend("cuda"))
        if monai and monai_problem and entry["met"] in ("yes", "NO"):
            entry["met"] = "no verdict: MONAI ran on the host"
        rows.append(entry)
        print(table([entry], CUDA_COLUMNS).splitlines()[-1], flush=True)

    add(row("evaluate voxel (dice+hd95+assd+sdice@1mm)", lambda: metrics.evaluate(p, g, SPACING, convention="voxel"),
            "MONAI on the GPU", lambda: peer_monai(p, g), 10, repeats=reps, cuda=True, check=same_metrics,
            note="same definitions (voxel convention); MONAI's API finds edges + distances per metric (3x)"),
        2 * n, EVALUATE_BATCH, monai=True)
    add(row("evaluate surfel (dice+hd95+assd+sdice@1mm)", lambda: metrics.evaluate(p, g, SPACING),
            "MONAI on the GPU (voxel convention)", lambda: peer_monai(p, g), None, repeats=reps, cuda=True,
            check=same_dice, note="information: our default convention, other work than MONAI's (Dice compared)"),
        2 * n, EVALUATE_BATCH)
    add(row(f"evaluate_batch of {batch} pairs, surfel", lambda: metrics.evaluate_batch(pb, gb, SPACING),
            f"MONAI on the GPU, {batch} calls", lambda: [peer_monai(p, g) for _ in range(batch)], None,
            repeats=reps, cuda=True, check=same_dice, note="one host sync for the batch (Dice compared)"),
        2 * n * batch, EVALUATE_BATCH)
    add(row("EDT full volume (distance to the wall)", lambda: distance_transform(background, SPACING),
            "cuCIM distance_transform_edt", lambda: peer_cucim_edt(background), 5, repeats=reps, cuda=True,
            check=same_distances), 5 * n, DISTANCE_TRANSFORM)
    add(row("EDT inside the wall (box + 1 voxel)", lambda: distance_transform(g, SPACING),
            "cuCIM distance_transform_edt, full volume", lambda: peer_cucim_edt(g), None, repeats=reps, cuda=True,
            check=same_distances, note="ours works in the bounding box + 1 voxel (exact)"), 5 * n, DISTANCE_TRANSFORM)
    add(row("signed distance of the atria", lambda: signed_distance(a, SPACING),
            "cuCIM distance_transform_edt x2, subtracted", lambda: peer_cucim_edt(~a) - peer_cucim_edt(a), None,
            repeats=reps, cuda=True, check=same_distances), 5 * n, SIGNED_DISTANCE)
    for backend in gpu_backends():
        add(row("label components (26)", lambda b=backend: label_components(a, backend=b),
                "cuCIM measure.label", lambda: peer_cucim_label(a), 2, repeats=reps, cuda=True,
                check=same_partition), 5 * n, backend)
        add(row("keep largest component (26)", lambda b=backend: keep_largest_component(a, backend=b),
                "cuCIM measure.label + bincount + argmax", lambda: peer_cucim_largest(a), 2, repeats=reps,
                cuda=True, check=same_mask), 2 * n, backend)
    add(row("binary dilation, ball radius 2 voxels", lambda: binary_dilation(a, 2),
            "cuCIM morphology.binary_dilation", lambda: peer_cucim_dilation(a, footprint), 5, repeats=reps,
            cuda=True, check=same_mask), 2 * n, DILATION)
    add(row("binary erosion, ball radius 2 voxels", lambda: binary_erosion(a, 2),
            "ours on the CPU", lambda: binary_erosion(atria, 2), None, repeats=reps, cuda=True, check=same_mask),
        2 * n, EROSION)
    missing = sorted({r["met"] for r in rows if str(r["met"]).startswith("peer missing")})
    if missing:
        print("peers not timed:", "; ".join(missing))


# ratio = peer_ms / ours_ms: above 1, ours is faster
CUDA_COLUMNS = ["op", "backend", "ours_ms", "ours_gpu_ms", "floor_ms", "x_floor", "peer", "peer_ms", "ratio", "agrees",
                "target", "met", "note"]
CPU_COLUMNS = ["op", "ours_ms", "peer", "peer_ms", "ratio", "cpu_ratio", "agrees", "target", "met", "note"]


def main(args) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("run_metrics.py --device cuda needs a CUDA GPU, and torch sees none here; "
                 "run it on a GPU machine, or use --device cpu")
    torch.set_num_threads(args.threads)
    pred, gt, atria = make_case(args.seed)
    print(f"case: 44x640x640 @ {SPACING} mm; wall {int(gt.sum())} voxels, prediction {int(pred.sum())}, "
          f"atria {int(atria.sum())}; threads {args.threads}; device {args.device}; "
          f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    rows, payload = [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peers' deprecation and empty-mask warnings
        warnings.simplefilter("always", BackendFallbackWarning)  # but never hide that ours ran the reference
        np.Inf, np.NaN = np.inf, np.nan  # surface-distance 0.1 still spells them (gone in numpy 2)
        if args.device == "cpu":
            rows += cpu_rows(pred, gt, atria, args)
        else:
            run_until_stopped(lambda: cuda_rows(pred, gt, atria, args, rows, payload), payload, "the GPU rows")
    printed = (table(rows, CPU_COLUMNS if args.device == "cpu" else CUDA_COLUMNS)
               + "\nratio = peer_ms / ours_ms (above 1: ours is faster); agrees: ours' answer against the peer's")
    print(printed)
    name = (f"metrics_{args.device}" + ("" if args.threads == 2 or args.device == "cuda" else f"_{args.threads}threads")
            + ("_passive" if args.passive else ""))
    payload.update({"threads": args.threads, "repeats": args.repeats,
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"), "rows": rows})
    print("saved", save(name, payload, printed, args.results))


if __name__ == "__main__":
    main(ARGS)
