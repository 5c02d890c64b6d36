"""Reduction lowering: each `Reduce` expression becomes a scalar accumulator
(a local buffer) and a loop nest that fills it, placed just before the
statement that uses it."""
from __future__ import annotations

import itertools
from dataclasses import replace

from ..ir import loops as L

INITS = {"sum": 0.0, "max": float("-inf")}


def lower_reductions(prog: L.LoopProgram) -> L.LoopProgram:
    """Replace every Reduce by an accumulator loop (pure)."""
    counter = itertools.count()
    entries = [replace(e, kernels=[L.Kernel(k.name, _stmt(k.body, counter)) for k in e.kernels])
               for e in prog.entries]
    return replace(prog, entries=entries)


def _stmt(s: L.Stmt, counter) -> L.Stmt:
    return L.rewrite(s, lambda x: _store(x, counter) if isinstance(x, L.Store) else None)


def _store(s: L.Store, counter) -> L.Stmt:
    pre: list[L.Stmt] = []
    accs: list[L.Buffer] = []
    index = _hoist(s.index, pre, accs, counter)
    value = _hoist(s.value, pre, accs, counter)
    if not accs:
        return s
    out: L.Stmt = L.Seq(pre + [L.Store(s.buf, index, value, s.accumulate)])
    for acc in accs:
        out = L.Allocate(acc, out)
    return out


def _hoist(e: L.Expr, pre: list[L.Stmt], accs: list[L.Buffer], counter) -> L.Expr:
    """e without Reduce nodes; their accumulator loops are appended to pre."""
    if isinstance(e, L.Reduce):
        body_pre: list[L.Stmt] = []
        body = _hoist(e.body, body_pre, accs, counter)
        acc = L.Buffer(f"acc{next(counter)}", e.dtype, "local", -1, L.Const(1, L.INDEX))
        accs.append(acc)
        zero = L.Const(0, L.INDEX)
        old = L.Load(acc, zero)
        new = old + body if e.kind == "sum" else L.maximum(old, body)
        loop = L.nest(list(zip(e.vars, e.extents)), L.Seq(body_pre + [L.Store(acc, zero, new)]))
        pre += [L.Store(acc, zero, L.const_like(INITS[e.kind], e.dtype)), loop]
        return L.Load(acc, zero)
    if isinstance(e, (L.Const, L.Var)):
        return e
    if isinstance(e, L.Load):  # and LaneSum
        return replace(e, index=_hoist(e.index, pre, accs, counter))
    if isinstance(e, L.Bin):
        return L.Bin(e.op, _hoist(e.a, pre, accs, counter), _hoist(e.b, pre, accs, counter), e.dtype)
    if isinstance(e, L.Call):
        return L.Call(e.fn, tuple(_hoist(a, pre, accs, counter) for a in e.args), e.dtype)
    if isinstance(e, L.Select):
        return L.Select(*(_hoist(x, pre, accs, counter) for x in (e.cond, e.a, e.b)))
    if isinstance(e, L.Cast):
        return L.Cast(_hoist(e.value, pre, accs, counter), e.dtype)
    raise TypeError(e)
