"""Time the fused training kernels against their peers on a GPU, side by side in one run.

1. Conv block (grouped conv3d -> InstanceNorm3d(affine) -> LeakyReLU, forward + backward incl. the
   input gradient) at the seed's stage shapes, ours in bf16 (channels-last activations, fp32
   parameters as in mixed-precision training) vs the best of cuDNN eager fp32 / bf16 /
   bf16 autocast, channels-first and channels-last, and ``torch.compile`` of the bf16 block.
   Target: ours >= 2x faster than the best peer on every stage shape.
2. Peak memory of one block's forward + backward, fused vs eager bf16, at every stage shape and batch
   (target <= 0.6x). Ours also with the backward in one piece (``*_unsplit`` columns here and in
   1.; by default it runs in pieces of conv groups and samples whose buffer holds a quarter of
   the output), so one run shows what the pieces save and what their extra launches cost.
3. Loss forward + backward (Dice-Focal, Dice-CE) vs MONAI at 4x2x44x256x256 and 2x4x20x256x256,
   and the region-masked Dice-CE (MBAS stage 2) vs the plain-torch masked reference.
   Targets: >= 15x faster than MONAI and within 3x of the memory floor.

The floor is bytes that must move / measured device-to-device copy bandwidth: for the block
x and y in the forward, dy, x and dx in the backward; for a loss the logits and labels (and
mask) read twice and the gradient written once.

Usage: python bench/run_kernels.py [--batches 2 4] [--repeats 20] [--no-compile] [--only conv|memory|loss]
       python bench/run_kernels.py --cpu-smoke   # tiny shapes through the Triton interpreter: checks the
                                                 # script runs; its numbers are not results and are not saved
Results: bench/results/kernels_<gpu>.json (with the GPU name and the date).
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
from unittest import mock

STAGES = [(64, (44, 128, 128), 16), (128, (22, 64, 64), 32), (256, (11, 32, 32), 32), (512, (11, 16, 16), 32)]
LOSS_SHAPES = [(4, 2, 44, 256, 256), (2, 4, 20, 256, 256)]
SMOKE_STAGES = [(16, (2, 6, 6), 4)]
SMOKE_LOSS_SHAPES = [(1, 2, 2, 8, 8)]
CONV_TARGET, LOSS_TARGET, FLOOR_TARGET, MEMORY_TARGET = 2.0, 15.0, 3.0, 0.6


def parse_args():
    from benchlib import add_results_option  # stdlib only: imported before the environment is set

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer (slow to compile)")
    parser.add_argument("--only", choices=["conv", "memory", "loss"], action="append")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run through the Triton interpreter")
    add_results_option(parser)
    return parser.parse_args()


args = parse_args()
if args.cpu_smoke:
    os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported

import torch  # noqa: E402
from benchlib import copy_bandwidth, error_text, machine, run_until_stopped, save, table, time_call  # noqa: E402
from torch import nn  # noqa: E402

from c2w_fast.kernels import conv_norm_act as conv_kernels  # noqa: E402
from c2w_fast.nn import FusedConvNormAct  # noqa: E402
from c2w_fast.ops import dice_ce_loss, dice_focal_loss  # noqa: E402


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


def timed(fn) -> dict:
    """Median ms of ``fn`` or the error that stopped it (a missing peer is reported, never skipped)."""
    try:
        return {"ms": time_call(fn, **TIMING)["median_ms"]}
    except Exception as exc:  # noqa: BLE001 - OOM, compile failures: record and go on
        return {"error": error_text(exc)}
    finally:
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# Conv block
# ------------------------------------------------------------------------------------------------
def eager_block(channels: int, groups: int) -> nn.Module:
    block = nn.Sequential()
    block.conv = nn.Conv3d(channels, channels, 3, 1, 1, groups=groups, bias=False)
    block.norm = nn.InstanceNorm3d(channels, affine=True)
    block.act = nn.LeakyReLU(0.01)
    return block


def block_step(block, x, grad, autocast=False):
    """Forward + backward returning the input and parameter gradients (nothing accumulates between calls)."""
    inputs = [x, *block.parameters()]

    def step():
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=autocast):
            y = block(x)
        return torch.autograd.grad(y, inputs, grad)
    return step


def block_inputs(batch, channels, size, dtype, channels_last):
    x = torch.randn(batch, channels, *size, device=DEVICE, dtype=dtype)
    grad = torch.randn_like(x)
    if channels_last:
        x, grad = (t.contiguous(memory_format=torch.channels_last_3d) for t in (x, grad))
    return x.requires_grad_(), grad


def conv_peers(batch, channels, size, groups, template: nn.Module):
    """Yield (name, forward + backward step) for every peer, one at a time so only one holds memory."""
    for dtype_name, dtype, autocast in (("fp32", torch.float32, False), ("bf16", torch.bfloat16, False),
                                        ("bf16-autocast", torch.bfloat16, True)):
        for layout, channels_last in (("cf", False), ("cl", True)):
            block = eager_block(channels, groups).to(DEVICE)
            block.load_state_dict(template.state_dict())
            if not autocast:  # autocast keeps fp32 parameters and casts per call, as in training
                block = block.to(dtype)
            if channels_last:
                block = block.to(memory_format=torch.channels_last_3d)
            x, grad = block_inputs(batch, channels, size, dtype, channels_last)
            yield f"eager {dtype_name} {layout}", block_step(block, x, grad, autocast)
    if not args.no_compile and DEVICE.type == "cuda":
        for layout, channels_last in (("cf", False), ("cl", True)):
            block = eager_block(channels, groups).to(DEVICE, torch.bfloat16)
            if channels_last:
                block = block.to(memory_format=torch.channels_last_3d)
            x, grad = block_inputs(batch, channels, size, torch.bfloat16, channels_last)
            # a fresh compile per stage and layout, for this shape only: without the reset Dynamo's
            # shared cache turns later stages dynamic and, past its recompile limit, runs them eager
            torch._dynamo.reset()
            yield f"compile bf16 {layout}", block_step(torch.compile(block, dynamic=False), x, grad)


def ours_step(batch, channels, size, groups, template: nn.Module):
    fused = FusedConvNormAct(channels, channels, 3, 1, groups, backend="triton").to(DEVICE)
    fused.load_state_dict(template.state_dict())
    x, grad = block_inputs(batch, channels, size, torch.bfloat16, channels_last=True)
    return block_step(fused, x, grad, autocast=True)  # fp32 parameters, bf16 compute: as in training


def unsplit_backward():
    """Context in which the fused backward runs in one piece (its transient buffer holds the whole output),
    to weigh the default pieces' memory against their extra launches in the same run."""
    return mock.patch.object(conv_kernels, "BACKWARD_BUFFER_SHARE", 1)


