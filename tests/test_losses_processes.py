"""``across_processes``: two gloo processes, each with half the batch, get the whole batch's loss,
and DDP's average of their gradients is the one-process gradient (batch Dice, region masks,
a share with no voxel in the region, loss options, targets, dtypes, deep supervision, both backends)."""
import itertools

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from c2w_fast.nn import DiceCELoss, DiceFocalLoss
from c2w_fast.ops import dice_ce_loss, dice_focal_loss
from c2w_fast.ops._dispatch import backend_problem
from c2w_fast.ops.losses import GRAD_TOLERANCES, VALUE_TOLERANCES

pytestmark = pytest.mark.gpu

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PROCESSES = 2
BACKENDS = ["reference"] + ([] if backend_problem("triton", DEVICE) else ["triton"])
LOSSES = {"focal": dice_focal_loss, "ce": dice_ce_loss}
MODULES = {"focal": DiceFocalLoss, "ce": DiceCELoss}
MASKS = [None, "random", "first_share_empty"]
OPTIONS = [dict(batch_dice=False), dict(batch_dice=True)]
MORE_OPTIONS = [  # with the hardest mask, a share with no voxel in the region
    dict(batch_dice=True, activation="sigmoid"),
    dict(batch_dice=True, include_background=False, alpha=0.25),
    dict(batch_dice=True, smooth_nr=0.0, smooth_dr=0.0),
    dict(batch_dice=True, one_hot=True),
    dict(batch_dice=True, dtype=torch.bfloat16),
    dict(batch_dice=True, deep_supervision=True),
]
CASES = [(backend, term, mask, options) for backend, term, mask, options in
         [*itertools.product(BACKENDS, LOSSES, MASKS, OPTIONS),
          *itertools.product(BACKENDS, LOSSES, ["first_share_empty"], MORE_OPTIONS)]
         if not (term == "ce" and "alpha" in options) and not (backend == "reference" and "dtype" in options)]


def _inputs(seed: int, mask: str | None):
    """Logits (4, 3, 3, 5, 7), labels and a region of kind ``mask`` for the whole batch."""
    rng = np.random.default_rng(seed)
    logits = torch.from_numpy(rng.standard_normal((4, 3, 3, 5, 7)) * 2).float()
    labels = torch.from_numpy(rng.integers(0, 3, (4, 3, 5, 7)))
    if mask is None:
        return logits, labels, None
    region = torch.from_numpy(rng.random((4, 3, 5, 7)) < 0.5)
    if mask == "first_share_empty":
        region[:len(region) // PROCESSES] = False  # rank 0 has no voxel in the region
    return logits, labels, region


def _value_and_grad(backend, term, logits, labels, region, *, one_hot=False, dtype=None, deep_supervision=False,
                    **options):
    """The loss and its gradient; ``deep_supervision``: of [logits, logits at stride 2] with nnU-Net's weights."""
    dtype = dtype or (torch.float64 if backend == "reference" else torch.float32)
    device = "cpu" if backend == "reference" else DEVICE
    z = logits.to(device=device, dtype=dtype).requires_grad_()
    target = torch.nn.functional.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float() if one_hot else labels
    region = None if region is None else region.to(device)
    if deep_supervision:
        outputs = [z, z[..., ::2, ::2, ::2] * 0.5]
        loss = MODULES[term](weights=[0.7, 0.3], backend=backend, **options)(outputs, target.to(device), region)
    else:
        loss = LOSSES[term](z, target.to(device), region, backend=backend, **options)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach().double().cpu(), grad.double().cpu()


def _worker(rank: int, address: str, seed: int):
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=PROCESSES)
    try:
        for i, (backend, term, mask, options) in enumerate(CASES):
            logits, labels, region = _inputs(seed + i, mask)
            whole = _value_and_grad(backend, term, logits, labels, region, **options)
            share = slice(rank * 2, rank * 2 + 2)
            ours = _value_and_grad(backend, term, logits[share], labels[share],
                                   None if region is None else region[share], across_processes=True, **options)
            case = f"{backend} {term} mask={mask} {options}"
            values = VALUE_TOLERANCES[torch.float32]
            grads = GRAD_TOLERANCES[options.get("dtype", torch.float32)]
            assert values.violations(ours[0], whole[0]) == 0, (case, ours[0], whole[0])
            # DDP averages the gradients of the processes: each one's is PROCESSES x its share
            assert grads.violations(ours[1] / PROCESSES, whole[1][share]) == 0, case
    finally:
        dist.destroy_process_group()


def test_two_processes_get_the_whole_batch_loss_and_gradient(rng, tmp_path):
    # a file store: a free port found now could be taken by the time the processes bind it
    mp.spawn(_worker, args=(f"file://{tmp_path / 'store'}", int(rng.integers(2**31))), nprocs=PROCESSES)


def test_without_a_process_group_across_processes_changes_nothing(rng):
    """The option is safe to set in any run: one process computes exactly what it did without it."""
    logits, labels, region = _inputs(int(rng.integers(2**31)), "random")
    for backend, term in itertools.product(BACKENDS, LOSSES):
        plain = _value_and_grad(backend, term, logits, labels, region, batch_dice=True)
        across = _value_and_grad(backend, term, logits, labels, region, batch_dice=True, across_processes=True)
        torch.testing.assert_close(across, plain, rtol=0, atol=0)
