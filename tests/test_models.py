"""Models: the seeds' architectures from one builder, checked against the papers' own numbers."""
import math

import pytest
import torch
from torch import nn

from c2w_fast.models import ARCHITECTURES, build_model, build_spec, count_parameters
from c2w_fast.models.__main__ import main as summary_main
from c2w_fast.nn import FusedConvNormAct

# issue 6's benchmarked stage shapes of the C2W network for a 44x256x256 ROI: (C, D, H, W), groups
C2W_STAGES = [((64, 44, 128, 128), 16), ((128, 22, 64, 64), 32), ((256, 11, 32, 32), 32), ((512, 11, 16, 16), 32)]


def _grouped_conv_shapes(model, x):
    """(output shape without batch, groups) of every grouped 3x3x3 conv in a forward pass."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((tuple(o.shape[1:]), m.conv.groups)))
             for m in model.modules() if isinstance(m, FusedConvNormAct) and m.conv.groups > 1]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_c2w_network_has_the_papers_stages_and_issue6_shapes():
    with torch.device("meta"):
        model = build_model("c2w_resnext", 1, 2, init="torch")
    assert model.spec.features == (32, 64, 128, 256, 512, 512, 512)
    assert all(k == (3, 3, 3) for k in model.spec.kernels)
    shapes = _grouped_conv_shapes(model, torch.empty(4, 1, 44, 256, 256, device="meta"))
    for shape, groups in C2W_STAGES:
        assert (shape, groups) in shapes
    # four channels per group everywhere (ResNeXt cardinality min(32, width / 4))
    assert all(shape[0] // groups == 4 or groups == 32 for shape, groups in shapes)


@pytest.mark.parametrize("name, features, classes, paper_millions", [
    ("mbas_stage2", None, 4, 140.0),                          # Table 19/23: ResEnc stage 2, 140M
    ("mbas_stage1", None, 2, 11.3),                           # Table 12: feature dim 96 -> 11.3M
    ("mbas_stage1", (32, 64, 128, 128, 128, 128), 2, 23.1),   # Table 12: feature dim 128 (A.6's list)
    ("mbas_stage1", (32, 64, 128, 256, 320, 320), 2, 102.0),  # Tables 8/12: 320 features -> 102M
])
def test_mbas_parameter_counts_match_the_paper(name, features, classes, paper_millions):
    """The tables are partly elided; completed with nnU-Net's ResEnc conventions the networks
    have the parameter counts the paper reports (to its 3 significant digits)."""
    overrides = {} if features is None else {"features": features}
    with torch.device("meta"):
        model = build_model(name, 1, classes, deep_supervision=True, init="torch", **overrides)
    assert count_parameters(model) / 1e6 == pytest.approx(paper_millions, rel=0.006)


def test_table28_reading_with_eight_features_would_not_match():
    """Table 28 lists 8 feature sizes for 7 stages; its first 7 give far fewer than 140M parameters."""
    with torch.device("meta"):
        model = build_model("mbas_stage2", 1, 4, features=(32, 32, 64, 128, 256, 320, 320), init="torch")
    assert count_parameters(model) < 0.8 * 140e6


@pytest.mark.parametrize("block", ["conv", "residual", "resnext"])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_forward_backward_on_odd_sizes_with_every_block(block, deep_supervision, rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = build_model("c2w_resnext", 2, 3, deep_supervision=deep_supervision, block=block,
                        features=(4, 8, 8), strides=(1, (1, 2, 2), 2), kernels=((1, 3, 3), 3, 3),
                        blocks_per_stage=(1, 2, 1), decoder_convs=(1, 2), groups=(1, 2, 4))
    x = torch.randn(2, 2, 5, 11, 9, requires_grad=True)
    out = model(x)
    outs = out if deep_supervision else [out]
    assert [tuple(o.shape) for o in outs][0] == (2, 3, 5, 11, 9)
    if deep_supervision:
        assert tuple(outs[1].shape) == (2, 3, 5, 6, 5)
    sum(o.sum() for o in outs).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_residual_block_equals_unfused_definition(rng):
    """BasicBlockD: act(norm(conv2(act(norm(conv1(x))))) + norm(conv1x1(avgpool(x))))."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    from c2w_fast.models.blocks import ResidualBlock

    block = ResidualBlock(3, 5, 3, (1, 2, 2))
    for p in block.parameters():
        nn.init.normal_(p, 0.5, 0.3)
    x = torch.randn(2, 3, 4, 8, 8, dtype=torch.float64)
    block = block.double()

    def cna(m, t, act=True):
        y = nn.functional.instance_norm(nn.functional.conv3d(t, m.conv.weight, None, m.conv.stride, m.conv.padding),
                                        weight=m.norm.weight, bias=m.norm.bias, eps=1e-5)
        return nn.functional.leaky_relu(y, 0.01) if act else y

    skip = cna(block.shortcut.project, nn.functional.avg_pool3d(x, (1, 2, 2), (1, 2, 2), ceil_mode=True), act=False)
    expected = nn.functional.leaky_relu(cna(block.conv2, cna(block.conv1, x), act=False) + skip, 0.01)
    torch.testing.assert_close(block(x), expected)


