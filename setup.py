"""Build c2w_fast: the Python package, the Triton/CUDA kernels folder and the C++ CPU kernels.

The top-level ``kernels/`` folder is installed as ``c2w_fast.kernels`` (its ``.cu`` sources
travel as package data and are compiled at run time by NVRTC through CuPy), and ``configs/``
as ``c2w_fast.configs`` (the TOML presets as package data: ``--config c2w_wall`` finds them
after ``pip install .`` as after ``pip install -e .``). ``csrc/`` is
built with pybind11 and OpenMP into ``c2w_fast._cpu``. Nothing here imports torch.
"""
import glob
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

TRITON = "triton>=3.6; platform_system == 'Linux'"  # the kernels under the interpreter in CI, and on GPUs
# What the tests and the bench scripts compare ours against: MONAI (metrics, losses, sliding window), the
# metric and morphology libraries, scikit-image (MONAI's largest component on the CPU)
PEERS = ["monai>=1.3", "surface-distance==0.1", "medpy>=0.5", "edt>=2.4", "connected-components-3d>=3.12",
         "scikit-image>=0.21"]
openmp = [] if sys.platform == "darwin" else ["-fopenmp"]

cpu_extension = Pybind11Extension(
    "c2w_fast._cpu",
    sources=["csrc/bind.cpp"],
    depends=sorted(glob.glob("csrc/*.hpp")),  # in the sdist, and a changed header rebuilds the extension
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3", *openmp],
    extra_link_args=openmp,
)

setup(
    name="c2w_fast",
    version="0.1.0",
    description="Fast atrial-wall segmentation of 3D LGE-MRI: Triton/CUDA/C++ kernels under a thin PyTorch layer",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    packages=find_packages(include=["c2w_fast", "c2w_fast.*"]) + ["c2w_fast.kernels", "c2w_fast.configs"],
    package_dir={"c2w_fast.kernels": "kernels", "c2w_fast.configs": "configs"},
    package_data={"c2w_fast.kernels": ["*.cu", "*.cuh"], "c2w_fast.configs": ["*.toml"]},
    ext_modules=[cpu_extension],
    cmdclass={"build_ext": build_ext},
    install_requires=[
        "torch>=2.10",  # its CUDA builds bring Triton >= 3.6, the oldest the kernels compile with (Makefile)
        "numpy>=1.24",
        "scipy>=1.10",
        "nibabel>=5.0",
        "pynrrd>=1.0",
        "tqdm>=4.60",
        "matplotlib>=3.6",
        "tomli>=2.0; python_version < '3.11'",
    ],
    extras_require={
        # Triton comes with torch's CUDA builds; named here so that a CPU build of torch
        # (no Triton, about 1 GB saved) gets it only where the GPU kernels or their tests need it
        "cuda": ["cupy-cuda12x>=13", TRITON],  # CUDA 12.x drivers/toolkits (RTX 4090 setups)
        "cuda13": ["cupy-cuda13x>=13", TRITON],
        "test": [TRITON, "pytest>=7.4", "pytest-xdist>=3.3", "pytest-timeout>=2.1",
                 "build>=1.0", "pybind11>=2.12", *PEERS],  # tests/test_packaging.py builds the sdist
        "bench": PEERS,
    },
    zip_safe=False,
)
