"""Public operations of c2w_fast, each with a reference implementation and fast backends.

Every op takes ``backend="auto" | "reference" | "cpu" | "triton" | "cuda"``; see
:mod:`c2w_fast.ops._dispatch` for the contract. Inputs may be numpy arrays, torch tensors
(CPU or CUDA) or cupy arrays; axis order is always (z, y, x) and spacing is in mm.
"""
from c2w_fast.ops._dispatch import (
    BACKEND_CHOICES,
    BackendFallbackWarning,
    BackendUnavailableError,
    backend_problem,
)
from c2w_fast.ops.bounding_box import bounding_box
from c2w_fast.ops.components import keep_largest_component, label_components, remove_small_components
from c2w_fast.ops.conv_norm_act import conv_norm_act
from c2w_fast.ops.distance_transform import distance_transform, signed_distance
from c2w_fast.ops.losses import dice_ce_loss, dice_focal_loss
from c2w_fast.ops.morphology import ball, binary_dilation, binary_erosion
from c2w_fast.ops.surface import SurfaceDistances, SurfaceSummary, surface_distances, surface_summary

__all__ = [
    "BACKEND_CHOICES",
    "BackendFallbackWarning",
    "BackendUnavailableError",
    "backend_problem",
    "bounding_box",
    "conv_norm_act",
    "dice_ce_loss",
    "dice_focal_loss",
    "distance_transform",
    "signed_distance",
    "label_components",
    "keep_largest_component",
    "remove_small_components",
    "ball",
    "binary_dilation",
    "binary_erosion",
    "SurfaceDistances",
    "SurfaceSummary",
    "surface_distances",
    "surface_summary",
]
