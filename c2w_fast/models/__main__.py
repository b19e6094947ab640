"""``python -m c2w_fast.models --summary NAME``: stage shapes and parameter counts of an architecture."""
from __future__ import annotations

import argparse

import torch

from c2w_fast import config as cfg
from c2w_fast.models import ARCHITECTURES, build_model, build_spec, count_parameters


def summary(name: str, input_shape=(1, 1, 44, 256, 256), num_classes: int = 2) -> str:
    """A table of every encoder stage and decoder stage: output shape and parameters.

    Shapes come from a forward pass on the ``meta`` device (no memory, no compute).
    """
    with torch.device("meta"):
        model = build_model(name, input_shape[1], num_classes, init="torch")
    rows, hooks = [], []
    named = [("stem", model.encoder.stem)] if model.encoder.stem is not None else []
    named += [(f"encoder.{s}", stage) for s, stage in enumerate(model.encoder.stages)]
    named += [(f"decoder.{len(model.decoder) - 1 - i}", stage) for i, stage in enumerate(model.decoder)]
    for label, module in named:
        hooks.append(module.register_forward_hook(
            lambda m, i, o, label=label: rows.append((label, tuple(o.shape), count_parameters(m)))))
    with torch.no_grad():
        model(torch.empty(input_shape, device="meta"))
    for h in hooks:
        h.remove()
    spec = model.spec
    lines = [f"{name}: {spec.block} blocks, features {list(spec.features)}, input {tuple(input_shape)}",
             f"{'module':<12} {'output (B, C, D, H, W)':<28} {'parameters':>12}"]
    lines += [f"{label:<12} {str(shape):<28} {params:>12,}" for label, shape, params in rows]
    heads = sum(count_parameters(h) for h in model.heads)
    lines.append(f"{'heads':<12} {'':<28} {heads:>12,}")
    lines.append(f"{'total':<12} {'':<28} {count_parameters(model):>12,}")
    return "\n".join(lines)


def preset_input(name: str) -> tuple[tuple[int, ...], int]:
    """The training input shape ``(B, C, D, H, W)`` (batch, channels, patch or ROI) and the classes of
    the first preset (configs/*.toml) that trains architecture ``name``."""
    for preset in cfg.presets():
        config = cfg.load(cfg.preset_path(preset))
        if config.model.architecture == name:
            patch = config.train.patch_size or config.roi.size
            return (config.train.batch_size, config.in_channels, *patch), config.num_classes
    raise ValueError(f"no preset trains {name}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m c2w_fast.models", description=__doc__.splitlines()[0])
    parser.add_argument("--summary", metavar="NAME", required=True, choices=sorted(ARCHITECTURES),
                        help=f"one of {', '.join(sorted(ARCHITECTURES))}")
    parser.add_argument("--input", type=int, nargs=5, metavar=("B", "C", "D", "H", "W"), default=None,
                        help="input shape (default: the batch, channels and patch, or ROI, of the preset "
                             "that trains the architecture, e.g. 4 1 44 256 256 for c2w_resnext)")
    parser.add_argument("--classes", type=int, default=None,
                        help="output classes incl. background (default: that preset's, e.g. 4 for mbas_stage2: "
                             "background, wall, RA, LA)")
    args = parser.parse_args(argv)
    default_shape, default_classes = preset_input(args.summary)
    shape = args.input or default_shape
    classes = default_classes if args.classes is None else args.classes
    if min(shape) < 1:
        parser.error(f"--input sizes must be >= 1, got {' '.join(map(str, shape))}")
    try:
        build_spec(args.summary).check_input(shape[2:])
    except ValueError as exc:
        parser.error(f"--input: {exc}")
    if classes < 2:
        parser.error(f"--classes counts the background too, so it must be >= 2, got {classes}")
    print(summary(args.summary, tuple(shape), classes))


if __name__ == "__main__":
    main()
