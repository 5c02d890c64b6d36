"""SGEMM: dlc's dense kernel against numpy's sgemm (OpenBLAS) and against the
machine's FMA peak, in one process.

    python benchmarks/sgemm.py [N ...]          (default: 256 512 1024)

dlc computes `dense(a, N, bias=false)`, i.e. C = A W^T with A and W N x N
float32; numpy computes `a @ w.T` on the same arrays. Both get the same
number of threads (DLC_BENCH_THREADS, default 2). For each N: the median time
of each, GFLOP/s, dlc's rate over numpy's and over the FMA peak measured by
fma_peak.py (the target at N = 1024 is >= 0.75 of it). DLC_CPU=x86-64-v3
times AVX2 code.

numpy is the reference with OpenBLAS's best kernels for this CPU: the script
unsets OPENBLAS_CORETYPE (which may pin them to Haswell's AVX2 ones) and
prints the kernel set OpenBLAS chose, as threadpoolctl reports it.
"""
from __future__ import annotations

import os
import sys
import time

from common import blas_threads, medians_ms  # noqa: E402  (first: the checkout's dlc)

THREADS = blas_threads()
os.environ.pop("OPENBLAS_CORETYPE", None)

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_info  # noqa: E402

import dlc  # noqa: E402
import fma_peak  # noqa: E402

# OpenBLAS's idle threads spin for 2^28 cycles (~70 ms) after a call, longer
# than the benchmarks' usual pause between contenders: they held both cores
# through the start of dlc's next block (dlc at N = 256: 0.45 of the peak
# against 0.83 with this pause).
SETTLE_S = 0.25


def openblas_kernels() -> str:
    return ", ".join(f"{i['internal_api']} {i.get('architecture', '?')}" for i in threadpool_info()
                     if i["user_api"] == "blas") or "unknown"


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [256, 512, 1024]
    peak = sum(fma_peak.measure(THREADS))
    print(f"SGEMM, {THREADS} threads, medians; FMA peak {peak:.1f} GFLOP/s; "
          f"cpu {os.environ.get('DLC_CPU') or 'host'}; numpy: {openblas_kernels()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'N':>6}{'dlc ms':>10}{'GFLOP/s':>9}{'numpy ms':>10}{'GFLOP/s':>9}"
          f"{'dlc/numpy':>11}{'dlc/peak':>10}{'compile s':>11}")
    for n in sizes:
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
        d, r = medians_ms(lambda: prog.run("sgemm", a=a), lambda: a @ w.T, settle_s=SETTLE_S)
        gflop = 2 * n ** 3 / 1e9
        rate_d, rate_r = gflop / d * 1e3, gflop / r * 1e3
        print(f"{n:>6}{d:10.3f}{rate_d:9.1f}{r:10.3f}{rate_r:9.1f}{rate_d / rate_r:11.2f}"
              f"{rate_d / peak:10.2f}{compile_s:11.2f}")


if __name__ == "__main__":
    main()
