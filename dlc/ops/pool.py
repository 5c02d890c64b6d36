"""Pooling (NCHW): maxpool, avgpool (count_include_pad=True, PyTorch's
default), global_avgpool, and their gradients.

Max pooling's gradient goes to the first maximum of each window in scan
order (to the last NaN of a window with NaNs), as PyTorch's. It never
keeps a full-size mask: `maxpool_grad` either recomputes each window's
first-max position from x and the pooled output y (`saved="recompute"`),
or reads it from an output-sized index tensor made by `maxpool_argmax` in
the forward pass (`saved="indices"`). Autodiff emits the recompute form;
the `lower_pooling` pass picks per node (dlc/passes/graph_pooling.py).
"""
from __future__ import annotations

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, TensorType, Value
from .base import Arg, Op, OpError, need_image, register
from .conv import check_windows, col2im, guarded, im2col, pair, windows


def pool_attrs(args: dict) -> dict:
    size = pair(args["size"])
    stride = size if args.get("stride") is None else pair(args["stride"])
    return {"kernel": size, "stride": stride, "padding": pair(args.get("padding", 0)),
            "dilation": (1, 1)}


def non_overlapping(attrs: dict) -> bool:
    return attrs["stride"] == attrs["kernel"]


# Windows up to this many taps are pooled, and find their first maximum, by
# a chain of maxima, sums or selects (no reduction loop: the kernel stays
# elementwise and vectorizes).
SELECT_TAPS = 9


def first_max(ctx, x, y, wh, ww, n, c, oh, ow) -> L.Expr:
    """The position ky * kw + kx of window (oh, ow)'s first maximum, scanning
    rows then columns, as an index expression (PyTorch's argmax rule: its
    scan takes each NaN as a new maximum, so a window with NaNs gives its
    last NaN)."""
    taps = wh.kernel * ww.kernel

    def tap(ky, kx):
        """(x at tap (ky, kx), the conditions for it being inside x)."""
        ih, ch = wh.input_at(oh, ky)
        iw, cw = ww.input_at(ow, kx)
        return x([n, c, ih, iw]), ch + cw

    if taps <= SELECT_TAPS:
        # The first hit of a chain built from the last tap; then the last
        # NaN of one built from the first (none when y is not NaN).
        first: L.Expr = L.Const(taps, L.INDEX)
        order = [(ky, kx) for ky in range(wh.kernel) for kx in range(ww.kernel)]
        for test, scan in ((lambda v: L.cmp("==", v, y), reversed(order)), (L.isnan, order)):
            for ky, kx in scan:
                v, conds = tap(L.Const(ky, L.INDEX), L.Const(kx, L.INDEX))
                first = L.Select(L.all_of(conds + [test(v)]), L.Const(ky * ww.kernel + kx, L.INDEX), first)
        return first
    qy, qx = ctx.var("qy"), ctx.var("qx")
    v, conds = tap(qy, qx)
    dtype = y.dtype
    pos = L.Cast(qy * ww.kernel + qx, dtype)
    inside = L.all_of(conds)
    hit, nan = (t if inside is None else L.Bin("and", inside, t, "bool")
                for t in (L.cmp("==", v, y), L.isnan(v)))
    # The max of taps + pos over NaNs, else of -pos over hits: the last NaN
    # or the smallest hit position.
    best = L.Reduce("max", (qy, qx), (L.Const(wh.kernel, L.INDEX), L.Const(ww.kernel, L.INDEX)),
                    L.Select(nan, pos + float(taps), L.Select(hit, -pos, L.const_like(-1e9, dtype))))
    return L.Cast(L.Select(L.cmp(">=", best, float(taps)), best - float(taps), -best), L.INDEX)


