"""The backend contract every op follows."""
import sys
import warnings

import numpy as np
import pytest

from c2w_fast.ops import BackendFallbackWarning, BackendUnavailableError, backend_problem, bounding_box
from c2w_fast.ops import _dispatch
from c2w_fast.ops._dispatch import Op, reference_only


def _op(**preferred):
    return Op("toy", {"reference": lambda: "reference", "cpu": lambda: "cpu", "triton": lambda: "triton"},
              preferred=preferred)


def test_unknown_backend_name_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        bounding_box(np.ones((2, 2), bool), backend="gpu")


def test_named_backend_without_implementation_lists_the_implemented_ones():
    with pytest.raises(BackendUnavailableError, match="no 'cuda' backend; implemented: cpu, reference, triton"):
        _op().select("cuda", "cpu")


def test_cuda_backend_on_cpu_inputs_says_it_needs_cuda_inputs():
    with pytest.raises(BackendUnavailableError, match="CUDA inputs only, got cpu inputs"):
        bounding_box(np.ones((2, 2), bool), backend="cuda")


def test_triton_on_cpu_without_interpreter_names_the_variable(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        bounding_box(np.ones((2, 2), bool), backend="triton")


def test_missing_cpu_extension_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "c2w_fast._cpu", None)
    problem = backend_problem("cpu", "cpu")
    assert "c2w_fast._cpu is not built" in problem and "pip install -e ." in problem


def test_missing_cupy_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    assert "cupy is not installed" in backend_problem("cuda", "cuda")


def test_a_cupy_that_cannot_load_nvrtc_is_named_so_auto_falls_back(monkeypatch):
    """A CuPy for another CUDA imports but fails at its first compile: the cuda backend is unavailable
    (``auto`` takes Triton) and the reason names the library and the install that fixes it."""
    import types

    def failing():
        raise OSError("libnvrtc.so.12: cannot open shared object file")

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(nvrtc=types.SimpleNamespace(getVersion=failing))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    _dispatch.nvrtc_problem.cache_clear()
    try:
        problem = backend_problem("cuda", "cuda")
        assert problem.startswith("cupy cannot load its NVRTC compiler (OSError: libnvrtc.so.12")
        assert "c2w_fast[cuda]" in problem
        op = Op("nvrtc_probe", {"reference": lambda: "reference", "triton": lambda: "triton", "cuda": lambda: "cuda"},
                preferred={"cuda": ("cuda", "triton")})
        assert op.select("auto", "cuda")() == "triton"
        cupy.cuda.nvrtc.getVersion = lambda: (13, 0)
        _dispatch.nvrtc_problem.cache_clear()
        assert backend_problem("cuda", "cuda") is None
    finally:
        _dispatch.nvrtc_problem.cache_clear()  # the real CuPy's answer for the tests after this one


def test_a_cupy_that_fails_to_import_is_not_called_missing(monkeypatch):
    """CuPy re-raises its CUDA libraries' load failures as ImportError: named as such, not as "not installed"."""
    class FailingCupy:  # a finder ahead of the real ones: any import of cupy raises as CuPy's own does
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "cupy":
                raise ImportError("CuPy failed to load libcudart.so.12: cannot open shared object file")
            return None

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [FailingCupy, *sys.meta_path])
    assert backend_problem("cuda", "cuda").startswith("cupy cannot be imported (ImportError: CuPy failed to load")


@pytest.mark.parametrize("version, too_old", [("3.1.0", True), ("2.9.9", True), ("3.6.0", False),
                                               ("3.7.0+git1a2b3c", False), ("4.0.0", False)])
def test_a_triton_older_than_the_kernels_need_is_named(monkeypatch, version, too_old):
    triton = pytest.importorskip("triton")
    monkeypatch.setattr(triton, "__version__", version)
    problem = backend_problem("triton", "cuda")
    assert (problem is not None and f"triton {version} is older than 3.6" in problem) if too_old else problem is None


@pytest.mark.parametrize("triton_version, numpy_version, broken", [
    ("3.6.0", "2.4.0", True), ("3.6.1", "2.5.1", True), ("3.6.0", "2.3.5", False), ("3.7.0", "2.4.6", False),
    ("3.9.0+git1a2b3c", "3.0.0", False)])
def test_an_interpreter_that_cannot_run_the_kernels_is_named(monkeypatch, triton_version, numpy_version, broken):
    """Triton 3.6's interpreter with NumPy >= 2.4 fails on every loop over a runtime bound: the triton
    backend is refused on CPU inputs with both versions named (pytest stops at start with the same)."""
    triton = pytest.importorskip("triton")
    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(np, "__version__", numpy_version)
    monkeypatch.setattr(_dispatch, "triton_interpreter_enabled", lambda: True)
    problem = backend_problem("triton", "cpu")
    if broken:
        assert f"triton {triton_version}'s interpreter cannot run the kernels with numpy {numpy_version}" in problem
    else:
        assert problem is None
    assert backend_problem("triton", "cuda") is None  # compiled kernels do not care


def test_auto_prefers_the_first_available_fast_backend():
    assert _op(cpu=("cpu", "triton")).select("auto", "cpu")() == "cpu"


def test_auto_without_fast_backend_for_the_device_uses_reference_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _op(cuda=("triton",)).select("auto", "cpu")() == "reference"


