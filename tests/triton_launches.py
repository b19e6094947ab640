"""Record the Triton launches the interpreter runs, so the same specialisations can be compiled for GPUs.

The interpreter executes kernels as Python and never asks the GPU compiler whether a kernel is
valid for it (loop forms, atomics on a dtype, layouts, register-hungry tiles). Recording every
launch — argument types, constexpr values, launch options — lets a process without the
interpreter (``tests/compile_kernels.py --launches FILE``) compile exactly those
specialisations to cubins for sm_80/86/89/90, with no GPU.
"""
from __future__ import annotations

import contextlib
import inspect
import json

import numpy as np
import torch
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

_POINTER_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
                  torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8",
                  torch.bool: "i1"}
LAUNCH_OPTIONS = ("num_warps", "num_stages")


def _is_constexpr(parameter: inspect.Parameter) -> bool:
    annotation = parameter.annotation
    return annotation is tl.constexpr or (isinstance(annotation, str) and annotation.endswith("constexpr"))


def _argument_type(name: str, value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + _POINTER_TYPES[value.dtype]
    if isinstance(value, (bool, np.bool_)):
        return "i1"
    if isinstance(value, (int, np.integer)):
        return "i32" if -(2**31) <= int(value) < 2**31 else "i64"
    if isinstance(value, (float, np.floating)):
        return "fp32"
    raise TypeError(f"argument {name}: cannot record a {type(value).__name__}")


def _constant(value):
    """A JSON form of a constexpr value; dtypes become {"dtype": name}."""
    if isinstance(value, tl.dtype):
        return {"dtype": value.name}
    if isinstance(value, tl.constexpr):
        return _constant(value.value)
    return value.item() if isinstance(value, np.generic) else value


def describe_launch(fn, args: tuple, kwargs: dict) -> dict:
    """One launch of the Python function ``fn`` as module, name, argument types, constexprs and options."""
    parameters = inspect.signature(fn).parameters
    given = dict(zip(parameters, args))
    given.update({k: v for k, v in kwargs.items() if k in parameters})
    types, constants = {}, {}
    for name, parameter in parameters.items():
        value = given.get(name, None if parameter.default is inspect.Parameter.empty else parameter.default)
        if _is_constexpr(parameter) or value is None:
            constants[name] = _constant(value)
        elif isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and value == 1:
            constants[name] = 1  # a GPU launch specialises an integer 1 into a constexpr; compile it that way
        else:
            types[name] = _argument_type(name, value)
    options = {k: int(kwargs[k]) for k in LAUNCH_OPTIONS if k in kwargs}
    return {"module": fn.__module__, "name": fn.__name__, "types": types, "constants": constants, "options": options}


@contextlib.contextmanager
def record_launches(modules: tuple[str, ...]):
    """Within the block, every interpreted launch of a kernel defined in ``modules`` is appended
    (once per distinct specialisation) to the yielded list."""
    launches: list[dict] = []
    seen: set[str] = set()
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        if self.fn.__module__ in modules:
            launch = describe_launch(self.fn, args, kwargs)
            key = json.dumps(launch, sort_keys=True)
            if key not in seen:
                seen.add(key)
                launches.append(launch)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield launches
    finally:
        InterpretedFunction.run = original
