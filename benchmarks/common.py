"""What the benchmarks share: this checkout's dlc first on the import path,
the thread count, median timings (each framework on its own), ONNX Runtime sessions of
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


def medians_ms(*fs, budget_s: float = 2.0) -> list[float]:
    """Median time of each of fs, each timed on its own after a warm-up, in
    as many runs as fit budget_s (at least 3). One after the other, not in
    interleaved rounds: ONNX Runtime's and PyTorch's thread pools spin for
    milliseconds after a run and would hold a core during the next one's."""
    return [_median_ms(f, budget_s) for f in fs]


def _median_ms(f, budget_s: float) -> float:
    t0 = time.perf_counter()
    f()
    first = time.perf_counter() - t0
    rounds = int(min(2000, max(3, budget_s / max(first, 1e-6))))
    for _ in range(min(3, rounds // 10 + 1)):
        f()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


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
    """rows: (name, dlc ms, PyTorch ms, ONNX Runtime ms or None)."""
    width = max(len(r[0]) for r in rows) + 2
    print(f"{title}, {threads()} threads, medians in ms "
          "(ratio = other / dlc: above 1 means dlc is faster)")
    print(f"{'':{width}}{'dlc':>10}{'PyTorch':>10}{'ratio':>7}{'ONNX RT':>10}{'ratio':>7}")
    for name, d, t, o in rows:
        onnx = f"{o:10.4f}{o / d:7.2f}" if o is not None else f"{'-':>10}{'-':>7}"
        print(f"{name:{width}}{d:10.4f}{t:10.4f}{t / d:7.2f}{onnx}")
