"""SGEMM 1024^3: dlc's dense kernel against numpy's sgemm (OpenBLAS), in one process.

    python benchmarks/sgemm.py [N]

dlc computes `dense(a, N, bias=false)`, i.e. C = A W^T with A and W N x N
float32; numpy computes `a @ w.T` on the same arrays. Both get the same
number of threads (DLC_BENCH_THREADS, default 2). Prints the median time
of each, GFLOP/s and dlc's fraction of numpy's rate (the target is >= 0.70).
"""
from __future__ import annotations

import sys
import time

from common import blas_threads, medians_ms  # noqa: E402  (first: the checkout's dlc)

THREADS = blas_threads()

import numpy as np  # noqa: E402

import dlc  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    src = f"""
model sgemm {{
    input a: f32[{n}, {n}]
    output c = dense(a, {n}, bias=false, name="fc")
}}
"""
    t0 = time.perf_counter()
    prog = dlc.compile(src, num_threads=THREADS)
    compile_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    w = prog.params["fc.weight"]
    np.testing.assert_allclose(prog.run("sgemm", a=a)["c"], a @ w.T, rtol=1e-3, atol=1e-3)
    d, r = medians_ms(lambda: prog.run("sgemm", a=a), lambda: a @ w.T)
    gflop = 2 * n ** 3 / 1e9
    print(f"SGEMM {n}^3, {THREADS} threads, medians (dlc compiled in {compile_s:.2f} s)")
    print(f"  dlc    {d:8.3f} ms  {gflop / d * 1e3:7.1f} GFLOP/s")
    print(f"  numpy  {r:8.3f} ms  {gflop / r * 1e3:7.1f} GFLOP/s")
    print(f"  dlc / numpy: {r / d:.2f}")


if __name__ == "__main__":
    main()
