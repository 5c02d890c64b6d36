"""Parallel loops: each kernel's outer loops become one `parallel` loop run
by the runtime's thread pool.

Per top-level loop nest of a kernel (or of a top-level If's branch):
  - the perfect nest of outer loops is fused into one loop over the product
    of their extents (so a batch-1 kernel still has the tiles along its
    other dims to share out), keeping the innermost loop serial when it is a
    plain elementwise loop (LLVM vectorizes it);
  - a lone elementwise loop is strip-mined into chunks of CHUNK iterations;
  - the loop gets a `grain`, the fewest iterations worth a task: GRAIN_COST
    work units divided by an estimate of one iteration's work (an index
    expression when extents are symbolic, so the threshold applies at run
    time: the pool runs loops shorter than two grains inline);
  - nests whose total work is a constant below GRAIN_COST stay serial.

Only loops whose every iteration writes its own elements are parallelized:
each store to a global buffer must index by every fused loop variable, in
its address arithmetic (a scatter, whose row is a loaded token, stays
serial: its sum is then also in one fixed order, so deterministic).
"""
from __future__ import annotations

import math
from dataclasses import replace

from ..ir import loops as L

GRAIN_COST = 65536   # work units (an op, scalar or vector) worth a task: a few us
CHUNK = 4096         # iterations per chunk of a strip-mined 1-D loop


def parallelize(prog: L.LoopProgram) -> L.LoopProgram:
    """Mark the outer loops of every kernel with enough work parallel (pure)."""
    entries = [replace(e, kernels=[replace(k, body=_kernel(k.body)) for k in e.kernels])
               for e in prog.entries]
    return replace(prog, entries=entries)


def _kernel(s: L.Stmt) -> L.Stmt:
    if isinstance(s, L.Seq):
        return L.Seq([_kernel(b) for b in s.body])
    if isinstance(s, L.If):   # a kernel of variants chosen at run time (packed_dense)
        return L.If(s.cond, _kernel(s.then))
    if isinstance(s, L.For) and s.kind == "serial":
        return _nest(s)
    return s


def cost(s: L.Stmt) -> L.Expr:
    """Work units of running s once: ops per store, times loop extents
    (a vectorized loop counts once: its lanes run together)."""
    def units(x: L.Stmt, inner: list[L.Expr]) -> L.Expr:
        if isinstance(x, L.Store):
            # Ops as written, an operand used twice counted twice (L.fold visits it once).
            ops = L.fold(x.value, lambda e, kids: sum(kids) + isinstance(e, (L.Bin, L.Call, L.Load)))
            return L.Const(1 + ops, L.INDEX)
        if isinstance(x, L.For):
            # as for the first iteration: an inner extent may depend on the var (edge tiles)
            body = L.substitute(inner[0], {x.var: L.Const(0, L.INDEX)})
            return body if x.kind == "vectorized" else x.extent * body
        if isinstance(x, (L.Allocate, L.If)):
            return inner[0]
        if isinstance(x, L.Seq):
            total: L.Expr = L.Const(0, L.INDEX)
            for c in inner:
                total = total + c
            return total
        raise TypeError(x)
    return L.fold(s, units, L.stmt_children)


def addresses_by(index: L.Expr, var: L.Var) -> bool:
    """index uses var in its own arithmetic, not only through a loaded
    value: a scatter's row `tok[p]` depends on p, yet two iterations may
    read the same token and add into the same row."""
    stack = [index]
    while stack:
        x = stack.pop()
        if x is var:
            return True
        if not isinstance(x, L.Load):
            stack.extend(L.children(x))
    return False


def independent(loops: list[L.For], body: L.Stmt) -> bool:
    """Every store to a global buffer in body indexes by each loop var of
    `loops` (of extent other than 1) in its address arithmetic: iterations
    write disjoint elements."""
    stores = [st for st in L.stmts_of(body) if isinstance(st, L.Store) and st.buf.kind != "local"]
    return bool(stores) and all(
        addresses_by(st.index, lp.var) for st in stores for lp in loops
        if not (isinstance(lp.extent, L.Const) and lp.extent.value == 1))


def _nest(top: L.For) -> L.Stmt:
    chain = [top]
    # The nest ends at a loop whose extent depends on an outer one (a band
    # of tiles): the fused loop's extent is a product of the others'.
    while isinstance(chain[-1].body, L.For) and chain[-1].body.kind == "serial" and \
            not any(L.depends_on(chain[-1].body.extent, lp.var) for lp in chain):
        chain.append(chain[-1].body)
    body = chain[-1].body
    if L.plain_stores(body) and len(chain) > 1:
        body = chain.pop()   # the innermost elementwise loop stays serial
    if not independent(chain, body):
        # A loop that no store indexes by (the tile pass's reduction blocks,
        # each adding into the whole output) stays serial around a nest
        # that may be parallel.
        stores = [st for st in L.stmts_of(top.body) if isinstance(st, L.Store) and st.buf.kind != "local"]
        if isinstance(top.body, L.For) and top.body.kind == "serial" and stores \
                and not any(L.depends_on(st.index, top.var) for st in stores):
            return L.For(top.var, top.extent, _nest(top.body))
        return top
    if L.plain_stores(body):  # a lone 1-D loop: strip-mine it
        lp = chain[0]
        t, r = L.Var(f"{lp.var.name}c"), L.Var(f"{lp.var.name}r")
        start = t * CHUNK
        inner = L.For(r, L.minimum(L.Const(CHUNK, L.INDEX), lp.extent - start),
                      L.substitute_stmt(body, {lp.var: start + r}))
        fused = L.For(t, (lp.extent + (CHUNK - 1)) / L.Const(CHUNK, L.INDEX), inner)
    else:
        fused = _fuse(chain, body)
    # Work of one iteration, as for the first one (edge tiles do less).
    per_iter = L.substitute(cost(fused.body), {fused.var: L.Const(0, L.INDEX)})
    total = fused.extent * per_iter
    if isinstance(total, L.Const) and total.value < 2 * GRAIN_COST:
        return top
    if isinstance(per_iter, L.Const):
        grain: L.Expr = L.Const(max(1, math.ceil(GRAIN_COST / max(per_iter.value, 1))), L.INDEX)
    else:
        grain = L.maximum(L.Const(GRAIN_COST, L.INDEX) / L.maximum(per_iter, L.Const(1, L.INDEX)),
                          L.Const(1, L.INDEX))
    return L.For(fused.var, fused.extent, fused.body, "parallel", grain)


def _fuse(chain: list[L.For], body: L.Stmt) -> L.For:
    """One loop over the product of the chain's extents; each original var
    is recovered by division and remainder."""
    if len(chain) == 1:
        return L.For(chain[0].var, chain[0].extent, body)
    t = L.Var("tile" if any(lp.var.name in ("it", "jt") for lp in chain) else "p")
    env, stride = {}, L.Const(1, L.INDEX)
    for lp in reversed(chain):
        q = t / stride if not (isinstance(stride, L.Const) and stride.value == 1) else t
        if isinstance(lp.extent, L.Const) and lp.extent.value == 1:
            env[lp.var] = L.Const(0, L.INDEX)
        else:
            env[lp.var] = q - (q / lp.extent) * lp.extent if lp is not chain[0] else q
        stride = stride * lp.extent
    return L.For(t, stride, L.substitute_stmt(body, env))
