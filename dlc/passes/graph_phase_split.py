"""Strided convolutions as stride-1 ones: a convolution of stride s (one
group, dilation 1) reads its input s elements apart along a row, which
keeps the `tile` pass from register-blocking it (its loads must move by one
element); it ran at 3-10 GFLOP/s where a stride-1 one runs at 160 (one
thread, AVX-512). So its input and filters are split into their stride
phases (`phase_split`, space to depth):

    y[n, k, o, p] = sum_{c, ky, kx} w[k, c, ky, kx] x[n, c, s o + ky, s p + kx]
                  = sum_{(ry, rx, c), qy, qx} w'[k, (ry, rx, c), qy, qx] x'[n, (ry, rx, c), o + qy, p + qx]

with ky = s qy + ry, x' the input's phases as channels and w' the filters',
a convolution of stride 1 and kernel ceil(k / s). Only the phases a tap
reads are kept (a 1x1 convolution of stride 2 reads one: a subsampling).

It applies where every (ry, qy) is a tap of the kernel, k < s or k a
multiple of s (1x1 or 2x2 of stride 2): elsewhere (3x3 or 7x7 of stride 2)
w' has zero taps, and a zero tap times an infinite input element, one the
convolution does not read, would make NaN where PyTorch gives a number or
an infinity. Measured at batch 1, one thread: a 1x1 stride-2 convolution
64 -> 128 at 56x56 went from 3.7 to 0.17 ms (PyTorch: 0.24); with zero taps
allowed, a 3x3 stride-2 one went from 17.3 to 2.4 ms (1.1) and ResNet's 7x7
stem from 22.6 to 3.1 ms (5.3), which per-phase sub-kernels would keep.

Like `winograd`, it runs after autodiff, on every entry (a train entry's
gradients come from conv2d's own rule), for the cpu target, before
`winograd`, which may then take a split 5x5 convolution of stride 2.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir.graph import Node, Program, rewrite
from ..ops.conv import CONV2D, PHASE_SPLIT


def eligible(n: Node) -> bool:
    if n.op is not CONV2D:
        return False
    a, x = n.attrs, n.inputs[0]
    whole_taps = all(k < s or k % s == 0 for k, s in zip(a["kernel"], a["stride"]))
    return (a["stride"] != (1, 1) and whole_taps and a["groups"] == 1 and a["dilation"] == (1, 1)
            and a["padding"] == (0, 0) and all(isinstance(d, int) for d in x.type.shape[1:]))


def phase_split(program: Program) -> Program:
    """Replace strided convolutions (pure: returns a new program)."""
    return replace(program, functions={name: rewrite(fn, _split) for name, fn in program.functions.items()})


def _split(n: Node, inputs: tuple) -> list[Node] | None:
    """phase_split of the input and the filters, and the stride-1 convolution."""
    if not eligible(n):
        return None
    (sy, sx), (kh, kw) = n.attrs["stride"], n.attrs["kernel"]
    oh, ow = n.out.type.shape[2:]
    qh, qw = -(-kh // sy), -(-kw // sx)
    phases = (min(sy, kh), min(sx, kw))
    split = []
    for v, size in zip(inputs, ((oh - 1 + qh, ow - 1 + qw), (qh, qw))):
        attrs = {"stride": (sy, sx), "phases": phases, "size": size}
        split.append(Node(PHASE_SPLIT, (v,), attrs, PHASE_SPLIT.infer([v.type], attrs), n.span))
    attrs = {**n.attrs, "kernel": (qh, qw), "stride": (1, 1)}
    return split + [Node(CONV2D, (split[0].out, split[1].out), attrs, n.out.type, n.span)]
