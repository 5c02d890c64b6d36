"""Kernels shared between entries while the per-kernel loop passes run.

A model's forward and backward kernels stand in its train step and again in
its grads, input_grads and apply entries, and the forward in its inference
entry: the same loops on other buffers (the CIFAR CNN: 176 kernels, 63
different). `share` keeps one kernel of each structure (ir/structure.py);
the passes that transform each kernel on its own (tile, lower_reductions,
parallelize, vectorize) then run once per structure, and `unshare` puts the
others back as that kernel's result on their own buffers, for the passes
that see a whole entry (plan_memory) and the renderer.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InternalError
from ..ir import loops as L
from ..ir.structure import Structure


@dataclass
class Sharing:
    """Per entry, per kernel of the whole program: None where the shared
    program keeps the kernel, else (the kernel, (entry, position) of the kept
    kernel of its structure in the shared program, that kernel's buffers ->
    this kernel's)."""
    places: list[list[tuple[L.Kernel, tuple[int, int], dict] | None]]


def share(prog: L.LoopProgram) -> tuple[L.LoopProgram, Sharing]:
    """prog with the first kernel of each structure only, and how to put the
    others back (pure)."""
    syms, table = set(prog.syms), {}
    kept_at: dict[int, tuple[tuple[int, int], list[L.Buffer]]] = {}
    entries, places = [], []
    for e, entry in enumerate(prog.entries):
        kept, mine = [], []
        for k in entry.kernels:
            structure = Structure(syms, table)
            key = structure.stmt(k.body)
            if key in kept_at:
                at, theirs = kept_at[key]
                ours = structure.buffers()
                mine.append((k, at, {a: b for a, b in zip(theirs, ours) if a is not b}))
            else:
                kept_at[key] = (e, len(kept)), structure.buffers()
                kept.append(k)
                mine.append(None)
        entries.append(replace(entry, kernels=kept))
        places.append(mine)
    return replace(prog, entries=entries), Sharing(places)


@dataclass(frozen=True)
class Copy:
    """A kernel body `unshare` made: `of` (a kept kernel's body) on other
    buffers (of's -> its own). The renderer calls of's function for it."""
    body: L.Stmt
    of: L.Stmt
    buffers: dict


def unshare(prog: L.LoopProgram, sharing: Sharing) -> tuple[L.LoopProgram, dict[int, Copy]]:
    """The whole program again from the shared one (after per-kernel passes,
    which keep each entry's kernels in order, one for one), and the copies
    made, by id of their bodies."""
    entries, copies = [], {}
    for entry, mine in zip(prog.entries, sharing.places):
        if len(entry.kernels) != sum(p is None for p in mine):
            raise InternalError("kernel_sharing", f"a per-kernel pass changed entry {entry.name}'s kernels")
        kept = iter(entry.kernels)
        kernels = []
        for p in mine:
            if p is None:
                kernels.append(next(kept))
                continue
            k, (e, at), buffers = p
            of = prog.entries[e].kernels[at].body
            body = L.on_buffers(of, buffers)
            copies[id(body)] = Copy(body, of, buffers)
            kernels.append(replace(k, body=body))
        entries.append(replace(entry, kernels=kernels))
    return replace(prog, entries=entries), copies
