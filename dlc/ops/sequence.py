"""Sequences: embedding, recurrent layers (RNN with tanh or relu, LSTM, GRU)
and picking steps.

Tensors are [batch, time, features]; `time` may be a symbol, so one program
runs any length. Parameters follow PyTorch: `embedding` owns `<name>.weight`
[vocab, dim] ~ N(0, 1) (nn.Embedding); `rnn` and `lstm` own
`<name>.weight_ih` [G*hidden, features], `<name>.weight_hh` [G*hidden, hidden],
`<name>.bias_ih` and `<name>.bias_hh` [G*hidden], G = 1 (rnn), 4 (lstm,
gates in PyTorch's order i, f, g, o) or 3 (gru: r, z, n), all ~ U(-1/sqrt(hidden), 1/sqrt(hidden)),
so torch.nn.LSTM's `*_l0` weights load by name (`*_l0_reverse` onto
`<name>.*_reverse` when bidirectional).

A recurrent layer is two nodes:
- the input projection of every step at once, x @ W_ih^T as one large
  product over [batch, time] (`seq_project`);
- a scan over time (`recurrence`, lowered by `lower_kernel` as one kernel)
  that per step adds the biases and h_{t-1} @ W_hh^T and applies the gates.
  Its output packs, per step, what the backward pass needs: for the LSTM
  [h | c | i f g o] (6*hidden), for the GRU [h | r z n | W_hn h + b_hn]
  (5*hidden), for the RNN h alone. `slice_last` exposes h. The cells differ
  only in their per-unit update and its gradient (`Cell`).
h0 / c0 are the scan's optional inputs; h_n / c_n pick each example's state
at its last valid step from the packed output (the reverse direction's, run
over the reversed sequence, has read back to step 0: PyTorch's h_n).
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
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, Init, TensorType, Value
from ..lower import IndexRange, flat_index, size_of
from .base import Arg, Op, OpError, need_float, register
from .elementwise import add, horner


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


def _tanh(x: L.Expr) -> L.Expr:
    if x.dtype != "f32":   # f64: exactly, through exp (inf and 0 saturate it)
        return 1.0 - 2.0 / (L.call("exp", x * 2.0) + 1.0)
    xc = L.maximum(L.minimum(x, TANH_CLAMP), -TANH_CLAMP)
    x2 = xc * xc
    return L.maximum(L.minimum(xc * horner(x2, TANH_NUM) / horner(x2, TANH_DEN), 1.0), -1.0)


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
    rereads = True

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
    reduces = True

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
    reduces = True

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
    rereads = True   # most elements are a constant: an inlined reduction would be evaluated for each

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
    """out[b, t] = x[b, t - 1], at t = 0 first[b] (the optional second
    input) or zero: the states h_{t-1}, from h0."""
    name = "shift_time"

    def infer(self, ins, attrs) -> TensorType:
        return ins[0]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        b, t, *rest = idx
        prev = ins[0]([b, L.maximum(t - 1, 0)] + rest)
        first = ins[1]([b] + rest) if len(ins) > 1 else L.const_like(0, node.out.type.dtype)
        return L.Select(L.cmp(">", t, 0), prev, first)

    def reference(self, x, first=None):
        out = np.zeros_like(x)
        out[:, 1:] = x[:, :-1]
        if first is not None:
            out[:, 0] = first
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

def _picked(ctx, ins, node, b: L.Expr, time) -> L.Expr:
    """The step pick_time takes (place_time fills) for example b: its
    length - 1, or 0 with attr first."""
    if node.attrs.get("first"):
        return L.Const(0, L.INDEX)
    return _length(ctx, ins, node, b, time) - 1


class PickTime(Op):
    """out[b, :] = h[b, n - 1, :] for example b's length n (NaN if n is not
    in [1, time]); with attr first, h[b, 0, :]."""
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
        t = _picked(ctx, ins, node, b, node.inputs[0].type.shape[1])
        safe = L.minimum(L.maximum(t, 0), steps - 1)
        return L.Select(_in_range(t, 0, steps), ins[0]([b, safe] + rest), _nan(node.out.type.dtype))

    def reference(self, h, lengths=None, first=False, **attrs):
        n = np.full(h.shape[0], 1 if first else h.shape[1]) if lengths is None else lengths
        return h[np.arange(h.shape[0]), n - 1]


class PlaceTime(Op):
    """out[b, t, :] = g[b, :] at pick_time's step, else 0: its adjoint."""
    name = "place_time"
    rereads = True   # most elements are a constant: an inlined reduction would be evaluated for each

    def infer(self, ins, attrs) -> TensorType:
        g = ins[0]
        return TensorType(g.dtype, g.shape[:1] + (attrs["time"],) + g.shape[1:])

    def operand_range(self, node, k):
        return _lengths_range(node, k, node.attrs["time"])

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        b, t, *rest = idx
        step = _picked(ctx, ins, node, b, node.attrs["time"])
        return L.Select(L.cmp("==", t, step), ins[0]([b] + rest), L.const_like(0, node.out.type.dtype))


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

