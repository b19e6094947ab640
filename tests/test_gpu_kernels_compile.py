"""The GPU-metric Triton kernels, in every specialisation the ops launch, compile for sm_80/86/89/90.

Under the interpreter these kernels run as Python, which never checks that they are valid for
the GPU compiler. This test runs the ops with ``backend="triton"`` on small CPU tensors while
recording each distinct launch (``tests/triton_launches.py``), then compiles exactly those
specialisations to cubins in a process without the interpreter (``tests/compile_kernels.py
--launches``). These kernels use the same tiles on a GPU as in the interpreter, so the recorded
specialisations are the ones a GPU runs.
"""
import json

import pytest
import torch

from c2w_fast import metrics
from c2w_fast.ops import (
    binary_dilation,
    binary_erosion,
    bounding_box,
    distance_transform,
    keep_largest_component,
    label_components,
    remove_small_components,
    signed_distance,
)
from c2w_fast.ops._dispatch import triton_interpreter_enabled

from triton_installs import INSTALLS, assert_every_variant_compiles, compile_env
from triton_launches import record_launches

KERNEL_MODULES = tuple(f"c2w_fast.kernels.{name}" for name in ("edt", "surface", "components", "morphology",
                                                                 "bounding_box"))
KERNELS = {  # every kernel of those modules: the exercise below must launch each one
    "_pass_x_kernel", "_search_kernel", "_envelope_kernel", "_codes_kernel", "_moments_kernel", "_histogram_kernel",
    "_runs_kernel", "_merge_kernel", "_flatten_kernel", "_reach_kernel", "_combine_kernel", "_bounding_box_kernel",
}


def exercise_every_kernel(rng) -> None:
    """Each op and option that selects a different kernel or specialisation, on small masks.

    (3, 9, 70) and (2, 70, 11) make the distance transform use its lower-envelope pass (axes
    longer than 64); (40, 6) is the 2D path.
    """
    for shape in [(3, 9, 70), (2, 70, 11), (40, 6)]:
        a = torch.from_numpy(rng.random(shape) < 0.3)
        b = torch.from_numpy(rng.random(shape) < 0.3)
        spacing = (2.5, 0.7, 0.6)[-len(shape):]
        distance_transform(a, spacing, backend="triton")
        signed_distance(a, spacing, backend="triton")
        for convention in ("surfel", "voxel"):
            for rule in ("max", "pooled"):
                metrics.evaluate(a, b, spacing, convention=convention, percentile_rule=rule, backend="triton")
        for connectivity in ((6, 18, 26) if len(shape) == 3 else (4, 8)):
            label_components(a, connectivity, backend="triton")
            keep_largest_component(a, connectivity, backend="triton")
            remove_small_components(a, 3, connectivity, backend="triton")
        binary_dilation(a, 2, backend="triton")
        binary_erosion(a, 1.5, spacing=spacing, backend="triton")
        bounding_box(a, backend="triton")
    metrics.evaluate_batch(torch.stack([a, a]), torch.stack([b, torch.zeros_like(b)]), spacing, backend="triton")


@pytest.mark.slow
@pytest.mark.timeout(2400)  # took 192 s on a loaded CI machine: room for one 4x slower, the compile run's 1800 s too
@pytest.mark.skipif(not triton_interpreter_enabled(), reason="records interpreted launches; on a GPU the kernels run")
@pytest.mark.parametrize("install", INSTALLS)
def test_every_recorded_gpu_metric_kernel_compiles_for_sm80_86_89_90(tmp_path, rng, install):
    env = compile_env(install)  # skips before the recording when that Triton is not installed
    with record_launches(KERNEL_MODULES) as launches:
        exercise_every_kernel(rng)
    assert {launch["name"] for launch in launches} == KERNELS
    path = tmp_path / "launches.json"
    path.write_text(json.dumps(launches))
    assert_every_variant_compiles(env, "--launches", str(path), timeout=1800)
