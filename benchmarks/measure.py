"""Measurement helpers shared by the benchmarks: timing, peak memory, the matmul ceiling, machine load, results.

Every benchmark reports ratios measured side by side in one run, because the machine is shared and absolute numbers
drift with its load; `machine_load()` is recorded next to every result so that a reader can judge the noise.
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
NUM_THREADS = 2


def run_worker(module: str, spec: dict, workdir: Path, label: str) -> dict:
    """Runs `python -m module --worker SPEC --out FILE` in a fresh process (so that its peak RSS is its own) and
    returns the measurements it wrote; RuntimeError with the end of its stderr, naming `label`, if it fails."""
    out = workdir / f"run-{time.monotonic_ns()}.json"
    command = [sys.executable, "-m", module, "--worker", json.dumps(spec), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    completed = subprocess.run(command, check=False, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{completed.stderr[-4000:]}")
    return json.loads(out.read_text())


def set_threads(num_threads: int = NUM_THREADS) -> None:
    """Pins torch to `num_threads` intra-op threads (the issue measures everything at 2 threads)."""
    torch.set_num_threads(num_threads)


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Current resident set size of this process, in MB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def glibc_heap_mb() -> dict[str, float] | None:
    """glibc's view of the heap (all arenas): bytes in use and bytes free but still held by the process, in MB.

    The free part is memory the allocator keeps after tensors are freed (fragmentation, and the trim threshold that
    `training.malloc_tuning` raises); it counts in RSS without holding any tensor. None where libc is not glibc.
    """
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None
    info = libc.mallinfo2()
    return {"in_use_mb": (info.uordblks + info.hblkhd) / 2**20, "free_held_mb": info.fordblks / 2**20}


def matmul_ceiling_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The fp32 matmul rate this process reaches with its torch threads: best of `repeats` square matmuls, GFLOP/s.

    The best (not the median) run is the ceiling: it is what the hardware gives when nothing else interferes.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def machine_load() -> dict:
    """Load averages and CPU count, recorded with every result (other jobs may share the machine)."""
    load1, load5, load15 = os.getloadavg()
    return {"loadavg_1m": load1, "loadavg_5m": load5, "loadavg_15m": load15, "cpus": os.cpu_count()}


def environment() -> dict:
    """Library versions and thread count behind a result."""
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    for name in ("trl", "peft"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    return info


def command_line() -> list[str]:
    """`sys.argv` as typed: `-m benchmarks.<name> ...` when run as a module."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return (["-m", spec.name] if spec is not None else [sys.argv[0]]) + sys.argv[1:]


def write_results(name: str, payload: dict) -> Path:
    """Writes `payload` (plus the command line, environment and load) to `benchmarks/results/<name>.json`."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    record = {
        "command": " ".join(["python", *command_line()]),
        "environment": environment(),
        "load_at_end": machine_load(),
        **payload,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of `rows` restricted to `columns`; floats get 3 significant decimals."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
        if isinstance(value, bool):
            return "yes" if value else "NO"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def interleaved_times(functions: dict, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall times of each function, calling them in turn (a, b, c, a, b, c, ...) so that load drift on a shared
    machine hits every implementation alike. The starting implementation rotates each repetition; the i-th time of
    every function comes from the same repetition, so ratios can be taken pairwise."""
    names = list(functions)
    for _ in range(warmup):
        for name in names:
            functions[name]()
    times = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return times


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over repetitions of `numerator`'s time / `denominator`'s time in the same repetition: slower drifts
    in machine speed cancel within a repetition, which the ratio of two medians does not do."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator], strict=True))
