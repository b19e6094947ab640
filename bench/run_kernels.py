"""Time the fused training kernels against their peers on a GPU, side by side in one run.

1. Conv block (grouped conv3d -> InstanceNorm3d(affine) -> LeakyReLU, forward + backward incl. the
   input gradient) at the seed's stage shapes, ours in bf16 (channels-last activations, fp32
   parameters as in mixed-precision training) vs the best of cuDNN eager fp32 / bf16 /
   bf16 autocast, channels-first and channels-last, and ``torch.compile`` of the bf16 block.
   Target: ours >= 2x faster than the best peer on every stage shape (``peer/ours`` = peer ms / our ms)
   with the answer of the fp32 eager block (``agrees``).
2. Peak memory of one block's forward + backward, fused vs eager bf16, at every stage shape and batch
   (target: ``fused/eager_min`` <= 0.6, against the smallest eager peak). Eager with
   ``cudnn.benchmark`` off (``eager_cf_MiB``, ``eager_cl_MiB``: cuDNN's default algorithms, measured
   in a fresh process) and on (``*_tuned_MiB``: the algorithms the timed peers run, whose workspace
   may be larger). Ours also with the backward in one piece (``*_unsplit`` columns here and in
   1.; by default it runs in pieces of conv groups and samples whose buffer holds a quarter of
   the output), so one run shows what the pieces save and what their extra launches cost.
3. Loss forward + backward (Dice-Focal, Dice-CE) vs MONAI at 4x2x44x256x256 and 2x4x20x256x256,
   and the region-masked Dice-CE (MBAS stage 2) vs the plain-torch masked reference.
   Targets: >= 15x faster than MONAI and within 3x of the memory floor, with MONAI's answer. The speed-up
   is one of wall times (``ours_ms``, ``peer_ms``: a call and its synchronisation, what a step waits); the
   floor bounds memory traffic, so it is held against ours' GPU time (``ours_gpu_ms``: the summed time of
   its kernels, inputs evicted from L2 between calls, ``benchlib.device_time``), which host launch
   overhead does not inflate nor a warm L2 flatter.

Every side of a row reads the same numbers (one seeded draw per shape, bf16-exact, converted to each
side's dtype and layout; the block's output gradient is zero next to LeakyReLU's kink, where a
rounding-level difference would switch the slope). A row counts as "met" only when ours also gives
the peer's answer (``agrees``: one call of each, outside the timed calls, compared with
``benchlib.agreement`` within the op's documented tolerance ``atol * max|peer| + rtol * |peer|``:
``TOLERANCES[bf16]`` of ``c2w_fast.ops.conv_norm_act`` vs the fp32 eager block; ``VALUE_TOLERANCES``
/ ``GRAD_TOLERANCES`` of ``c2w_fast.ops.losses`` vs the peer in float64 on the same logits). A row
that fails records its error and the next row runs; only the session's time limit (SIGINT) stops
the remaining parts.

The floor is bytes that must move / measured device-to-device copy bandwidth: for the block
x and y in the forward, dy, x and dx in the backward; for a loss the logits and labels (and
mask) read twice and the gradient written once. It is set beside our GPU time (``ours_gpu_ms``,
``ours_gpu/floor``), as 3. says.

Usage: python bench/run_kernels.py [--batches 2 4] [--repeats 20] [--no-compile] [--only conv|memory|loss]
       python bench/run_kernels.py --cpu-smoke   # tiny shapes through the Triton interpreter: checks the
                                                 # script runs; its numbers are not results and are not saved
Results: bench/results/kernels_<gpu>.json (with the GPU name and the date).
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import re
import subprocess
import sys
from functools import partial
from unittest import mock

STAGES = [(64, (44, 128, 128), 16), (128, (22, 64, 64), 32), (256, (11, 32, 32), 32), (512, (11, 16, 16), 32)]
LOSS_SHAPES = [(4, 2, 44, 256, 256), (2, 4, 20, 256, 256)]
SMOKE_STAGES = [(16, (2, 6, 6), 4)]
SMOKE_LOSS_SHAPES = [(1, 2, 2, 8, 8)]
LAYOUTS = (("cf", False), ("cl", True))
CONV_TARGET, LOSS_TARGET, FLOOR_TARGET, MEMORY_TARGET = 2.0, 15.0, 3.0, 0.6


def parse_args():
    from benchlib import add_results_option  # stdlib only: imported before the environment is set

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4],
                        help="batch sizes of the conv and memory rows (default 2 4)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed calls per side, after 3 warm-up calls (default 20)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer (slow to compile)")
    parser.add_argument("--only", choices=["conv", "memory", "loss"], action="append",
                        help="run this part only (repeatable; default: memory, loss, conv)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run through the Triton interpreter")
    parser.add_argument("--untuned-eager-peaks", action="store_true", help=argparse.SUPPRESS)  # untuned_eager_peaks
    add_results_option(parser)
    return parser.parse_args()


args = parse_args()
if args.cpu_smoke:
    os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported

import torch  # noqa: E402
from benchlib import (agreement, copy_bandwidth, device_ms, error_text, machine, run_until_stopped,  # noqa: E402
                      save, table, time_call)
from torch import nn  # noqa: E402

from c2w_fast.kernels import conv_norm_act as conv_kernels  # noqa: E402
from c2w_fast.nn import FusedConvNormAct  # noqa: E402
from c2w_fast.ops import dice_ce_loss, dice_focal_loss  # noqa: E402
from c2w_fast.ops.conv_norm_act import TOLERANCES  # noqa: E402
from c2w_fast.ops.losses import GRAD_TOLERANCES, VALUE_TOLERANCES  # noqa: E402


def device_and_timing():
    if args.cpu_smoke:
        return torch.device("cpu"), dict(repeats=2, warmup=1, cuda=False)
    if not torch.cuda.is_available():
        sys.exit("bench/run_kernels.py needs a CUDA GPU: no GPU is visible here, so there is nothing to measure.\n"
                 "Run it on a GPU machine, or pass --cpu-smoke to check that the script itself works "
                 "(tiny shapes through the Triton interpreter; those numbers are not results).")
    torch.backends.cudnn.benchmark = True  # the cuDNN peers get their best algorithm (the warm-up tunes it)
    return torch.device("cuda"), dict(repeats=args.repeats, warmup=3, cuda=True)


DEVICE, TIMING = device_and_timing()


def release() -> None:
    """Hand the cached device memory back between measurements, so one side's leftovers cannot crowd the next."""
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()


