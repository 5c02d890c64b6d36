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
    free_after: list[int] = []  # per slot: the last kernel that reads it
    for buf in sorted(entry.workspace, key=lambda b: first.get(b.index, 0)):
        start, end = first.get(buf.index, 0), last.get(buf.index, 0)
        slot = next((s for s, f in enumerate(free_after) if f < start), None)
        if slot is None:
            slot = len(free_after)
            free_after.append(end)
        free_after[slot] = end
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
