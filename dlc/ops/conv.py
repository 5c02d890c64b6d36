"""2-D convolution (NCHW) and its two gradients, the transposed convolution
and 1-D convolution built from them, plus the sliding-window index
arithmetic that convolution and pooling share.

`conv2d` owns `<name>.weight` [filters, in/groups, kh, kw] and `<name>.bias`
[filters] with nn.Conv2d's layout and default initialisation
(kaiming_uniform(a=sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for
both, fan_in = in/groups * kh * kw). `conv1d` is a conv2d over a unit
height (weight [filters, in/groups, k], viewed as [.., 1, k]).
`conv_transpose2d` is conv2d's adjoint: its forward is conv2d's input
gradient (`conv2d_input_grad`, whose weight [in, out/groups, kh, kw] is
nn.ConvTranspose2d's layout, fan_in = out/groups * kh * kw), its gradients
conv2d's forward and weight gradient, so the passes treat it as they treat
a convolution.

The gradients are ops of their own, each lowered as a reduction:
- input gradient: a transposed convolution, dx[n, c, i, j] = sum over the
  filters of c's group and the kernel taps (ky, kx) whose window reads (i, j);
- weight gradient: dw[o, c, ky, kx] = sum over (n, oh, ow) of g * x.
Zero padding is a Select on the bounds of a clamped load (both sides of a
Select are evaluated, so no load may leave its buffer). conv2d's own padding
is an explicit `pad2d` node instead, kept as a kernel of its own by `fuse`:
the convolution then reads plain loads, a product the `tile` pass
register-blocks (implicit GEMM), and so does its weight gradient. With
stride 1 and one group, so does the input gradient: it reads the output
gradient zero-padded by a `pad2d` (see `input_grad`); the gradient of
conv2d's padding folds into it (only the unpadded input's part is computed).
Other input gradients keep their bounds checks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, Init, TensorType, Value
from ..lower import flat_index
from .base import Arg, Op, OpError, need_float, need_image, register, same_dtype
from .elementwise import add
from .shape import broadcast, reshape


def pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass(frozen=True)
class Window:
    """One spatial axis of a sliding window over an input of `size`: output
    position o with tap k reads input o*stride - pad + k*dilation."""
    size: int
    kernel: int
    stride: int = 1
    pad: int = 0
    dilation: int = 1

    @property
    def span(self) -> int:
        return self.dilation * (self.kernel - 1) + 1

    @property
    def out(self) -> int:
        return (self.size + 2 * self.pad - self.span) // self.stride + 1

    def input_at(self, o: L.Expr, k: L.Expr) -> tuple[L.Expr, list[L.Expr]]:
        """(clamped input index, conditions for it being inside the input)."""
        i = o * self.stride - self.pad + k * self.dilation
        low = self.pad > 0
        high = (self.out - 1) * self.stride - self.pad + self.span - 1 > self.size - 1
        conds = [L.cmp(">=", i, 0)] * low + [L.cmp("<", i, self.size)] * high
        return clamp(i, low, high, self.size), conds

    def output_at(self, i: L.Expr, k: L.Expr) -> tuple[L.Expr, list[L.Expr]]:
        """(clamped output position whose tap k reads input i, conditions for
        there being one): the adjoint of input_at."""
        t = i + self.pad - k * self.dilation
        low = self.span - 1 > self.pad
        high = (self.size - 1 + self.pad) // self.stride > self.out - 1
        conds = [L.cmp(">=", t, 0)] * low
        o = t
        if self.stride > 1:
            o = L.binop("/", t, L.Const(self.stride, L.INDEX))
            conds.append(L.cmp("==", t - o * self.stride, 0))
        conds += [L.cmp("<", o, self.out)] * high
        return clamp(o, low, high, self.out), conds


def clamp(i: L.Expr, low: bool, high: bool, size: int) -> L.Expr:
    if high:
        i = L.minimum(i, size - 1)
    if low:
        i = L.maximum(i, 0)
    return i


def guarded(value: L.Expr, conds: list[L.Expr], fill: float) -> L.Expr:
    """value where every condition holds, else fill."""
    cond = L.all_of(conds)
    return value if cond is None else L.Select(cond, value, L.const_like(fill, value.dtype))


def windows(hw: tuple, attrs: dict) -> tuple[Window, Window]:
    return tuple(Window(hw[a], attrs["kernel"][a], attrs["stride"][a], attrs["padding"][a],
                        attrs["dilation"][a]) for a in (0, 1))


def check_attrs(op: str, hw: tuple, attrs: dict) -> None:
    """The user errors of a window's spatial size hw and attributes."""
    if not all(isinstance(d, int) for d in hw):
        raise OpError(f"'{op}' needs fixed spatial sizes, got [{', '.join(map(str, hw))}]", arg="x")
    for key, least in (("kernel", 1), ("stride", 1), ("padding", 0), ("dilation", 1)):
        bad = [v for v in attrs[key] if v < least]
        if bad:
            raise OpError(f"'{op}' needs {key} >= {least}, got {bad[0]}", arg=key)