def timed(build, *, gpu: bool = False) -> dict:
    """Median wall ms (``ms``) of the step ``build()`` makes and, with ``gpu``, its GPU time (``gpu_ms``: the
    step's kernels alone, inputs evicted from L2 between calls, which a floor of DRAM traffic bounds; or
    why it was not measured: :func:`benchlib.device_ms`); or the error that stopped building or running
    it (a missing peer is reported, never skipped)."""
    try:
        step = build()
        result = {"ms": time_call(step, **TIMING)["median_ms"]}
        if gpu:
            result["gpu_ms"] = (device_ms(step, repeats=TIMING["repeats"], warmup=TIMING["warmup"])
                                if DEVICE.type == "cuda" else "needs a GPU")
        return result
    except Exception as exc:  # noqa: BLE001 - OOM, compile failures: record and go on
        return {"error": error_text(exc)}
    finally:
        release()


def gpu_columns(ours: dict, floor_ms: float) -> dict:
    """A row's floor and our GPU time beside it (:func:`timed` with ``gpu``): ``ours_gpu_ms`` (or why it is
    missing), ``floor_ms`` and, when the GPU time was measured, ``ours_gpu/floor``."""
    gpu_ms = ours.get("gpu_ms", ours.get("error"))
    return {"ours_gpu_ms": gpu_ms, "floor_ms": floor_ms,
            **({"ours_gpu/floor": gpu_ms / floor_ms} if isinstance(gpu_ms, float) else {})}


