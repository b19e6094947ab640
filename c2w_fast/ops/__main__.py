"""``python -m c2w_fast.ops``: which backend every op runs on this machine, and why a faster one cannot.

The first command to run after installing on a new machine, and the text to paste into a bug report:
the versions the backends depend on, whether each backend can take CPU and CUDA inputs here (and
what is missing when it cannot), and per op the backend ``backend="auto"`` picks for each. A machine
without a GPU still gets the CUDA column: what ``auto`` would pick there with these packages.
"""
from __future__ import annotations

import argparse
import importlib
import platform

import torch

from c2w_fast import __version__
from c2w_fast.kernels import interpreting
from c2w_fast.metrics import EVALUATE_BATCH
from c2w_fast.ops._dispatch import BACKENDS, backend_problem, import_problem
# by module path: the package's own names of these modules are the ops' functions
from c2w_fast.ops.bounding_box import BOUNDING_BOX
from c2w_fast.ops.components import KEEP_LARGEST, LABEL, REMOVE_SMALL
from c2w_fast.ops.conv_norm_act import CONV_NORM_ACT
from c2w_fast.ops.distance_transform import DISTANCE_TRANSFORM, SIGNED_DISTANCE
from c2w_fast.ops.losses import DICE_CE, DICE_FOCAL
from c2w_fast.ops.morphology import DILATION, EROSION
from c2w_fast.ops.surface import SURFACE_DISTANCES, SURFACE_SUMMARY

DEVICES = ("cpu", "cuda")
OPS = (BOUNDING_BOX, DISTANCE_TRANSFORM, SIGNED_DISTANCE, LABEL, KEEP_LARGEST, REMOVE_SMALL, DILATION, EROSION,
       SURFACE_DISTANCES, SURFACE_SUMMARY, EVALUATE_BATCH, CONV_NORM_ACT, DICE_FOCAL, DICE_CE)  # the README's order


def _package(name: str) -> str:
    """The version of ``name``, or why it cannot be imported (:func:`import_problem`)."""
    problem = import_problem(name)
    return importlib.import_module(name).__version__ if problem is None else problem.removeprefix("is ")


def environment() -> list[str]:
    """The versions and devices the backends depend on, one ``name: value`` line each."""
    gpu = (f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})" if torch.cuda.is_available()
           else "none visible to torch")
    return [f"c2w_fast: {__version__}", f"python: {platform.python_version()}", f"torch: {torch.__version__}",
            f"GPU: {gpu}", f"triton: {_package('triton')}"
            + (" (TRITON_INTERPRET=1: kernels run on the CPU)" if interpreting() else ""),
            f"cupy: {_package('cupy')}", f"numpy: {_package('numpy')}"]


def backend_lines() -> list[str]:
    """Per backend and input device: ``yes`` or ``no`` and what is missing."""
    width = max(map(len, BACKENDS))
    lines = []
    for backend in BACKENDS:
        for device in DEVICES:
            problem = backend_problem(backend, device)
            state = "yes" if problem is None else f"no: {problem}"
            lines.append(f"{backend if device == 'cpu' else '':<{width}}  {device.upper():<4} inputs: {state}")
    return lines


def op_rows() -> list[tuple[str, str, str, str]]:
    """(op, its backends, what ``auto`` picks for CPU inputs, for CUDA inputs); a pick after faster backends
    that cannot run here names them, e.g. ``triton (cuda unavailable)``."""
    rows = []
    for op in OPS:
        picks = []
        for device in DEVICES:
            name, problems = op.auto_choice(device)
            skipped = [problem.split(":")[0] for problem in problems]
            picks.append(f"{name} ({', '.join(skipped)} unavailable)" if skipped else name)
        rows.append((op.name, ", ".join(b for b in BACKENDS if b in op.implementations), *picks))
    return rows


def report() -> str:
    """The whole report: environment, backends, then the table of ops."""
    rows = [("op", "backends", "auto: CPU inputs", "auto: CUDA inputs"), *op_rows()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3] for row in rows]
    note = [] if torch.cuda.is_available() else ["(no GPU here: the CUDA column is what auto would pick on one)"]
    return "\n".join([*environment(), "", "Backends here:", *backend_lines(), "", *table, *note])


def main(argv=None) -> None:
    argparse.ArgumentParser(prog="python -m c2w_fast.ops", description="Which backend every op runs on this "
                            "machine, and why a faster one cannot.").parse_args(argv)
    print(report())


if __name__ == "__main__":
    main()