def test_every_block_takes_a_strided_axis_of_one_voxel():
    """Stride 2 over a single voxel gives one output voxel; the residual shortcut pools what it has."""
    from c2w_fast.models.blocks import ResidualBlock, ResNeXtBlock

    x = torch.randn(1, 4, 1, 5, 5)
    for block in (ResidualBlock(4, 8, 3, 2), ResNeXtBlock(4, 8, 3, 2, groups=4)):
        assert tuple(block(x).shape) == (1, 8, 1, 3, 3), type(block).__name__


def test_spec_errors_name_the_field():
    with pytest.raises(ValueError, match="strides needs one entry per stage"):
        build_spec("c2w_resnext", strides=(1, 2))
    with pytest.raises(ValueError, match="unknown architecture fields"):
        build_spec("c2w_resnext", width=3)
    with pytest.raises(ValueError, match="model architecture must be one of"):
        build_spec("vnet")
    with pytest.raises(ValueError, match=r"kernels must be 1 or 3 and strides 1 or 2 .* strides \(\(1, 1, 1\), \(3, 3, 3\)"):
        build_spec("mbas_stage1", features=(8, 16), strides=(1, 3), kernels=(3, 3), blocks_per_stage=(1, 1),
                   decoder_convs=(1,))
    with pytest.raises(ValueError, match=r"kernels must be 1 or 3 .*got kernels \(\(5, 5, 5\)"):
        build_spec("mbas_stage1", features=(8, 16), strides=(1, 2), kernels=(5, 3), blocks_per_stage=(1, 1),
                   decoder_convs=(1,))
    with pytest.raises(ValueError, match=r"groups\[1\] = 4 does not divide features\[1\] = 6 \(the width of the "
                                         "stage's ResNeXt blocks\)"):
        build_model("c2w_resnext", features=(4, 6, 8), strides=(1, 2, 2), kernels=(3, 3, 3),
                    blocks_per_stage=(0, 1, 1), decoder_convs=(1, 1), groups=(1, 4, 4))


@pytest.mark.parametrize("arguments, message", [
    (["--classes", "0"], "--classes counts the background too, so it must be >= 2, got 0"),
    (["--classes", "1"], "--classes counts the background too, so it must be >= 2, got 1"),
    (["--input", "0", "1", "44", "256", "256"], "--input sizes must be >= 1, got 0 1 44 256 256"),
])
def test_summary_cli_refuses_impossible_sizes(arguments, message, capsys):
    """A usage error (exit 2) naming the option, not a traceback or a silent default."""
    with pytest.raises(SystemExit) as exit_info:
        summary_main(["--summary", "c2w_resnext", *arguments])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("name, preset_input", [
    ("c2w_resnext", (4, 1, 44, 256, 256)), ("unet_localizer", (4, 1, 32, 160, 160)),
    ("mbas_stage1", (2, 1, 28, 256, 224)), ("mbas_stage2", (2, 1, 20, 256, 256))])