def conv_rows(bandwidth: float, rows: list[dict]) -> None:
    stages = SMOKE_STAGES if args.cpu_smoke else STAGES
    for batch in ([1] if args.cpu_smoke else args.batches):
        for channels, size, groups in stages:
            template = eager_block(channels, groups).to(DEVICE)
            ours = timed(ours_step(batch, channels, size, groups, template))
            with unsplit_backward():
                ours_unsplit = timed(ours_step(batch, channels, size, groups, template))
            peers = {name: timed(step) for name, step in conv_peers(batch, channels, size, groups, template)}
            timed_peers = {name: p["ms"] for name, p in peers.items() if "ms" in p}
            best = min(timed_peers, key=timed_peers.get) if timed_peers else None
            activation_bytes = batch * channels * size[0] * size[1] * size[2] * 2  # bf16
            floor_ms = 5 * activation_bytes / bandwidth * 1e3
            row = {"shape": f"{batch}x{channels}x{'x'.join(map(str, size))}/g{groups}",
                   "ours_ms": ours.get("ms", ours.get("error")),
                   "ours_unsplit_ms": ours_unsplit.get("ms", ours_unsplit.get("error")), "best_peer": best or "-",
                   "peer_ms": timed_peers.get(best, "-"), "floor_ms": floor_ms, "peers": peers}
            if "ms" in ours and best:
                row["speedup"] = timed_peers[best] / ours["ms"]
                row["ours/floor"] = ours["ms"] / floor_ms
            failed = sorted(name for name, p in peers.items() if "error" in p)
            if "speedup" in row and not args.cpu_smoke:
                verdict = "NOT met" if row["speedup"] < CONV_TARGET else "met"
                if failed and verdict == "met":  # a failed peer might have been faster: no verdict
                    verdict = f"INCOMPLETE ({', '.join(failed)} failed)"
                row["target"] = f">={CONV_TARGET:g}x {verdict}"
            rows.append(row)
            print(table([row], CONV_COLUMNS).splitlines()[-1], flush=True)


CONV_COLUMNS = ["shape", "ours_ms", "ours_unsplit_ms", "best_peer", "peer_ms", "speedup", "floor_ms", "ours/floor", "target"]


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


