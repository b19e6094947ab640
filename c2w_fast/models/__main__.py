"""``python -m c2w_fast.models --summary NAME``: stage shapes and parameter counts of an architecture."""
from __future__ import annotations

import argparse

import torch

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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m c2w_fast.models", description=__doc__.splitlines()[0])
    parser.add_argument("--summary", metavar="NAME", required=True, choices=sorted(ARCHITECTURES),
                        help=f"one of {', '.join(sorted(ARCHITECTURES))}")
    parser.add_argument("--input", type=int, nargs=5, metavar=("B", "C", "D", "H", "W"), default=None,
                        help="input shape (default: 4 1 44 256 256, the C2W batch and ROI; MBAS stages use "
                             "batch 2 and their patch size)")
    parser.add_argument("--classes", type=int, default=None,
                        help="output classes incl. background (default: the stage's, 4 for mbas_stage2 "
                             "(background, wall, RA, LA), else 2)")
    args = parser.parse_args(argv)
    default = {"mbas_stage1": (2, 1, 28, 256, 224), "mbas_stage2": (2, 1, 20, 256, 256)}
    shape = args.input or default.get(args.summary, (4, 1, 44, 256, 256))
    classes = (4 if args.summary == "mbas_stage2" else 2) if args.classes is None else args.classes
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
