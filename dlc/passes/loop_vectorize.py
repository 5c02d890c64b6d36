"""Vectorization of elementwise loops: an innermost loop whose body is a
store (or a sequence of them: an optimizer's update), contiguous in the
loop's variable, is strip-mined into a loop over vectors (a `vectorized`
loop of the host's vector width W, rendered with LLVM vector types) and a
scalar loop over the last extent % W iterations.

    for i in 0..n: out[f + i] = e(i)
->  for iv in 0..n / W: for vectorized l in 0..W: out[f + iv*W + l] = e(iv*W + l)
    for it in 0..n % W: out[f + (n/W)*W + it] = e((n/W)*W + it)

Loads that are not contiguous in i are gathered lane by lane by the
renderer. Matmul-like kernels are vectorized by `tile`; reductions into a
scalar accumulator (a store that does not move with i) are left to LLVM.
"""
from __future__ import annotations

from dataclasses import replace

from ..codegen.compiler import vector_registers
from ..ir import loops as L

MIN_EXTENT = 4  # a constant loop shorter than this stays scalar
MAX_GATHERS = 8  # in a body of several stores (see _strip_mine)


def vectorize(prog: L.LoopProgram) -> L.LoopProgram:
    """Strip-mine contiguous innermost store loops into vector loops (pure)."""
    vbytes, _ = vector_registers()
    entries = [replace(e, kernels=[replace(k, body=_stmt(k.body, vbytes)) for k in e.kernels])
               for e in prog.entries]
    return replace(prog, entries=entries)


def _stmt(s: L.Stmt, vbytes: int) -> L.Stmt:
    def innermost_store_loop(x: L.Stmt) -> L.Stmt | None:
        if isinstance(x, L.For) and x.kind == "serial" and L.plain_stores(x.body):
            return _strip_mine(x, vbytes) or x
        return None
    return L.rewrite(s, innermost_store_loop)


def _strip_mine(loop: L.For, vbytes: int) -> L.Stmt | None:
    """The loop over vectors of its stores, all contiguous in its var (or
    an interleaved pair: L.interleaved_pair) and of one element size, then
    the rest; None when they are not."""
    stores = L.plain_stores(loop.body)
    sizes = {L.DTYPE_BYTES.get(st.buf.dtype) for st in stores}
    if None in sizes or len(sizes) > 1:
        return None
    pair = L.interleaved_pair(stores, loop.var)
    if not pair and any(L.stride_of(st.index, loop.var) != 1 for st in stores):
        return None
    loads = [x for st in stores for x in L.subexprs(st.value) if isinstance(x, (L.Load, L.Reduce))]
    if any(isinstance(x, L.Reduce) for x in loads):
        return None
    # A gather is W scalar loads: several stores vectorize with a few (an
    # LSTM cell's gradient, 3 to 6 clamped loads: its train step 20% faster),
    # not with a Winograd filter transform's 144 (16 stores of 9 taps 9
    # apart: 3x its kernel's LLVM IR, 0.4 s of the CIFAR CNN's compile time).
    if len(stores) > 1 and sum(L.stride_of(x.index, loop.var) not in (0, 1) for x in loads) > MAX_GATHERS:
        return None
    st = loop.body
    w = vbytes // sizes.pop()
    n = loop.extent
    if isinstance(n, L.Const):
        if n.value < MIN_EXTENT:
            return None
        while w > n.value:
            w //= 2
    iv, lane, it = L.Var(f"{loop.var.name}v"), L.Var("l"), L.Var(f"{loop.var.name}t")
    full = n / L.Const(w, L.INDEX) if not isinstance(n, L.Const) else L.Const(n.value // w, L.INDEX)
    start = full * w
    rest = n - start
    # Each body substituted once (bodies are big: an unrolled Winograd
    # transform): one vector needs no loop over vectors, no rest no tail.
    one = isinstance(full, L.Const) and full.value == 1
    body = L.substitute_stmt(st, {loop.var: lane if one else iv * w + lane})
    if pair and not L.interleaved_pair(L.plain_stores(body), lane):
        return None   # as the renderer would see it
    vector = L.For(lane, L.Const(w, L.INDEX), body, "vectorized")
    main = vector if one else L.loop(iv, full, vector)
    if isinstance(rest, L.Const) and rest.value <= 0:
        return main
    return L.Seq([main, L.loop(it, rest, L.substitute_stmt(st, {loop.var: start + it}))])
