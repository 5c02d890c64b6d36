"""Shared by the graph passes that replace a chain of nodes (an op and the
bias add, relu, ... after it) with one node: finding the chain's links and
rewriting the function around the replacements."""
from __future__ import annotations

from typing import Callable

from ..ir.graph import Function, Node, Value
from ..ops.elementwise import ADD, RELU


def sole_reader_of(fn: Function) -> Callable[[Value, object], Node | None]:
    """sole_reader(v, op): the one node that reads v, if it is an `op` node
    and v is not an output or an assign (else None)."""
    readers, escaping = fn.readers(), fn.escaping()

    def sole_reader(v: Value, op) -> Node | None:
        rs = readers.get(id(v), [])
        return rs[0] if len(rs) == 1 and rs[0].op is op and id(v) not in escaping else None
    return sole_reader


def bias_relu_chain(n: Node, sole_reader, bias_of: Callable[[Value], Value | None]
                    ) -> tuple[list[Node], Value | None]:
    """n, then what after it one op can absorb: the add of a bias (the
    other operand b of an add of n's type with bias_of(b) not None), then a
    relu, each the sole reader of the value before it. Returns the chain
    and the bias (or None)."""
    chain, bias = [n], None
    add = sole_reader(n.out, ADD)
    if add is not None and add.out.type == n.out.type:
        bias = bias_of(add.inputs[1] if add.inputs[0] is n.out else add.inputs[0])
        if bias is not None:
            chain.append(add)
    act = sole_reader(chain[-1].out, RELU)
    if act is not None:
        chain.append(act)
    return chain, bias


Build = Callable[[Callable[[Value], Value]], Node]


def rewrite_chains(fn: Function, plans: dict[int, Build], absorbed: set[int]) -> Function:
    """fn with each node of id in `plans` (a chain's last) replaced by the
    node its build makes (given the map from old values to new ones), the
    nodes of `absorbed` dropped, and every reader moved to the new values."""
    vmap: dict[int, Value] = {}
    m = lambda v: vmap.get(id(v), v)
    nodes: list[Node] = []
    for n in fn.nodes:
        if id(n) in absorbed:
            continue
        if id(n) in plans:
            new = plans[id(n)](m)
        else:
            ins = tuple(m(v) for v in n.inputs)
            new = n if ins == n.inputs else Node(n.op, ins, n.attrs, n.out.type, n.span)
        if new is not n:
            vmap[id(n.out)] = new.out
        nodes.append(new)
    return fn.with_nodes(nodes, m)