def checked(ours, peer, results) -> str:
    """``"yes"`` when one call of the step ``ours()`` makes gives the answers of one call of the peer's,
    each within its ``(name, Tolerance)`` of ``results``: ``|ours - peer| <= atol * max|peer| + rtol * |peer|``,
    the ops' documented bound. Outside the timed calls; a side that fails leaves the answers unchecked."""
    try:
        mine = ours()()
        theirs = peer()()
        for (name, tolerance), a, b in zip(results, mine, theirs, strict=True):
            same = agreement(a, b, atol=tolerance.atol * float(b.detach().abs().max()), rtol=tolerance.rtol)
            if same != "yes":
                return f"{name} {same}"
        return "yes"
    except Exception as exc:  # noqa: BLE001 - an OOM or a kernel error of either side: say so in the row
        return f"not checked: {error_text(exc)}"
    finally:
        release()


def verdict(fast_enough: bool, agrees: str, failed=()) -> str:
    """The target's verdict: met only when ours is fast enough and gives the peer's answer; INCOMPLETE
    when a ``failed`` peer might have been faster."""
    if agrees != "yes":
        return "NOT met: answers " + ("not checked" if agrees.startswith("not checked") else "differ")
    if not fast_enough:
        return "NOT met"
    return f"INCOMPLETE ({', '.join(failed)} failed)" if failed else "met"


def add_row(rows: list[dict], columns: list[str], row: dict, measure) -> None:
    """Append ``row`` as ``measure(row)`` fills it, or with the error that stopped it (out of memory, a
    Triton error: recorded, and the next row runs); a KeyboardInterrupt (the session's time limit)
    keeps what was measured and goes on up."""
    try:
        measure(row)
    except Exception as exc:  # noqa: BLE001 - whatever it is, only this row is lost
        row["error"] = error_text(exc)
    except KeyboardInterrupt:
        row["error"] = "stopped by the time limit"
        raise
    finally:
        release()
        rows.append(row)
        print(table([row], columns).splitlines()[-1], flush=True)


def shape_label(batch, channels, size, groups) -> str:
    return f"{batch}x{channels}x{'x'.join(map(str, size))}/g{groups}"


# ------------------------------------------------------------------------------------------------
# Conv block
# ------------------------------------------------------------------------------------------------
CONV_RESULTS = [(name, TOLERANCES[torch.bfloat16]) for name in ("y", "dx", "dweight", "dgamma", "dbeta")]
KINK = 0.02  # |normalised output| below which the shared gradient is zero (see shared_inputs): ~1.6 % of it


def eager_block(channels: int, groups: int) -> nn.Module:
    block = nn.Sequential()
    block.conv = nn.Conv3d(channels, channels, 3, 1, 1, groups=groups, bias=False)
    block.norm = nn.InstanceNorm3d(channels, affine=True)
    block.act = nn.LeakyReLU(0.01)
    return block


def block_template(channels: int, groups: int) -> nn.Module:
    """The fp32 weights every side of a row loads (seeded), bf16-exact so that the bf16 sides start from the
    fp32 peer's."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        template = eager_block(channels, groups).to(DEVICE)
    with torch.no_grad():
        for parameter in template.parameters():
            parameter.copy_(parameter.bfloat16())
    return template


def shared_inputs(template, batch, channels, size) -> tuple[torch.Tensor, torch.Tensor]:
    """x and the output gradient of a row, drawn once from a seeded generator in bf16 (which every side's
    dtype holds exactly), so that all sides read the same numbers. The gradient is zero where the template's
    normalised output (before the activation) lies within KINK of 0: there a rounding-level difference (ours
    stores the conv output in bf16, as cuDNN in bf16 does) switches LeakyReLU's slope between 1 and 0.01,
    and two right answers' gradients would differ by a whole term."""
    generator = torch.Generator(DEVICE).manual_seed(0)
    x, grad = (torch.randn(batch, channels, *size, generator=generator, device=DEVICE, dtype=torch.bfloat16)
               for _ in range(2))
    with torch.no_grad():
        grad[template.norm(template.conv(x.float())).abs() < KINK] = 0
    return x, grad


def side_inputs(shared, dtype, channels_last):
    """One side's own copy of the shared x (requiring grad) and gradient, in its dtype and layout."""
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    x, grad = (t.to(dtype, copy=True, memory_format=layout) for t in shared)
    return x.requires_grad_(), grad


def block_step(block, x, grad, autocast=False):
    """Forward + backward returning the output, the input and the parameter gradients (nothing accumulates
    between calls)."""
    inputs = [x, *block.parameters()]

    def step():
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
            y = block(x)
        return y.detach(), *torch.autograd.grad(y, inputs, grad)
    return step


