"""Device kernels of c2w_fast (installed as ``c2w_fast.kernels``).

Triton kernels (``*.py``) and CUDA C sources (``*.cu``, compiled at run time by NVRTC
through CuPy), each with a thin launcher on tensors. No autograd and no policy here:
backend choice, validation and gradients live in :mod:`c2w_fast.ops`.
"""