class Pool(Op):
    """maxpool(x, size, stride=size, padding=0) or avgpool(...)."""
    signature = (Arg("x", "tensor"), Arg("size", "pair"), Arg("stride", "pair", None),
                 Arg("padding", "pair", 0))
    reduces = True   # rereads its input where windows overlap: see graph_fuse

    def __init__(self, kind: str):
        self.kind, self.name = kind, f"{kind}pool"

    def build(self, b: Builder, args) -> Value:
        x = args["x"]
        need_image(self.name, x.type)
        attrs = pool_attrs(args)
        check_windows(self.name, x.type.shape[2:], attrs)
        if any(2 * p > k for p, k in zip(attrs["padding"], attrs["kernel"])):
            raise OpError(f"'{self.name}' padding {attrs['padding']} must be at most half the "
                          f"size {attrs['kernel']}", arg="padding")
        return b.node(self, [x], **attrs)

    def infer(self, ins, attrs) -> TensorType:
        (x,) = ins
        wh, ww = windows(x.shape[2:], attrs)
        return TensorType(x.dtype, x.shape[:2] + (wh.out, ww.out))

    def grad(self, b, node, g):
        (x,) = node.inputs
        if self.kind == "avg":
            return [b.node(AVGPOOL_GRAD, [g], size=x.type.shape[2:], **node.attrs)]
        return [b.node(MAXPOOL_GRAD, [x, node.out, g], saved="recompute", **node.attrs)]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        n, c, oh, ow = idx
        wh, ww = windows(node.inputs[0].type.shape[2:], node.attrs)
        fill = float("-inf") if self.kind == "max" else 0.0
        combine = L.maximum if self.kind == "max" else (lambda a, b: a + b)

        def tap(ky, kx):
            ih, ch = wh.input_at(oh, ky)
            iw, cw = ww.input_at(ow, kx)
            return guarded(ins[0]([n, c, ih, iw]), ch + cw, fill)

        if wh.kernel * ww.kernel <= SELECT_TAPS:
            # The taps combined in the reduction's order, from the same start:
            # no loop, so the kernel vectorizes along the output row.
            r = L.const_like(fill, node.out.type.dtype)
            for ky in range(wh.kernel):
                for kx in range(ww.kernel):
                    r = combine(r, tap(L.Const(ky, L.INDEX), L.Const(kx, L.INDEX)))
        else:
            ky, kx = ctx.var("ky"), ctx.var("kx")
            extents = (L.Const(wh.kernel, L.INDEX), L.Const(ww.kernel, L.INDEX))
            r = L.Reduce("max" if self.kind == "max" else "sum", (ky, kx), extents, tap(ky, kx))
        return r if self.kind == "max" else r * (1.0 / (wh.kernel * ww.kernel))

    def reference(self, x, *, kernel, stride, padding, dilation):
        fill = -np.inf if self.kind == "max" else 0.0
        xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2),
                    constant_values=fill)
        cols, _ = im2col(xp, kernel, stride, (0, 0), dilation)
        return cols.max(axis=(2, 3)) if self.kind == "max" else cols.mean(axis=(2, 3))


class GlobalAvgPool(Op):
    """[n, c, h, w] -> [n, c, 1, 1], as nn.AdaptiveAvgPool2d(1)."""
    name = "global_avgpool"
    signature = (Arg("x", "tensor"),)

    def build(self, b, args):
        x = args["x"]
        need_image("global_avgpool", x.type)
        return AVGPOOL.build(b, {"x": x, "size": tuple(x.type.shape[2:])})


class AvgPoolGrad(Op):
    """dx of avgpool: each output gradient spread evenly over its window."""
    name = "avgpool_grad"
    rereads = True
    reduces = True

    def infer(self, ins, attrs) -> TensorType:
        return TensorType(ins[0].dtype, ins[0].shape[:2] + tuple(attrs["size"]))

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        n, c, ih, iw = idx
        wh, ww = windows(node.attrs["size"], node.attrs)
        ky, kx = ctx.var("ky"), ctx.var("kx")
        oh, ch = wh.output_at(ih, ky)
        ow, cw = ww.output_at(iw, kx)
        extents = (L.Const(wh.kernel, L.INDEX), L.Const(ww.kernel, L.INDEX))
        return L.Reduce("sum", (ky, kx), extents,
                        guarded(ins[0]([n, c, oh, ow]), ch + cw, 0)) * (1.0 / (wh.kernel * ww.kernel))

    def reference(self, g, *, size, kernel, stride, padding, dilation):
        cols = np.broadcast_to(g[:, :, None, None] / (kernel[0] * kernel[1]),
                               g.shape[:2] + tuple(kernel) + g.shape[2:])
        return col2im(cols, g.shape[:2] + tuple(size), kernel, stride, padding, dilation)


