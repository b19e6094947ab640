"""Backends whose module is imported on first call, so that importing the ops never imports Triton.

Triton reads ``TRITON_INTERPRET`` when a kernel module is imported, so the GPU backends'
modules must not be imported before the first call (see ``docs/CONTRIBUTING.md``).
"""
from __future__ import annotations

import importlib
from typing import Callable


def lazy(module: str, name: str) -> Callable:
    """The function ``name`` of ``module``, imported when the returned backend is first called."""
    def backend(*args):
        return getattr(importlib.import_module(module), name)(*args)

    backend.__qualname__ = backend.__name__ = f"{module}.{name}"
    return backend