class Cell:
    """What tells rnn, lstm and gru apart inside the shared scans
    (`Recurrence`, `RecurrenceGrad`): per hidden unit j of one step, the
    forward update (`forward`, given a `_Fwd`) and the gradient of the gate
    pre-activations (`backward`, given a `_Bwd`)."""
    gates = 1     # G: rows of weight_ih per hidden unit
    states = 1    # S: h, or h and c (the lstm)
    packed = 1    # the packed output's width per hidden unit (the module docstring)
    acts = 1      # where the gate activations start in the packed output, in hidden units
    # The gru: the hidden part of each gate's pre-activation is kept apart
    # from the input part (its n gate takes r * (W_hn h + b_hn)), and h_{t-1}
    # also reaches h_t directly (z * h_{t-1}).
    split = False

    def forward(self, s: _Fwd) -> list[L.Stmt]:
        raise NotImplementedError

    def backward(self, s: _Bwd, j: L.Expr) -> list[L.Stmt]:
        raise NotImplementedError


class RnnCell(Cell):
    """h_t = f(x W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), f tanh or relu; packed: h."""

    def __init__(self, relu: bool):
        self.relu = relu

    def forward(self, s):
        f = (lambda v: L.maximum(v, 0.0)) if self.relu else _tanh
        return [s.each(lambda j: s.store(j, f(s.pre(0, j)))), s.each(lambda j: s.set_h(j, s.out(j)))]

    def backward(self, s, j):
        h, dh = s.state(j), s.dh(j)
        # relu's as PyTorch's threshold_backward: a NaN h passes the gradient
        d = L.Select(L.cmp("<=", h, 0.0), L.const_like(0, h.dtype), dh) if self.relu else dh * (1.0 - h * h)
        return [s.set_d(j, d)]


class LstmCell(Cell):
    """Gates i, f, g, o (PyTorch's order); packed: [h | c | i f g o]."""
    gates, states, packed, acts = 4, 2, 6, 2

    def forward(self, s):
        H = s.H
        units = [s.each(lambda j, q=q, f=f: s.set_act(q, j, f(s.pre(q, j))))
                 for q, f in enumerate((_sigmoid, _sigmoid, _tanh, _sigmoid))]
        units.append(s.each(lambda j: s.set_c(j, s.act(1, j) * s.c(j) + s.act(0, j) * s.act(2, j))))
        if s.keep_all:
            units.append(s.each(lambda j: s.store(H + j, s.c(j))))
        return units + [s.each(lambda j: s.set_h(j, s.act(3, j) * _tanh(s.c(j)))),
                        s.each(lambda j: s.store(j, s.h(j)))]

    def backward(self, s, j):
        H = s.H
        i, f, gg, o = (s.state((2 + q) * H + j) for q in range(4))
        tc = _tanh(s.state(H + j))
        dh = s.dh(j)
        # dc is stored in the carry first, then read back for each gate.
        dc = s.carry(H + j)
        return [s.set_carry(H + j, dc + s.g(H + j) + dh * o * (1.0 - tc * tc)),
                s.set_d(j, dc * gg * i * (1.0 - i)),
                s.set_d(H + j, dc * s.prev(1, j) * f * (1.0 - f)),
                s.set_d(2 * H + j, dc * i * (1.0 - gg * gg)),
                s.set_d(3 * H + j, dh * tc * o * (1.0 - o)),
                s.set_carry(H + j, dc * f)]


