"""Run by tests/distributed/test_data_parallel.py under mpiexec: each rank
trains on its shard with DataParallel; rank 0 also trains one process's
program on the whole batches, and every rank checks what the test asks
(a failed assertion aborts the job with a non-zero status)."""
import hashlib
import sys

import numpy as np
from mpi4py import MPI

import dlc
from dlc.distributed import DataParallel

PROGRAM = """
model net {{
    input x: f32[batch, 1, 6, 6]
    h = conv2d(x, 4, 3, padding=1, name="conv") {bn}|> relu |> flatten
    output y = dense(h, 3, name="fc")
}}
train fit {{
    input x: f32[batch, 1, 6, 6]
    input t: i32[batch]
    loss = cross_entropy(net(x), t)
    optimizer = {opt}
}}
"""
BATCH, STEPS = 10, 20


def shard_bounds(n: int, size: int) -> list[int]:
    """Unequal shards when size does not divide n (10 over 3: 4, 3, 3)."""
    return [n * r // size for r in range(size + 1)]


def main(opt: str, bn: bool) -> None:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    source = PROGRAM.format(opt=opt, bn='|> batchnorm(name="bn") ' if bn else "")
    # Different seeds: DataParallel must copy rank 0's initial params.
    prog = dlc.compile(source, seed=rank, num_threads=1)
    dp = DataParallel(prog)
    # With batchnorm, each shard normalises by its own statistics: no one
    # process computes that, so only the first step's running mean (the
    # batch's, from the shards' weighted means) and the agreement of the
    # ranks are checked.
    whole = dlc.compile(source, seed=0, num_threads=1) if rank == 0 else None
    losses = []
    rng = np.random.default_rng(0)
    bounds = shard_bounds(BATCH, size)
    for step in range(STEPS):
        x = rng.normal(size=(BATCH, 1, 6, 6)).astype(np.float32)
        t = rng.integers(0, 3, BATCH).astype(np.int32)
        lo, hi = bounds[rank], bounds[rank + 1]
        loss = dp.train("fit", x=x[lo:hi], t=t[lo:hi])
        losses.append(loss)
        digest = hashlib.sha256(b"".join(v.tobytes() for v in prog.params.values())).hexdigest()
        digests = comm.allgather(digest)
        assert len(set(digests)) == 1, f"step {step}: ranks differ: {digests}"
        if whole is not None and not bn:
            want = whole.train("fit", x=x, t=t)
            assert abs(loss - want) <= 1e-5 + 1e-4 * abs(want), (step, loss, want)
        if whole is not None and bn and step == 0:
            whole.train("fit", x=x, t=t)
            np.testing.assert_allclose(prog.params["bn.running_mean"], whole.params["bn.running_mean"],
                                       rtol=1e-5, atol=1e-7)
    assert np.isfinite(losses).all(), losses
    if whole is not None and not bn:
        for name, value in whole.params.items():
            np.testing.assert_allclose(prog.params[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    print(f"rank {rank} of {size}: {opt}{' with batchnorm' if bn else ''}: {STEPS} steps agree")


def fitting() -> None:
    """DataParallel.fit: 3 epochs of shuffled batches of 10 split over the
    ranks give one process's prog.fit on the same data and seed."""
    comm = MPI.COMM_WORLD
    source = PROGRAM.format(opt="adam(lr=0.01)", bn="")
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(45, 1, 6, 6)).astype(np.float32),
            "t": rng.integers(0, 3, 45).astype(np.int32)}
    prog = dlc.compile(source, num_threads=1)
    history = DataParallel(prog).fit("fit", data, epochs=3, batch_size=10, seed=1, verbose=0)
    if comm.Get_rank() == 0:
        whole = dlc.compile(source, num_threads=1)
        want = whole.fit("fit", data, epochs=3, batch_size=10, seed=1, verbose=0)
        np.testing.assert_allclose(history.step_loss, want.step_loss, rtol=1e-4, atol=1e-5)
        for name, value in whole.params.items():
            np.testing.assert_allclose(prog.params[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    print(f"rank {comm.Get_rank()}: fit: {len(history.step_loss)} steps agree")


def failing(how: str) -> None:
    """Rank 1 fails at its third step (a shard of the wrong shape) or hangs
    there; rank 0 must not wait forever."""
    comm = MPI.COMM_WORLD
    dp = DataParallel(dlc.compile(PROGRAM.format(opt="sgd(lr=0.1)", bn=""), num_threads=1))
    x, t = np.zeros((2, 1, 6, 6), np.float32), np.zeros(2, np.int32)
    for step in range(5):
        if comm.Get_rank() == 1 and step == 2:
            if how == "hang":
                import time
                time.sleep(600)
            x = np.zeros((2, 1, 5, 5), np.float32)
        dp.train("fit", x=x, t=t)


if __name__ == "__main__":
    if sys.argv[1] in ("fail", "hang"):
        failing(sys.argv[1])
    elif sys.argv[1] == "fit":
        fitting()
    else:
        main(sys.argv[1], sys.argv[2] == "bn")
