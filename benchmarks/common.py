"""What the benchmarks share: this checkout's dlc first on the import path,
the thread count, median timings (interleaved blocks), ONNX Runtime sessions of
PyTorch modules, and the results table."""
from __future__ import annotations

import io
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dlc
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def threads() -> int:
    """Every framework gets DLC_BENCH_THREADS threads (default 2)."""
    return int(os.environ.get("DLC_BENCH_THREADS", "2"))


def blas_threads() -> int:
    """threads(), also for numpy's BLAS; call before numpy is imported (BLAS
    reads its thread count when it loads)."""
    n = threads()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


BLOCKS = 8          # interleaved blocks per function
# Enough runs per block that a fast call's block lasts tens of milliseconds:
# with 500, a batch-1 MLP block was 4 ms of runs, and its median moved by
# 30% between runs of the script with the machine's load.
MAX_RUNS_PER_BLOCK = 5000
SETTLE_S = 0.05     # idle time before each block


def medians_ms(*fs, budget_s: float = 2.0, blocks: int = BLOCKS, least: int = 3,
               settle_s: float = SETTLE_S) -> list[float]:
    """Median time of each of fs over runs in `blocks` interleaved blocks (a
    load change on a shared machine hits all of them alike), as many runs as
    fit budget_s per function (at least `least` per block), after a warm-up. Each block
    starts after settle_s idle: ONNX Runtime's and PyTorch's thread pools
    spin for milliseconds after a run and would hold a core during the next
    framework's runs."""
    firsts = []
    for f in fs:
        t0 = time.perf_counter()
        f()
        firsts.append(time.perf_counter() - t0)
    per_block = [int(min(MAX_RUNS_PER_BLOCK, max(least, budget_s / blocks / max(t, 1e-6)))) for t in firsts]
    times: list[list[float]] = [[] for _ in fs]
    for _ in range(blocks):
        for f, n, ts in zip(fs, per_block, times):
            time.sleep(settle_s)
            f()   # warm: caches and the pool's threads
            for _ in range(n):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) * 1e3 for ts in times]


def onnx_session(module, example, dynamic_axes: dict, n_threads: int):
    """An ONNX Runtime CPU session of `module` exported from PyTorch, input
    "x", output "y"."""
    import onnxruntime as ort
    import torch
    buf = io.BytesIO()
    torch.onnx.export(module, example, buf, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": dynamic_axes}, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = n_threads, 1
    return ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])


def print_table(title: str, rows: list[tuple]) -> None:
    """rows: (name, dlc ms, PyTorch ms, ONNX Runtime ms or None). The last
    column is dlc's time over the best other's (the issue's measure: below 1
    means dlc is faster). The load average is printed beside: a busy shared
    machine makes every figure noisier."""
    width = max(len(r[0]) for r in rows) + 2
    print(f"{title}, {threads()} threads, medians in ms, load average {os.getloadavg()[0]:.2f} "
          "(ratio = other / dlc: above 1 means dlc is faster)")
    print(f"{'':{width}}{'dlc':>10}{'PyTorch':>10}{'ratio':>7}{'ONNX RT':>10}{'ratio':>7}{'dlc/best':>10}")
    for name, d, t, o in rows:
        onnx = f"{o:10.4f}{o / d:7.2f}" if o is not None else f"{'-':>10}{'-':>7}"
        best = min(t, o) if o is not None else t
        print(f"{name:{width}}{d:10.4f}{t:10.4f}{t / d:7.2f}{onnx}{d / best:10.2f}")