def test_summary_cli_defaults_to_the_input_its_preset_trains_on(name, preset_input, capsys):
    """The default input is the batch and patch (or ROI) of the preset that trains the architecture."""
    summary_main(["--summary", name])
    assert capsys.readouterr().out.splitlines()[0].endswith(f"input {preset_input}")


def test_summary_cli_prints_every_preset(capsys):
    assert sorted(ARCHITECTURES) == ["c2w_resnext", "mbas_stage1", "mbas_stage2", "unet_localizer"]
    for name in ARCHITECTURES:
        summary_main(["--summary", name])
        out = capsys.readouterr().out
        total = int(out.strip().splitlines()[-1].split()[-1].replace(",", ""))
        classes = 4 if name == "mbas_stage2" else 2  # background, wall, RA, LA
        with torch.device("meta"):
            assert total == count_parameters(build_model(name, 1, classes, init="torch"))


# --- from the mutation audit of the models: stage tables, parameter counts, unfused definitions ------------

# the stage tables of docs/models.md (C2W §2.2 and its inferences, MBAS Tables 27/28 as completed there, and
# the plain localiser): block, features, strides, kernels, blocks per stage, decoder convs, groups, stem, dropout
S, Z = (1, 2, 2), (1, 3, 3)  # in-plane stride; in-plane kernel
DOCUMENTED = {
    "c2w_resnext": ("resnext", (32, 64, 128, 256, 512, 512, 512), (1, S, 2, 2, S, S, S), (3,) * 7,
                    (0, 1, 1, 1, 1, 1, 1), (1,) * 6, (8, 16, 32, 32, 32, 32, 32), True, 0.0),
    "mbas_stage1": ("residual", (32, 32, 64, 96, 96, 96), (1, S, 2, 2, S, S), (Z,) + (3,) * 5,
                    (1, 3, 4, 6, 6, 6), (1,) * 5, (), True, 0.5),
    "mbas_stage2": ("residual", (32, 64, 128, 256, 320, 320, 320), (1, S, S, 2, 2, S, S), (Z, Z) + (3,) * 5,
                    (1, 3, 4, 6, 6, 6, 6), (1,) * 6, (), True, 0.0),
    "unet_localizer": ("conv", (16, 32, 64, 128, 256), (1, 2, 2, 2, 2), (3,) * 5, (2,) * 5, (2,) * 4, (), False,
                       0.0),
}


def _triple(v):
    return (v,) * 3 if isinstance(v, int) else tuple(v)


