"""Sequences: embedding, recurrent layers (tanh RNN, LSTM) and picking steps.

Tensors are [batch, time, features]; `time` may be a symbol, so one program
runs any length. Parameters follow PyTorch: `embedding` owns `<name>.weight`
[vocab, dim] ~ N(0, 1) (nn.Embedding); `rnn` and `lstm` own
`<name>.weight_ih` [G*hidden, features], `<name>.weight_hh` [G*hidden, hidden],
`<name>.bias_ih` and `<name>.bias_hh` [G*hidden], G = 1 (rnn) or 4 (lstm,
gates in PyTorch's order i, f, g, o), all ~ U(-1/sqrt(hidden), 1/sqrt(hidden)),
so torch.nn.LSTM's `*_l0` weights load by name (`*_l0_reverse` onto
`<name>.*_reverse` when bidirectional).

A recurrent layer is two nodes:
- the input projection of every step at once, x @ W_ih^T as one large
  product over [batch, time] (`seq_project`);
- a scan over time (`recurrence`, lowered by `lower_kernel` as one kernel)
  that per step adds the biases and h_{t-1} @ W_hh^T and applies the gates.
  Its output packs, per step, what the backward pass needs: for the LSTM
  [h | c | i f g o] (6*hidden), for the RNN h alone. `slice_last` exposes h.
Its gradient is a reverse-time scan (`recurrence_grad`) producing the
gradient of the pre-activation gates, from which the input, W_ih and the
biases get theirs by products and sums, and W_hh by one product with the
shifted hidden states (`seq_outer`).

`lengths` (i32[batch]) gives packed-sequence semantics: an example's steps
at and after its length leave its state unchanged and output zeros. Indices
out of range (tokens outside the vocabulary, lengths outside [1, time]) are
refused by the runtime before a run (`operand_range`); the kernels still
give NaN for them rather than read stray memory, for code that calls an
entry without the runtime.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, Init, TensorType, Value
from ..lower import IndexRange, flat_index, size_of
from .base import Arg, Op, OpError, need_float, register
from .elementwise import add


def _nan(dtype: str) -> L.Expr:
    return L.const_like(float("nan"), dtype)


def _index(e: L.Expr) -> L.Expr:
    return L.Cast(e, L.INDEX)


def _in_range(i: L.Expr, lo, hi: L.Expr) -> L.Expr:
    return L.Bin("and", L.cmp(">=", i, lo), L.cmp("<", i, hi), "bool")


def _unravel(ctx, i: L.Expr, shape) -> list[L.Expr]:
    """The index list of flat (row-major) position i in shape."""
    idx = []
    for d in reversed(shape[1:]):
        idx.append(i - (i / ctx.dim(d)) * ctx.dim(d))
        i = i / ctx.dim(d)
    return [i] + idx[::-1]


# Eigen's rational approximation of tanh in f32 (a few ulp): only
# multiplies, adds, a divide and min/max, so the gate loops vectorize, where
# a libm call per element would dominate the scan.
# (Eigen returns x itself for |x| < 0.0004; the quotient is within 2e-7 of
# it there, and the select would cost a sixth of the gates' work.)
# Eigen clamps x to +-7.905, where the quotient is 0.99999976; clamped to
# +-10 instead, where it passes 1, and the result to [-1, 1], saturated
# gates are exact as PyTorch's (sigmoid(-inf) = 0, and its derivative 0, so
# an infinite input's weight gradient is NaN there too). Both clamps keep a NaN.
TANH_CLAMP = 10.0
TANH_NUM = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
            5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
            -2.76076847742355e-16)
TANH_DEN = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
            1.19825839466702e-06)


def _poly(x2: L.Expr, coefs) -> L.Expr:
    out: L.Expr = L.const_like(coefs[-1], x2.dtype)
    for c in reversed(coefs[:-1]):
        out = out * x2 + c
    return out


def _tanh(x: L.Expr) -> L.Expr:
    if x.dtype != "f32":   # f64: exactly, through exp (inf and 0 saturate it)
        return 1.0 - 2.0 / (L.call("exp", x * 2.0) + 1.0)
    xc = L.maximum(L.minimum(x, TANH_CLAMP), -TANH_CLAMP)
    x2 = xc * xc
    return L.maximum(L.minimum(xc * _poly(x2, TANH_NUM) / _poly(x2, TANH_DEN), 1.0), -1.0)


def _sigmoid(x: L.Expr) -> L.Expr:
    return 0.5 + 0.5 * _tanh(x * 0.5)


def _dot(ctx, n: L.Expr, term) -> L.Expr:
    k = ctx.var("k")
    return L.Reduce("sum", (k,), (n,), term(k))


# A product's right operand w [K, N] is copied once per call into panels of
# PANEL columns, each [K, PANEL] contiguous: the tile pass's register blocks
# sweep one panel at a time, and a panel whose rows were N apart would
# collide in L1 (rows 2 KB apart share 8 of its 64 sets).
PANEL = 64
# Columns copied per block of the copy: read from a transposed w, the rows
# of one block stay in L1 while the block's columns are written out.
COPY_BLOCK = 16


def _panels(ctx, dtype: str, w, K: int, N: int):
    """w (w(k, n), k < K, n < N) copied into panels: (buffer, the loop nest
    that fills it, the panel width P, the element (k, panel, column) index)."""
    P = PANEL if N % PANEL == 0 else N
    blk = COPY_BLOCK if P % COPY_BLOCK == 0 else 1
    buf = ctx.scratch(dtype, L.Const(K * N, L.INDEX))
    at = lambda k, p, c: p * (K * P) + k * P + c
    nb, k, l = ctx.var("nb"), ctx.var("k"), ctx.var("l")
    first = nb * blk   # a block lies in one panel
    fill = L.nest([(nb, L.Const(N // blk, L.INDEX)), (k, L.Const(K, L.INDEX)), (l, L.Const(blk, L.INDEX))],
                  L.Store(buf, at(k, first / L.Const(P, L.INDEX), first - first / L.Const(P, L.INDEX) * P + l),
                          w(k, first + l)))
    return buf, fill, P, at


# ---------------------------------------------------------------- embedding

class Gather(Op):
    """out[b, t, :] = weight[tokens[b, t], :] (NaN for tokens out of range)."""
    name = "gather_rows"

    def infer(self, ins, attrs) -> TensorType:
        w, tok = ins
        return TensorType(w.dtype, tok.shape + w.shape[1:])

    def grad(self, b, node, g):
        w, tok = node.inputs
        return [b.node(SCATTER_ROWS, [g, tok], rows=w.type.shape[0]), None]

    def operand_range(self, node, k):
        return IndexRange.upto(0, node.inputs[0].type.shape[0], -1) if k == 1 else None

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        rows = ctx.dim(node.inputs[0].type.shape[0])
        tok = _index(ins[1](idx[:-1]))
        safe = L.minimum(L.maximum(tok, 0), rows - 1)
        return L.Select(_in_range(tok, 0, rows), ins[0]([safe, idx[-1]]), _nan(node.out.type.dtype))

    def reference(self, w, tok):
        return w[tok]


class ScatterRows(Op):
    """out[r, :] = sum of g[b, t, :] over the (b, t) with tokens[b, t] == r:
    gather_rows' adjoint, as a scatter-add (one pass over g, not one per row)."""
    name = "scatter_rows"

    def infer(self, ins, attrs) -> TensorType:
        g, tok = ins
        return TensorType(g.dtype, (attrs["rows"],) + g.shape[tok.rank:])

    def operand_range(self, node, k):
        return IndexRange.upto(0, node.attrs["rows"], -1) if k == 1 else None

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        g_t, tok_t = (v.type for v in node.inputs)
        rows, dim = node.attrs["rows"], g_t.shape[-1]
        r, d = ctx.var("r"), ctx.var("d")
        zero = L.nest([(r, ctx.dim(rows)), (d, ctx.dim(dim))],
                      L.Store(out, flat_index(ctx, [r, d], node.out.type.shape),
                              L.const_like(0, out.dtype)))
        pos = [ctx.var(f"i{k}") for k in range(tok_t.rank)]
        tok = _index(ins[1](pos))
        d2 = ctx.var("d")
        add_row = L.For(d2, ctx.dim(dim), L.Store(
            out, flat_index(ctx, [tok, d2], node.out.type.shape), ins[0](pos + [d2]), accumulate=True))
        scatter = L.nest([(v, ctx.dim(n)) for v, n in zip(pos, tok_t.shape)],
                         L.If(_in_range(tok, 0, ctx.dim(rows)), add_row))
        return L.Seq([zero, scatter])

    def reference(self, g, tok, *, rows):
        out = np.zeros((rows,) + g.shape[tok.ndim:], g.dtype)
        np.add.at(out, tok, g)
        return out