class GruCell(Cell):
    """r = sigmoid(x_r + h_r), z = sigmoid(x_z + h_z), n = tanh(x_n + r * h_n),
    h_t = (1 - z) * n + z * h_{t-1}, where x_q = x W_iq^T + b_iq and
    h_q = h_{t-1} W_hq^T + b_hq (PyTorch's nn.GRU); packed: [h | r z n | h_n]."""
    gates, packed, split = 3, 5, True

    def forward(self, s):
        H = s.H
        units = [s.each(lambda j, q=q: s.set_act(q, j, _sigmoid(s.x(q, j) + s.pre(q, j)))) for q in (0, 1)]
        if s.keep_all:   # h_n, for the gradient of r
            units.append(s.each(lambda j: s.store(4 * H + j, s.pre(2, j))))
        z = lambda j: s.act(1, j)
        return units + [
            s.each(lambda j: s.set_act(2, j, _tanh(s.x(2, j) + s.act(0, j) * s.pre(2, j)))),
            # via the output: h_{t-1} and h_t may share their place
            s.each(lambda j: s.store(j, (1.0 - z(j)) * s.act(2, j) + z(j) * s.h_prev(j))),
            s.each(lambda j: s.set_h(j, s.out(j)))]

    def backward(self, s, j):
        H = s.H
        r, z, n, hn = (s.state((1 + q) * H + j) for q in range(4))
        dh = s.dh(j)
        dn = dh * (1.0 - z) * (1.0 - n * n)
        # input parts [r z n], then hidden parts [r z r*n] from 3H; the
        # direct part dh * z of what reaches h_{t-1} waits in the carry's
        # second half for the product with W_hh.
        return [s.set_d(j, dn * hn * r * (1.0 - r)),
                s.set_d(H + j, dh * (s.prev(0, j) - n) * z * (1.0 - z)),
                s.set_d(2 * H + j, dn),
                s.set_d(3 * H + j, s.d(j)),
                s.set_d(4 * H + j, s.d(H + j)),
                s.set_d(5 * H + j, dn * r),
                s.set_carry(H + j, dh * z)]


CELLS: dict[str, Cell] = {"rnn": RnnCell(relu=False), "rnn_relu": RnnCell(relu=True),
                          "lstm": LstmCell(), "gru": GruCell()}


@dataclass
class _Fwd:
    """One forward step for `Cell.forward`: j a unit, q a gate, col a
    column of the packed output; functions give loads, set_* stores."""
    H: int
    keep_all: bool    # readers need more than h: store c and the gates too
    each: Callable    # each(lambda j: stmt): a loop over this step's units
    pre: Callable     # pre(q, j): gate q's pre-activation (split cells: its hidden part)
    x: Callable       # x(q, j): gate q's input part (split cells)
    out: Callable     # out(col), store(col, v): the packed output
    store: Callable
    act: Callable     # act(q, j), set_act(q, j, v): gate q's activation (in the
    set_act: Callable  # output when kept, else over the pre-activations)
    h_prev: Callable  # h_prev(j): h_{t-1}
    h: Callable       # h(j), set_h(j, v): h_t, where the next step reads it
    set_h: Callable
    c: Callable       # c(j), set_c(j, v): c_{t-1}, replaced by c_t
    set_c: Callable


@dataclass
class _Bwd:
    """One backward step for `Cell.backward` (as `_Fwd`)."""
    H: int
    dh: Callable         # dh(j): the gradient reaching h_t, from the output and step t + 1
    g: Callable          # g(col): the output's gradient at packed column col
    state: Callable      # state(col): the packed output of step t
    prev: Callable       # prev(k, j): state k (0: h, 1: c) before step t
    d: Callable          # d(col), set_d(col, v): the gradient of pre-activation col
    set_d: Callable
    carry: Callable      # carry(k), set_carry(k, v): k < H: the gradient reaching
    set_carry: Callable  # h_{t-1}; from H: c_{t-1}'s (lstm), the direct part (gru)