def _expected_parameters(spec, in_channels, classes, deep_supervision):
    """Parameters of the documented U-Net counted layer by layer: a fused block is a bias-free conv
    (cout * cin / groups * kernel volume) and an affine norm (2 * cout); the decoder's transposed conv
    has kernel = stride and a bias; a 1x1x1 head with bias per decoder level with deep supervision."""
    def cna(cin, cout, kernel=1, groups=1):
        return cout * cin // groups * math.prod(_triple(kernel)) + 2 * cout

    f, n = spec.features, len(spec.features)
    total, cin = (cna(in_channels, f[0], spec.kernels[0]), f[0]) if spec.stem else (0, in_channels)
    for s in range(n):
        k, strided = spec.kernels[s], _triple(spec.strides[s]) != (1, 1, 1)
        for i in range(spec.blocks_per_stage[s]):
            c = cin if i == 0 else f[s]
            if spec.block == "conv":
                total += cna(c, f[s], k)
            elif spec.block == "residual":  # conv, conv, pooled 1x1x1 projection where the width changes
                total += cna(c, f[s], k) + cna(f[s], f[s], k) + (cna(c, f[s]) if c != f[s] else 0)
            else:  # 1x1x1, grouped, 1x1x1, projection where the width changes or the block is strided
                total += cna(c, f[s]) + cna(f[s], f[s], k, spec.groups[s]) + cna(f[s], f[s])
                total += cna(c, f[s]) if c != f[s] or (i == 0 and strided) else 0
        cin = f[s]
    for s in range(n - 1):
        total += f[s + 1] * f[s] * math.prod(_triple(spec.strides[s + 1])) + f[s]
        k = spec.kernels[s]
        total += cna(2 * f[s], f[s], k) + (spec.decoder_convs[s] - 1) * cna(f[s], f[s], k)
    return total + sum(f[s] * classes + classes for s in range(n - 1 if deep_supervision else 1))


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_presets_are_the_documented_stage_tables_with_their_parameter_counts(name):
    block, features, strides, kernels, blocks, decoder, groups, stem, dropout = DOCUMENTED[name]
    spec = build_spec(name)
    assert (spec.block, spec.features, spec.strides, spec.kernels, spec.blocks_per_stage, spec.decoder_convs,
            spec.stem, spec.dropout) == (block, features, tuple(map(_triple, strides)), tuple(map(_triple, kernels)),
                                         blocks, decoder, stem, dropout)
    assert spec.groups == (groups or (1,) * len(features))
    classes = 4 if name == "mbas_stage2" else 2
    for deep_supervision in (False, True):
        with torch.device("meta"):
            model = build_model(name, 1, classes, deep_supervision=deep_supervision, init="torch")
        assert count_parameters(model) == _expected_parameters(spec, 1, classes, deep_supervision)
    if name == "c2w_resnext":  # docs/models.md: "39.0 M parameters with a 2-class head"
        assert round(count_parameters(model) / 1e6, 1) == 39.0


@pytest.mark.parametrize("block", ["conv", "residual", "resnext"])
def test_parameter_counts_of_a_spec_with_every_field_different_per_stage(block):
    """Kernels, strides, decoder convs and groups that differ per stage: each is read at its own stage."""
    overrides = dict(block=block, features=(4, 8, 12, 16), strides=(1, (1, 2, 2), 2, (2, 1, 2)),
                     kernels=((1, 3, 3), 3, (3, 1, 3), 1), blocks_per_stage=(1, 2, 1, 3), decoder_convs=(3, 1, 2),
                     groups=(1, 2, 4, 8))
    spec = build_spec("c2w_resnext", **overrides)
    model = build_model("c2w_resnext", 3, 5, deep_supervision=True, **overrides)
    assert count_parameters(model) == _expected_parameters(spec, 3, 5, True)
    assert [len(stage.convs.convs) for stage in model.decoder] == [2, 1, 3]  # deepest decoder stage first


def test_mbas_stage1_drops_whole_channels_after_every_residual_block():
    """Table 27's dropout 0.5: channel dropout (Dropout3d) on each encoder block's output, nowhere else."""
    with torch.device("meta"):
        model = build_model("mbas_stage1", 1, 2, init="torch")
    dropouts = [m for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout3d))]
    assert len(dropouts) == sum(DOCUMENTED["mbas_stage1"][4])
    assert all(type(m) is nn.Dropout3d and m.p == 0.5 for m in dropouts)
    for name in ("mbas_stage2", "c2w_resnext", "unet_localizer"):
        with torch.device("meta"):
            model = build_model(name, 1, 2, init="torch")
        assert not any(isinstance(m, (nn.Dropout, nn.Dropout3d)) for m in model.modules())


