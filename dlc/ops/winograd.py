"""Winograd convolution F(2x2, 3x3) (Lavin and Gray, 2016), as oneDNN and
NNPACK use it for 3x3 convolutions of stride 1: each 2x2 block of outputs
(a tile) of each filter is computed from a 4x4 input patch with 16
products per input channel instead of 36,

    Y = A^T [ sum_c (G g G^T) * (B^T d B) ] A        (* elementwise 4x4)

so per tile and each of the 16 positions xi of the 4x4 transformed domain
the sum over channels is a matrix product M[xi] = U[xi] (K x C) @ V[xi]
(C x tiles): 2.25x fewer multiplies than the direct convolution.

The `winograd` graph pass (dlc/passes/graph_winograd.py) puts one op,
`winograd_conv2d` (x, weight[, bias]; attrs padding, relu, pool), in place
of a conv2d (its `pad2d`, its bias add and relu, and a 2x2 max pooling
after them). Its kernel (`lower_kernel`):
U = G g G^T for all filters and channels (of a param: cached in the
session, recomputed when the weights changed), then in parallel over
chunks of `rows` tile rows of one image (T = rows * tiles per row tiles),
per chunk in its task's region of scratch (at most CHUNK_BYTES, so that
it stays in L2: unchunked, the transformed tiles of a batch of 64 are
100+ MB):
- the chunk's input rows, zero-padded, staged in the layout the input
  transform reads with vector loads, columns split by parity: S[c, y, p,
  q] = padded x[n, c, 2 * ty0 + y, 2q + p] (2 * rows + 2 rows, tiles + 1
  columns of each parity), so the 4x4 patch of tile (r, tx) is rows 2r..
  of columns q = tx, tx + 1 of each parity: contiguous in tx. Staged per
  chunk, x's rows are read by the thread that computes from them (which,
  as a convolution before shares out rows too, mostly wrote them), and a
  pooling before the convolution is computed here (`fuse` inlines it);
- the input transform V[xi][c][t];
- the 16 products M[xi][k][t] (plain product nests that the `tile` pass
  register-blocks);
- the output transform A^T m A (+ bias, relu) into y, two output columns
  per tile stored together (an interleaved pair of stores LLVM
  vectorizes); or, when a 2x2 max pooling of stride 2 follows (the pass
  absorbs it: its windows are the tiles), each tile's maximum.

With attr `flip`, the op is a 3x3 convolution's input gradient
(conv2d_input_grad: the output gradient, zero-padded, convolved with the
weight's filters transposed and turned half round): its filter g[k][c] is
weight[c, k, 2 - a, 2 - b].

The op has no gradient rule: the pass runs after autodiff and replaces
forward values (and input gradients) only; gradients come from conv2d's own
rule.

Rounding: the transforms add and subtract up to 16 terms of both signs,
so fp32 results differ from a direct convolution by a few ulp of the
largest terms (see tests/ops/test_winograd.py for the tolerance).
"""
from __future__ import annotations

import numpy as np

from ..ir import loops as L
from ..ir.graph import TensorType
from ..lower import flat_index
from .base import Op, register
from .cache import when_changed
from .conv import CONV2D
from .pool import MAXPOOL

# The F(2x2, 3x3) transforms (Lavin and Gray's B^T, G, A^T).
BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def _combine(coefs, terms) -> L.Expr:
    """sum of c * t over the nonzero c (1 and -1 as additions and subtractions)."""
    out = None
    for c, t in zip(coefs, terms):
        if c == 0:
            continue
        if out is None:
            out = t if c == 1 else t * float(c)
        elif c in (1, -1):
            out = out + t if c == 1 else out - t
        else:
            out = out + t * float(c)
    return out


def _sandwich(left, right, d) -> list[list[L.Expr]]:
    """out[i][j] = sum over r, s of left[i][r] * d(r, s) * right[j][s]: the
    rows combined after the columns, each column sum shared by the rows."""
    cols = {(r, j): _combine(right[j], [d(r, s) for s in range(len(right[j]))])
            for r in range(len(left[0])) for j in range(len(right))}
    return [[_combine(left[i], [cols[r, j] for r in range(len(left[i]))]) for j in range(len(right))]
            for i in range(len(left))]