def _initial(ins, node, first: int):
    """initial(k, b, j): state k (0: h, 1: c) of example b before step 0,
    the operand h0 / c0 where given (from operand `first`), else 0."""
    given = node.attrs["init"]

    def initial(k, b, j):
        s = "hc"[k]
        return ins[first + given.index(s)]([b, j]) if s in given else L.const_like(0, node.out.type.dtype)
    return initial


def grad_width(cell: Cell, hidden: int, init) -> int:
    """RecurrenceGrad's columns: the pre-activations' gradient (split
    cells: input parts, then hidden parts), then with an initial state
    what reaches the states before each step."""
    return cell.gates * hidden * (2 if cell.split else 1) + (cell.states * hidden if init else 0)


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
    G*hidden], weight_hh, bias_ih, bias_hh, the initial states named by
    attr init ('h', 'c': h0, c0 [batch, hidden]) and, with attr lengths,
    the lengths. Output per step: the packed state (see the module docstring).

    One kernel over blocks of examples (`_example_blocks`); per block, for
    t: the G*hidden gate pre-activations of its examples as one product
    (h_{t-1} of the block @ W_hh^T, plus biases and, unless the cell splits
    them, inputs: a plain product nest that the `tile` pass register-blocks)
    into scratch, then per example still running its cell's update
    (`Cell.forward`), past its length zeros. h_{t-1} and c_{t-1} live in
    scratch [batch, 2*hidden], from h0 and c0 (or zero) at t = 0.
    On the CPU a batch of one block splits each step by units over the
    thread pool instead (at batch 1, 0.18 -> 0.14 ms for the benchmark's
    LSTM on 2 threads). With attr h_only (every reader takes only h: an
    inference entry; passes/graph_trim_recurrences.py) the output is h
    alone, [batch, time, hidden]."""
    name = "recurrence"

    def infer(self, ins, attrs) -> TensorType:
        xp = ins[0]
        width = 1 if attrs.get("h_only") else CELLS[attrs["cell"]].packed
        return TensorType(xp.dtype, xp.shape[:2] + (width * attrs["hidden"],))

    def grad(self, b, node, g):
        xp, w_hh, b_ih, b_hh, *rest = node.inputs
        cell, H, given = CELLS[node.attrs["cell"]], node.attrs["hidden"], node.attrs["init"]
        init, lengths = rest[:len(given)], rest[len(given):]
        GH = cell.gates * H
        d = b.node(RECURRENCE_GRAD, [g, node.out, w_hh] + init + lengths, **node.attrs)
        part = lambda start, size: b.node(SLICE_LAST, [d], start=start, size=size)
        d_x = d if d.type.shape[-1] == GH else part(0, GH)
        d_h = part(GH, GH) if cell.split else d_x
        h0 = [init[given.index("h")]] if "h" in given else []
        h_prev = b.node(SHIFT_TIME, [b.node(SLICE_LAST, [node.out], start=0, size=H)] + h0)
        d_b_ih = b.node(SUM_STEPS, [d_x])
        d_b_hh = b.node(SUM_STEPS, [d_h]) if cell.split else d_b_ih
        # What reaches h0 (c0) is the carried gradient before step 0.
        states = GH * (2 if cell.split else 1)
        d_init = [b.node(PICK_TIME, [part(states + "hc".index(s) * H, H)], lengths=False, first=True)
                  for s in given]
        return [d_x, b.node(SEQ_OUTER, [d_h, h_prev]), d_b_ih, d_b_hh] + d_init + [None] * len(lengths)

    def operand_range(self, node, k):
        return _lengths_range(node, k, node.inputs[0].type.shape[1])

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        cell, H = CELLS[node.attrs["cell"]], node.attrs["hidden"]
        G = cell.gates
        B, T, P = node.out.type.shape
        xp, w_hh, b_ih, b_hh = ins[:4]
        initial = _initial(ins, node, 4)
        B_ = ctx.dim(B)
        # W_hh^T [H, G*H] in panels (`_panels`), transposed once per call, so
        # the product reads it along the gates (contiguous with its output rows).
        w_t, transpose, PW, w_at = _panels(ctx, out.dtype, lambda k, r: w_hh([r, k]), H, G * H)
        pre = ctx.scratch(out.dtype, B_ * (G * H))
        zero = L.const_like(0, out.dtype)
        # h alone (passes/graph_trim_recurrences.py: readers that take only
        # h, in inference) leaves c and the gates unstored.
        keep_all = not node.attrs.get("h_only", False)

        def product(t, b, bi, rows, columns, h_prev):
            """The pre-activations of step t, examples b = b0 + bi (bi < rows):
            xp (unless the cell splits it off) + biases + h_{t-1} @ W_hh^T
            (h_prev(b, k) reads h_{t-1}), a plain product nest that the
            `tile` pass register-blocks. columns = ((p, panels), col,
            weight): for p < panels and c < PW, column col(p, c), whose
            W_hh[col, k] is weight(k, p, c)."""
            (p, n_panels), col, weight = columns
            c = ctx.var("c")
            n = col(p, c)
            bias = b_hh([n]) if cell.split else xp([b, t, n]) + b_ih([n]) + b_hh([n])
            return L.nest([(p, n_panels), (bi, rows), (c, L.Const(PW, L.INDEX))], L.Store(
                pre, b * (G * H) + n, bias + _dot(
                    ctx, L.Const(H, L.INDEX), lambda k: h_prev(b, k) * weight(k, p, c))))

        def step(t, b, bi, rows, pre_acts, units, h_prev, h_next, c_at):
            """Step t of examples b = b0 + bi, bi < rows: `pre_acts` (the
            nest `product` builds), then the cell update of `units` (first
            unit, count). h_prev(b, j) reads h_{t-1}; h_next(b, j) and
            c_at(b, j) are (buffer, index) of h_t and of c (c_{t-1},
            replaced by c_t)."""
            j0, width = units
            at = lambda col: flat_index(ctx, [b, t, col], node.out.type.shape)
            pre_at = lambda q, j: b * (G * H) + q * H + j
            act_at = (lambda q, j: (out, at((cell.acts + q) * H + j))) if keep_all else \
                (lambda q, j: (pre, pre_at(q, j)))
            each = lambda store: _each(ctx, width, store, j0)
            s = _Fwd(H, keep_all, each, pre=lambda q, j: L.Load(pre, pre_at(q, j)),
                     x=lambda q, j: xp([b, t, q * H + j]) + b_ih([q * H + j]),
                     out=lambda col: L.Load(out, at(col)), store=lambda col, v: L.Store(out, at(col), v),
                     act=lambda q, j: L.Load(*act_at(q, j)), set_act=lambda q, j, v: L.Store(*act_at(q, j), v),
                     h_prev=lambda j: h_prev(b, j), h=lambda j: L.Load(*h_next(b, j)),
                     set_h=lambda j, v: L.Store(*h_next(b, j), v),
                     c=lambda j: L.Load(*c_at(b, j)), set_c=lambda j, v: L.Store(*c_at(b, j), v))
            n = _length(ctx, ins, node, b, T)
            past = [each(lambda j, s=s: L.Store(out, at(s * H + j), zero))
                    for s in range(P // H if keep_all else 1)]
            return L.Seq([pre_acts, L.For(bi, rows, L.Seq([
                L.If(L.cmp("<", t, n), L.Seq(cell.forward(s))), L.If(L.cmp(">=", t, n), L.Seq(past))]))])

        def blocks_scan(b0, rows):
            # h_{t-1} and c_{t-1} per example in scratch [batch, 2*hidden]:
            # each block's product reads h before its cell updates replace it.
            state = ctx.scratch(out.dtype, B_ * (2 * H))
            t, bi, q, p = ctx.var("t"), ctx.var("bi"), ctx.var("q"), ctx.var("p")
            b = b0 + bi
            clear = L.nest([(bi, rows), (q, L.Const(2 * H, L.INDEX))], L.Store(state, b * (2 * H) + q, zero))
            if node.attrs["init"]:
                clear = L.Seq([L.nest([(bi, rows), (q, L.Const(H, L.INDEX))], L.Store(
                    state, b * (2 * H) + k * H + q, initial(k, b, q))) for k in (0, 1)])
            columns = ((p, L.Const(G * H // PW, L.INDEX)), lambda p, c: p * PW + c,
                       lambda k, p, c: L.Load(w_t, w_at(k, p, c)))
            h_prev = lambda b, k: L.Load(state, b * (2 * H) + k)
            return L.Seq([clear, L.For(t, ctx.dim(T), step(
                t, b, bi, rows, product(t, b, bi, rows, columns, h_prev), (0, H), h_prev,
                lambda b, j: (state, b * (2 * H) + j), lambda b, j: (state, b * (2 * H) + H + j)))])

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
        h_prev = lambda b, k: L.Load(hs, h_at(1 - parity, b, k))
        part = step(t, bi, bi, B_, product(t, bi, bi, B_, columns, h_prev), (u * PW, PW), h_prev,
                    lambda b, j: (hs, h_at(parity, b, j)), lambda b, j: (cs, b * H + j))
        clear = [L.For(i, 2 * B_ * H, L.Store(hs, i, zero)), L.For(i, B_ * H, L.Store(cs, i, zero))]
        if node.attrs["init"]:   # step 0 reads h_{-1} from the odd half
            e, j = ctx.var("e"), ctx.var("j")
            clear.append(L.nest([(e, B_), (j, L.Const(H, L.INDEX))], L.Seq([
                L.Store(hs, h_at(1, e, j), initial(0, e, j)), L.Store(cs, e * H + j, initial(1, e, j))])))
        split = L.Seq([L.Seq(clear), L.For(t, ctx.dim(T), L.For(u, L.Const(parts, L.INDEX), part, "parallel",
                                                               L.Const(1, L.INDEX)))])
        return L.Seq([transpose, L.If(L.cmp("<=", B_, L.Const(EXAMPLE_BLOCK, L.INDEX)), split),
                      L.If(L.cmp(">", B_, L.Const(EXAMPLE_BLOCK, L.INDEX)), blocks)])


class RecurrenceGrad(Op):
    """Backpropagation through time. Inputs: the gradient of the packed
    output, the packed output, weight_hh, the initial states (attr init)
    and (attr lengths) the lengths. Output (`grad_width`): the gradient of
    the pre-activation gates [batch, time, G*hidden] (split cells: of the
    input parts, then of the hidden parts), zero past each example's length;
    with an initial state, then per step the gradient reaching the states
    before it (at step 0: h0's and c0's).

    One kernel over blocks of examples (`_example_blocks`), t from last to
    first, carrying per example the gradient reaching h_{t-1} and c_{t-1} in
    scratch [batch, 2*hidden]; per step, the gate gradients of the block's
    examples (`Cell.backward`), then the gradient reaching h_{t-1}, d_pre @
    W_hh, as one product over the block (a plain product nest for `tile`)."""
    name = "recurrence_grad"

    def infer(self, ins, attrs) -> TensorType:
        g = ins[0]
        return TensorType(g.dtype, g.shape[:2] + (grad_width(CELLS[attrs["cell"]], attrs["hidden"], attrs["init"]),))

    def operand_range(self, node, k):
        return _lengths_range(node, k, node.inputs[0].type.shape[1])

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        cell, H = CELLS[node.attrs["cell"]], node.attrs["hidden"]
        GH = cell.gates * H
        d_h = GH if cell.split else 0   # where the hidden parts' gradients start
        B, T, W = node.out.type.shape
        g, packed, w_hh = ins[:3]
        initial = _initial(ins, node, 3)
        carry = ctx.scratch(out.dtype, ctx.dim(B) * (2 * H))
        zero = L.const_like(0, out.dtype)

        def scan(b0, rows):
            bi, s, j, k, q, c0 = (ctx.var(v) for v in ("bi", "s", "j", "k", "q", "c"))
            b = b0 + bi
            t = ctx.dim(T) - 1 - s
            at = lambda col: flat_index(ctx, [b, t, col], node.out.type.shape)
            carried = lambda col: b * (2 * H) + col
            prev = lambda k, j: L.Select(L.cmp("==", t, 0), initial(k, b, j),
                                         packed([b, L.maximum(t - 1, 0), k * H + j]))
            bw = _Bwd(H, dh=lambda j: g([b, t, j]) + L.Load(carry, carried(j)), g=lambda col: g([b, t, col]),
                      state=lambda col: packed([b, t, col]), prev=prev,
                      d=lambda col: L.Load(out, at(col)), set_d=lambda col, v: L.Store(out, at(col), v),
                      carry=lambda k: L.Load(carry, carried(k)), set_carry=lambda k, v: L.Store(carry, carried(k), v))
            n = _length(ctx, ins, node, b, T)
            gates = L.For(bi, rows, L.Seq([
                L.If(L.cmp("<", t, n), L.For(j, L.Const(H, L.INDEX), L.Seq(cell.backward(bw, j)))),
                L.If(L.cmp(">=", t, n), L.For(q, L.Const(W, L.INDEX), L.Store(out, at(q), zero)))]))
            # Past an example's length d_pre is zero, so is what reaches h_{t-1}.
            to_h = _dot(ctx, L.Const(GH, L.INDEX), lambda rr: L.Load(out, at(d_h + rr)) * w_hh([rr, k]))
            if cell.split:
                to_h = L.Load(carry, carried(H + k)) + to_h
            body = [gates, L.nest([(bi, rows), (k, L.Const(H, L.INDEX))], L.Store(carry, carried(k), to_h))]
            if node.attrs["init"]:
                body.append(L.nest([(bi, rows), (q, L.Const(cell.states * H, L.INDEX))], L.Store(
                    out, at(W - cell.states * H + q), L.Load(carry, carried(q)))))
            clear = L.nest([(bi, rows), (c0, L.Const(2 * H, L.INDEX))], L.Store(carry, carried(c0), zero))
            return L.Seq([clear, L.For(s, ctx.dim(T), L.Seq(body))])

        return _example_blocks(ctx, B, scan)


def _concat_last(b: Builder, first: Value, second: Value) -> Value:
    """[first | second] along the last axis."""
    a, width = first.type.shape[-1], first.type.shape[-1] + second.type.shape[-1]
    return add(b, b.node(PAD_LAST, [first], start=0, width=width),
               b.node(PAD_LAST, [second], start=a, width=width))


class Recurrent(Op):
    """rnn(x, hidden), lstm(...) and gru(...): all hidden states [batch, time,
    hidden] (2*hidden with bidirectional=true: forward then backward
    direction), with the final states h_n (and the lstm's c_n) [batch,
    hidden] (2*hidden: forward then backward) read as fields of the result,
    `s.h_n`. h0 (and c0) give the initial states, laid out as h_n."""
    owns_params = True

    def __init__(self, name: str, states: str, *extra: Arg):
        self.name, self.states = name, states
        self.signature = (Arg("x", "tensor"), Arg("hidden", "int"), Arg("name", "str", None),
                          Arg("lengths", "tensor", None), Arg("bidirectional", "bool", False)) + \
            tuple(Arg(f"{s}0", "tensor", None) for s in states) + extra

    def cell(self, args) -> str:
        """The CELLS entry of this call."""
        if self.name != "rnn":
            return self.name
        if args["nonlinearity"] not in ("tanh", "relu"):
            raise OpError(f"'rnn' takes nonlinearity=\"tanh\" or \"relu\", "
                          f"got \"{args['nonlinearity']}\"", arg="nonlinearity")
        return "rnn" if args["nonlinearity"] == "tanh" else "rnn_relu"

    def build(self, b: Builder, args) -> tuple[Value, dict[str, Value]]:
        """The hidden states and, by name, the final states (the checker's
        fields of a result)."""
        x, hidden, name = args["x"], args["hidden"], args["name"]
        if x.type.rank != 3:
            raise OpError(f"'{self.name}' expects a sequence [batch, time, features], got {x.type}", arg="x")
        need_float(self.name, x.type)
        if not isinstance(x.type.shape[2], int):
            raise OpError(f"'{self.name}' needs a fixed number of features, got {x.type}", arg="x")
        if hidden < 1:
            raise OpError(f"'{self.name}' needs hidden >= 1, got {hidden}", arg="hidden")
        cell = self.cell(args)
        lengths = check_lengths(self.name, x, args["lengths"])
        bi = args["bidirectional"]
        init = {}
        for s in self.states:
            v = args[f"{s}0"]
            want = TensorType(x.type.dtype, (x.type.shape[0], 2 * hidden if bi else hidden))
            if v is not None and v.type != want:
                raise OpError(f"'{self.name}' expects {s}0 {want} (one state per example of {x.type}"
                              f"{', forward then backward direction' if bi else ''}), got {v.type}", arg=f"{s}0")
            if v is not None:
                init[s] = v

        def run(x, suffix, start):
            """One direction, its initial states from columns [start, start + hidden)."""
            mine = {s: b.node(SLICE_LAST, [v], start=start, size=hidden) if bi else v for s, v in init.items()}
            return self.direction(b, x, hidden, name, suffix, cell, mine, lengths)

        h, finals = run(x, "", 0)
        if bi:
            rev = lambda v: b.node(REVERSE_TIME, [v] + lengths, lengths=bool(lengths))
            h_rev, finals_rev = run(rev(x), "_reverse", hidden)
            h = _concat_last(b, h, rev(h_rev))
            finals = {k: _concat_last(b, v, finals_rev[k]) for k, v in finals.items()}
        b.layer(name, self.name, h)
        return h, finals

    def direction(self, b: Builder, x: Value, hidden: int, name: str, suffix: str, cell: str,
                  init: dict[str, Value], lengths: list[Value]) -> tuple[Value, dict[str, Value]]:
        """The states of one direction over x and its final states (each
        example's at its last valid step: the reverse direction's has read
        the sequence back to step 0)."""
        dtype, rows = x.type.dtype, CELLS[cell].gates * hidden
        bound = 1.0 / math.sqrt(hidden)
        uniform = Init("uniform", -bound, bound)
        p = lambda what, shape: b.param(f"{name}.{what}{suffix}", TensorType(dtype, shape), uniform, layer=name)
        w_ih, w_hh = p("weight_ih", (rows, x.type.shape[2])), p("weight_hh", (rows, hidden))
        b_ih, b_hh = p("bias_ih", (rows,)), p("bias_hh", (rows,))
        xp = b.node(SEQ_PROJECT, [x, w_ih], tw=True)
        packed = b.node(RECURRENCE, [xp, w_hh, b_ih, b_hh] + list(init.values()) + lengths,
                        cell=cell, hidden=hidden, init=tuple(init), lengths=bool(lengths))
        state = lambda k: b.node(SLICE_LAST, [packed], start=k * hidden, size=hidden)
        h = packed if CELLS[cell].packed == 1 else state(0)
        final = lambda v: b.node(PICK_TIME, [v] + lengths, lengths=bool(lengths))
        return h, {f"{s}_n": final(h if s == "h" else state(1)) for s in self.states}


GATHER_ROWS, SCATTER_ROWS = register(Gather()), register(ScatterRows())
EMBEDDING = register(Embedding())
SEQ_PROJECT, SEQ_OUTER = register(SeqProject()), register(SeqOuter())
SUM_STEPS = register(SumSteps())
SLICE_LAST, PAD_LAST = register(SliceLast()), register(PadLast())
SHIFT_TIME, REVERSE_TIME = register(ShiftTime()), register(ReverseTime())
PICK_TIME, PLACE_TIME, LAST = register(PickTime()), register(PlaceTime()), register(Last())
RECURRENCE, RECURRENCE_GRAD = register(Recurrence()), register(RecurrenceGrad())
RNN = register(Recurrent("rnn", "h", Arg("nonlinearity", "str", "tanh")))
LSTM, GRU = register(Recurrent("lstm", "hc")), register(Recurrent("gru", "h"))
