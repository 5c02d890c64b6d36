"""Recurrences that give h alone: a `recurrence` whose every reader takes h
(a `slice_last` of its first `hidden` columns), and that is not itself
returned or assigned, gets attr h_only: its output is then h, [batch,
time, hidden], which those readers read in place of their slices.

Why: the output packs, per step, what the backward pass needs (for the
LSTM [h | c | i f g o], ops/sequence.py). A model (inference) entry needs
h alone, and the kernel stores h alone there, but into the packed layout,
from which the slice then copied it out: for the LSTM benchmark's whole
sequence at batch 128, a memmove of a fifteenth of its time. A train
step's recurrence is read by its gradient, so it keeps the packed output.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir.graph import Function, Node, Program, Value
from ..ops.sequence import RECURRENCE, SLICE_LAST


def trim_recurrences(program: Program) -> Program:
    """Give h alone from the recurrences that only h is read from (pure)."""
    return replace(program, functions={name: _function(fn) for name, fn in program.functions.items()})


def _h_only(n: Node, readers: list[Node], escaping: set[int]) -> bool:
    H = n.attrs["hidden"]
    return n.out.type.shape[-1] != H and id(n.out) not in escaping and bool(readers) and all(
        r.op is SLICE_LAST and r.attrs["start"] == 0 and r.attrs["size"] == H for r in readers)


def _function(fn: Function) -> Function:
    readers, escaping = fn.readers(), fn.escaping()
    vmap: dict[int, Value] = {}   # id of an old value -> the value replacing it
    m = lambda v: vmap.get(id(v), v)
    nodes: list[Node] = []
    for n in fn.nodes:
        if id(n.out) in vmap:   # a slice of h, now the recurrence's output itself
            continue
        ins = tuple(m(v) for v in n.inputs)
        if n.op is RECURRENCE and _h_only(n, readers.get(id(n.out), []), escaping):
            attrs = {**n.attrs, "h_only": True}
            new = Node(RECURRENCE, ins, attrs, RECURRENCE.infer([v.type for v in ins], attrs), n.span)
            for r in readers[id(n.out)]:
                vmap[id(r.out)] = new.out
        else:
            new = n if ins == n.inputs else Node(n.op, ins, n.attrs, n.out.type, n.span)
        if new is not n:
            vmap[id(n.out)] = new.out
        nodes.append(new)
    return fn.with_nodes(nodes, m)