# The 16 positions xi of U, V and M lie XI_PAD elements (a cache line) more
# than their size apart: the transforms write (and read) 16 streams at once,
# and streams a multiple of 4 KB apart would share one L1 set (measured: the
# filter transform of 64x64 filters ran 10x slower).
XI_PAD = 16
# A chunk's V and M together: at most CHUNK_BYTES (the pass picks the chunk
# rows), so that they stay in L2.
CHUNK_BYTES = 512 * 1024
# Parallel tasks of a convolution, at most SLOTS, each with its chunk's V,
# M and staged input S in a region of workspace (local buffers would be unsafe: a
# product's ragged edge tile stores whole vectors into locals). Task s of P
# uses region s * SLOTS / P: the pool gives each thread an equal run of
# tasks, so each thread's regions are the same part of the scratch in every
# Winograd convolution (and of the memory, where the planner's slots share
# it).
# (With region s, a task wrote where another thread's task of the
# convolution before had, and the lines moved between the cores' caches on
# every call: in a variant with 8 slots, batch-1 CIFAR inference took 0.47 ms
# instead of 0.40 when the two cores were on different dies.)
SLOTS = 16
REGION = CHUNK_BYTES // 4 + 32 * XI_PAD   # floats: V and M, each padded (S fits beside)


# The max pooling whose windows are the 2x2 output tiles (`pool`).
TILE_POOL = {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0), "dilation": (1, 1)}


def tiles(size: int) -> int:
    """2x2 output tiles along an output axis of `size`."""
    return (size + 1) // 2


