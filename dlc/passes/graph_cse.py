"""Common-subexpression elimination on the graph IR: a node that computes
what an earlier node of its function computed (the same op, attributes and
inputs) is dropped, and its readers read the earlier value.

Graph ops are pure (writes are the function's assigns), so equal nodes give
equal values. This merges what the frontend and autodiff repeat: a model
called twice on the same arguments (`net(x).probs + net(x).logits`),
a layer's output reread by several gradient rules, a broadcast of the same
constant. Random ops are not merged: each draws its own stream (`salt`).
"""
from __future__ import annotations

from dataclasses import replace

from ..ir.graph import Function, Node, Program, Value, rewrite


def eliminate_common_subexpressions(program: Program) -> Program:
    """Pure: a program whose functions have no two equal nodes."""
    return replace(program, functions={name: _function(fn) for name, fn in program.functions.items()})


def _attrs_key(attrs: dict) -> tuple:
    # repr: attribute values are numbers, strings, tuples and None, whose
    # reprs are equal exactly when they are (0.1 and 0.1000...01 differ).
    return tuple(sorted((k, repr(v)) for k, v in attrs.items()))


def _function(fn: Function) -> Function:
    first: dict[tuple, Value] = {}

    def merge(n: Node, inputs: tuple[Value, ...]) -> list[Node] | Value | None:
        key = (n.op.name, tuple(id(v) for v in inputs), _attrs_key(n.attrs), n.out.type)
        if key in first:
            return first[key]
        kept = n if inputs == n.inputs else Node(n.op, inputs, n.attrs, n.out.type, n.span)
        first[key] = kept.out
        return None if kept is n else [kept]

    return rewrite(fn, merge)