def test_resnext_block_equals_unfused_definition(rng):
    """act(norm(1x1(act(norm(grouped 3x3x3(act(norm(strided 1x1(x))))))))) + norm(strided 1x1 projection(x)))."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    from c2w_fast.models.blocks import ResNeXtBlock

    block = ResNeXtBlock(4, 8, 3, (1, 2, 2), groups=4)
    for p in block.parameters():
        nn.init.normal_(p, 0.5, 0.3)
    block = block.double()
    x = torch.randn(2, 4, 4, 8, 7, dtype=torch.float64)

    def cna(m, t, stride=1, groups=1, act=True):
        y = nn.functional.conv3d(t, m.conv.weight, None, stride, m.conv.padding, groups=groups)
        y = nn.functional.instance_norm(y, weight=m.norm.weight, bias=m.norm.bias, eps=1e-5)
        return nn.functional.leaky_relu(y, 0.01) if act else y

    branch = cna(block.grouped, cna(block.reduce, x, (1, 2, 2)), groups=4)
    skip = cna(block.shortcut.project, x, (1, 2, 2), act=False)
    expected = nn.functional.leaky_relu(cna(block.expand, branch, act=False) + skip, 0.01)
    torch.testing.assert_close(block(x), expected)
    assert block.grouped.conv.stride == (1, 1, 1)  # the grouped conv runs on the stage's output shape


def test_unet_equals_unfused_definition_with_deep_supervision(rng):
    """Stem, conv stages, decoder (transposed conv, crop to the skip, concat [upsampled, skip], convs) and
    heads, written out with torch.nn.functional on odd sizes, outputs highest resolution first."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = build_model("unet_localizer", 2, 3, deep_supervision=True, features=(3, 4, 5),
                        strides=(1, 2, (1, 2, 2)), kernels=(3, (1, 3, 3), 3), blocks_per_stage=(1, 2, 1),
                        decoder_convs=(1, 2), stem=True)
    for p in model.parameters():
        nn.init.normal_(p, 0.2, 0.5)
    model = model.double()
    x = torch.randn(1, 2, 5, 7, 9, dtype=torch.float64)

    def stack(convs, t):
        for m in convs:
            t = nn.functional.instance_norm(nn.functional.conv3d(t, m.conv.weight, None, m.conv.stride,
                                                                 m.conv.padding),
                                            weight=m.norm.weight, bias=m.norm.bias, eps=1e-5)
            t = nn.functional.leaky_relu(t, 0.01)
        return t

    y = stack(model.encoder.stem.convs, x)
    skips = []
    for stage in model.encoder.stages:
        for block in stage:
            y = stack(block.convs, y)
        skips.append(y)
    outputs = []
    for stage, skip in zip(model.decoder, skips[-2::-1]):
        up = nn.functional.conv_transpose3d(y, stage.up.weight, stage.up.bias, stage.up.stride)
        up = up[..., : skip.shape[2], : skip.shape[3], : skip.shape[4]]
        y = stack(stage.convs.convs, torch.cat([up, skip], 1))
        outputs.append(y)
    expected = [nn.functional.conv3d(y, head.weight, head.bias) for y, head in zip(outputs[::-1], model.heads)]
    got = model(x)
    assert [tuple(o.shape) for o in got] == [(1, 3, 5, 7, 9), (1, 3, 3, 4, 5)]
    for out, ref in zip(got, expected):
        torch.testing.assert_close(out, ref)


def test_conv_stack_strides_only_its_first_conv():
    from c2w_fast.models.blocks import ConvStack

    stack = ConvStack(2, 4, 3, 3, stride=2)
    assert [m.conv.stride for m in stack.convs] == [(2, 2, 2), (1, 1, 1), (1, 1, 1)]
    assert tuple(stack(torch.randn(1, 2, 5, 6, 7)).shape) == (1, 4, 3, 3, 4)


