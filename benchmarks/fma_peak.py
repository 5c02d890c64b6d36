"""The machine's fp32 FMA peak, measured: the ceiling the SGEMM figures are
judged against.

    python benchmarks/fma_peak.py

A loop of independent fused multiply-adds on the widest vector registers the
host has (12 accumulators: more than FMA latency x issue width, so the
pipes never wait on a result), JIT-compiled through llvmlite for this CPU and
run on DLC_BENCH_THREADS threads at once (ctypes releases the GIL). Prints
GFLOP/s per thread and in all: 2 flops per lane per FMA.
"""
from __future__ import annotations

import ctypes
import threading
import time

from common import threads  # noqa: E402  (first: the checkout's dlc)

import llvmlite.binding as llvm  # noqa: E402

from dlc.codegen.compiler import vector_registers  # noqa: E402
from dlc.codegen.objects import target_machine  # noqa: E402

ACCUMULATORS = 12
ITERATIONS = 20_000_000


def kernel_ir(lanes: int) -> str:
    """float peak(i64 n): n rounds of ACCUMULATORS vector FMAs; returns a lane
    of their sum so nothing is dead."""
    v = f"<{lanes} x float>"
    phis = "\n".join(f"  %a{i} = phi {v} [ zeroinitializer, %entry ], [ %b{i}, %loop ]"
                     for i in range(ACCUMULATORS))
    fmas = "\n".join(f"  %b{i} = call {v} @llvm.fma.v{lanes}f32({v} %a{i}, {v} %x, {v} %y)"
                     for i in range(ACCUMULATORS))
    sums = [f"%b{i}" for i in range(ACCUMULATORS)]
    adds = []
    for i in range(1, ACCUMULATORS):
        adds.append(f"  %s{i} = fadd {v} {sums[0] if i == 1 else f'%s{i - 1}'}, {sums[i]}")
    return f"""
declare {v} @llvm.fma.v{lanes}f32({v}, {v}, {v})
define float @peak(i64 %n) {{
entry:
  %x0 = insertelement {v} undef, float 0x3FF0000020000000, i32 0
  %x = shufflevector {v} %x0, {v} undef, <{lanes} x i32> zeroinitializer
  %y0 = insertelement {v} undef, float 0x3FEFFFFFC0000000, i32 0
  %y = shufflevector {v} %y0, {v} undef, <{lanes} x i32> zeroinitializer
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i1, %loop ]
{phis}
{fmas}
  %i1 = add i64 %i, 1
  %done = icmp eq i64 %i1, %n
  br i1 %done, label %exit, label %loop
exit:
{chr(10).join(adds)}
  %r = extractelement {v} %s{ACCUMULATORS - 1}, i32 0
  ret float %r
}}
"""


def measure(n_threads: int, tries: int = 5) -> list[float]:
    """GFLOP/s of each of n_threads threads running the loop at once, the best
    of `tries` (by their sum)."""
    lanes = vector_registers()[0] // 4
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(kernel_ir(lanes)), target_machine())
    engine.finalize_object()
    peak = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64)(engine.get_function_address("peak"))
    peak(1000)
    flops = 2 * lanes * ACCUMULATORS * ITERATIONS
    best: list[float] = []
    for _ in range(tries):
        elapsed = [0.0] * n_threads

        def run(t: int) -> None:
            t0 = time.perf_counter()
            peak(ITERATIONS)
            elapsed[t] = time.perf_counter() - t0

        workers = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        rates = [flops / e / 1e9 for e in elapsed]
        best = max(best, rates, key=sum)
    return best


def main() -> None:
    rates = measure(threads())
    print(f"FMA peak, {vector_registers()[0] // 4} fp32 lanes x {ACCUMULATORS} accumulators, "
          f"{llvm.get_host_cpu_name()}")
    print(f"  per thread: {', '.join(f'{r:.1f}' for r in rates)} GFLOP/s; "
          f"{len(rates)} threads: {sum(rates):.1f} GFLOP/s (best of 5)")


if __name__ == "__main__":
    main()