def memory_rows(rows: list[dict]) -> None:
    stages = SMOKE_STAGES if args.cpu_smoke else STAGES
    for batch, (channels, size, groups) in itertools.product([1] if args.cpu_smoke else args.batches, stages):
        template = eager_block(channels, groups).to(DEVICE)
        ours_step_fn = ours_step(batch, channels, size, groups, template)
        ours_step_fn()  # autotuning happens outside the measurement
        ours = peak_mib(ours_step_fn)
        unsplit_fn = ours_step(batch, channels, size, groups, template)
        with unsplit_backward():
            unsplit_fn()
            ours_unsplit = peak_mib(unsplit_fn)
        eager = {}
        for layout, channels_last in (("cf", False), ("cl", True)):
            block = eager_block(channels, groups).to(DEVICE, torch.bfloat16)
            if channels_last:
                block = block.to(memory_format=torch.channels_last_3d)
            x, grad = block_inputs(batch, channels, size, torch.bfloat16, channels_last)
            step = block_step(block, x, grad)
            step()
            eager[layout] = peak_mib(step)
        best = min(eager.values())
        row = {"shape": f"{batch}x{channels}x{'x'.join(map(str, size))}/g{groups}", "fused_MiB": ours,
               "fused_unsplit_MiB": ours_unsplit, "eager_cf_MiB": eager["cf"], "eager_cl_MiB": eager["cl"],
               "fused/eager": ours / best, "unsplit/eager": ours_unsplit / best}
        if not args.cpu_smoke:
            row["target"] = f"<={MEMORY_TARGET:g} " + ("met" if ours / best <= MEMORY_TARGET else "NOT met")
        rows.append(row)
        print(table([row], MEMORY_COLUMNS).splitlines()[-1], flush=True)


MEMORY_COLUMNS = ["shape", "fused_MiB", "fused_unsplit_MiB", "eager_cf_MiB", "eager_cl_MiB", "fused/eager",
                  "unsplit/eager", "target"]


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------
def loss_step(fn, logits, *extra, **options):
    def step():
        return torch.autograd.grad(fn(logits, *extra, **options), logits)
    return step


def loss_rows(bandwidth: float, rows: list[dict]) -> None:
    try:
        import monai
    except ImportError:
        monai = None
        print("peer missing: MONAI is not installed (pip install monai); its rows show the error", flush=True)
    shapes = SMOKE_LOSS_SHAPES if args.cpu_smoke else LOSS_SHAPES
    for shape in shapes:
        batch, classes, *size = shape
        labels = torch.randint(0, classes, (batch, *size), device=DEVICE, dtype=torch.uint8)
        region = torch.rand(batch, *size, device=DEVICE) < 0.5
        for dtype in (torch.bfloat16, torch.float32):
            logits = torch.randn(shape, device=DEVICE, dtype=dtype, requires_grad=True)
            bytes_plain = 3 * logits.numel() * logits.element_size() + 2 * labels.numel()
            cases = [
                ("dice_focal", loss_step(dice_focal_loss, logits, labels, backend="triton"), "MONAI DiceFocalLoss",
                 loss_step(monai.losses.DiceFocalLoss(to_onehot_y=True, softmax=True), logits, labels[:, None])
                 if monai else None, bytes_plain),
                ("dice_ce", loss_step(dice_ce_loss, logits, labels, backend="triton"), "MONAI DiceCELoss",
                 loss_step(monai.losses.DiceCELoss(to_onehot_y=True, softmax=True), logits, labels[:, None])
                 if monai else None, bytes_plain),
                ("dice_ce masked", loss_step(dice_ce_loss, logits, labels, region, backend="triton"), "torch masked reference",
                 loss_step(dice_ce_loss, logits, labels, region, backend="reference"),
                 bytes_plain + 2 * region.numel()),
            ]
            for name, ours_fn, peer_name, peer_fn, moved in cases:
                ours = timed(ours_fn)
                peer = timed(peer_fn) if peer_fn else {"error": "MONAI not installed"}
                floor_ms = moved / bandwidth * 1e3
                row = {"loss": name, "shape": "x".join(map(str, shape)), "dtype": str(dtype).removeprefix("torch."),
                       "ours_ms": ours.get("ms", ours.get("error")), "peer": peer_name,
                       "peer_ms": peer.get("ms", peer.get("error")), "floor_ms": floor_ms}
                if "ms" in ours and "ms" in peer:
                    row["speedup"] = peer["ms"] / ours["ms"]
                    row["ours/floor"] = ours["ms"] / floor_ms
                    if peer_name.startswith("MONAI") and not args.cpu_smoke:
                        met = row["speedup"] >= LOSS_TARGET and row["ours/floor"] <= FLOOR_TARGET
                        row["target"] = f">={LOSS_TARGET:g}x, <={FLOOR_TARGET:g}x floor " + ("met" if met else "NOT met")
                rows.append(row)
                print(table([row], LOSS_COLUMNS).splitlines()[-1], flush=True)


LOSS_COLUMNS = ["loss", "shape", "dtype", "ours_ms", "peer", "peer_ms", "speedup", "floor_ms", "ours/floor", "target"]


def main() -> None:
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
        stopped = run_until_stopped(lambda: run(rows), payload, part)
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