class WinogradConv2d(Op):
    """y = conv2d(x, weight, padding) (+ bias) (relu) (maxpool 2x2), 3x3,
    stride 1. attrs: padding, size (the convolution's output (h, w)), relu,
    pool, rows (tile rows per chunk), flip (weight is [C, K, 3, 3], read
    transposed and turned: an input gradient). See the module docstring; no
    gradient rule (forward values only)."""
    name = "winograd_conv2d"
    rereads = False   # a chunk's two edge rows twice: cheap
    reduces = True

    def infer(self, ins, attrs) -> TensorType:
        x, w = ins[:2]
        oh, ow = attrs["size"]
        size = (oh // 2, ow // 2) if attrs["pool"] else (oh, ow)
        return TensorType(x.dtype, (x.shape[0], w.shape[1 if attrs["flip"] else 0]) + size)

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        N, C, H, IW = node.inputs[0].type.shape
        flip = node.attrs["flip"]
        K = node.inputs[1].type.shape[1 if flip else 0]
        OH, OW = node.attrs["size"]
        ph, pw = node.attrs["padding"]
        th, tw = tiles(OH), tiles(OW)
        R = node.attrs["rows"]
        T = R * tw
        x, w = ins[0], ins[1]
        bias = ins[2] if len(ins) > 2 else None
        dtype = out.dtype
        I = lambda v: L.Const(v, L.INDEX)
        zero = L.const_like(0, dtype)
        # U[xi][k][c] = (G g G^T)[xi]. Of a param, U is cached in the session
        # with the weights it was computed from, and recomputed only when they
        # changed: batch-1 CIFAR inference spent a sixth of its CPU time on
        # it, and as one thread wrote U and both read it, U crossed between
        # the cores' caches on every call (costliest when they sit on
        # different dies).
        su, sv, sm = K * C + XI_PAD, C * T + XI_PAD, K * T + XI_PAD   # xi strides
        weight = node.inputs[1]
        # A flipped filter's U[.][k] reads weight[:, k], not a contiguous
        # range (and a train step changes it every call): not cached.
        cached = weight.kind == "param" and not flip
        U = ctx.cache(f"{weight.name}.winograd", dtype, 16 * su) if cached \
            else ctx.scratch(dtype, I(16 * su))
        # Channel by channel, in scalars: it runs only when the weights
        # changed (a train step: as fast as a vector form, whose taps, 9
        # apart, were gathered lane by lane in 3,600 lines of LLVM IR per
        # kernel, a second of the CIFAR CNN's compile time).
        k, c = ctx.var("k"), ctx.var("c")
        u = _sandwich(G, G, lambda a, b: w([c, k, I(2 - a), I(2 - b)]) if flip else w([k, c, I(a), I(b)]))
        filt = L.loop(c, I(C), L.Seq([L.Store(U, (i * 4 + j) * su + k * C + c, u[i][j])
                                      for i in range(4) for j in range(4)]))
        if cached:
            # Filter by filter (U[.][k] comes from weight[k] only), so that the
            # `parallelize` pass may share the comparison out.
            seen = ctx.cache(f"{weight.name}.winograd_of", dtype, K * C * 9)
            flat = lambda i: w([I(0), I(0), I(0), i])   # element i of the contiguous weights
            filt = when_changed(flat, seen, k * (C * 9), C * 9, filt)
        filt = L.For(k, I(K), filt)

        # Chunks are shared out over SLOTS parallel tasks (fewer when there are
        # fewer chunks), each with its own V, M and S in a region of workspace:
        # task `slot` takes chunks slot, slot + P, ... (image n, tile rows
        # from ty0: loop variables, so that the many loads' indices stay short).
        slot, n, cy = ctx.var("slot"), ctx.var("n"), ctx.var("cy")
        per_image = th // R
        P = L.minimum(I(SLOTS), ctx.dim(N) * per_image)
        ch = n * per_image + cy
        ty0 = cy * R
        rows_s, cols_s = 2 * R + 2, tw + 1   # of the staged input rows, S
        region = max(REGION, 16 * (sv + sm) + C * rows_s * 2 * cols_s)   # more only past CHUNK_BYTES
        V = M = S = ctx.scratch(dtype, I(SLOTS * region))   # one buffer: V, M, then S
        v0 = slot * I(SLOTS) / P * I(region)
        m0 = v0 + 16 * sv
        s_at = lambda c, y, p, q: v0 + 16 * (sv + sm) + ((c * rows_s + y) * 2 + p) * cols_s + q

        # S[c, y, p, q] = padded x[n, c, 2 * ty0 + y, 2q + p]: staged rows
        # [lo, hi) are x's, the others zeros. Per row and parity three spans
        # of columns, zeros, x's (loads of stride 2, or 4 from a pooling:
        # vector loads and a shuffle) and zeros, so no load needs a bounds
        # check (a select on a clamped index would make it a gather).
        # Staged per chunk rather than by a kernel of its own for the whole
        # batch: each thread then reads the rows it wrote itself in the
        # convolution before, not the other's (batch-1 CIFAR inference,
        # 12% faster when the two cores sit on different dies).
        first = ty0 * 2 - ph   # x's row at staged row 0
        lo = L.minimum(L.maximum(I(0) - first, I(0)), I(rows_s))
        hi = L.maximum(L.minimum(I(H) - first, I(rows_s)), lo)
        c0 = ctx.var("c")

        def zeros(y):
            j = ctx.var("j")   # both parities: 2 * cols_s contiguous elements
            return L.For(j, I(2 * cols_s), L.Store(S, s_at(c0, y, 0, j), zero))

        def data(y):
            spans = []
            for p in (0, 1):
                lo_q, hi_q = (pw - p + 1) // 2, (IW + pw - p + 1) // 2   # q with 0 <= 2q + p - pw < IW
                for start, end, value in ((0, lo_q, lambda q: zero),
                                          (lo_q, hi_q, lambda q, p=p: x([n, c0, first + y, q * 2 + (p - pw)])),
                                          (hi_q, cols_s, lambda q: zero)):
                    q = ctx.var("q")
                    spans.append(L.loop(q, I(end - start), L.Store(S, s_at(c0, y, p, q + start), value(q + start))))
            return L.Seq(spans)

        def rows(start: L.Expr, count: L.Expr, fill) -> L.Stmt:
            y = ctx.var("y")
            return L.loop(y, count, fill(start + y))

        stage = L.For(c0, I(C), L.Seq([rows(I(0), lo, zeros), rows(lo, hi - lo, data),
                                       rows(hi, I(rows_s) - hi, zeros)]))

        # V[xi][c][t] = (B^T d B)[xi], t = r * tw + tx: one vector store per
        # xi, the patch's loads contiguous in tx.
        c1, r1, tx1 = ctx.var("c"), ctx.var("r"), ctx.var("tx")
        v = _sandwich(BT, BT, lambda rr, s: L.Load(S, s_at(c1, r1 * 2 + rr, s % 2, tx1 + s // 2)))
        inputs = L.For(c1, I(C), L.For(r1, I(R), L.Seq([
            L.For(tx1, I(tw), L.Store(V, v0 + (i * 4 + j) * sv + c1 * T + r1 * tw + tx1, v[i][j]))
            for i in range(4) for j in range(4)])))

        # M[xi][k][t] = sum_c U[xi][k][c] * V[xi][c][t]: the tile pass's
        # `outer` form (t contiguous in M and V, blocked k).
        xi, k2, t, c2 = ctx.var("xi"), ctx.var("k"), ctx.var("t"), ctx.var("c")
        products = L.For(xi, I(16), L.For(k2, I(K), L.For(t, I(T), L.Store(
            M, m0 + xi * sm + k2 * T + t, L.Reduce("sum", (c2,), (I(C),),
                                                   L.Load(U, xi * su + k2 * C + c2) * L.Load(V, v0 + xi * sv + c2 * T + t))))))

        # y = A^T m A (+ bias, relu): per output row, columns 2tx and
        # 2tx + 1 stored by one loop (to the last whole pair), then the odd
        # last column; the odd last row is skipped. With `pool`, the max of
        # each whole tile (the 2x2 window of a max pooling of stride 2).
        k3, r3, tx3 = ctx.var("k"), ctx.var("r"), ctx.var("tx")
        at = lambda i, j, txe: L.Load(M, m0 + (i * 4 + j) * sm + k3 * T + r3 * tw + txe)

        def values(rows_, txe):
            """The tile's outputs in the rows asked (of 0, 1), both columns
            of each: one expression DAG (the column sums are shared)."""
            def finish(e):
                if bias is not None:
                    e = e + bias([k3])
                return L.maximum(e, 0.0) if node.attrs["relu"] else e
            return [[finish(e) for e in row_] for row_ in
                    _sandwich([AT[a] for a in rows_], AT, lambda i, j: at(i, j, txe))]

        def row(a):
            oy = (ty0 + r3) * 2 + a
            y_at = lambda col: flat_index(ctx, [n, k3, oy, col], node.out.type.shape)
            pair = values([a], tx3)[0]
            pairs = L.loop(tx3, I(OW // 2), L.Seq([L.Store(out, y_at(tx3 * 2 + b), pair[b]) for b in (0, 1)]))
            stmts = [pairs]
            if OW % 2:
                stmts.append(L.Store(out, y_at(I(OW - 1)), values([a], I(tw - 1))[0][0]))
            body = L.Seq(stmts)
            return L.If(L.cmp("<", oy, OH), body) if OH % 2 and a == 1 else body

        def pooled():
            py = ty0 + r3
            v = values([0, 1], tx3)
            tile_max = L.maximum(L.maximum(v[0][0], v[0][1]), L.maximum(v[1][0], v[1][1]))
            body = L.loop(tx3, I(OW // 2), L.Store(out, flat_index(ctx, [n, k3, py, tx3], node.out.type.shape),
                                                   tile_max))
            return L.If(L.cmp("<", py, OH // 2), body) if OH % 2 else body

        outputs = L.For(k3, I(K), L.For(r3, I(R), pooled() if node.attrs["pool"] else L.Seq([row(0), row(1)])))
        chunk = L.Seq([stage, inputs, products, outputs])
        mine = L.cmp("==", ch - (ch / P) * P, slot)
        tasks = L.For(slot, P, L.For(n, ctx.dim(N), L.For(cy, I(per_image), L.If(mine, chunk))),
                      "parallel", I(1))
        return L.Seq([filt, tasks])

    def reference(self, x, w, bias=None, *, padding, size, relu, pool, rows, flip):
        if flip:
            w = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        y = CONV2D.reference(x, w, kernel=(3, 3), stride=(1, 1), padding=padding,
                             dilation=(1, 1), groups=1)
        if bias is not None:
            y = y + bias.reshape(1, -1, 1, 1)
        if relu:
            y = np.maximum(y, 0)
        return MAXPOOL.reference(y, **TILE_POOL) if pool else y


WINOGRAD_CONV2D = register(WinogradConv2d())
