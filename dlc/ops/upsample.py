"""upsample(x, scale, mode="nearest"|"bilinear"): [n, c, h, w] enlarged by
integer factors scale = s or (sh, sw), as F.interpolate(x, scale_factor=scale,
mode=mode, align_corners=False); and its gradient.

Along an axis, output i reads input i / s (nearest), or interpolates input
rows i0 = floor(src) and min(i0 + 1, size - 1) at src = max((i + 0.5) / s -
0.5, 0) (bilinear, PyTorch's arithmetic, in the tensor's dtype). The
gradient gathers, for each input position k, the outputs that read it: the
s at k * s (nearest), or the 2s from k * s - (s + 1) // 2, those whose i0 is
k - 1 or k (bilinear), each weighted as it read k.
"""
from __future__ import annotations

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, TensorType, Value
from .base import Arg, Op, OpError, need_image, register, suggest
from .conv import clamp, guarded, pair
from .pool import SELECT_TAPS

MODES = ("nearest", "bilinear")


def reads(i: L.Expr, size: int, s: int, mode: str, dtype: str) -> list[tuple[L.Expr, L.Expr | None]]:
    """The input positions output position i reads along an axis of `size`
    enlarged s times, each with its weight (None: 1)."""
    if mode == "nearest":
        return [(L.binop("/", i, L.Const(s, L.INDEX)), None)]
    src = L.maximum((L.Cast(i, dtype) + 0.5) * (1.0 / s) - 0.5, 0.0)
    i0 = L.Cast(src, L.INDEX)   # src >= 0: truncation is the floor
    l1 = src - L.Cast(i0, dtype)
    return [(i0, 1.0 - l1), (L.minimum(i0 + 1, size - 1), l1)]


def scaled(v: L.Expr, w: L.Expr | None) -> L.Expr:
    return v if w is None else w * v


def weighted_sum(terms: list[tuple[L.Expr, L.Expr | None]]) -> L.Expr:
    out = None
    for v, w in terms:
        out = scaled(v, w) if out is None else out + scaled(v, w)
    return out


def matrix(size: int, s: int, mode: str) -> np.ndarray:
    """[size * s, size]: each output position's weights on the inputs along
    an axis (for the references)."""
    a = np.zeros((size * s, size))
    i = np.arange(size * s)
    if mode == "nearest":
        a[i, i // s] = 1
        return a
    src = np.maximum((i + 0.5) / s - 0.5, 0)
    i0 = src.astype(int)
    np.add.at(a, (i, i0), 1 - (src - i0))
    np.add.at(a, (i, np.minimum(i0 + 1, size - 1)), src - i0)
    return a


class Upsample(Op):
    name = "upsample"
    rereads = True
    signature = (Arg("x", "tensor"), Arg("scale", "pair"), Arg("mode", "str", "nearest"))

    def build(self, b: Builder, args) -> Value:
        x, scale, mode = args["x"], pair(args["scale"]), args["mode"]
        need_image(self.name, x.type)
        if not all(isinstance(d, int) for d in x.type.shape[2:]):
            raise OpError(f"'{self.name}' needs fixed spatial sizes, got {x.type}", arg="x")
        if min(scale) < 1:
            raise OpError(f"'{self.name}' needs an integer scale >= 1, got {args['scale']}", arg="scale")
        if mode not in MODES:
            raise OpError(f"'{self.name}' mode must be one of {', '.join(MODES)}, got "
                          f"\"{mode}\"{suggest(mode, MODES)}", arg="mode")
        return b.node(self, [x], scale=scale, mode=mode)

    def infer(self, ins, attrs) -> TensorType:
        (x,), (sh, sw) = ins, attrs["scale"]
        return TensorType(x.dtype, x.shape[:2] + (x.shape[2] * sh, x.shape[3] * sw))

    def grad(self, b, node, g):
        return [b.node(UPSAMPLE_GRAD, [g], size=node.inputs[0].type.shape[2:], **node.attrs)]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        n, c, i, j = idx
        (h, w), (sh, sw), mode = node.inputs[0].type.shape[2:], node.attrs["scale"], node.attrs["mode"]
        dtype = node.out.type.dtype
        # PyTorch's order: the rows' weights times each row's columns interpolated
        return weighted_sum([(weighted_sum([(ins[0]([n, c, iy, ix]), wx)
                                            for ix, wx in reads(j, w, sw, mode, dtype)]), wy)
                             for iy, wy in reads(i, h, sh, mode, dtype)])

    def reference(self, x, *, scale, mode):
        (h, w), (sh, sw) = x.shape[2:], scale
        return np.einsum("ih,nchw,jw->ncij", matrix(h, sh, mode), x, matrix(w, sw, mode)).astype(x.dtype)


class UpsampleGrad(Op):
    """dx of upsample for an input of spatial `size` (see the module doc)."""
    name = "upsample_grad"
    rereads = True
    reduces = True

    def infer(self, ins, attrs) -> TensorType:
        return TensorType(ins[0].dtype, ins[0].shape[:2] + tuple(attrs["size"]))

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        n, c, k, m = idx
        size, scale, mode = node.attrs["size"], node.attrs["scale"], node.attrs["mode"]
        dtype = node.out.type.dtype

        def reader(k, size, s, t):
            """(the t-th output position that may read input k, its weight on k,
            the conditions for it being inside the output)."""
            if mode == "nearest":
                return k * s + t, None, []
            i = k * s - (s + 1) // 2 + t
            conds = [L.cmp(">=", i, 0), L.cmp("<", i, size * s)]
            i = clamp(i, True, True, size * s)
            zero = L.const_like(0, dtype)
            return i, weighted_sum([(L.Select(L.cmp("==", at, k), wt, zero), None)
                                    for at, wt in reads(i, size, s, mode, dtype)]), conds

        def term(ty, tx):
            i, wy, cy = reader(k, size[0], scale[0], ty)
            j, wx, cx = reader(m, size[1], scale[1], tx)
            return guarded(scaled(scaled(ins[0]([n, c, i, j]), wx), wy), cy + cx, 0)

        taps = [s if mode == "nearest" else 2 * s for s in scale]
        if taps[0] * taps[1] <= SELECT_TAPS:   # unrolled: the kernel stays elementwise
            return weighted_sum([(term(L.Const(ty, L.INDEX), L.Const(tx, L.INDEX)), None)
                                 for ty in range(taps[0]) for tx in range(taps[1])])
        ty, tx = ctx.var("ty"), ctx.var("tx")
        return L.Reduce("sum", (ty, tx), tuple(L.Const(t, L.INDEX) for t in taps), term(ty, tx))

    def reference(self, g, *, size, scale, mode):
        ay, ax = (matrix(d, s, mode) for d, s in zip(size, scale))
        return np.einsum("ih,ncij,jw->nchw", ay, g, ax).astype(g.dtype)


UPSAMPLE, UPSAMPLE_GRAD = register(Upsample()), register(UpsampleGrad())
