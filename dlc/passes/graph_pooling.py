"""Pooling lowering, the backward half: how max pooling's gradient finds
each window's first maximum (the forward half, fusing pooling with its
producer, is graph_fuse's rule for disjoint windows).

Autodiff emits `maxpool_grad(x, y, g)` with saved='recompute': each input
element searches the windows that cover it for their first maximum, reading
x again - ceil(kh/sh) * ceil(kw/sw) windows of kh * kw elements, and no
memory beyond x and y. Where that search is dearer than RECOMPUTE_LIMIT reads
per element (large or overlapping windows, e.g. 3x3 stride 1 costs 81), this
pass switches the node to saved='indices': the forward pass stores each
window's first-max position once (`maxpool_argmax`, i32, output-sized, as
PyTorch keeps its indices) and the gradient reads one index per window.
Neither form keeps a full-size mask.
"""
from __future__ import annotations

import math
from dataclasses import replace

from ..ir.graph import Node, Program, Value, rewrite
from ..ops.pool import MAXPOOL_ARGMAX, MAXPOOL_GRAD

RECOMPUTE_LIMIT = 16


def recompute_reads(attrs: dict) -> int:
    """Reads of x per input element when the gradient recomputes argmaxes."""
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    return math.ceil(kh / sh) * math.ceil(kw / sw) * kh * kw


def lower_pooling(program: Program) -> Program:
    """Choose each max-pooling gradient's form (pure: returns a new program)."""
    out = replace(program, functions={})
    for fn in program.functions.values():
        out.functions[fn.name] = rewrite(fn, _indices)
    return out


def _indices(n: Node, ins: tuple[Value, ...]) -> list[Node] | None:
    """The gradient by saved indices, where recomputing the windows costs more."""
    if not (n.op is MAXPOOL_GRAD and n.attrs["saved"] == "recompute"
            and recompute_reads(n.attrs) > RECOMPUTE_LIMIT):
        return None
    x, y, g = ins
    attrs = {k: v for k, v in n.attrs.items() if k != "saved"}
    arg = Node(MAXPOOL_ARGMAX, (x, y), attrs, MAXPOOL_ARGMAX.infer([x.type, y.type], attrs), n.span)
    attrs = {**attrs, "saved": "indices", "size": x.type.shape[2:]}
    return [arg, Node(MAXPOOL_GRAD, (arg.out, g), attrs, n.out.type, n.span)]