def eager_side(template, shared, dtype, channels_last, autocast=False, compiled=False):
    """The step of a copy of ``template`` in ``dtype`` (under autocast its parameters stay fp32 and are
    cast per call, as in training) and layout, or of a fresh ``torch.compile`` of it."""
    block = copy.deepcopy(template)
    if not autocast:
        block = block.to(dtype)
    if channels_last:
        block = block.to(memory_format=torch.channels_last_3d)
    if compiled:
        # a fresh compile per stage and layout, for this shape only: without the reset Dynamo's
        # shared cache turns later stages dynamic and, past its recompile limit, runs them eager
        torch._dynamo.reset()
        block = torch.compile(block, dynamic=False)
    return block_step(block, *side_inputs(shared, dtype, channels_last), autocast)


def ours_side(template, shared):
    """Our step: the fused block with the template's weights (fp32 parameters, bf16 compute, as in training)."""
    conv = template.conv
    fused = FusedConvNormAct(conv.in_channels, conv.out_channels, 3, 1, conv.groups, backend="triton").to(DEVICE)
    fused.load_state_dict(template.state_dict())
    return block_step(fused, *side_inputs(shared, torch.bfloat16, channels_last=True), autocast=True)


def conv_peers(template, shared) -> list:
    """(name, build) for every peer: build() makes its step, so only the peer being timed holds memory."""
    peers = [(f"eager {name} {layout}", partial(eager_side, template, shared, dtype, channels_last, autocast))
             for name, dtype, autocast in (("fp32", torch.float32, False), ("bf16", torch.bfloat16, False),
                                           ("bf16-autocast", torch.bfloat16, True))
             for layout, channels_last in LAYOUTS]
    if not args.no_compile and DEVICE.type == "cuda":
        peers += [(f"compile bf16 {layout}", partial(eager_side, template, shared, torch.bfloat16, channels_last,
                                                     compiled=True)) for layout, channels_last in LAYOUTS]
    return peers


def unsplit_backward():
    """Context in which the fused backward runs in one piece (its transient buffer holds the whole output),
    to weigh the default pieces' memory against their extra launches in the same run."""
    return mock.patch.object(conv_kernels, "BACKWARD_BUFFER_SHARE", 1)


def conv_row(row: dict, batch, channels, size, groups, bandwidth: float) -> None:
    """Ours (in pieces and unsplit) and every peer timed on the same weights and numbers; ours checked
    against the fp32 eager block first."""
    template = block_template(channels, groups)
    shared = shared_inputs(template, batch, channels, size)
    row["agrees"] = checked(partial(ours_side, template, shared),
                            partial(eager_side, template, shared, torch.float32, False), CONV_RESULTS)
    ours = timed(partial(ours_side, template, shared), gpu=True)
    with unsplit_backward():
        ours_unsplit = timed(partial(ours_side, template, shared))
    peers = {name: timed(build) for name, build in conv_peers(template, shared)}
    timed_peers = {name: p["ms"] for name, p in peers.items() if "ms" in p}
    best = min(timed_peers, key=timed_peers.get) if timed_peers else None
    floor_ms = 5 * shared[0].numel() * 2 / bandwidth * 1e3  # bf16
    row.update({"ours_ms": ours.get("ms", ours.get("error")),
                "ours_unsplit_ms": ours_unsplit.get("ms", ours_unsplit.get("error")), "best_peer": best or "-",
                "peer_ms": timed_peers.get(best, "-"), **gpu_columns(ours, floor_ms), "peers": peers})
    if "ms" in ours and best:
        row["peer/ours"] = timed_peers[best] / ours["ms"]
    if "peer/ours" in row and not args.cpu_smoke:
        failed = sorted(name for name, p in peers.items() if "error" in p)  # a failed peer might have been faster
        row["target"] = f">={CONV_TARGET:g}x " + verdict(row["peer/ours"] >= CONV_TARGET, row["agrees"], failed)


