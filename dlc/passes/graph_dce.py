"""Dead-code elimination on the graph IR: drops nodes no output or assign
needs (gradients of inputs, for instance)."""
from __future__ import annotations

from dataclasses import replace

from ..ir.graph import Function, Program


def eliminate_dead_code(program: Program) -> Program:
    """Remove nodes whose values reach no output and no assign."""
    out = replace(program, functions={})
    for fn in program.functions.values():
        live = {id(v) for v in fn.outputs.values()} | {id(v) for _, v in fn.assigns}
        kept = []
        for n in reversed(fn.nodes):
            if id(n.out) in live:
                kept.append(n)
                live.update(id(v) for v in n.inputs)
        new = Function(**{**fn.__dict__, "nodes": kept[::-1]})
        new.params = {k: v for k, v in fn.params.items() if id(v) in live}
        new.states = {k: v for k, v in fn.states.items() if id(v) in live}
        out.functions[fn.name] = new
    return out