class MaxPoolArgmax(Op):
    """The first-max position in each window, from x and the pooled y: i32,
    output-sized (what PyTorch saves as indices, relative to the window)."""
    name = "maxpool_argmax"
    rereads = True
    reduces = True

    def infer(self, ins, attrs) -> TensorType:
        return TensorType("i32", ins[1].shape)

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        n, c, oh, ow = idx
        wh, ww = windows(node.inputs[0].type.shape[2:], node.attrs)
        return L.Cast(first_max(ctx, ins[0], ins[1](idx), wh, ww, n, c, oh, ow), "i32")

    def reference(self, x, y, *, kernel, stride, padding, dilation):
        xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2),
                    constant_values=-np.inf)
        cols, _ = im2col(xp, kernel, stride, (0, 0), dilation)
        n, c, kh, kw, oh, ow = cols.shape
        cols = cols.reshape(n, c, kh * kw, oh, ow)
        nan = np.isnan(cols)
        last_nan = kh * kw - 1 - nan[:, :, ::-1].argmax(axis=2)
        return np.where(nan.any(axis=2), last_nan, cols.argmax(axis=2)).astype(np.int32)


class MaxPoolGrad(Op):
    """dx of maxpool: g routed to each window's first maximum. Inputs
    (x, y, g) with saved='recompute', or (argmax, g) with saved='indices'."""
    name = "maxpool_grad"
    rereads = True
    reduces = True

    def infer(self, ins, attrs) -> TensorType:
        if attrs["saved"] == "recompute":
            return ins[0]
        g = ins[1]
        return TensorType(g.dtype, g.shape[:2] + tuple(attrs["size"]))

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        n, c, ih, iw = idx
        recompute = node.attrs["saved"] == "recompute"
        size = node.inputs[0].type.shape[2:] if recompute else node.attrs["size"]
        wh, ww = windows(size, node.attrs)
        g = ins[-1]

        def routed(oh, ow, ky, kx):
            """g[oh, ow] if tap (ky, kx) of window (oh, ow) is its first max."""
            if recompute:
                first = first_max(ctx, ins[0], ins[1]([n, c, oh, ow]), wh, ww, n, c, oh, ow)
            else:
                first = L.Cast(ins[0]([n, c, oh, ow]), L.INDEX)
            return L.Select(L.cmp("==", first, ky * ww.kernel + kx), g([n, c, oh, ow]),
                            L.const_like(0, node.out.type.dtype))

        if non_overlapping(node.attrs):  # one window per input element: no search
            taps, conds = [], []
            for i, w in ((ih, wh), (iw, ww)):
                t = i + w.pad
                o = L.binop("/", t, L.Const(w.kernel, L.INDEX))
                k = t - o * w.kernel
                if (w.size - 1 + w.pad) // w.kernel > w.out - 1:  # rows past the last window
                    conds.append(L.cmp("<", o, w.out))
                    o = L.minimum(o, w.out - 1)
                taps.append((o, k))
            (oh, ky), (ow, kx) = taps
            return guarded(routed(oh, ow, ky, kx), conds, 0)
        ky, kx = ctx.var("ky"), ctx.var("kx")
        oh, ch = wh.output_at(ih, ky)
        ow, cw = ww.output_at(iw, kx)
        extents = (L.Const(wh.kernel, L.INDEX), L.Const(ww.kernel, L.INDEX))
        return L.Reduce("sum", (ky, kx), extents, guarded(routed(oh, ow, ky, kx), ch + cw, 0))

    def reference(self, *ins, saved, kernel, stride, padding, dilation, size=None):
        if saved == "recompute":
            x, y, g = ins
            arg = MAXPOOL_ARGMAX.reference(x, y, kernel=kernel, stride=stride, padding=padding,
                                           dilation=dilation)
            size = x.shape[2:]
        else:
            arg, g = ins
        n, c, oh, ow = g.shape
        cols = np.zeros((n, c, kernel[0] * kernel[1], oh, ow), g.dtype)
        np.put_along_axis(cols, arg[:, :, None].astype(np.int64), g[:, :, None], axis=2)
        return col2im(cols.reshape(n, c, *kernel, oh, ow), (n, c) + tuple(size), kernel, stride,
                      padding, dilation)


MAXPOOL, AVGPOOL = register(Pool("max")), register(Pool("avg"))
GLOBAL_AVGPOOL = register(GlobalAvgPool())
AVGPOOL_GRAD, MAXPOOL_GRAD = register(AvgPoolGrad()), register(MaxPoolGrad())
MAXPOOL_ARGMAX = register(MaxPoolArgmax())
