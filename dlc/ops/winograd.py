"""Winograd convolution F(2x2, 3x3) (Lavin and Gray, 2016), as oneDNN and
NNPACK use it for 3x3 convolutions of stride 1: each 2x2 block of outputs
(a tile) of each filter is computed from a 4x4 input patch with 16
products per input channel instead of 36,

    Y = A^T [ sum_c (G g G^T) * (B^T d B) ] A        (* elementwise 4x4)

so per tile and each of the 16 positions xi of the 4x4 transformed domain
the sum over channels is a matrix product M[xi] = U[xi] (K x C) @ V[xi]
(C x tiles): 2.25x fewer multiplies than the direct convolution.

The `winograd` graph pass (dlc/passes/graph_winograd.py) puts two ops in
place of a conv2d (and its bias add and relu):

- `winograd_input`: the convolution's input, zero-padded (conv2d's
  `pad2d` folds into it), in the layout the input transform reads with
  vector loads, columns split by parity: xw[n, c, y, p, q] = padded
  x[n, c, y, 2q + p], zero past its end, sized for whole tiles
  (2 * tiles + 2 rows, tiles + 1 columns of each parity). The 4x4 patch of
  tile (ty, tx) is then rows 2ty.. of columns q = tx, tx + 1 of each
  parity: contiguous in tx.
- `winograd_conv2d` (xw, weight[, bias], relu): one kernel (`lower_kernel`):
  U = G g G^T for all filters and channels (of a param: cached in the
  session, recomputed when the weights changed), then in parallel
  over chunks of `rows` tile rows of one image (T = rows * tiles per row
  tiles), per chunk in its task's scratch (V and M, at most
  CHUNK_BYTES, stay in L2: unchunked, the transformed tiles of a batch of
  64 are 100+ MB): the input transform
  V[xi][c][t], the 16 products M[xi][k][t] (plain product nests that the
  `tile` pass register-blocks), and the output transform A^T m A (+ bias,
  relu) into y, two output columns per tile stored together (an
  interleaved pair of stores LLVM vectorizes).

Neither op has a gradient rule: the pass runs after autodiff and replaces
forward values only; gradients come from conv2d's own rule.

Rounding: the transforms add and subtract up to 16 terms of both signs,
so fp32 results differ from a direct convolution by a few ulp of the
largest terms (see tests/ops/test_winograd.py for the tolerance).
"""
from __future__ import annotations

import numpy as np

from ..codegen.compiler import vector_registers
from ..ir import loops as L
from ..ir.graph import TensorType
from ..lower import flat_index
from .base import Op, register
from .conv import CONV2D

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
# Parallel tasks of a convolution, at most SLOTS, each with its chunk's V
# and M in a region of workspace (local buffers would be unsafe: a
# product's ragged edge tile stores whole vectors into locals). Task s of P
# uses region s * SLOTS / P: the pool gives each thread an equal run of
# tasks, so each thread's regions are the same part of the workspace in
# every Winograd convolution, which the memory planner gives the same slot.
# (With region s, a task wrote where another thread's task of the
# convolution before had, and the lines moved between the cores' caches on
# every call: in a variant with 8 slots, batch-1 CIFAR inference took 0.47 ms
# instead of 0.40 when the two cores were on different dies.)
SLOTS = 16
REGION = CHUNK_BYTES // 4 + 32 * XI_PAD   # floats: V and M, each padded


def tiles(size: int) -> int:
    """2x2 output tiles along an output axis of `size`."""
    return (size + 1) // 2