@pytest.mark.parametrize("overrides, message", [
    (dict(features=(8,), strides=(1,), kernels=(3,), blocks_per_stage=(1,), decoder_convs=(), groups=(1,)),
     "features needs at least 2 positive entries"),
    (dict(strides=(1, (1, 0, 2), 2)), r"strides entries must be an int or 3 positive ints .*got \(1, 0, 2\)"),
    (dict(blocks_per_stage=(-1, 1, 1)), "blocks_per_stage needs 3 entries"),
    (dict(blocks_per_stage=(1, 0, 1)), "blocks_per_stage needs 3 entries"),
    (dict(blocks_per_stage=(0, 1, 1), stem=False), "stage 0 has no blocks, so the spec needs a stem"),
    (dict(decoder_convs=(1, 0)), r"decoder_convs needs 2 entries >= 1"),
    (dict(decoder_convs=(1, 1, 1)), r"decoder_convs needs 2 entries >= 1"),
    (dict(groups=(1, 2, 4, 4)), r"groups needs one positive entry per stage \(3\)"),
    (dict(groups=(1, 2)), r"groups needs one positive entry per stage \(3\)"),
    (dict(groups=(1, 0, 4)), r"groups needs one positive entry per stage \(3\), got \(1, 0, 4\)"),
    (dict(features=(4, 8, 8.5)), r"features entries must be integers, got 8.5"),
    (dict(features=(4, True, 8)), r"features entries must be integers, got True"),
    (dict(strides=(1, 2.5, 2)), r"strides entries must be integers, got 2.5"),
    (dict(kernels=(3, 3, [3, 3, 2.5])), r"kernels entries must be integers, got 2.5"),
    (dict(blocks_per_stage=(1, 1.0, 1)), r"blocks_per_stage entries must be integers, got 1.0"),
    (dict(groups=(1, 2, 4.0)), r"groups entries must be integers, got 4.0"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
])
def test_every_spec_check_names_its_field(overrides, message):
    small = dict(features=(4, 8, 8), strides=(1, 2, 2), kernels=(3, 3, 3), blocks_per_stage=(1, 1, 1),
                 decoder_convs=(1, 1), groups=(1, 2, 4))
    with pytest.raises(ValueError, match=message):
        build_spec("c2w_resnext", **{**small, **overrides})


def test_an_input_too_small_for_the_strides_is_refused_before_any_network_runs():
    """Instance norm needs more than one voxel per channel: a patch that the strided stages bring down to one
    voxel is named with the stage, while one voxel more along an axis is enough (sizes round up)."""
    spec = build_spec("c2w_resnext", features=(4, 8, 8), strides=(1, 2, (1, 2, 2)), kernels=(3, 3, 3),
                      blocks_per_stage=(1, 1, 1), decoder_convs=(1, 1), groups=(1, 2, 4))
    with pytest.raises(ValueError, match=r"a \(2, 4, 4\) input leaves encoder stage 2 with \(1, 1, 1\) voxels"):
        spec.check_input((2, 4, 4))
    spec.check_input((2, 4, 5))  # 5 → 3 → 2 along x
    spec.check_input((3, 3, 3))  # 3 → 2 → 1 along y and x, 3 → 2 along z
    model = build_model("c2w_resnext", features=(4, 8, 8), strides=(1, 2, (1, 2, 2)), kernels=(3, 3, 3),
                        blocks_per_stage=(1, 1, 1), decoder_convs=(1, 1), groups=(1, 2, 4))
    assert model(torch.randn(1, 1, 2, 4, 5)).shape == (1, 2, 2, 4, 5)  # the smallest accepted runs
    with pytest.raises(ValueError, match="instance norm"):
        model(torch.randn(1, 1, 2, 4, 4))  # and the refused one would have failed in the network


def test_build_model_refuses_bad_channels_classes_and_init():
    with pytest.raises(ValueError, match="need in_channels >= 1 and num_classes >= 2, got 1 and 1"):
        build_model("unet_localizer", 1, 1)
    with pytest.raises(ValueError, match="need in_channels >= 1 and num_classes >= 2, got 0 and 2"):
        build_model("unet_localizer", 0, 2)
    with pytest.raises(ValueError, match=r"init must be one of \('kaiming_normal', 'torch'\), got 'xavier'"):
        build_model("unet_localizer", 1, 2, init="xavier")


def _convs(model):
    return [m for m in model.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]


def test_kaiming_init_zeroes_every_bias_and_torch_init_keeps_pytorchs():
    """nnU-Net's InitWeights_He: Kaiming-normal weights, zero biases in every conv, transposed conv and head;
    ``init="torch"`` leaves PyTorch's own (uniform, non-zero biases)."""
    torch.manual_seed(0)
    kaiming = build_model("unet_localizer", 1, 2, deep_supervision=True)
    biased = [m for m in _convs(kaiming) if m.bias is not None]
    assert {type(m) for m in biased} == {nn.Conv3d, nn.ConvTranspose3d}  # heads and upsampling
    assert all(not m.bias.any() for m in biased)
    # Kaiming normal, fan_in mode: std = gain / sqrt(fan_in); the 256 -> 128 transposed conv (fan_in = 128 * 8)
    # has 262144 weights, so the sample std is within 1 % of it
    up = kaiming.decoder[0].up
    expected = nn.init.calculate_gain("leaky_relu", 1e-2) / math.sqrt(up.weight.shape[1] * 8)
    assert up.weight.std().item() == pytest.approx(expected, rel=0.01)
    default = build_model("unet_localizer", 1, 2, deep_supervision=True, init="torch")
    assert all(m.bias.any() for m in _convs(default) if m.bias is not None)


def test_reset_heads_draws_new_head_weights():
    """The C2W wall stage starts from the cavity run with a new head: every head is re-drawn."""
    model = build_model("unet_localizer", 1, 2, deep_supervision=True)
    with torch.no_grad():
        for head in model.heads:
            head.weight.zero_()
            head.bias.zero_()
    model.reset_heads()
    assert all(head.weight.any() and head.bias.any() for head in model.heads)


def test_summary_rows_add_up_to_the_total_with_each_stage_where_it_is(capsys):
    """Stem, encoder and decoder rows (decoder.s at encoder stage s's resolution) plus heads sum to the total;
    --input's channels reach the stem; mbas_stage1's default input is its 28 x 256 x 224 patch."""
    summary_main(["--summary", "c2w_resnext", "--input", "1", "2", "12", "32", "32", "--classes", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line.split()[0]: line for line in lines[2:]}
    params = {name: int(line.split()[-1].replace(",", "")) for name, line in rows.items()}
    with torch.device("meta"):
        model = build_model("c2w_resnext", 2, 3, init="torch")
    assert params["total"] == count_parameters(model)
    assert sum(v for k, v in params.items() if k != "total") == params["total"]
    assert params["stem"] == count_parameters(model.encoder.stem)
    assert "(1, 32, 12, 32, 32)" in rows["stem"] and "(1, 32, 12, 32, 32)" in rows["decoder.0"]
    assert "(1, 64, 12, 16, 16)" in rows["encoder.1"] and "(1, 64, 12, 16, 16)" in rows["decoder.1"]
    summary_main(["--summary", "mbas_stage1"])
    assert "input (2, 1, 28, 256, 224)" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize("block", ["conv", "residual", "resnext"])
def test_a_dropout_override_drops_channels_after_every_encoder_block(block):
    model = build_model("c2w_resnext", 1, 2, block=block, features=(4, 8, 8), strides=(1, 2, 2), kernels=(3, 3, 3),
                        blocks_per_stage=(1, 2, 1), decoder_convs=(1, 1), groups=(1, 2, 4), dropout=0.25)
    dropouts = [m for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout3d))]
    assert len(dropouts) == 1 + 2 + 1 and all(type(m) is nn.Dropout3d and m.p == 0.25 for m in dropouts)
