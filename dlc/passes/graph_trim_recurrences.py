"""Recurrences that give h alone: a `recurrence` read only for h (by a
`slice_last` of its first `hidden` columns, one after cse) and not itself
returned or assigned gets attr h_only: its output is then h, [batch, time,
hidden], which the slice's readers read in its place (the two nodes are a
chain for graph_chains.rewrite_chains).

Why: the output packs, per step, what the backward pass needs (for the
LSTM [h | c | i f g o], ops/sequence.py). A model (inference) entry needs
h alone, and the kernel stores h alone there, but into the packed layout,
from which the slice then copied it out: for the LSTM benchmark's whole
sequence at batch 128, a memmove of a fifteenth of its time. A train
step's recurrence is read by its gradient, so it keeps the packed output.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir.graph import Function, Node, Program
from ..ops.sequence import RECURRENCE, SLICE_LAST
from .graph_chains import rewrite_chains


def trim_recurrences(program: Program) -> Program:
    """Give h alone from the recurrences that only h is read from (pure)."""
    return replace(program, functions={name: _function(fn) for name, fn in program.functions.items()})


def _h_slice(n: Node, readers: list[Node], escaping: set[int]) -> Node | None:
    """The one reader of recurrence n, if it takes h and n is not returned
    (cse leaves one slice of h)."""
    H = n.attrs["hidden"]
    if n.out.type.shape[-1] == H or id(n.out) in escaping or len(readers) != 1:
        return None
    r = readers[0]
    return r if r.op is SLICE_LAST and r.attrs["start"] == 0 and r.attrs["size"] == H else None


def _function(fn: Function) -> Function:
    """The recurrence and its slice of h, a chain (graph_chains), become the
    recurrence with h_only."""
    readers, escaping = fn.readers(), fn.escaping()
    plans, absorbed = {}, set()
    for n in fn.nodes:
        h = _h_slice(n, readers.get(id(n.out), []), escaping) if n.op is RECURRENCE else None
        if h is not None:
            plans[id(h)] = lambda m, n=n: _trimmed(n, tuple(m(v) for v in n.inputs))
            absorbed.add(id(n))
    return rewrite_chains(fn, plans, absorbed)


def _trimmed(n: Node, ins: tuple) -> Node:
    attrs = {**n.attrs, "h_only": True}
    return Node(RECURRENCE, ins, attrs, RECURRENCE.infer([v.type for v in ins], attrs), n.span)
