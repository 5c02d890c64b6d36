"""Reduction lowering: each `Reduce` expression becomes a scalar accumulator
(a local buffer) and a loop nest that fills it, placed just before the
statement that uses it."""
from __future__ import annotations

import itertools
from collections import ChainMap
from dataclasses import replace

from ..ir import loops as L

INITS = {"sum": 0.0, "max": float("-inf")}


def lower_reductions(prog: L.LoopProgram) -> L.LoopProgram:
    """Replace every Reduce by an accumulator loop (pure)."""
    counter = itertools.count()
    entries = [replace(e, kernels=[replace(k, body=_stmt(k.body, counter)) for k in e.kernels])
               for e in prog.entries]
    return replace(prog, entries=entries)


def _stmt(s: L.Stmt, counter) -> L.Stmt:
    return L.rewrite(s, lambda x: _store(x, counter) if isinstance(x, L.Store) else None)


def _store(s: L.Store, counter) -> L.Stmt:
    if not any(isinstance(x, L.Reduce) for e in (s.index, s.value) for x in L.subexprs(e)):
        return s
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
    """e without Reduce nodes; their accumulator loops are appended to pre,
    those of a Reduce's body to its own loop's body. A node met again (e is
    a DAG: L.fold) is reused if it was rebuilt in this Reduce's body or an
    enclosing one, whose loops run before this point."""
    pres = [pre]                # of the Reduce bodies being rebuilt, innermost last
    memo = ChainMap({})         # of the same scopes, innermost first

    def kids(x: L.Expr) -> tuple[L.Expr, ...]:
        if isinstance(x, L.Reduce):   # its extents stay as they are
            pres.append([])
            memo.maps.insert(0, {})
            return (x.body,)
        return L.children(x)

    def rebuilt(x: L.Expr, args: list[L.Expr]) -> L.Expr:
        if not isinstance(x, L.Reduce):
            return L.with_children(x, args)
        body_pre = pres.pop()
        del memo.maps[0]
        acc = L.Buffer(f"acc{next(counter)}", x.dtype, "local", -1, L.Const(1, L.INDEX))
        accs.append(acc)
        zero = L.Const(0, L.INDEX)
        old = L.Load(acc, zero)
        new = old + args[0] if x.kind == "sum" else L.maximum(old, args[0])
        loop = L.nest(list(zip(x.vars, x.extents)), L.Seq(body_pre + [L.Store(acc, zero, new)]))
        pres[-1] += [L.Store(acc, zero, L.const_like(INITS[x.kind], x.dtype)), loop]
        return L.Load(acc, zero)
    return L.fold(e, rebuilt, kids, memo)