class Embedding(Op):
    name = "embedding"
    owns_params = True
    signature = (Arg("tokens", "tensor"), Arg("vocab", "int"), Arg("dim", "int"),
                 Arg("name", "str", None))

    def build(self, b: Builder, args) -> Value:
        tok, vocab, dim = args["tokens"], args["vocab"], args["dim"]
        if tok.type.dtype != "i32":
            raise OpError(f"'embedding' expects integer tokens (i32), got {tok.type}", arg="tokens")
        for what in ("vocab", "dim"):
            if args[what] < 1:
                raise OpError(f"'embedding' needs {what} >= 1, got {args[what]}", arg=what)
        w = b.param(f"{args['name']}.weight", TensorType("f32", (vocab, dim)),
                    Init("normal", 0.0, 1.0), layer=args["name"])
        y = b.node(GATHER_ROWS, [w, tok])
        b.layer(args["name"], self.name, y)
        return y


# ------------------------------------------------- products over [batch, time]

class SeqProject(Op):
    """out[b, t, n] = sum_k x[b, t, k] * w[n, k] (tw) or w[k, n]: the matrix
    product of all steps' features at once, a plain product nest that the
    `tile` pass register-blocks and `parallelize` shares out. w is first
    copied into panels (`_panels`; with tw, transposed), so that the product
    reads it along n (the tile pass's `outer` form, no lane sums)."""
    name = "seq_project"

    def infer(self, ins, attrs) -> TensorType:
        x, w = ins
        n = w.shape[0] if attrs["tw"] else w.shape[1]
        return TensorType(x.dtype, x.shape[:-1] + (n,))

    def grad(self, b, node, g):
        x, w = node.inputs
        gx = b.node(SEQ_PROJECT, [g, w], tw=not node.attrs["tw"])
        gw = b.node(SEQ_OUTER, [g, x]) if node.attrs["tw"] else b.node(SEQ_OUTER, [x, g])
        return [gx, gw]

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        x_t = node.inputs[0].type
        K, N = x_t.shape[-1], node.out.type.shape[-1]
        w = (lambda k, n: ins[1]([n, k])) if node.attrs["tw"] else (lambda k, n: ins[1]([k, n]))
        panels, fill, P, at = _panels(ctx, out.dtype, w, K, N)
        # One loop over all steps of all examples: full register blocks of
        # rows, where per example its steps' edge would leave partial ones.
        i, p, c = ctx.var("i"), ctx.var("p"), ctx.var("c")
        pos = _unravel(ctx, i, x_t.shape[:-1])
        product = L.nest([(p, L.Const(N // P, L.INDEX)), (i, size_of(ctx, x_t.shape[:-1])),
                          (c, L.Const(P, L.INDEX))], L.Store(
            out, i * N + p * P + c,
            _dot(ctx, L.Const(K, L.INDEX), lambda kk: ins[0](pos + [kk]) * L.Load(panels, at(kk, p, c)))))
        return L.Seq([fill, product])

    def reference(self, x, w, *, tw):
        return x @ (w.T if tw else w)


class SumSteps(Op):
    """out[n] = sum over b, t of a[b, t, n]: a bias's gradient, accumulated
    along contiguous rows (a sum_to would read each column with a stride)."""
    name = "sum_steps"

    def infer(self, ins, attrs) -> TensorType:
        return TensorType(ins[0].dtype, ins[0].shape[-1:])

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        a_t = node.inputs[0].type
        n, n2 = ctx.var("n"), ctx.var("n")
        pos = [ctx.var(f"i{j}") for j in range(a_t.rank - 1)]
        width = ctx.dim(a_t.shape[-1])
        zero = L.For(n, width, L.Store(out, n, L.const_like(0, out.dtype)))
        acc = L.nest([(v, ctx.dim(d)) for v, d in zip(pos, a_t.shape)] + [(n2, width)],
                     L.Store(out, n2, ins[0](pos + [n2]), accumulate=True))
        return L.Seq([zero, acc])

    def reference(self, a):
        return a.reshape(-1, a.shape[-1]).sum(0)


class SeqOuter(Op):
    """out[n, k] = sum over b, t of a[b, t, n] * x[b, t, k]: a weight's
    gradient, one product over all steps (a plain product nest for `tile`).
    An operand that is not a contiguous tensor (h_{t-1}: every step's h
    within the packed states, shifted by a step) is copied into one first:
    the product walks its rows, and rows strided by the packed width would
    collide in cache."""
    name = "seq_outer"

    def infer(self, ins, attrs) -> TensorType:
        a, x = ins
        return TensorType(a.dtype, (a.shape[-1], x.shape[-1]))

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        shape = node.out.type.shape
        steps = node.inputs[0].type.shape[:-1]
        n, k = ctx.var("n"), ctx.var("k")
        pos = [ctx.var(f"i{j}") for j in range(len(steps))]
        copies, operands = [], []
        for v, read in zip(node.inputs, ins):
            full = v.type.shape
            at = lambda idx, full=full: flat_index(ctx, idx, full)
            probe = [ctx.var("p") for _ in full]
            e = read(probe)
            if isinstance(e, L.Load) and L.stride_of(e.index, probe[-1]) == 1 \
                    and L.stride_of(e.index, probe[-2]) == full[-1]:   # rows back to back
                operands.append(read)
                continue
            buf = ctx.scratch(out.dtype, size_of(ctx, full))
            idx = [ctx.var(f"c{j}") for j in range(len(full))]
            copies.append(L.nest([(i, ctx.dim(d)) for i, d in zip(idx, full)], L.Store(buf, at(idx), read(idx))))
            operands.append(lambda ix, buf=buf, at=at: L.Load(buf, at(ix)))
        total = L.Reduce("sum", tuple(pos), tuple(ctx.dim(d) for d in steps),
                         operands[0](pos + [n]) * operands[1](pos + [k]))
        return L.Seq(copies + [L.nest([(n, ctx.dim(shape[0])), (k, ctx.dim(shape[1]))],
                                      L.Store(out, flat_index(ctx, [n, k], shape), total))])

    def reference(self, a, x):
        return np.einsum("...n,...k->nk", a, x)


# ------------------------------------------------------------ cheap reshapes

class SliceLast(Op):
    """x[..., start:start + size]."""
    name = "slice_last"

    def infer(self, ins, attrs) -> TensorType:
        return TensorType(ins[0].dtype, ins[0].shape[:-1] + (attrs["size"],))

    def grad(self, b, node, g):
        return [b.node(PAD_LAST, [g], start=node.attrs["start"],
                       width=node.inputs[0].type.shape[-1])]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        return ins[0](idx[:-1] + [idx[-1] + node.attrs["start"]])

    def reference(self, x, *, start, size):
        return x[..., start:start + size]


class PadLast(Op):
    """x placed at [start, start + size) of a zero last axis of `width`."""
    name = "pad_last"

    def infer(self, ins, attrs) -> TensorType:
        return TensorType(ins[0].dtype, ins[0].shape[:-1] + (attrs["width"],))

    def grad(self, b, node, g):
        return [b.node(SLICE_LAST, [g], start=node.attrs["start"],
                       size=node.inputs[0].type.shape[-1])]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        start, size = node.attrs["start"], node.inputs[0].type.shape[-1]
        j = idx[-1] - start
        safe = L.minimum(L.maximum(j, 0), size - 1)
        return L.Select(_in_range(j, 0, L.Const(size, L.INDEX)), ins[0](idx[:-1] + [safe]),
                        L.const_like(0, node.out.type.dtype))

    def reference(self, x, *, start, width):
        out = np.zeros(x.shape[:-1] + (width,), x.dtype)
        out[..., start:start + x.shape[-1]] = x
        return out


def _lengths_range(node, k: int, time) -> IndexRange | None:
    """[1, time] for operand k if it is the lengths (the last, with attr
    lengths): what rnn, lstm and last require, as PyTorch's packed sequences."""
    if node.attrs.get("lengths") and k == len(node.inputs) - 1:
        return IndexRange.upto(1, time)
    return None


def _length(ctx, ins, node, b: L.Expr, time_axis_len) -> L.Expr:
    """Example b's length: the `lengths` input (the op's last) or the time dim."""
    if node.attrs.get("lengths"):
        return _index(ins[-1]([b]))
    return ctx.dim(time_axis_len)


class ShiftTime(Op):
    """out[b, t] = x[b, t - 1], zero at t = 0: the states h_{t-1}."""
    name = "shift_time"

    def infer(self, ins, attrs) -> TensorType:
        return ins[0]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        b, t, *rest = idx
        prev = ins[0]([b, L.maximum(t - 1, 0)] + rest)
        return L.Select(L.cmp(">", t, 0), prev, L.const_like(0, node.out.type.dtype))

    def reference(self, x):
        out = np.zeros_like(x)
        out[:, 1:] = x[:, :-1]
        return out


class ReverseTime(Op):
    """out[b, t] = x[b, n - 1 - t] for t < n (example b's length), else 0:
    each sequence reversed within its length; its own adjoint."""
    name = "reverse_time"

    def infer(self, ins, attrs) -> TensorType:
        return ins[0]

    def grad(self, b, node, g):
        return [b.node(REVERSE_TIME, [g] + list(node.inputs[1:]), **node.attrs)] + [None] * (len(node.inputs) - 1)

    def operand_range(self, node, k):
        return _lengths_range(node, k, node.inputs[0].type.shape[1])

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        b, t, *rest = idx
        n = L.minimum(_length(ctx, ins, node, b, node.out.type.shape[1]), ctx.dim(node.out.type.shape[1]))
        src = L.minimum(L.maximum(n - 1 - t, 0), ctx.dim(node.out.type.shape[1]) - 1)
        return L.Select(L.cmp("<", t, n), ins[0]([b, src] + rest), L.const_like(0, node.out.type.dtype))

    def reference(self, x, lengths=None, **attrs):
        out = np.zeros_like(x)
        for b in range(x.shape[0]):
            n = x.shape[1] if lengths is None else min(int(lengths[b]), x.shape[1])
            out[b, :n] = x[b, :n][::-1]
        return out


# ------------------------------------------------------------ picking steps

class PickTime(Op):
    """out[b, :] = h[b, n - 1, :] for example b's length n (NaN if n is not
    in [1, time])."""
    name = "pick_time"

    def infer(self, ins, attrs) -> TensorType:
        h = ins[0]
        return TensorType(h.dtype, h.shape[:1] + h.shape[2:])

    def grad(self, b, node, g):
        return [b.node(PLACE_TIME, [g] + list(node.inputs[1:]), time=node.inputs[0].type.shape[1],
                       **node.attrs)] + [None] * (len(node.inputs) - 1)

    def operand_range(self, node, k):
        return _lengths_range(node, k, node.inputs[0].type.shape[1])

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        b, *rest = idx
        steps = ctx.dim(node.inputs[0].type.shape[1])
        t = _length(ctx, ins, node, b, node.inputs[0].type.shape[1]) - 1
        safe = L.minimum(L.maximum(t, 0), steps - 1)
        return L.Select(_in_range(t, 0, steps), ins[0]([b, safe] + rest), _nan(node.out.type.dtype))

    def reference(self, h, lengths=None, **attrs):
        n = np.full(h.shape[0], h.shape[1]) if lengths is None else lengths
        return h[np.arange(h.shape[0]), n - 1]


class PlaceTime(Op):
    """out[b, t, :] = g[b, :] at t = n - 1, else 0: pick_time's adjoint."""
    name = "place_time"

    def infer(self, ins, attrs) -> TensorType:
        g = ins[0]
        return TensorType(g.dtype, g.shape[:1] + (attrs["time"],) + g.shape[1:])

    def operand_range(self, node, k):
        return _lengths_range(node, k, node.attrs["time"])

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        b, t, *rest = idx
        n = _length(ctx, ins, node, b, node.attrs["time"])
        return L.Select(L.cmp("==", t, n - 1), ins[0]([b] + rest), L.const_like(0, node.out.type.dtype))


class Last(Op):
    """last(h, lengths): each example's state at its last valid step;
    last(h): the final step's."""
    name = "last"
    signature = (Arg("h", "tensor"), Arg("lengths", "tensor", None))

    def build(self, b: Builder, args) -> Value:
        h = args["h"]
        if h.type.rank < 3:
            raise OpError(f"'last' expects a sequence [batch, time, features], got {h.type}", arg="h")
        lengths = check_lengths(self.name, h, args["lengths"])
        return b.node(PICK_TIME, [h] + lengths, lengths=bool(lengths))


def check_lengths(op: str, x: Value, lengths: Value | None) -> list[Value]:
    """[lengths] if given and an i32[batch] for x's batch, else []."""
    if lengths is None:
        return []
    want = TensorType("i32", x.type.shape[:1])
    if lengths.type != want:
        raise OpError(f"'{op}' expects lengths {want} (one per example of {x.type}), "
                      f"got {lengths.type}", arg="lengths")
    return [lengths]


# ------------------------------------------------------------- recurrences

CELLS = {"rnn": 1, "lstm": 4}   # gates per cell


def packed_width(cell: str, hidden: int) -> int:
    return hidden if cell == "rnn" else 6 * hidden


# Examples per block of a scan: the blocks are independent (on the CPU, the
# thread pool's tasks); within one, the per-step product runs as one matrix
# product over the block's examples, each panel of W_hh loaded once per
# block and step. 8 = two of the tile pass's register blocks of 4 examples
# per panel (measured at batch 32: faster than 4, halving the W_hh traffic
# from L2, and than 16, and it still leaves 4 tasks for 2 threads).
EXAMPLE_BLOCK = 8


def _example_blocks(ctx, batch, scan) -> L.Stmt:
    """for each block of EXAMPLE_BLOCK examples: scan(b0, rows), the block's
    first example and its number of examples. On the CPU the blocks run on
    the thread pool: a whole scan per task, no synchronisation per step."""
    blk = ctx.var("blk")
    b0 = blk * EXAMPLE_BLOCK
    rows = L.minimum(L.Const(EXAMPLE_BLOCK, L.INDEX), ctx.dim(batch) - b0)
    blocks = (ctx.dim(batch) + (EXAMPLE_BLOCK - 1)) / L.Const(EXAMPLE_BLOCK, L.INDEX)
    if ctx.target == "cpu":
        return L.For(blk, blocks, scan(b0, rows), "parallel", L.Const(1, L.INDEX))
    return L.For(blk, blocks, scan(b0, rows))


def _each(ctx, n: int, store, first=0) -> L.Stmt:
    """for j in [first, first + n): store(j), a loop of one store (vectorized
    by `vectorize`)."""
    j = ctx.var("j")
    return L.For(j, L.Const(n, L.INDEX), store(first + j))


class Recurrence(Op):
    """The scan over time. Inputs: the projected inputs xp [batch, time,
    G*hidden], weight_hh, bias_ih, bias_hh and, with attr lengths, the
    lengths. Output per step: the packed state (see the module docstring).

    One kernel over blocks of examples (`_example_blocks`); per block, for
    t: the G*hidden gate pre-activations of its examples as one product
    (h_{t-1} of the block @ W_hh^T, plus inputs and biases, a plain product
    nest that the `tile` pass register-blocks) into scratch, then per example
    still running the gates and the cell update, past its length zeros.
    h_{t-1} and c_{t-1} live in scratch [batch, 2*hidden], zero at t = 0.
    On the CPU a batch of one block splits each step by units over the
    thread pool instead (at batch 1, 0.18 -> 0.14 ms for the benchmark's
    LSTM on 2 threads). When every reader takes only h (an inference
    entry), only h is stored."""
    name = "recurrence"

    def infer(self, ins, attrs) -> TensorType:
        xp = ins[0]
        return TensorType(xp.dtype, xp.shape[:2] + (packed_width(attrs["cell"], attrs["hidden"]),))

    def grad(self, b, node, g):
        xp, w_hh, b_ih, b_hh, *lengths = node.inputs
        hidden = node.attrs["hidden"]
        d_pre = b.node(RECURRENCE_GRAD, [g, node.out, w_hh] + lengths, **node.attrs)
        h_prev = b.node(SHIFT_TIME, [b.node(SLICE_LAST, [node.out], start=0, size=hidden)])
        d_bias = b.node(SUM_STEPS, [d_pre])
        return [d_pre, b.node(SEQ_OUTER, [d_pre, h_prev]), d_bias, d_bias] + [None] * len(lengths)

    def operand_range(self, node, k):
        return _lengths_range(node, k, node.inputs[0].type.shape[1])

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        cell, H = node.attrs["cell"], node.attrs["hidden"]
        G = CELLS[cell]
        B, T, P = node.out.type.shape
        xp, w_hh, b_ih, b_hh = ins[:4]
        B_ = ctx.dim(B)
        # W_hh^T [H, G*H] in panels (`_panels`), transposed once per call, so
        # the product reads it along the gates (contiguous with its output rows).
        w_t, transpose, PW, w_at = _panels(ctx, out.dtype, lambda k, r: w_hh([r, k]), H, G * H)
        pre = ctx.scratch(out.dtype, B_ * (G * H))
        zero = L.const_like(0, out.dtype)
        # Readers that take only h (inference) leave c and the gates unstored.
        keep_all = ctx.readers is None or not all(
            r.op is SLICE_LAST and r.attrs["start"] == 0 and r.attrs["size"] == H for r in ctx.readers)

        def product(t, b, bi, rows, columns, h_prev):
            """The pre-activations of step t, examples b = b0 + bi (bi < rows):
            xp + biases + h_{t-1} @ W_hh^T (h_prev(b, k) reads h_{t-1}), a
            plain product nest that the `tile` pass register-blocks. columns =
            ((p, panels), col, weight): for p < panels and c < PW, column
            col(p, c), whose W_hh[col, k] is weight(k, p, c)."""
            (p, n_panels), col, weight = columns
            c = ctx.var("c")
            return L.nest([(p, n_panels), (bi, rows), (c, L.Const(PW, L.INDEX))], L.Store(
                pre, b * (G * H) + col(p, c), xp([b, t, col(p, c)]) + b_ih([col(p, c)]) + b_hh([col(p, c)]) + _dot(
                    ctx, L.Const(H, L.INDEX), lambda k: h_prev(b, k) * weight(k, p, c))))

        def step(t, b, bi, rows, pre_acts, units, h_next, c_at):
            """Step t of examples b = b0 + bi, bi < rows: `pre_acts` (the
            nest `product` builds), then the cell update of `units` (first
            unit, count). h_next(b, j) and c_at(b, j) are (buffer, index) of
            h_t and of c (c_{t-1}, replaced by c_t)."""
            j0, width = units
            at = lambda col: flat_index(ctx, [b, t, col], node.out.type.shape)
            gate = lambda g, j: L.Load(pre, b * (G * H) + g * H + j)
            each = lambda store: _each(ctx, width, store, j0)
            h_store = lambda j, v: L.Store(*h_next(b, j), v)
            c_load = lambda j: L.Load(*c_at(b, j))
            if cell == "rnn":
                cell_units = [each(lambda j: L.Store(out, at(j), _tanh(gate(0, j)))),
                              each(lambda j: h_store(j, L.Load(out, at(j))))]
            else:
                # The gates go to the output when a reader needs them (the
                # backward pass), else they replace the pre-activations.
                act_buf, act_at = (out, lambda q, j: at((2 + q) * H + j)) if keep_all else \
                    (pre, lambda q, j: b * (G * H) + q * H + j)
                act = lambda q, j: L.Load(act_buf, act_at(q, j))
                cell_units = [each(lambda j, q=q, f=f: L.Store(act_buf, act_at(q, j), f(gate(q, j))))
                              for q, f in enumerate((_sigmoid, _sigmoid, _tanh, _sigmoid))]
                cell_units.append(each(lambda j: L.Store(
                    *c_at(b, j), act(1, j) * c_load(j) + act(0, j) * act(2, j))))
                if keep_all:
                    cell_units.append(each(lambda j: L.Store(out, at(H + j), c_load(j))))
                cell_units += [each(lambda j: h_store(j, act(3, j) * _tanh(c_load(j)))),
                               each(lambda j: L.Store(out, at(j), L.Load(*h_next(b, j))))]
            n = _length(ctx, ins, node, b, T)
            past = [each(lambda j, s=s: L.Store(out, at(s * H + j), zero))
                    for s in range(P // H if keep_all else 1)]
            return L.Seq([pre_acts, L.For(bi, rows, L.Seq([
                L.If(L.cmp("<", t, n), L.Seq(cell_units)), L.If(L.cmp(">=", t, n), L.Seq(past))]))])

        def blocks_scan(b0, rows):
            # h_{t-1} and c_{t-1} per example in scratch [batch, 2*hidden]:
            # each block's product reads h before its cell updates replace it.
            state = ctx.scratch(out.dtype, B_ * (2 * H))
            t, bi, q, p = ctx.var("t"), ctx.var("bi"), ctx.var("q"), ctx.var("p")
            b = b0 + bi
            clear = L.nest([(bi, rows), (q, L.Const(2 * H, L.INDEX))], L.Store(state, b * (2 * H) + q, zero))
            columns = ((p, L.Const(G * H // PW, L.INDEX)), lambda p, c: p * PW + c,
                       lambda k, p, c: L.Load(w_t, w_at(k, p, c)))
            return L.Seq([clear, L.For(t, ctx.dim(T), step(
                t, b, bi, rows, product(t, b, bi, rows, columns, lambda b, k: L.Load(state, b * (2 * H) + k)),
                (0, H), lambda b, j: (state, b * (2 * H) + j), lambda b, j: (state, b * (2 * H) + H + j)))])

        blocks = _example_blocks(ctx, B, blocks_scan)
        parts = H // PW if PW < G * H and H % PW == 0 else 1
        if ctx.target != "cpu" or parts == 1:
            return L.Seq([transpose, blocks])
        # One block of examples (small batches): each step is split by units
        # instead, a parallel loop per step with a task per PW units, each
        # task reading its own G panels of W_hh (so each thread streams its
        # own part from its own cache). h alternates between two buffers: a
        # task's h_t must not overwrite the h_{t-1} that the others still read.
        hs, cs = ctx.scratch(out.dtype, 2 * B_ * H), ctx.scratch(out.dtype, B_ * H)
        t, u, bi, q, i = ctx.var("t"), ctx.var("u"), ctx.var("bi"), ctx.var("q"), ctx.var("i")
        parity = t - t / L.Const(2, L.INDEX) * 2
        h_at = lambda odd, b, j: odd * (B_ * H) + b * H + j
        panel = lambda q: q * parts + u
        columns = ((q, L.Const(G, L.INDEX)), lambda q, c: panel(q) * PW + c,
                   lambda k, q, c: L.Load(w_t, w_at(k, panel(q), c)))
        part = step(t, bi, bi, B_, product(t, bi, bi, B_, columns, lambda b, k: L.Load(hs, h_at(1 - parity, b, k))),
                    (u * PW, PW), lambda b, j: (hs, h_at(parity, b, j)), lambda b, j: (cs, b * H + j))
        clear = L.Seq([L.For(i, 2 * B_ * H, L.Store(hs, i, zero)), L.For(i, B_ * H, L.Store(cs, i, zero))])
        split = L.Seq([clear, L.For(t, ctx.dim(T), L.For(u, L.Const(parts, L.INDEX), part, "parallel",
                                                       L.Const(1, L.INDEX)))])
        return L.Seq([transpose, L.If(L.cmp("<=", B_, L.Const(EXAMPLE_BLOCK, L.INDEX)), split),
                      L.If(L.cmp(">", B_, L.Const(EXAMPLE_BLOCK, L.INDEX)), blocks)])


class RecurrenceGrad(Op):
    """Backpropagation through time. Inputs: the gradient of the packed
    output, the packed output, weight_hh and (attr lengths) the lengths.
    Output: the gradient of the pre-activation gates [batch, time, G*hidden],
    zero past each example's length.

    One kernel over blocks of examples (`_example_blocks`), t from last to
    first, carrying per example the gradient reaching h_{t-1} and c_{t-1} in
    scratch [batch, 2*hidden]; per step, the gate gradients of the block's
    examples, then the gradient reaching h_{t-1}, d_pre @ W_hh, as one
    product over the block (a plain product nest for `tile`)."""
    name = "recurrence_grad"

    def infer(self, ins, attrs) -> TensorType:
        g = ins[0]
        return TensorType(g.dtype, g.shape[:2] + (CELLS[attrs["cell"]] * attrs["hidden"],))

    def operand_range(self, node, k):
        return _lengths_range(node, k, node.inputs[0].type.shape[1])

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        cell, H = node.attrs["cell"], node.attrs["hidden"]
        G = CELLS[cell]
        B, T, GH = node.out.type.shape
        g, packed, w_hh = ins[:3]
        carry = ctx.scratch(out.dtype, ctx.dim(B) * (2 * H))
        one, zero = L.const_like(1, out.dtype), L.const_like(0, out.dtype)

        def scan(b0, rows):
            bi, s, j, k, q, c0 = (ctx.var(v) for v in ("bi", "s", "j", "k", "q", "c"))
            b = b0 + bi
            t = ctx.dim(T) - 1 - s
            at = lambda col: flat_index(ctx, [b, t, col], node.out.type.shape)
            carried = lambda col: b * (2 * H) + col
            state = lambda col: packed([b, t, col])
            dh = g([b, t, j]) + L.Load(carry, carried(j))
            if cell == "rnn":
                h = state(j)
                units = L.Store(out, at(j), dh * (one - h * h))
            else:
                i, f, gg, o = (state((2 + q) * H + j) for q in range(4))
                tc = _tanh(state(H + j))
                c_prev = L.Select(L.cmp("==", t, 0), zero,
                                  packed([b, L.maximum(t - 1, 0), H + j]))
                # dc is stored in the carry first, then read back for each gate.
                dc = L.Load(carry, carried(H + j))
                units = L.Seq([
                    L.Store(carry, carried(H + j),
                            L.Load(carry, carried(H + j)) + g([b, t, H + j]) + dh * o * (one - tc * tc)),
                    L.Store(out, at(j), dc * gg * i * (one - i)),
                    L.Store(out, at(H + j), dc * c_prev * f * (one - f)),
                    L.Store(out, at(2 * H + j), dc * i * (one - gg * gg)),
                    L.Store(out, at(3 * H + j), dh * tc * o * (one - o)),
                    L.Store(carry, carried(H + j), dc * f),
                ])
            n = _length(ctx, ins, node, b, T)
            gates = L.For(bi, rows, L.Seq([
                L.If(L.cmp("<", t, n), L.For(j, L.Const(H, L.INDEX), units)),
                L.If(L.cmp(">=", t, n), L.For(q, L.Const(GH, L.INDEX), L.Store(out, at(q), zero)))]))
            # Past an example's length d_pre is zero, so is what reaches h_{t-1}.
            to_prev_h = L.nest([(bi, rows), (k, L.Const(H, L.INDEX))], L.Store(
                carry, carried(k), _dot(ctx, L.Const(G * H, L.INDEX),
                                        lambda rr: L.Load(out, at(rr)) * w_hh([rr, k]))))
            clear = L.nest([(bi, rows), (c0, L.Const(2 * H, L.INDEX))], L.Store(carry, carried(c0), zero))
            return L.Seq([clear, L.For(s, ctx.dim(T), L.Seq([gates, to_prev_h]))])

        return _example_blocks(ctx, B, scan)


class Recurrent(Op):
    """rnn(x, hidden) and lstm(x, hidden): all hidden states [batch, time, hidden]
    (2*hidden with bidirectional=true: forward then backward direction)."""
    owns_params = True
    signature = (Arg("x", "tensor"), Arg("hidden", "int"), Arg("name", "str", None),
                 Arg("lengths", "tensor", None), Arg("bidirectional", "bool", False))

    def __init__(self, cell: str):
        self.name = self.cell = cell

    def build(self, b: Builder, args) -> Value:
        x, hidden, name = args["x"], args["hidden"], args["name"]
        if x.type.rank != 3:
            raise OpError(f"'{self.name}' expects a sequence [batch, time, features], got {x.type}", arg="x")
        need_float(self.name, x.type)
        if not isinstance(x.type.shape[2], int):
            raise OpError(f"'{self.name}' needs a fixed number of features, got {x.type}", arg="x")
        if hidden < 1:
            raise OpError(f"'{self.name}' needs hidden >= 1, got {hidden}", arg="hidden")
        lengths = check_lengths(self.name, x, args["lengths"])
        h = self.direction(b, x, hidden, name, "", lengths)
        if args["bidirectional"]:
            rev = lambda v: b.node(REVERSE_TIME, [v] + lengths, lengths=bool(lengths))
            h_rev = rev(self.direction(b, rev(x), hidden, name, "_reverse", lengths))
            width = 2 * hidden
            h = add(b, b.node(PAD_LAST, [h], start=0, width=width),
                    b.node(PAD_LAST, [h_rev], start=hidden, width=width))
        b.layer(name, self.name, h)
        return h

    def direction(self, b: Builder, x: Value, hidden: int, name: str, suffix: str,
                  lengths: list[Value]) -> Value:
        dtype, rows = x.type.dtype, CELLS[self.cell] * hidden
        bound = 1.0 / math.sqrt(hidden)
        init = Init("uniform", -bound, bound)
        p = lambda what, shape: b.param(f"{name}.{what}{suffix}", TensorType(dtype, shape), init, layer=name)
        w_ih, w_hh = p("weight_ih", (rows, x.type.shape[2])), p("weight_hh", (rows, hidden))
        b_ih, b_hh = p("bias_ih", (rows,)), p("bias_hh", (rows,))
        xp = b.node(SEQ_PROJECT, [x, w_ih], tw=True)
        packed = b.node(RECURRENCE, [xp, w_hh, b_ih, b_hh] + lengths,
                        cell=self.cell, hidden=hidden, lengths=bool(lengths))
        if self.cell == "rnn":
            return packed
        return b.node(SLICE_LAST, [packed], start=0, size=hidden)


GATHER_ROWS, SCATTER_ROWS = register(Gather()), register(ScatterRows())
EMBEDDING = register(Embedding())
SEQ_PROJECT, SEQ_OUTER = register(SeqProject()), register(SeqOuter())
SUM_STEPS = register(SumSteps())
SLICE_LAST, PAD_LAST = register(SliceLast()), register(PadLast())
SHIFT_TIME, REVERSE_TIME = register(ShiftTime()), register(ReverseTime())
PICK_TIME, PLACE_TIME, LAST = register(PickTime()), register(PlaceTime()), register(Last())
RECURRENCE, RECURRENCE_GRAD = register(Recurrence()), register(RecurrenceGrad())
RNN, LSTM = register(Recurrent("rnn")), register(Recurrent("lstm"))
