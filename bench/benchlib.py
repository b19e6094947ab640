"""Shared plumbing of the bench scripts: timing, machine description, table and JSON output.

Every script times ours and the peer side by side in one run and reports the ratio;
results go to ``bench/results/<name>_<device>.json`` together with the printed table.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
import traceback
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the numbers were measured on: CPU, cores, GPU, library versions, date."""
    import numpy
    import torch

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],  # other work on the machine
    }
    info["packages"] = _versions(("triton", "cupy-cuda13x", "cupy-cuda12x", "cucim-cu13", "cucim-cu12", "monai",
                                  "scipy", "nibabel", "c2w_fast"))
    info["git_commit"] = _git_commit()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def _versions(names) -> dict[str, str]:
    """Installed versions of the ``names`` that are installed (read from their metadata, not imported)."""
    from importlib import metadata

    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def _git_commit() -> str:
    """The commit of the checkout the scripts run from, ``+changes`` when its tracked files differ
    from it; in a copy without its ``.git`` (a GPU machine's), ``$C2W_COMMIT`` or "unknown"."""
    import subprocess

    if os.environ.get("C2W_COMMIT"):
        return os.environ["C2W_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if changed else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_call(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1, cuda: bool = False) -> dict:
    """Median and minimum wall time of ``fn()`` in ms after ``warmup`` calls (CUDA-synchronised),
    and the median CPU time of the process (all its threads) per call, ``cpu_ms``."""
    sync = _cuda_sync if cuda else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "cpu_ms": statistics.median(cpu),
            "repeats": repeats}


FLUSH_BYTES = 512 * 2**20  # read between the calls device_time times: several times any GPU's L2 (H100/H200: 50 MB)


def device_time(fn: Callable[[], object], *, repeats: int = 20, warmup: int = 3,
                flush_bytes: int = FLUSH_BYTES) -> dict:
    """Mean GPU time of ``fn()`` in ms (``device_ms``): the summed durations of the kernels, copies and fills
    it runs, on the GPU's clock (CUPTI, through ``torch.profiler``), so host launch overhead and the gaps it
    leaves are not counted; each call follows a read of ``flush_bytes`` that evicts its inputs from L2 (a
    read, so no dirty line of the flush is written back on ``fn``'s time), and the flushes' own time is
    measured apart and taken off. This, not wall time, is what a floor of bytes moved / DRAM bandwidth
    bounds: a kernel near its floor is limited by memory, not by launches. A RuntimeError when ``fn``
    launches no GPU work (an op that ran on the CPU would otherwise look infinitely fast)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    flush = torch.ones(flush_bytes // 4, dtype=torch.int32, device="cuda")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()

    def busy_us(step) -> tuple[float, int]:
        """Summed GPU time (µs) and count of the kernels, copies and fills of ``repeats`` flushes + steps."""
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiled:
            for _ in range(repeats):
                if flush.numel():
                    flush.sum()
                step()
            torch.cuda.synchronize()
        work = [event for event in profiled.events() if event.device_type == DeviceType.CUDA
                and not event.is_user_annotation]
        return sum(event.time_range.elapsed_us() for event in work), len(work)

    (with_fn, launched), (flushes, flush_launches) = busy_us(fn), busy_us(lambda: None)
    if flush.numel() and flush_launches == 0:
        raise RuntimeError("torch.profiler recorded no GPU activity (is CUPTI missing?): no GPU time to report")
    if launched <= flush_launches:
        raise RuntimeError("the timed call launched no GPU work (did it run on the CPU?): no GPU time to report")
    return {"device_ms": (with_fn - flushes) / repeats / 1e3, "repeats": repeats}


def device_ms(fn: Callable[[], object], *, repeats: int = 20, warmup: int = 3) -> float | str:
    """:func:`device_time`'s mean GPU ms of ``fn``, or why it could not be measured (``"failed: ..."``, e.g. no
    CUPTI): a row's wall times still count without it."""
    try:
        return device_time(fn, repeats=repeats, warmup=warmup)["device_ms"]
    except Exception as exc:  # noqa: BLE001 - said in the row instead of a number
        return f"failed: {error_text(exc)}"


def host(value):
    """``value`` (a torch tensor on any device, a CuPy or NumPy array, a number) as a NumPy array,
    floats widened to float64: results of different libraries compared on the host."""
    import numpy
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach()
        return (value.double() if value.is_floating_point() else value).cpu().numpy()
    if hasattr(value, "get") and hasattr(value, "__cuda_array_interface__"):  # CuPy
        value = value.get()
    array = numpy.asarray(value)
    return array.astype(numpy.float64) if array.dtype.kind == "f" else array


