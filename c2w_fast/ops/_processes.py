"""Statistics gathered over the processes of a DDP run, so that a batch-level loss sees the whole batch.

Under DDP each process holds a share of the global batch and DDP averages the gradients.
A loss made of per-sample terms is then exact, but a Dice summed over the batch, or a mean
over the voxels of a region mask whose size differs between shares, is not. The losses
therefore gather their small per-sample sums from every process (:func:`gather_rows`) and
evaluate the loss of the whole batch on each. The gradient each process gets is
``world_size`` times its share of the whole batch's, so that DDP's average is exactly the
whole batch's gradient (nnU-Net gathers its batch Dice sums the same way).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def process_count() -> int:
    """Processes of the default group, 1 when torch.distributed is not initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather(rows: torch.Tensor) -> torch.Tensor:
    shares = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(shares, rows)
    return torch.cat(shares)


def own_rows(gathered: torch.Tensor, share: int) -> torch.Tensor:
    """This process's ``share`` rows of a tensor laid out as :func:`gather_rows` returns."""
    start = dist.get_rank() * share if process_count() > 1 else 0
    return gathered[start:start + share]


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows):
        ctx.share = rows.shape[0]
        return _gather(rows.contiguous())

    @staticmethod
    def backward(ctx, grad):
        # every process evaluates the same loss of the same gathered rows, so the gradient of this
        # process's rows summed over the processes is world_size times its own: no collective needed
        return own_rows(grad, ctx.share) * dist.get_world_size()


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` (n, ...) of every process stacked along dim 0 in rank order; differentiable.

    Every process must call it with the same shape and evaluate the same function of the
    result (the gradient it returns is ``world_size`` times this process's share, the sum over
    processes of identical losses); without an initialised process group (or with one
    process) it returns ``rows`` unchanged.
    """
    if process_count() == 1:
        return rows
    return _GatherRows.apply(rows)