def check_windows(op: str, hw: tuple, attrs: dict) -> tuple[Window, Window]:
    """The windows of a conv or pool over spatial size hw, with its user errors."""
    check_attrs(op, hw, attrs)
    ws = windows(hw, attrs)
    for w, axis in zip(ws, ("height", "width")):
        if w.span > w.size + 2 * w.pad:
            raise OpError(f"'{op}': the kernel ({w.span} with dilation) is larger than the "
                          f"padded input {axis} ({w.size} + 2 * {w.pad})", arg="kernel")
    return ws


def conv_attrs(args: dict) -> dict:
    return {k: pair(args[k]) for k in ("kernel", "stride", "padding", "dilation")}


# ------------------------------------------------------------------ conv2d

def check_channels(op: str, channels: int, filters: int, groups: int) -> None:
    if groups < 1:
        raise OpError(f"'{op}' needs groups >= 1, got {groups}", arg="groups")
    if filters < 1:
        raise OpError(f"'{op}' needs filters >= 1, got {filters}", arg="filters")
    if channels % groups or filters % groups:
        raise OpError(f"'{op}' with groups={groups} needs input channels ({channels}) and "
                      f"filters ({filters}) divisible by {groups}", arg="groups")


def conv_layer(b: Builder, op: str, args: dict, wshape: tuple, fan_in: int, apply) -> Value:
    """A layer's output apply(weight) plus its bias per channel (axis 1), with
    the parameters `<name>.weight` of wshape and `<name>.bias` initialised as
    PyTorch's convolutions for fan_in."""
    name, dtype = args["name"], args["x"].type.dtype
    bound = 1.0 / math.sqrt(fan_in)
    init = Init("uniform", -bound, bound)
    y = apply(b.param(f"{name}.weight", TensorType(dtype, wshape), init, layer=name))
    if args["bias"]:
        c = y.type.shape[1]
        bias = b.param(f"{name}.bias", TensorType(dtype, (c,)), init, layer=name)
        y = add(b, y, broadcast(b, reshape(b, bias, (c,) + (1,) * (y.type.rank - 2)), y.type.shape))
    b.layer(name, op, y)
    return y


def padded(b: Builder, x: Value, attrs: dict) -> tuple[Value, dict]:
    """x zero-padded by attrs' padding as a pad2d node, and attrs without it."""
    if not any(attrs["padding"]):
        return x, attrs
    return b.node(PAD2D, [x], padding=attrs["padding"]), {**attrs, "padding": (0, 0)}


def convolve(b: Builder, x: Value, w: Value, attrs: dict) -> Value:
    x, attrs = padded(b, x, attrs)
    return b.node(CONV2D, [x, w], **attrs)