def agreement(ours, peer, *, atol: float = 0.0, rtol: float = 0.0) -> str:
    """``"yes"`` when ``ours`` equals ``peer`` within ``atol + rtol * |peer|`` everywhere (tensors,
    arrays or numbers, or tuples / lists of them paired in order; NaN matches NaN, inf the same inf), else what
    differs. A benchmark's fast answer counts only when it is the peer's answer too."""
    import numpy

    ours_parts = list(ours) if isinstance(ours, (tuple, list)) else [ours]
    peer_parts = list(peer) if isinstance(peer, (tuple, list)) else [peer]
    if len(ours_parts) != len(peer_parts):
        return f"differs: {len(ours_parts)} results vs the peer's {len(peer_parts)}"
    for index, (mine, theirs) in enumerate(zip(ours_parts, peer_parts)):
        mine, theirs = host(mine), host(theirs)
        where = f" (result {index})" if len(ours_parts) > 1 else ""
        if mine.shape != theirs.shape:
            return f"differs{where}: shape {mine.shape} vs the peer's {theirs.shape}"
        mine, theirs = mine.astype(numpy.float64), theirs.astype(numpy.float64)
        with numpy.errstate(invalid="ignore"):  # inf - inf is NaN: equal infinities are caught by ==
            gap = numpy.abs(mine - theirs)  # (rtol x inf would let any number match an infinity)
            close = numpy.isfinite(mine) & numpy.isfinite(theirs) & (gap <= atol + rtol * numpy.abs(theirs))
        bad = ~(close | (mine == theirs) | (numpy.isnan(mine) & numpy.isnan(theirs)))
        if bad.any():
            return (f"differs{where}: {int(bad.sum())} of {bad.size} values, max |ours - peer| "
                    f"{numpy.nanmax(numpy.where(bad, gap, numpy.nan)):.3g} (allowed {atol:g} + {rtol:g} x |peer|)")
    return "yes"


def copy_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting the bytes read and written, from the
    fastest of ``repeats`` copies of ``gib`` GiB on the GPU's clock (:func:`device_time`): the yardstick
    of every floor (bytes an op must move / this), so the floors of all scripts are comparable and none
    is set by a slow repeat or by host overhead."""
    import torch

    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = min(device_time(lambda: dst.copy_(src), repeats=1, warmup=1, flush_bytes=0)["device_ms"]
             for _ in range(repeats))
    return 2 * int(gib * 2**30) / (ms / 1e3)


def run_until_stopped(measure: Callable[[], object], payload: dict, part: str) -> bool:
    """Run ``measure`` (which appends its rows as it goes); on Ctrl-C, the SIGINT of
    ``bench/gpu_session.sh``'s time limit or an error no row caught (printed with its traceback),
    mark ``payload`` incomplete and return True, so that the caller saves the rows measured so far
    instead of losing them to one failure in a short GPU session."""
    try:
        measure()
    except KeyboardInterrupt:
        payload["incomplete"] = f"stopped during {part} by its time limit (or Ctrl-C); later rows are missing"
    except Exception as exc:  # noqa: BLE001 - whatever it is, the rows before it are kept
        traceback.print_exc()
        payload["incomplete"] = f"failed during {part} ({error_text(exc)}); later rows are missing"
    else:
        return False
    print(f"\n{payload['incomplete']}", flush=True)
    return True


def error_text(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 160 characters), for a row or a note."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"


def monai_gpu_problem() -> str | None:
    """Why MONAI's GPU metrics and transforms would fall back to SciPy on the host here
    (``None`` when CuPy and cuCIM import): a peer timed on that path is not MONAI on the GPU."""
    try:
        import cucim.core.operations.morphology  # noqa: F401 - MONAI's GPU distance transform
        import cucim.skimage.measure  # noqa: F401 - MONAI's GPU connected components
        import cucim.skimage.morphology  # noqa: F401 - MONAI's GPU mask edges (binary_erosion)
        import cupy  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a CUDA runtime mismatch at import
        return f"{type(exc).__name__}: {exc}"
    return None


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (dicts) with the given ``columns``."""
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def add_results_option(parser) -> None:
    """``--results DIR``: where :func:`save` and :func:`save_bar_chart` write."""
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="folder for the results JSON/PNG (default: bench/results, the committed figures, "
                             "which a rerun replaces: give another folder for trial runs)")


def save(name: str, payload: dict, printed_table: str, folder: Path = RESULTS) -> Path:
    """Write ``payload`` (plus the machine description and the table) to ``folder/<name>.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload, "table": printed_table.splitlines()},
                               indent=2) + "\n")
    return path


def save_bar_chart(name: str, bars: list[tuple[str, dict[str, float]]], *, title: str, ylabel: str,
                   folder: Path = RESULTS) -> Path:
    """A stacked bar chart (one bar per ``(label, {part: value})``, parts stacked in a fixed order
    and colour) saved as ``folder/<name>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(dict.fromkeys(part for _, values in bars for part in values))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(bars) + 2), 4.5))
    bottoms = [0.0] * len(bars)
    for part in parts:
        heights = [values.get(part, 0.0) for _, values in bars]
        ax.bar(range(len(bars)), heights, bottom=bottoms, label=part)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