def conv_rows(bandwidth: float, rows: list[dict]) -> None:
    stages = SMOKE_STAGES if args.cpu_smoke else STAGES
    for batch in ([1] if args.cpu_smoke else args.batches):
        for channels, size, groups in stages:
            add_row(rows, CONV_COLUMNS, {"shape": shape_label(batch, channels, size, groups)},
                    partial(conv_row, batch=batch, channels=channels, size=size, groups=groups, bandwidth=bandwidth))


CONV_COLUMNS = ["shape", "ours_ms", "ours_unsplit_ms", "best_peer", "peer_ms", "peer/ours", "ours_gpu_ms", "floor_ms",
                "ours_gpu/floor", "agrees", "target", "error"]


# ------------------------------------------------------------------------------------------------
# Peak memory of one block
# ------------------------------------------------------------------------------------------------
def peak_mib(step) -> float:
    """Peak extra device memory (MiB) of one call of ``step`` over what was allocated before it."""
    if DEVICE.type != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def peak(build) -> float | str:
    """Peak MiB of the step ``build()`` makes, after one call outside the measurement (autotuning,
    cuDNN's algorithm choice), or the error that stopped it."""
    try:
        step = build()
        step()
        return peak_mib(step)
    except Exception as exc:  # noqa: BLE001 - OOM, a Triton error: this measurement only
        return error_text(exc)
    finally:
        release()


def memory_shapes() -> list[tuple]:
    stages = SMOKE_STAGES if args.cpu_smoke else STAGES
    return list(itertools.product([1] if args.cpu_smoke else args.batches, stages))


def untuned_eager_peaks() -> dict:
    """{shape: {layout: MiB or error}} of eager bf16 with ``cudnn.benchmark`` off, measured in a fresh process
    (this script with ``--untuned-eager-peaks``): cuDNN caches the algorithm it picks per convolution whatever
    the setting, so here the tuned one of the timed peers would be reused, or an untuned one would replace it."""
    command = [sys.executable, os.path.abspath(__file__), "--untuned-eager-peaks", "--batches", *map(str, args.batches)]
    release()
    try:
        done = subprocess.run(command + (["--cpu-smoke"] if args.cpu_smoke else []), capture_output=True, text=True,
                              timeout=300)
        if done.returncode:
            return {"error": f"untuned process failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:160]}"}
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
        return {"error": f"untuned process failed: {error_text(exc)}"}


def print_untuned_eager_peaks() -> None:
    """The untuned process's side of :func:`untuned_eager_peaks`: one JSON line (a shape that fails gives its error)."""
    torch.backends.cudnn.benchmark = False  # cuDNN's heuristic choice, in this process of its own
    peaks = {}
    for batch, (channels, size, groups) in memory_shapes():
        try:
            template = block_template(channels, groups)
            shared = shared_inputs(template, batch, channels, size)
            found = {layout: peak(partial(eager_side, template, shared, torch.bfloat16, channels_last))
                     for layout, channels_last in LAYOUTS}
        except Exception as exc:  # noqa: BLE001 - OOM drawing the inputs: this shape only
            found = {layout: error_text(exc) for layout, _ in LAYOUTS}
        peaks[shape_label(batch, channels, size, groups)] = found
    print(json.dumps(peaks))


def memory_row(row: dict, batch, channels, size, groups, untuned: dict) -> None:
    """Fused (in pieces and unsplit) and eager peaks, benchmark on here and off from ``untuned``; the ratios
    against the smallest eager peak."""
    template = block_template(channels, groups)
    shared = shared_inputs(template, batch, channels, size)
    row["fused_MiB"] = peak(partial(ours_side, template, shared))
    with unsplit_backward():
        row["fused_unsplit_MiB"] = peak(partial(ours_side, template, shared))
    for layout, channels_last in LAYOUTS:
        row[f"eager_{layout}_MiB"] = untuned.get(row["shape"], {}).get(layout, untuned.get("error", "missing"))
        row[f"eager_{layout}_tuned_MiB"] = peak(partial(eager_side, template, shared, torch.bfloat16, channels_last))
    eager = {f"{layout}, benchmark {setting}": row[f"eager_{layout}{suffix}_MiB"]
             for layout, _ in LAYOUTS for setting, suffix in (("off", ""), ("on", "_tuned"))}
    measured = {name: mib for name, mib in eager.items() if isinstance(mib, float)}
    if not measured:
        return
    row["eager_min"] = min(measured, key=measured.get)
    smallest = measured[row["eager_min"]]
    for column, fused in (("fused/eager_min", row["fused_MiB"]), ("unsplit/eager_min", row["fused_unsplit_MiB"])):
        if isinstance(fused, float):
            row[column] = fused / smallest
    if "fused/eager_min" in row and not args.cpu_smoke:
        failed = sorted(set(eager) - set(measured))  # a failed eager side might have been smaller
        row["target"] = f"<={MEMORY_TARGET:g} " + verdict(row["fused/eager_min"] <= MEMORY_TARGET, "yes", failed)


