"""Data-parallel throughput: examples/s of dlc.distributed.DataParallel with
1, 2 and 4 processes of one thread each, for the digits CNN (batch 64 of
1x8x8) and the CIFAR CNN (batch 64 of 3x32x32), and the time spent in the
allreduce. On one machine the processes share its cores: past the core
count they only add allreduce time.

    python benchmarks/distributed.py [--ranks 1 2 4] [--steps 40]

It runs itself under mpiexec once per process count (`--worker` is that
run) and prints one table; each figure is the median of a process's
per-step times after a warm-up, rank 0's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from common import EXAMPLES

NETS = {"digits_cnn": ("digits_cnn.dl", (1, 8, 8)), "cifar_cnn": ("cifar_cnn.dl", (3, 32, 32))}
BATCH = 64


def worker(net: str, steps: int) -> None:
    import numpy as np
    from mpi4py import MPI

    import dlc
    from dlc.distributed import DataParallel

    file, shape = NETS[net]
    dp = DataParallel(dlc.compile(EXAMPLES / file, num_threads=1))
    rng = np.random.default_rng(dp.rank)
    share = np.array_split(np.arange(BATCH), dp.size)[dp.rank].size
    x = rng.normal(size=(share,) + shape).astype(np.float32)
    t = rng.integers(0, 10, share).astype(np.int32)
    reduce_s, allreduce = [], dp._allreduce

    def timed_allreduce(flat):
        t0 = time.perf_counter()
        allreduce(flat)
        reduce_s.append(time.perf_counter() - t0)

    dp._allreduce = timed_allreduce
    step_s = []
    for i in range(steps + 5):   # 5 warm-up steps
        MPI.COMM_WORLD.Barrier()
        t0 = time.perf_counter()
        dp.train("fit", x=x, t=t)
        step_s.append(time.perf_counter() - t0)
    step, reduce = statistics.median(step_s[5:]), statistics.median(reduce_s[5:])
    grad_bytes = sum(v.nbytes for k, v in dp.prog.params.items() if "running" not in k)
    if dp.rank == 0:
        print(json.dumps({"step_ms": step * 1e3, "allreduce_ms": reduce * 1e3, "bytes": grad_bytes}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--worker", choices=list(NETS))
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.steps)
        return
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("needs mpiexec: pip install 'dlc[mpi]'")
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    print(f"{'net':<11} {'ranks':>5} {'step ms':>8} {'examples/s':>10} {'speedup':>7} "
          f"{'allreduce ms':>12} {'of step':>7}   (global batch {BATCH}, 1 thread per rank, "
          f"{os.cpu_count()} cores)")
    for net in NETS:
        base = None
        for n in args.ranks:
            done = subprocess.run([mpiexec, *root, "--oversubscribe", "-n", str(n), sys.executable,
                                   __file__, "--worker", net, "--steps", str(args.steps)],
                                  capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                sys.exit(done.stdout + done.stderr)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            rate = BATCH / (r["step_ms"] / 1e3)
            base = base or rate
            print(f"{net:<11} {n:>5} {r['step_ms']:>8.2f} {rate:>10.0f} {rate / base:>7.2f} "
                  f"{r['allreduce_ms']:>12.3f} {r['allreduce_ms'] / r['step_ms']:>7.1%}"
                  f"   ({r['bytes'] / 1e6:.2f} MB of gradients)")


if __name__ == "__main__":
    main()
