"""Fusion: decide which node values are computed inside their consumers'
kernels instead of being written to memory.

A value is inlined into its consumers when that costs no repeated work:
- an expression without reductions (elementwise chains, broadcasts,
  constants) is inlined when it has one consumer, or is trivially cheap;
- an expression with a reduction (a matmul, a sum) is inlined only into a
  single consumer that reads each element once (an elementwise op or another
  reduction), never into one that re-reads it (a matmul, a broadcast).
So dense + bias + activation becomes one kernel, and so do loss chains.
A reshape of a value in memory is never inlined: it is a view of that
memory, and its flat index would hide the layout from the `tile` pass (a
dense layer after a convolution's flatten would not be register-blocked).
Convolutions stay plain register-blocked products for the `tile` pass: the
zero padding of their input (`pad2d`, a kernel statement of its own) is not
inlined into them, and a convolution is not inlined into a pooling (whose
window would make it a max of several reductions), a reshape (whose flat
index hides the output row), a padding or a Winograd convolution (whose
staged input rows are copies, not a product nest).
A chain of values inlined into one another is cut (a value stored) every
MAX_CHAIN ops: a kernel's expression, and the lowering that builds it, grow
with the chain, which a long program (`x + x + ... + x`, a sum over many
parameters' norms) can make as long as it likes; the examples' longest chains
have 14 ops, and a store per 64 ops costs nothing measurable.
An op lowered as a whole statement (`lower_kernel`) is never inlined, and
counts as a consumer that re-reads its inputs, except `pad2d` and
`winograd_conv2d`, which read each element once (a Winograd chunk's two
edge rows twice), so a pooling is computed inside the padding of its output
or the staged input rows of a Winograd convolution.
A train step's gradients (Function.gradients) are stored, not inlined into
the optimizer's update: the step's kernels are then the same as those of its
grads and apply entries, and the renderer compiles each once for the three
(LeNet's LLVM IR: 2.03 -> 1.38 MB; its update kernels read one stored
gradient, no slower on the benchmarks).
The optimizer's own arithmetic is inlined even where a value has several
readers (SGD's new momentum is both stored and applied to the weight; Adam's
moments likewise): every reader is elementwise, ends in the update kernel of
that shape and reads the same element, so the repeat is a few flops of an
element already in registers, while storing the value costs a pass over a
parameter-sized buffer in memory (CIFAR CNN's fc1: 8 MB written, then read).
"""
from __future__ import annotations

from dataclasses import replace

from collections import Counter

from ..ir.graph import Function, Node, Program
from ..ops.conv import CONV2D, CONV2D_INPUT_GRAD, CONV2D_WEIGHT_GRAD, PAD2D
from ..ops.elementwise import CONSTANT, NUMEL, Elementwise
from ..ops.pool import AVGPOOL, MAXPOOL, non_overlapping
from ..ops.shape import BROADCAST_TO, RESHAPE
from ..ops.winograd import WINOGRAD_CONV2D

CONVS = {CONV2D, CONV2D_INPUT_GRAD, CONV2D_WEIGHT_GRAD}
POOLS = {MAXPOOL, AVGPOOL}
TRIVIAL = {CONSTANT, NUMEL, BROADCAST_TO}
# Consumers whose index forms (a pooling window, a flattened index, a copy of
# rows) would keep a convolution inlined into them from being register-blocked
# by `tile`.
UNBLOCKED = POOLS | {RESHAPE, PAD2D, WINOGRAD_CONV2D}
MAX_CHAIN = 64


def rereads(n: Node) -> bool:
    """Whether n reads some element of its inputs more than once (Op.rereads)."""
    if n.op in POOLS:
        return not non_overlapping(n.attrs)
    if n.op.rereads is None:
        return n.op.lower_kernel is not None
    return n.op.rereads


def fuse(program: Program) -> Program:
    """Mark inlined values in every function (pure: returns a new program)."""
    out = replace(program, functions={})
    for fn in program.functions.values():
        out.functions[fn.name] = Function(**{**fn.__dict__, "inlined": plan(fn)})
    return out


def plan(fn: Function) -> set[int]:
    consumers = fn.readers()
    pinned = {id(v) for v in (*fn.outputs.values(), *fn.gradients.values())}
    # An assign reads its new value once per element, like an elementwise op.
    assigned = Counter(id(v) for _, v in fn.assigns)
    update_only = _read_only_by_updates(fn, consumers, assigned)
    inlined: set[int] = set()
    has_reduce: dict[int, bool] = {}
    has_conv: dict[int, bool] = {}
    chain: dict[int, int] = {}   # ops in the longest chain of inlined values ending here
    for n in fn.nodes:  # producers first: a value's cost includes its inlined inputs
        key = id(n.out)
        chain[key] = 1 + max((chain[id(v)] for v in n.inputs if id(v) in inlined), default=0)
        has_reduce[key] = n.op.reduces or any(
            has_reduce.get(id(v), False) for v in n.inputs if id(v) in inlined)
        has_conv[key] = n.op in CONVS or any(
            has_conv.get(id(v), False) for v in n.inputs if id(v) in inlined)
        users = consumers.get(key, [])
        n_users = len(users) + assigned[key]
        if key in pinned or n_users == 0 or n.op.lower_kernel is not None or n.op.stored \
                or chain[key] >= MAX_CHAIN:
            continue
        if n.op.same_order_as_input and id(n.inputs[0]) not in inlined:
            continue   # a view
        if has_reduce[key]:
            ok = n_users == 1 and not any(rereads(u) or (u.op in UNBLOCKED and has_conv[key])
                                          for u in users)
        else:
            ok = n.op in TRIVIAL or n_users == 1 or key in update_only
        if ok:
            inlined.add(key)
    return inlined


def _read_only_by_updates(fn: Function, consumers: dict[int, list[Node]], assigned: Counter) -> set[int]:
    """ids of the values that only assigns read, directly or through
    elementwise ops (same index) whose values only assigns read: each one's
    element is computed in the update kernel of its shape, however many
    readers it has."""
    out: set[int] = set()
    for n in reversed(fn.nodes):   # readers first
        key = id(n.out)
        users = consumers.get(key, [])
        if (assigned[key] or users) and all(
                isinstance(u.op, Elementwise) and id(u.out) in out for u in users):
            out.add(key)
    return out