def memory_rows(rows: list[dict]) -> None:
    untuned = untuned_eager_peaks()
    for batch, (channels, size, groups) in memory_shapes():
        add_row(rows, MEMORY_COLUMNS, {"shape": shape_label(batch, channels, size, groups)},
                partial(memory_row, batch=batch, channels=channels, size=size, groups=groups, untuned=untuned))


MEMORY_COLUMNS = ["shape", "fused_MiB", "fused_unsplit_MiB", "eager_cf_MiB", "eager_cl_MiB", "eager_cf_tuned_MiB",
                  "eager_cl_tuned_MiB", "eager_min", "fused/eager_min", "unsplit/eager_min", "target", "error"]


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------
def loss_results(dtype) -> list:
    """(name, Tolerance) of the loss value and its gradient, for logits of ``dtype``."""
    return [("value", VALUE_TOLERANCES[dtype]), ("grad", GRAD_TOLERANCES[dtype])]


def loss_inputs(shape, dtype):
    """Logits (requiring grad), labels and a region mask from a seeded generator: the same for each row of a shape."""
    generator = torch.Generator(DEVICE).manual_seed(0)
    batch, classes, *size = shape
    labels = torch.randint(0, classes, (batch, *size), generator=generator, device=DEVICE, dtype=torch.uint8)
    region = torch.rand(batch, *size, generator=generator, device=DEVICE) < 0.5
    logits = torch.randn(shape, generator=generator, device=DEVICE).to(dtype).requires_grad_()
    return logits, labels, region


LOSS_NAMES = ("dice_focal", "dice_ce", "dice_ce masked")


def loss_cases(monai, labels, region) -> dict:
    """{name: (ours, peer name, peer or None, whether masked)} per loss row; ours and the peer take the logits."""
    peers = {name: partial(getattr(monai.losses, name)(to_onehot_y=True, softmax=True), target=labels[:, None])
             for name in ("DiceFocalLoss", "DiceCELoss")} if monai else {}
    return {
        "dice_focal": (partial(dice_focal_loss, target=labels, backend="triton"), "MONAI DiceFocalLoss",
                       peers.get("DiceFocalLoss"), False),
        "dice_ce": (partial(dice_ce_loss, target=labels, backend="triton"), "MONAI DiceCELoss",
                    peers.get("DiceCELoss"), False),
        "dice_ce masked": (partial(dice_ce_loss, target=labels, mask=region, backend="triton"),
                           "torch masked reference", partial(dice_ce_loss, target=labels, mask=region,
                                                             backend="reference"), True),
    }


def loss_step(fn, logits):
    """Loss forward + backward returning the loss and its gradient to the logits."""
    def step():
        loss = fn(logits)
        return loss.detach(), *torch.autograd.grad(loss, logits)
    return step