class Conv2d(Op):
    name = "conv2d"
    rereads = True
    reduces = True
    owns_params = True
    signature = (Arg("x", "tensor"), Arg("filters", "int"), Arg("kernel", "pair"),
                 Arg("stride", "pair", 1), Arg("padding", "pair", 0), Arg("dilation", "pair", 1),
                 Arg("groups", "int", 1), Arg("bias", "bool", True), Arg("name", "str", None))

    def build(self, b: Builder, args) -> Value:
        x, filters, groups = args["x"], args["filters"], args["groups"]
        need_image("conv2d", x.type, fixed_channels=True)
        attrs = {**conv_attrs(args), "groups": groups}
        check_windows("conv2d", x.type.shape[2:], attrs)
        channels = x.type.shape[1]
        check_channels("conv2d", channels, filters, groups)
        kh, kw = attrs["kernel"]
        return conv_layer(b, self.name, args, (filters, channels // groups, kh, kw),
                          channels // groups * kh * kw, lambda w: convolve(b, x, w, attrs))

    def infer(self, ins, attrs) -> TensorType:
        x, w = ins
        same_dtype(self.name, ins)
        wh, ww = windows(x.shape[2:], attrs)
        return TensorType(x.dtype, (x.shape[0], w.shape[0], wh.out, ww.out))

    def grad(self, b, node, g):
        x, w = node.inputs
        dx = input_grad(b, g, w, x.type.shape[2:], node.attrs)
        dw = b.node(CONV2D_WEIGHT_GRAD, [g, x], **node.attrs)
        return [dx, dw]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        n, o, oh, ow = idx
        x_t, w_t = (v.type for v in node.inputs)
        wh, ww = windows(x_t.shape[2:], node.attrs)
        cg, og = w_t.shape[1], w_t.shape[0] // node.attrs["groups"]
        c, ky, kx = ctx.var("c"), ctx.var("ky"), ctx.var("kx")
        ih, ch = wh.input_at(oh, ky)
        iw, cw = ww.input_at(ow, kx)
        ci = c if node.attrs["groups"] == 1 else L.binop("/", o, L.Const(og, L.INDEX)) * cg + c
        xv = guarded(ins[0]([n, ci, ih, iw]), ch + cw, 0)
        return L.Reduce("sum", (c, ky, kx), (L.Const(cg, L.INDEX), L.Const(wh.kernel, L.INDEX),
                                             L.Const(ww.kernel, L.INDEX)),
                        xv * ins[1]([o, c, ky, kx]))

    def reference(self, x, w, *, kernel, stride, padding, dilation, groups):
        cols, (oh, ow) = im2col(x, kernel, stride, padding, dilation)   # [n, c, kh, kw, oh, ow]
        n, c = x.shape[:2]
        o, cg = w.shape[:2]
        cols = cols.reshape(n, groups, cg, kernel[0], kernel[1], oh, ow)
        wg = w.reshape(groups, o // groups, cg, kernel[0], kernel[1])
        y = np.einsum("ngckluv,gockl->ngouv", cols, wg)
        return y.reshape(n, o, oh, ow)


def im2col(x, kernel, stride, padding, dilation):
    """[n, c, kh, kw, oh, ow] windows of x (zero padded), and (oh, ow)."""
    n, c, h, w = x.shape
    wh = Window(h, kernel[0], stride[0], padding[0], dilation[0])
    ww = Window(w, kernel[1], stride[1], padding[1], dilation[1])
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    out = np.empty((n, c, kernel[0], kernel[1], wh.out, ww.out), x.dtype)
    for ky in range(kernel[0]):
        for kx in range(kernel[1]):
            y0, x0 = ky * dilation[0], kx * dilation[1]
            out[:, :, ky, kx] = xp[:, :, y0:y0 + stride[0] * (wh.out - 1) + 1:stride[0],
                                   x0:x0 + stride[1] * (ww.out - 1) + 1:stride[1]]
    return out, (wh.out, ww.out)


def col2im(cols, shape, kernel, stride, padding, dilation):
    """The adjoint of im2col: sums [n, c, kh, kw, oh, ow] windows into `shape`."""
    n, c, h, w = shape
    oh, ow = cols.shape[-2:]
    xp = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), cols.dtype)
    for ky in range(kernel[0]):
        for kx in range(kernel[1]):
            y0, x0 = ky * dilation[0], kx * dilation[1]
            xp[:, :, y0:y0 + stride[0] * (oh - 1) + 1:stride[0],
               x0:x0 + stride[1] * (ow - 1) + 1:stride[1]] += cols[:, :, ky, kx]
    return xp[:, :, padding[0]:padding[0] + h, padding[1]:padding[1] + w]


def input_grad(b: Builder, g: Value, w: Value, size: tuple, attrs: dict) -> Value:
    """conv2d's input gradient for an input of spatial `size`. With stride 1
    and one group, g is read zero-padded by span - 1 - padding (a pad2d
    kernel): every tap is then a plain load, the product the `tile` pass
    register-blocks as it does the forward convolution."""
    attrs = {k: v for k, v in attrs.items() if k not in ("size", "gpad")}
    gpad = tuple(w.span - 1 - w.pad for w in windows(size, attrs))
    if attrs["stride"] != (1, 1) or attrs["groups"] != 1 or min(gpad) < 0:
        return b.node(CONV2D_INPUT_GRAD, [g, w], size=tuple(size), gpad=None, **attrs)
    if any(gpad):
        g = b.node(PAD2D, [g], padding=gpad)
    return b.node(CONV2D_INPUT_GRAD, [g, w], size=tuple(size), gpad=gpad, **attrs)


class ConvTranspose2d(Op):
    """nn.ConvTranspose2d: conv2d's input gradient of x, for the conv2d whose
    input is the output (see the module doc)."""
    name = "conv_transpose2d"
    owns_params = True
    signature = (Arg("x", "tensor"), Arg("filters", "int"), Arg("kernel", "pair"),
                 Arg("stride", "pair", 1), Arg("padding", "pair", 0), Arg("output_padding", "pair", 0),
                 Arg("groups", "int", 1), Arg("dilation", "pair", 1), Arg("bias", "bool", True),
                 Arg("name", "str", None))

    def build(self, b: Builder, args) -> Value:
        x, filters, groups = args["x"], args["filters"], args["groups"]
        need_image(self.name, x.type, fixed_channels=True)
        attrs = {**conv_attrs(args), "groups": groups}
        check_attrs(self.name, x.type.shape[2:], attrs)
        channels = x.type.shape[1]
        check_channels(self.name, channels, filters, groups)
        extra = pair(args["output_padding"])
        # PyTorch also takes stride <= output_padding < dilation; then the
        # adjoint conv2d would have more outputs than x has positions.
        if any(not 0 <= e < s for e, s in zip(extra, attrs["stride"])):
            raise OpError(f"'{self.name}' needs 0 <= output_padding < stride, got output_padding "
                          f"{extra} with stride {attrs['stride']}", arg="output_padding")
        size = tuple((d - 1) * w.stride - 2 * w.pad + w.span + e
                     for d, w, e in zip(x.type.shape[2:], windows(x.type.shape[2:], attrs), extra))
        if min(size) < 1:
            raise OpError(f"'{self.name}' would make an empty output {list(size)}: padding "
                          f"{attrs['padding']} is too large", arg="padding")
        kh, kw = attrs["kernel"]
        return conv_layer(b, self.name, args, (channels, filters // groups, kh, kw),
                          filters // groups * kh * kw, lambda w: input_grad(b, x, w, size, attrs))


class Conv1d(Op):
    """nn.Conv1d on [batch, channels, length]: conv2d over a unit height."""
    name = "conv1d"
    owns_params = True
    signature = (Arg("x", "tensor"), Arg("filters", "int"), Arg("kernel", "int"),
                 Arg("stride", "int", 1), Arg("padding", "int", 0), Arg("dilation", "int", 1),
                 Arg("groups", "int", 1), Arg("bias", "bool", True), Arg("name", "str", None))

    def build(self, b: Builder, args) -> Value:
        x, filters, groups, k = args["x"], args["filters"], args["groups"], args["kernel"]
        if x.type.rank != 3:
            raise OpError(f"'{self.name}' expects a 3-D input [batch, channels, length], got {x.type}",
                          arg="x")
        need_float(self.name, x.type)
        n, channels, length = x.type.shape
        if not isinstance(channels, int):
            raise OpError(f"'{self.name}' needs a fixed number of channels, got {x.type}", arg="x")
        attrs = {"kernel": (1, k), "stride": (1, args["stride"]), "padding": (0, args["padding"]),
                 "dilation": (1, args["dilation"]), "groups": groups}
        check_windows(self.name, (1, length), attrs)
        check_channels(self.name, channels, filters, groups)

        def apply(w):
            y = convolve(b, reshape(b, x, (n, channels, 1, length)),
                         reshape(b, w, (filters, channels // groups, 1, k)), attrs)
            return reshape(b, y, (n, filters, y.type.shape[3]))
        return conv_layer(b, self.name, args, (filters, channels // groups, k), channels // groups * k, apply)


def unpadded_g(node) -> Value:
    """The output gradient a conv2d_input_grad node reads, without the
    zero padding its tiled form reads it with."""
    g = node.inputs[0]
    return g.node.inputs[0] if any(node.attrs["gpad"] or ()) else g


class Conv2dInputGrad(Op):
    """dx of conv2d from the output gradient g and the weight: a transposed
    convolution. attrs: conv2d's, plus the input's spatial `size` and
    `gpad`: None, or the zero padding g comes with (see `input_grad`)."""
    name = "conv2d_input_grad"
    rereads = True
    reduces = True

    def infer(self, ins, attrs) -> TensorType:
        g, w = ins
        return TensorType(g.dtype, (g.shape[0], w.shape[1] * attrs["groups"]) + tuple(attrs["size"]))

    def grad(self, b, node, g):
        # As conv_transpose2d's forward: dg is conv2d of the output gradient,
        # dw conv2d's weight gradient with g and x in each other's place.
        attrs = {k: node.attrs[k] for k in ("kernel", "stride", "padding", "dilation", "groups")}
        gp, attrs = padded(b, g, attrs)
        dg = b.node(CONV2D, [gp, node.inputs[1]], **attrs)
        dw = b.node(CONV2D_WEIGHT_GRAD, [unpadded_g(node), gp], **attrs)
        if any(node.attrs["gpad"] or ()):
            # the gradient of the padded g, whose border pad2d's gradient drops
            dg = b.node(PAD2D, [dg], padding=node.attrs["gpad"])
        return [dg, dw]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        n, ci, ih, iw = idx
        g_t, w_t = (v.type for v in node.inputs)
        wh, ww = windows(node.attrs["size"], node.attrs)
        if node.attrs["gpad"] is not None:
            # dx[n, c, i, j] = sum g[n, o, i + pad - ky*dil, ...] * w[o, c, ky, kx],
            # g padded by span - 1 - pad: always inside the padded g.
            o, ky, kx = ctx.var("o"), ctx.var("ky"), ctx.var("kx")
            gv = ins[0]([n, o, ih + (wh.span - 1) - ky * wh.dilation, iw + (ww.span - 1) - kx * ww.dilation])
            return L.Reduce("sum", (o, ky, kx), (L.Const(w_t.shape[0], L.INDEX), L.Const(wh.kernel, L.INDEX),
                                                 L.Const(ww.kernel, L.INDEX)),
                            gv * ins[1]([o, ci, ky, kx]))
        groups = node.attrs["groups"]
        cg, og = w_t.shape[1], w_t.shape[0] // groups
        j, ky, kx = ctx.var("j"), ctx.var("ky"), ctx.var("kx")
        if groups == 1:
            o, c = j, ci
        else:
            grp = L.binop("/", ci, L.Const(cg, L.INDEX))
            o, c = grp * og + j, ci - grp * cg
        oh, ch = wh.output_at(ih, ky)
        ow, cw = ww.output_at(iw, kx)
        gv = guarded(ins[0]([n, o, oh, ow]), ch + cw, 0)
        return L.Reduce("sum", (j, ky, kx), (L.Const(og, L.INDEX), L.Const(wh.kernel, L.INDEX),
                                             L.Const(ww.kernel, L.INDEX)),
                        gv * ins[1]([o, c, ky, kx]))

    def reference(self, g, w, *, size, kernel, stride, padding, dilation, groups, gpad):
        if gpad is not None:
            (ph, pw), (h, w_) = gpad, g.shape[-2:]
            g = g[..., ph:h - ph, pw:w_ - pw]
        n, o, oh, ow = g.shape
        cg = w.shape[1]
        gg = g.reshape(n, groups, o // groups, oh, ow)
        wg = w.reshape(groups, o // groups, cg, kernel[0], kernel[1])
        cols = np.einsum("ngouv,gockl->ngckluv", gg, wg).reshape(n, groups * cg, *kernel, oh, ow)
        return col2im(cols, (n, groups * cg) + tuple(size), kernel, stride, padding, dilation)


class Conv2dWeightGrad(Op):
    """dw of conv2d from the output gradient g and the input x."""
    name = "conv2d_weight_grad"
    rereads = True
    reduces = True

    def infer(self, ins, attrs) -> TensorType:
        g, x = ins
        return TensorType(g.dtype, (g.shape[1], x.shape[1] // attrs["groups"]) + tuple(attrs["kernel"]))

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        o, c, ky, kx = idx
        g_t, x_t = (v.type for v in node.inputs)
        wh, ww = windows(x_t.shape[2:], node.attrs)
        groups = node.attrs["groups"]
        og, cg = g_t.shape[1] // groups, x_t.shape[1] // groups
        n, oh, ow = ctx.var("n"), ctx.var("oh"), ctx.var("ow")
        ih, ch = wh.input_at(oh, ky)
        iw, cw = ww.input_at(ow, kx)
        ci = c if groups == 1 else L.binop("/", o, L.Const(og, L.INDEX)) * cg + c
        xv = guarded(ins[1]([n, ci, ih, iw]), ch + cw, 0)
        return L.Reduce("sum", (n, oh, ow), (ctx.dim(g_t.shape[0]), L.Const(wh.out, L.INDEX),
                                             L.Const(ww.out, L.INDEX)),
                        ins[0]([n, o, oh, ow]) * xv)

    def reference(self, g, x, *, kernel, stride, padding, dilation, groups):
        cols, (oh, ow) = im2col(x, kernel, stride, padding, dilation)
        n, c = x.shape[:2]
        o = g.shape[1]
        cols = cols.reshape(n, groups, c // groups, kernel[0], kernel[1], oh, ow)
        gg = g.reshape(n, groups, o // groups, oh, ow)
        return np.einsum("ngouv,ngckluv->gockl", gg, cols).reshape(o, c // groups, *kernel)


class Pad2d(Op):
    """Zero padding of the last two axes by `padding` (ph, pw) >= 0 on each
    side. On the CPU one statement per kernel: for each leading index, ph
    zero rows, the input's rows each between pw zeros on either side (a
    stride-1 copy, which vectorizes, where the per-element form's clamped
    loads would be gathered lane by lane), ph zero rows. Each input element
    is read once and the border not at all, so `fuse` may inline a producer
    with a reduction (a pooling) into it."""
    name = "pad2d"
    rereads = False

    def infer(self, ins, attrs) -> TensorType:
        x, (ph, pw) = ins[0], attrs["padding"]
        return TensorType(x.dtype, x.shape[:-2] + (x.shape[-2] + 2 * ph, x.shape[-1] + 2 * pw))

    def grad(self, b, node, g):
        pad, src = node.attrs["padding"], g.node
        if src is not None and src.op is PAD2D and src.attrs["padding"] == pad:
            return [src.inputs[0]]   # a crop of the same padding
        if src is not None and src.op is CONV2D_INPUT_GRAD and src.attrs["gpad"] is not None \
                and src.attrs["padding"] == (0, 0):
            # conv2d's own padding: its transposed convolution computes only
            # the unpadded part (input_grad with the padding), not all of it
            # to be cropped.
            return [input_grad(b, unpadded_g(src), src.inputs[1], node.inputs[0].type.shape[-2:],
                               {**src.attrs, "padding": pad})]
        return [b.node(CROP2D, [g], crop=pad)]

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        x_t, o_t = node.inputs[0].type, node.out.type
        (ph, pw), (h, w) = node.attrs["padding"], x_t.shape[-2:]
        lead = [ctx.var(f"i{k}") for k in range(o_t.rank - 2)]
        i, j = ctx.var("i"), ctx.var("j")
        at = lambda row, col: flat_index(ctx, lead + [row, col], o_t.shape)
        if ctx.target != "cpu":   # the threads of a launch share out every element
            inside = [L.cmp(">=", i - ph, 0), L.cmp("<", i - ph, h), L.cmp(">=", j - pw, 0), L.cmp("<", j - pw, w)]
            src = ins[0](lead + [clamp(i - ph, True, True, h), clamp(j - pw, True, True, w)])
            body = L.Store(out, at(i, j), guarded(src, inside, 0))
            return L.nest([(v, ctx.dim(d)) for v, d in zip(lead + [i, j], o_t.shape)], body)
        zero = L.const_like(0, out.dtype)
        fill = lambda row, first, n: [L.For(j, L.Const(n, L.INDEX), L.Store(out, at(row, first + j), zero))] * (n > 0)
        zero_rows = lambda first: [L.For(i, L.Const(ph, L.INDEX), L.Seq(fill(first + i, 0, w + 2 * pw)))] * (ph > 0)
        rows = L.For(i, L.Const(h, L.INDEX), L.Seq(
            fill(ph + i, 0, pw)
            + [L.For(j, L.Const(w, L.INDEX), L.Store(out, at(ph + i, pw + j), ins[0](lead + [i, j])))]
            + fill(ph + i, pw + w, pw)))
        return L.nest([(v, ctx.dim(d)) for v, d in zip(lead, o_t.shape)],
                      L.Seq(zero_rows(0) + [rows] + zero_rows(ph + h)))

    def reference(self, x, *, padding):
        ph, pw = padding
        return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(ph, ph), (pw, pw)])


class Crop2d(Op):
    """The last two axes without `crop` (ch, cw) rows and columns on each
    side: pad2d's gradient."""
    name = "crop2d"

    def infer(self, ins, attrs) -> TensorType:
        x, (ch, cw) = ins[0], attrs["crop"]
        return TensorType(x.dtype, x.shape[:-2] + (x.shape[-2] - 2 * ch, x.shape[-1] - 2 * cw))

    def grad(self, b, node, g):
        return [b.node(PAD2D, [g], padding=node.attrs["crop"])]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        ch, cw = node.attrs["crop"]
        return ins[0](list(idx[:-2]) + [idx[-2] + ch, idx[-1] + cw])

    def reference(self, x, *, crop):
        (ch, cw), (h, w) = crop, x.shape[-2:]
        return x[..., ch:h - ch, cw:w - cw]


class PhaseSplit(Op):
    """The stride phases of an image as channels (space to depth, for the
    `phase_split` pass): out[n, (ry * pw + rx) * C + c, i, j] = x[n, c, sy * i
    + ry, sx * j + rx], 0 past x's edge, for the phases ry < ph, rx < pw, at
    output size `size`. A convolution of stride s is then one of stride 1
    over the split input, with the split filters (kernel ceil(k / s)),
    whose loads move by one element and so are register-blocked."""
    name = "phase_split"
    rereads = False
    stored = True

    def infer(self, ins, attrs) -> TensorType:
        (x,), (ph, pw) = ins, attrs["phases"]
        return TensorType(x.dtype, (x.shape[0], x.shape[1] * ph * pw) + tuple(attrs["size"]))

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        n, q, i, j = idx
        x_t = node.inputs[0].type
        c_n, (h, w) = x_t.shape[1], x_t.shape[2:]
        (sy, sx), (ph, pw), (a, b) = node.attrs["stride"], node.attrs["phases"], node.attrs["size"]
        phase = L.binop("/", q, L.Const(c_n, L.INDEX))
        c = q - phase * c_n
        ry = L.binop("/", phase, L.Const(pw, L.INDEX))
        row, col = i * sy + ry, j * sx + (phase - ry * pw)
        # Guards only where the last row or column can pass the edge.
        past_h, past_w = (a - 1) * sy + ph - 1 >= h, (b - 1) * sx + pw - 1 >= w
        inside = [L.cmp("<", row, h)] * past_h + [L.cmp("<", col, w)] * past_w
        at = [n, c, clamp(row, False, past_h, h), clamp(col, False, past_w, w)]
        return guarded(ins[0](at), inside, 0)

    def reference(self, x, *, stride, phases, size):
        (sy, sx), (ph, pw), (a, b) = stride, phases, size
        big = np.zeros(x.shape[:2] + (sy * a + sy, sx * b + sx), x.dtype)
        h, w = min(x.shape[2], big.shape[2]), min(x.shape[3], big.shape[3])
        big[:, :, :h, :w] = x[:, :, :h, :w]
        parts = [big[:, :, ry::sy, rx::sx][:, :, :a, :b] for ry in range(ph) for rx in range(pw)]
        return np.concatenate(parts, axis=1)


CONV2D = register(Conv2d())
PHASE_SPLIT = register(PhaseSplit())
CONV1D, CONV_TRANSPOSE2D = register(Conv1d()), register(ConvTranspose2d())
PAD2D, CROP2D = register(Pad2d()), register(Crop2d())
CONV2D_INPUT_GRAD = register(Conv2dInputGrad())
CONV2D_WEIGHT_GRAD = register(Conv2dWeightGrad())
