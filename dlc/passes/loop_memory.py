"""Memory planning: intermediate buffers whose lifetimes do not overlap share
a workspace slot. Lifetimes are kernel ranges [first write, last read]; a
slot is reused only by a buffer first written after the slot's last read,
so no kernel reads and writes one region through two buffers."""
from __future__ import annotations

from dataclasses import replace

from ..ir import loops as L


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