def _when_changed(source, seen: L.Buffer, n: int, update: L.Stmt) -> L.Stmt:
    """`update`, then seen = source, if any of the n elements of `source`
    (an accessor of a flat index) differs from `seen`. The comparison is a
    vector of per-lane flags (not ==, so a NaN counts as a change), read
    only: when nothing changed, no cache line is written."""
    W = vector_registers()[0] // L.DTYPE_BYTES[seen.dtype]
    I = lambda v: L.Const(v, L.INDEX)
    zero, one = L.const_like(0, seen.dtype), L.const_like(1, seen.dtype)
    flags = L.Buffer("changed", seen.dtype, "local", -1, I(W))
    iv, lane, it, i = L.Var("iv"), L.Var("l"), L.Var("it"), L.Var("i")

    def note(at: L.Expr, i: L.Expr) -> L.Stmt:
        differs = L.Select(L.cmp("==", source(i), L.Load(seen, i)), zero, one)
        return L.Store(flags, at, L.maximum(L.Load(flags, at), differs))

    head = (n // W) * W
    return L.Allocate(flags, L.Seq([
        L.For(lane, I(W), L.Store(flags, lane, zero), "vectorized"),
        L.loop(iv, I(n // W), L.For(lane, I(W), note(lane, iv * W + lane), "vectorized")),
        L.loop(it, I(n - head), note(I(0), it + head)),
        L.loop(lane, I(W - 1), L.Store(flags, I(0), L.maximum(L.Load(flags, I(0)),
                                                               L.Load(flags, lane + 1)))),
        L.If(L.cmp(">", L.Load(flags, I(0)), zero),
             L.Seq([update, L.For(i, I(n), L.Store(seen, i, source(i)))]))]))


class WinogradInput(Op):
    """x [n, c, h, w] zero-padded by `padding` (ph, pw) on each side and
    laid out as [n, c, 2*th + 2, 2, tw + 1]: padded x[n, c, y, 2q + p] at
    [n, c, y, p, q], zero past its end (attrs: padding, tiles = (th, tw)).

    Lowered as loops over rows (`lower_kernel`): zero rows, and per row of
    x and parity three spans of columns, zeros, x's (loads of stride 2: a
    vector load pair and a shuffle) and zeros, so no load needs a bounds
    check (a select on a clamped index would make it a gather)."""
    name = "winograd_input"

    def infer(self, ins, attrs) -> TensorType:
        x, (th, tw) = ins[0], attrs["tiles"]
        return TensorType(x.dtype, x.shape[:2] + (2 * th + 2, 2, tw + 1))

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        N, C, H, W = node.inputs[0].type.shape
        (ph, pw), (th, tw) = node.attrs["padding"], node.attrs["tiles"]
        rows, cols = 2 * th + 2, tw + 1
        I = lambda v: L.Const(v, L.INDEX)
        zero = L.const_like(0, out.dtype)

        def image_rows(first: int, count: int, fill) -> L.Stmt:
            n, c, y = ctx.var("n"), ctx.var("c"), ctx.var("y")
            at = lambda p, q: flat_index(ctx, [n, c, y + first, p, q], node.out.type.shape)
            return L.loop(n, ctx.dim(N), L.loop(c, I(C), L.loop(y, I(count), fill(n, c, y, at))))

        def zeros(n, c, y, at):
            j = ctx.var("j")   # both parities: 2 * cols contiguous elements
            return L.For(j, I(2 * cols), L.Store(out, at(I(0), j), zero))

        def data(n, c, y, at):
            spans = []
            for p in (0, 1):
                lo, hi = (pw - p + 1) // 2, (W + pw - p + 1) // 2   # q with 0 <= 2q + p - pw < W
                for start, end, value in ((0, lo, lambda q: zero),
                                          (lo, hi, lambda q, p=p: ins[0]([n, c, y, q * 2 + (p - pw)])),
                                          (hi, cols, lambda q: zero)):
                    q = ctx.var("q")
                    spans.append(L.loop(q, I(end - start), L.Store(out, at(I(p), q + start), value(q + start))))
            return L.Seq(spans)

        return L.Seq([image_rows(0, ph, zeros), image_rows(ph, H, data),
                      image_rows(ph + H, rows - ph - H, zeros)])

    def reference(self, x, *, padding, tiles):
        (ph, pw), (th, tw) = padding, tiles
        n, c, h, w = x.shape
        xp = np.zeros((n, c, 2 * th + 2, 2 * tw + 2), x.dtype)
        xp[:, :, ph:ph + h, pw:pw + w] = x
        return xp.reshape(n, c, 2 * th + 2, tw + 1, 2).transpose(0, 1, 2, 4, 3).copy()


class WinogradConv2d(Op):
    """y = conv2d(x, weight) (+ bias) (relu), 3x3, stride 1, no padding (x
    comes padded), from xw = winograd_input(x). attrs: size (the output's
    (h, w)), relu, rows (tile rows per chunk). See the module docstring;
    no gradient rule (forward values only)."""
    name = "winograd_conv2d"

    def infer(self, ins, attrs) -> TensorType:
        xw, w = ins[:2]
        return TensorType(xw.dtype, (xw.shape[0], w.shape[0]) + tuple(attrs["size"]))

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        xw_t, w_t = node.inputs[0].type, node.inputs[1].type
        N, C, rows_in, _, tw1 = xw_t.shape
        K = w_t.shape[0]
        th, tw = (rows_in - 2) // 2, tw1 - 1
        OH, OW = node.attrs["size"]
        R = node.attrs["rows"]
        T = R * tw
        xw, w = ins[0], ins[1]
        bias = ins[2] if len(ins) > 2 else None
        dtype = out.dtype
        I = lambda v: L.Const(v, L.INDEX)

        # U[xi][k][c] = (G g G^T)[xi]. Of a param, U is cached in the session
        # with the weights it was computed from, and recomputed only when they
        # changed: batch-1 CIFAR inference spent a sixth of its CPU time on
        # it, and as one thread wrote U and both read it, U crossed between
        # the cores' caches on every call (costliest when they sit on
        # different dies).
        su, sv, sm = K * C + XI_PAD, C * T + XI_PAD, K * T + XI_PAD   # xi strides
        weight = node.inputs[1]
        cached = weight.kind == "param"
        U = ctx.cache(f"{weight.name}.winograd", dtype, 16 * su) if cached \
            else ctx.scratch(dtype, I(16 * su))
        # Per filter, W channels at once (a vector of each of the 16 U
        # values, the taps gathered), then the rest one by one.
        W = vector_registers()[0] // L.DTYPE_BYTES[dtype]
        k = ctx.var("k")

        def filters_at(c: L.Expr) -> L.Stmt:
            u = _sandwich(G, G, lambda a, b: w([k, c, I(a), I(b)]))
            return L.Seq([L.Store(U, (i * 4 + j) * su + k * C + c, u[i][j]) for i in range(4) for j in range(4)])

        cv, lane, ct = ctx.var("cv"), ctx.var("l"), ctx.var("ct")
        filt = L.For(k, I(K), L.Seq([
            L.loop(cv, I(C // W), L.For(lane, I(W), filters_at(cv * W + lane), "vectorized")),
            L.loop(ct, I(C % W), filters_at(ct + (C // W) * W))]))
        if cached:
            seen = ctx.cache(f"{weight.name}.winograd_of", dtype, K * C * 9)
            flat = lambda i: w([I(0), I(0), I(0), i])   # element i of the contiguous weights
            filt = _when_changed(flat, seen, K * C * 9, filt)

        # Chunks are shared out over SLOTS parallel tasks (fewer when there are
        # fewer chunks), each with its own V and M in a region of workspace:
        # task `slot` takes chunks slot, slot + P, ... (image n, tile rows
        # from ty0: loop variables, so that the many loads' indices stay short).
        slot, n, cy = ctx.var("slot"), ctx.var("n"), ctx.var("cy")
        per_image = th // R
        P = L.minimum(I(SLOTS), ctx.dim(N) * per_image)
        ch = n * per_image + cy
        ty0 = cy * R
        region = max(REGION, 16 * (sv + sm))   # more only for chunks past CHUNK_BYTES
        V = M = ctx.scratch(dtype, I(SLOTS * region))   # one buffer: V, then M
        v0 = slot * I(SLOTS) / P * I(region)
        m0 = v0 + 16 * sv

        # V[xi][c][t] = (B^T d B)[xi], t = r * tw + tx: one vector store per
        # xi, the patch's loads contiguous in tx.
        c1, r1, tx1 = ctx.var("c"), ctx.var("r"), ctx.var("tx")
        v = _sandwich(BT, BT, lambda rr, s: xw([n, c1, (ty0 + r1) * 2 + rr, I(s % 2), tx1 + s // 2]))
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
        # last column; the odd last row is skipped.
        k3, r3, tx3 = ctx.var("k"), ctx.var("r"), ctx.var("tx")
        at = lambda i, j, txe: L.Load(M, m0 + (i * 4 + j) * sm + k3 * T + r3 * tw + txe)

        def value(a, b, txe):
            e = _sandwich(AT, AT, lambda i, j: at(i, j, txe))[a][b]
            if bias is not None:
                e = e + bias([k3])
            return L.maximum(e, 0.0) if node.attrs["relu"] else e

        def row(a):
            oy = (ty0 + r3) * 2 + a
            y_at = lambda col: flat_index(ctx, [n, k3, oy, col], node.out.type.shape)
            pairs = L.loop(tx3, I(OW // 2), L.Seq([L.Store(out, y_at(tx3 * 2 + b), value(a, b, tx3))
                                                   for b in (0, 1)]))
            stmts = [pairs]
            if OW % 2:
                stmts.append(L.Store(out, y_at(I(OW - 1)), value(a, 0, I(tw - 1))))
            body = L.Seq(stmts)
            return L.If(L.cmp("<", oy, OH), body) if OH % 2 and a == 1 else body

        outputs = L.For(k3, I(K), L.For(r3, I(R), L.Seq([row(0), row(1)])))
        chunk = L.Seq([inputs, products, outputs])
        mine = L.cmp("==", ch - (ch / P) * P, slot)
        tasks = L.For(slot, P, L.For(n, ctx.dim(N), L.For(cy, I(per_image), L.If(mine, chunk))),
                      "parallel", I(1))
        return L.Seq([filt, tasks])

    def reference(self, xw, w, bias=None, *, size, relu, rows):
        n, c, rows_in, _, tw1 = xw.shape
        x = xw.transpose(0, 1, 2, 4, 3).reshape(n, c, rows_in, 2 * tw1)
        oh, ow = size
        y = CONV2D.reference(x[:, :, :oh + 2, :ow + 2], w, kernel=(3, 3), stride=(1, 1),
                             padding=(0, 0), dilation=(1, 1), groups=1)
        if bias is not None:
            y = y + bias.reshape(1, -1, 1, 1)
        return np.maximum(y, 0) if relu else y


WINOGRAD_INPUT = register(WinogradInput())
WINOGRAD_CONV2D = register(WinogradConv2d())