def test_auto_falls_back_to_reference_with_one_warning(monkeypatch):
    monkeypatch.setitem(sys.modules, "c2w_fast._cpu", None)
    op = Op("fallback_probe", {"reference": lambda: "reference", "cpu": lambda: "cpu"}, preferred={"cpu": ("cpu",)})
    with pytest.warns(BackendFallbackWarning, match="c2w_fast._cpu is not built"):
        assert op.select("auto", "cpu")() == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert op.select("auto", "cpu")() == "reference"


def test_op_needs_a_reference_implementation():
    with pytest.raises(ValueError, match="needs a reference"):
        Op("broken", {"cpu": lambda: None})


def test_inputs_only_the_reference_takes_keep_an_explicit_backend_choice():
    """``auto`` becomes ``reference``, ``triton`` raises the problem; any other choice goes on to
    ``Op.select`` as given, which names a missing backend instead of running the reference silently."""
    assert reference_only("auto", "why") == "reference"
    for backend in ("reference", "cpu", "cuda"):
        assert reference_only(backend, "why") == backend
    with pytest.raises(ValueError, match="^why$"):
        reference_only("triton", "why")


def test_auto_choice_names_the_faster_backends_it_passed_over(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    op = Op("choice_probe", {"reference": lambda: "reference", "triton": lambda: "triton", "cuda": lambda: "cuda"},
            preferred={"cuda": ("cuda", "triton")})
    name, problems = op.auto_choice("cuda")
    assert name == "triton" and len(problems) == 1 and problems[0].startswith("cuda: cupy is not installed")
    with warnings.catch_warnings():  # a fast backend ran: no fallback warning
        warnings.simplefilter("error")
        assert op.select("auto", "cuda")() == "triton"


def test_backend_report_says_what_auto_runs_here_and_what_is_missing(monkeypatch):
    """``python -m c2w_fast.ops``: with CuPy and the C++ extension missing, both are named, the ops that
    have them fall back to the next backend and say which one they passed over, and every public op has
    a row."""
    import re

    import c2w_fast.ops as ops
    from c2w_fast.ops import __main__ as backends_report

    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setitem(sys.modules, "c2w_fast._cpu", None)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    lines = backends_report.report().splitlines()
    assert "cupy: not installed" in lines
    assert any(re.fullmatch(r"\s+CUDA inputs: no: cupy is not installed.*", line) for line in lines)
    assert any("CPU  inputs: no: the C++ extension c2w_fast._cpu is not built" in line for line in lines)
    header = lines.index(next(line for line in lines if line.startswith("op ")))
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line) for line in lines[header + 1:])
            if len(cells) == 4}
    public = {name for name in ops.__all__ if name[0].islower() and name not in ("ball", "backend_problem")}
    assert public <= set(rows), f"ops without a row: {public - set(rows)}"
    assert rows["label_components"] == ["reference, cpu, triton, cuda", "reference (cpu unavailable)",
                                        "triton (cuda unavailable)"]
    assert rows["conv_norm_act"] == ["reference, triton", "reference", "triton"]
    assert rows["evaluate"][1] == "reference (cpu unavailable)"


def test_an_op_on_a_second_gpu_runs_with_that_gpu_current(monkeypatch):
    """Triton launches on the current CUDA device, not on its inputs': an op's implementation for cuda:1
    inputs runs inside ``torch.cuda.device(cuda:1)``; CPU inputs and a bare ``cuda`` get no context."""
    import contextlib

    import torch

    current = []

    @contextlib.contextmanager
    def device(which):
        current.append(which)
        yield
        current.pop()

    monkeypatch.setattr(torch.cuda, "device", device)
    op = Op("device_probe", {"reference": lambda: "reference", "triton": lambda: list(current)},
            preferred={"cuda": ("triton",)})
    assert op.select("auto", torch.device("cuda", 1))() == [torch.device("cuda", 1)]
    assert op.select("triton", "cuda:0")() == [torch.device("cuda", 0)]
    assert op.select("triton", "cuda")() == [] and current == []
    assert op.select("reference", torch.device("cpu"))() == "reference"


def test_a_pair_on_two_gpus_is_refused():
    """Masks on cuda:0 and cuda:1 (CPU tensors reporting those devices) are refused by every pair op."""
    import torch

    from c2w_fast import metrics
    from c2w_fast.ops import surface_distances

    def on(device, batch=()):  # a CPU tensor that reports ``device``, as a GPU's would
        kind = type("OnDevice", (torch.Tensor,), {"device": property(lambda self: torch.device(device))})
        return torch.ones(*batch, 3, 3, 3, dtype=torch.bool).as_subclass(kind)

    for evaluate_pair, batch in ((surface_distances, ()), (metrics.evaluate, ()), (metrics.evaluate_batch, (1,))):
        with pytest.raises(ValueError, match="same device, got cuda:0 and cuda:1"):
            evaluate_pair(on("cuda:0", batch), on("cuda:1", batch))


def test_a_fallback_warning_names_the_callers_line_however_deep_the_op(monkeypatch):
    """``hd`` → ``evaluate`` → the dispatcher: the warning points at this file, not inside c2w_fast."""
    from c2w_fast import metrics
    from c2w_fast.ops import distance_transform

    monkeypatch.setitem(sys.modules, "c2w_fast._cpu", None)
    monkeypatch.setattr(_dispatch, "_warned", set())
    mask = np.ones((3, 3, 3), bool)
    with pytest.warns(BackendFallbackWarning) as caught:
        metrics.hd(mask, mask)
        distance_transform(mask)
    assert [(w.filename, str(w.message).split(":")[0]) for w in caught] == [(__file__, "evaluate"),
                                                                           (__file__, "distance_transform")]
