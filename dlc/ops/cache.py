"""Session caches of values derived from params (Winograd's transformed
filters, a dense layer's weight panels): recomputed by a kernel only when
the params they come from changed since it last ran. Params are live arrays
that a user may write at any time, so the kernel compares rather than trusts
a version count."""
from __future__ import annotations

from ..codegen.compiler import vector_registers
from ..ir import loops as L


# Independent flag vectors: the count of differences in each is a chain of
# adds, and one chain would hold the loop to an add's latency per vector
# (with a NaN-propagating max, three ops: 56 us of the MLP's 80 at batch 4).
CHAINS = 4


def when_changed(source, seen: L.Buffer, base: L.Expr, n: int, update: L.Stmt) -> L.Stmt:
    """`update`, then seen = source, if any of the n elements of `source`
    (an accessor of a flat index) from `base` differs from `seen`'s. The
    comparison counts differences in CHAINS vectors of per-lane counts (not
    ==, so a NaN counts as a change; each count is at most n / W, exact in
    f32), read only: when nothing changed, no cache line is written. The
    last n % (CHAINS * W) elements count in the first lanes, contiguous so
    that `vectorize` makes vectors of them, and the chains are summed as
    vectors then across lanes: as scalar loops, LLVM unrolled them into a
    third of a Winograd kernel's code (and of its compile time)."""
    W = vector_registers()[0] // L.DTYPE_BYTES[seen.dtype]
    I = lambda v: L.Const(v, L.INDEX)
    zero, one = L.const_like(0, seen.dtype), L.const_like(1, seen.dtype)
    flags = L.Buffer("changed", seen.dtype, "local", -1, I(CHAINS * W))
    iv, u, lane, it, i = L.Var("iv"), L.Var("u"), L.Var("l"), L.Var("it"), L.Var("i")

    def note(at: L.Expr, i: L.Expr) -> L.Stmt:
        differs = L.Select(L.cmp("==", source(base + i), L.Load(seen, base + i)), zero, one)
        return L.Store(flags, at, L.Load(flags, at) + differs)

    step = CHAINS * W
    head = (n // step) * step
    return L.Allocate(flags, L.Seq([
        L.For(u, I(CHAINS), L.For(lane, I(W), L.Store(flags, u * W + lane, zero), "vectorized"), "unrolled"),
        L.loop(iv, I(n // step), L.For(u, I(CHAINS), L.For(
            lane, I(W), note(u * W + lane, iv * step + u * W + lane), "vectorized"), "unrolled")),
        L.loop(it, I(n - head), note(it, it + head)),
        L.For(u, I(CHAINS - 1), L.For(lane, I(W), L.Store(
            flags, lane, L.Load(flags, lane) + L.Load(flags, (u + 1) * W + lane)), "vectorized"), "unrolled"),
        L.If(L.cmp(">", L.LaneSum(flags, I(0), W), zero),
             L.Seq([update, L.For(i, I(n), L.Store(seen, base + i, source(base + i)))]))]))
