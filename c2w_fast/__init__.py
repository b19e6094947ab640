"""c2w_fast: fast atrial-wall segmentation of 3D LGE-MRI.

Layers, bottom up: ``c2w_fast.kernels`` (Triton/CUDA), ``c2w_fast._cpu`` (C++),
``c2w_fast.ops`` (public ops with reference implementations and backend dispatch),
``c2w_fast.data`` (IO, dataset layouts, splits, synthetic phantoms). Arrays are always
in (z, y, x) order with spacing in mm.
"""
__version__ = "0.1.0"
