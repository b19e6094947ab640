"""Inference engine: sliding windows with Gaussian weighting agree with whole-volume application."""
import numpy as np
import pytest
import torch
from torch import nn

from c2w_fast.infer import gaussian_importance, resolve_checkpoint, sliding_window, window_starts


@pytest.mark.parametrize("size, patch, step", [(10, 10, 0.5), (9, 10, 0.5), (23, 8, 0.5), (23, 8, 1.0), (64, 16, 0.25)])
def test_windows_cover_the_axis_with_the_requested_overlap(size, patch, step):
    starts = window_starts(size, patch, step)
    assert starts[0] == 0 and starts[-1] == max(0, size - patch)
    assert all(0 < b - a <= patch * step for a, b in zip(starts, starts[1:]))


def test_gaussian_is_one_at_the_centre_and_positive(rng):
    w = gaussian_importance((5, 8, 9))
    assert w.shape == (5, 8, 9) and float(w.max()) == 1.0 and float(w.min()) > 0
    axis = w[2, 3:5, 4]  # symmetric about the centre of an even axis
    assert float(axis[0]) == float(axis[1])
    # sigma = size / 8 per axis: 10 voxels from the centre of an 81-voxel axis, exp(-(10 / 10.125)^2 / 2)
    big = gaussian_importance((1, 1, 81))
    assert float(big[0, 0, 40 + 10]) == pytest.approx(np.exp(-0.5 * (10 / (81 / 8)) ** 2), rel=1e-5)


class Pointwise(nn.Module):
    """A per-voxel model: the sliding-window result must equal applying it to the whole volume."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 3, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("gaussian", [True, False])
def test_sliding_window_equals_whole_volume_for_a_pointwise_model(gaussian, rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = Pointwise().eval()
    image = torch.randn(2, 11, 17, 20)
    with torch.no_grad():
        whole = model(image[None])[0]
    for patch in [(4, 8, 8), (11, 17, 20), (16, 8, 32)]:  # smaller, equal, partly larger (padded)
        torch.testing.assert_close(sliding_window(model, image, patch, step=0.5, gaussian=gaussian), whole,
                                   atol=1e-5, rtol=1e-5)


def test_one_window_is_the_model_output_and_deep_supervision_uses_the_first(rng):
    class DeepSupervised(nn.Module):
        def forward(self, x):
            return [x * 2, x[..., ::2, ::2, ::2]]

    image = torch.from_numpy(rng.normal(size=(1, 6, 8, 8)).astype(np.float32))
    torch.testing.assert_close(sliding_window(DeepSupervised(), image, (6, 8, 8)), image * 2)
    with pytest.raises(ValueError, match="image must be"):
        sliding_window(DeepSupervised(), image[0], (6, 8, 8))


def test_resolve_checkpoint_prefers_the_fold_then_final(tmp_path):
    for name in ("fold_1", "final"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint_best.pt").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path, "fold_1") == tmp_path / "fold_1" / "checkpoint_best.pt"
    assert resolve_checkpoint(tmp_path, "fold_3") == tmp_path / "final" / "checkpoint_best.pt"
    assert resolve_checkpoint(tmp_path / "final" / "checkpoint_best.pt") == tmp_path / "final" / "checkpoint_best.pt"
    with pytest.raises(FileNotFoundError, match="no such checkpoint file or run folder"):
        resolve_checkpoint(tmp_path / "nothing")