def loss_row(row: dict, monai, shape, dtype, bandwidth: float) -> None:
    """Ours and the peer timed on the same logits; ours checked against the peer in float64 on those values
    (the exact answer, which the op's tolerances are stated against: MONAI in bf16 sums its Dice terms in bf16)."""
    logits, labels, region = loss_inputs(shape, dtype)
    ours_fn, peer_name, peer_fn, masked = loss_cases(monai, labels, region)[row["loss"]]
    exact = logits.detach().double().requires_grad_()
    row["peer"] = peer_name
    row["agrees"] = (checked(partial(loss_step, ours_fn, logits), partial(loss_step, peer_fn, exact),
                             loss_results(dtype)) if peer_fn else "not checked: MONAI not installed")
    ours = timed(partial(loss_step, ours_fn, logits), gpu=True)
    peer = timed(partial(loss_step, peer_fn, logits)) if peer_fn else {"error": "MONAI not installed"}
    moved = 3 * logits.numel() * logits.element_size() + 2 * labels.numel() + (2 * region.numel() if masked else 0)
    floor_ms = moved / bandwidth * 1e3
    row.update(ours_ms=ours.get("ms", ours.get("error")), peer_ms=peer.get("ms", peer.get("error")),
               **gpu_columns(ours, floor_ms))
    if "ms" in ours and "ms" in peer:
        row["peer/ours"] = peer["ms"] / ours["ms"]
        if peer_name.startswith("MONAI") and not args.cpu_smoke:
            target = f">={LOSS_TARGET:g}x, <={FLOOR_TARGET:g}x floor "
            if "ours_gpu/floor" not in row:
                row["target"] = target + "no verdict: our GPU time was not measured"
            else:
                fast = row["peer/ours"] >= LOSS_TARGET and row["ours_gpu/floor"] <= FLOOR_TARGET
                row["target"] = target + verdict(fast, row["agrees"])


def loss_rows(bandwidth: float, rows: list[dict]) -> None:
    try:
        import monai
    except ImportError:
        monai = None
        print("peer missing: MONAI is not installed (pip install monai); its rows show the error", flush=True)
    for shape, dtype, name in itertools.product(SMOKE_LOSS_SHAPES if args.cpu_smoke else LOSS_SHAPES,
                                                (torch.bfloat16, torch.float32), LOSS_NAMES):
        head = {"loss": name, "shape": "x".join(map(str, shape)), "dtype": str(dtype).removeprefix("torch.")}
        add_row(rows, LOSS_COLUMNS, head, partial(loss_row, monai=monai, shape=shape, dtype=dtype, bandwidth=bandwidth))


LOSS_COLUMNS = ["loss", "shape", "dtype", "ours_ms", "peer", "peer_ms", "peer/ours", "ours_gpu_ms", "floor_ms",
                "ours_gpu/floor", "agrees", "target", "error"]


def run_part(run, rows: list[dict], payload: dict, part: str) -> bool:
    """Run one part, keeping its rows; an error no row caught marks ``payload`` incomplete and the next part
    runs. True only when the session's time limit (a KeyboardInterrupt) stopped it: no time for the rest."""
    interrupted, note = [], {}

    def measure():
        try:
            run(rows)
        except KeyboardInterrupt:
            interrupted.append(part)
            raise
    run_until_stopped(measure, note, part)
    if note:
        payload["incomplete"] = "; ".join(filter(None, [payload.get("incomplete"), note["incomplete"]]))
    return bool(interrupted)


def main() -> None:
    if args.untuned_eager_peaks:
        print_untuned_eager_peaks()
        return
    parts = args.only or ["memory", "loss", "conv"]  # the compile peers' long tail last: a time limit cuts least
    if args.cpu_smoke:
        print("CPU SMOKE RUN through the Triton interpreter: checks that the script works; "
              "the numbers below are NOT measurements and are not saved.\n")
    info = machine()
    bandwidth = copy_bandwidth() if DEVICE.type == "cuda" else float("nan")
    print(f"device: {info.get('gpu', 'cpu')}, copy bandwidth {bandwidth / 1e9:.0f} GB/s\n", flush=True)
    payload, printed = {"copy_bandwidth_GBps": bandwidth / 1e9}, []
    runs = {"conv": (lambda rows: conv_rows(bandwidth, rows), CONV_COLUMNS), "memory": (memory_rows, MEMORY_COLUMNS),
            "loss": (lambda rows: loss_rows(bandwidth, rows), LOSS_COLUMNS)}
    for part in parts:
        run, columns = runs[part]
        print(f"== {part} ==", flush=True)
        rows = payload[part] = []
        stopped = run_part(run, rows, payload, part)
        printed.append(f"== {part} ==\n" + table(rows, columns))
        if stopped:
            break
    text = "\n\n".join(printed)
    print("\n" + text)
    if not args.cpu_smoke:
        gpu = re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-")
        print("saved", save(f"kernels_{gpu}", payload, text, args.results))


if __name__ == "__main__":
    main()
