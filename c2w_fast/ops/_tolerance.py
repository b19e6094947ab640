"""Per-dtype error bounds of the fast backends, shared by the ops' tolerance tables, their tests and docs."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """Allowed error of a fast backend: ``|ours - ref| <= atol * max|ref| + rtol * |ref|`` elementwise."""

    rtol: float
    atol: float

    def violations(self, actual: torch.Tensor, reference: torch.Tensor) -> int:
        """How many elements of ``actual`` lie outside the bound around ``reference`` (compared in float64)."""
        actual, reference = actual.detach().double().cpu(), reference.detach().double().cpu()
        bound = self.atol * reference.abs().max() + self.rtol * reference.abs()
        return int(((actual - reference).abs() > bound).sum()) + int(actual.isnan().ne(reference.isnan()).sum())
