"""The building blocks of every U-Net here, all made of :class:`c2w_fast.nn.FusedConvNormAct`.

* :class:`ConvStack` — ``n`` conv → norm → LeakyReLU blocks, the first one strided
  (plain U-Net stages and every decoder stage);
* :class:`ResidualBlock` — nnU-Net ResEnc's ``BasicBlockD``: two convs, the second
  without activation, plus a shortcut (average pooling for the stride, 1×1×1 conv + norm
  for the channels), then LeakyReLU (MBAS);
* :class:`ResNeXtBlock` — ResNeXt bottleneck: 1×1×1 (carries the stride) → grouped
  3×3×3 → 1×1×1 without activation, plus a projection shortcut, then LeakyReLU (C2W).
  The grouped conv always runs at stride 1 on the stage's output shape.

Every residual addition goes through the fused block's ``residual=`` argument (added
after the norm, before the activation), so a backend that fuses the block fuses it too.
Dropout, where configured, is channel dropout (``Dropout3d``) on a block's output: the
fused block has no slot between convolution and norm where nnU-Net puts it.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from c2w_fast.nn import FusedConvNormAct


def _dropout(p: float) -> nn.Module:
    return nn.Dropout3d(p) if p > 0 else nn.Identity()


class ConvStack(nn.Module):
    """``n`` FusedConvNormAct (kernel ``kernel``); the first maps ``cin`` → ``cout`` with ``stride``."""

    def __init__(self, cin: int, cout: int, n: int, kernel, stride=1, *, dropout: float = 0.0):
        super().__init__()
        self.convs = nn.ModuleList(FusedConvNormAct(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1)
                                   for i in range(n))
        self.dropout = _dropout(dropout)

    def forward(self, x):
        for conv in self.convs:
            x = self.dropout(conv(x))
        return x


class _Shortcut(nn.Module):
    """Identity, or average pooling by ``stride`` and/or a 1×1×1 conv + norm to ``cout`` channels."""

    def __init__(self, cin: int, cout: int, stride, *, pool: bool):
        super().__init__()
        stride = tuple(stride) if not isinstance(stride, int) else (stride,) * 3
        strided = any(s != 1 for s in stride)
        # nnU-Net's BasicBlockD pools then projects; ResNeXt's projection carries the stride.
        self.pool_stride = stride if strided and pool else None
        project_stride = 1 if pool else stride
        self.project = (FusedConvNormAct(cin, cout, 1, project_stride, activation=False)
                        if cin != cout or (strided and not pool) else None)

    def forward(self, x):
        if self.pool_stride is not None:
            # an axis shorter than its stride pools what it has, giving the conv path's one output voxel
            kernel = tuple(min(s, n) for s, n in zip(self.pool_stride, x.shape[2:]))
            x = F.avg_pool3d(x, kernel, self.pool_stride, ceil_mode=True)
        return x if self.project is None else self.project(x)


class ResidualBlock(nn.Module):
    """nnU-Net ResEnc ``BasicBlockD``: conv(k, stride) → conv(k, no act) + shortcut → LeakyReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, *, dropout: float = 0.0):
        super().__init__()
        self.conv1 = FusedConvNormAct(cin, cout, kernel, stride)
        self.conv2 = FusedConvNormAct(cout, cout, kernel, 1)
        self.shortcut = _Shortcut(cin, cout, stride, pool=True)
        self.dropout = _dropout(dropout)

    def forward(self, x):
        return self.dropout(self.conv2(self.conv1(x), residual=self.shortcut(x)))


class ResNeXtBlock(nn.Module):
    """ResNeXt bottleneck of width ``cout``: 1×1×1 (stride) → 3×3×3 with ``groups`` → 1×1×1 + shortcut."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, *, groups: int, dropout: float = 0.0):
        super().__init__()
        if cout % groups:
            raise ValueError(f"ResNeXt width {cout} is not divisible by groups={groups}")
        self.reduce = FusedConvNormAct(cin, cout, 1, stride)
        self.grouped = FusedConvNormAct(cout, cout, kernel, 1, groups)
        self.expand = FusedConvNormAct(cout, cout, 1, 1)
        self.shortcut = _Shortcut(cin, cout, stride, pool=False)
        self.dropout = _dropout(dropout)

    def forward(self, x):
        return self.dropout(self.expand(self.grouped(self.reduce(x)), residual=self.shortcut(x)))
