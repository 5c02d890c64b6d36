"""Memory planning: intermediate buffers whose lifetimes do not overlap share
a workspace slot. Lifetimes are kernel ranges [first write, last read]; a
slot is reused only by a buffer first written after the slot's last read,
so no kernel reads and writes one region through two buffers.

The slots share memory only where that saves more than SHARING_MIN_SAVING
bytes for the symbol values of the call (`layout`: the compiled entry and
workspace functions evaluate it at run time); below it each buffer has its
own region. Two buffers in one region are often written by different
threads (one kernel shares out rows, another channels; planes of
different sizes), and then the lines cross between the cores' caches on
every call (batch-1 CIFAR inference: 7% slower when the two cores sit on
different dies)."""
from __future__ import annotations

import heapq
from dataclasses import replace

from ..ir import loops as L

SHARING_MIN_SAVING = 1 << 20


def plan_memory(prog: L.LoopProgram) -> L.LoopProgram:
    """Assign workspace slots by liveness, greedily in kernel order (pure)."""
    return replace(prog, entries=[_plan(e) for e in prog.entries])


def _plan(entry: L.LoopEntry) -> L.LoopEntry:
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for k, kernel in enumerate(entry.kernels):
        for buf in L.buffers_of(kernel.body):
            if buf.kind == "workspace":
                first.setdefault(buf.index, k)
                last[buf.index] = k
    slot_of = [-1] * len(entry.workspace)
    # Each buffer takes the lowest-numbered slot whose last read comes before
    # its first write. Buffers come by first write, so a slot once free stays
    # so until taken: heaps of (last read, slot) and of free slots find it in
    # log time (a big program has thousands of slots).
    busy: list[tuple[int, int]] = []
    free: list[int] = []
    n_slots = 0
    for buf in sorted(entry.workspace, key=lambda b: first.get(b.index, 0)):
        start, end = first.get(buf.index, 0), last.get(buf.index, 0)
        while busy and busy[0][0] < start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            slot = heapq.heappop(free)
        else:
            slot, n_slots = n_slots, n_slots + 1
        heapq.heappush(busy, (end, slot))
        slot_of[buf.index] = slot
    return replace(entry, slot_of=slot_of)


def layout(entry: L.LoopEntry) -> tuple[list[L.Expr], L.Expr]:
    """The byte offset of each workspace buffer (by index) and the
    workspace's size, as index expressions of the symbols."""
    I = lambda v: L.Const(v, L.INDEX)
    aligned = lambda n: (n + (L.ALIGNMENT - 1)) / I(L.ALIGNMENT) * I(L.ALIGNMENT)
    nbytes = lambda buf: buf.size * I(L.DTYPE_BYTES[buf.dtype])
    slot_at, shared = [], I(0)
    for slot in entry.slots():
        slot_at.append(shared)
        size = I(0)
        for buf in slot:
            size = L.maximum(size, nbytes(buf))
        shared = shared + aligned(size)
    own_at, own = [], I(0)
    for buf in entry.workspace:
        own_at.append(own)
        own = own + aligned(nbytes(buf))
    share = L.cmp(">", own - shared, I(SHARING_MIN_SAVING))
    offsets = [L.Select(share, slot_at[entry.slot_of[buf.index]], own_at[buf.index])
               for buf in entry.workspace]
    return offsets, L.Select(share, shared, own)
