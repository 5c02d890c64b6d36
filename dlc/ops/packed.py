"""A dense layer over weight panels: y = x W^T (+ bias) (relu), with W [N, K]
re-laid as panels P[jp][k][jl] = W[jp * PW + jl, k] of PW columns, as MLAS
and BLIS pack B.

Why: the `tile` pass's micro-kernel for x W^T as written is the `dot` form
(both operands vectors along k, lanes summed at the end), which streams
MR vector rows of x per NR rows of W from L2: 64 / NR bytes per vector FMA.
Over P it is the `outer` form (a broadcast of x against vectors of a
contiguous panel): 4 / NR bytes, and the panel is read in order, prefetched,
with no two rows 4 KB apart in one L1 set. On the 2-core Intel Xeon with
AVX-512 (two FMA ports), one thread, x [1024, 1024] by W [1024, 1024]: 95 -> 138
GFLOP/s (of a 212 peak); x [64, 784] by W [256, 784]: about 100 -> 131 (each
measured as `matmul` over panels given as an input). SGEMM 1024 on 2 threads:
0.43 -> 0.66 of the peak.

P is cached in the session and re-laid only when W changed (dlc/ops/cache.py),
so the `pack_dense` pass uses this op in inference entries only (a train
step changes W every step). The comparison reads W and its copy: at a few
rows that costs more than the product saves, so below `min_rows` rows the
kernel computes x W^T from W itself, as `gemm` would (MIN_ROWS in the pass).
"""
from __future__ import annotations

import numpy as np

from ..ir import loops as L
from ..ir.graph import TensorType
from .base import Op, register
from .cache import when_changed


class PackedDense(Op):
    """y = x @ weight.T (+ bias) (relu) for x [M, K], weight [N, K]; attrs
    panel (PW, dividing N), relu, min_rows. Forward values only: the
    `pack_dense` pass runs after autodiff."""
    name = "packed_dense"
    rereads = True
    reduces = True

    def infer(self, ins, attrs) -> TensorType:
        x, w = ins[:2]
        return TensorType(x.dtype, (x.shape[0], w.shape[0]))

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        x_t, w_v = node.inputs[0].type, node.inputs[1]
        (N, K), PW = w_v.type.shape, node.attrs["panel"]
        M = ctx.dim(x_t.shape[0])
        x, w = ins[0], ins[1]
        bias = ins[2] if len(ins) > 2 else None
        dtype = out.dtype
        I = lambda v: L.Const(v, L.INDEX)

        def finish(total: L.Expr, j: L.Expr) -> L.Expr:
            e = total + bias([j]) if bias is not None else total
            return L.maximum(e, 0.0) if node.attrs["relu"] else e

        # Panels of PW rows of W: rows jp * PW.. are W's elements jp * PW * K..
        # (contiguous), compared and re-laid panel by panel (a parallel loop).
        P = ctx.cache(f"{w_v.name}.panels", dtype, N * K)
        seen = ctx.cache(f"{w_v.name}.panels_of", dtype, N * K)
        jp, k, jl = ctx.var("jp"), ctx.var("k"), ctx.var("jl")
        lay = L.For(k, I(K), L.For(jl, I(PW), L.Store(P, (jp * K + k) * PW + jl, w([jp * PW + jl, k]))))
        flat = lambda e: w([I(0), e])   # element e of the contiguous weights
        pack = L.For(jp, I(N // PW), when_changed(flat, seen, jp * (PW * K), PW * K, lay))

        i, jp2, jl2, k2 = ctx.var("i"), ctx.var("jp"), ctx.var("jl"), ctx.var("k")
        j = jp2 * PW + jl2
        over_panels = L.For(i, M, L.For(jp2, I(N // PW), L.For(jl2, I(PW), L.Store(
            out, i * N + j, finish(L.Reduce("sum", (k2,), (I(K),),
                                            x([i, k2]) * L.Load(P, (jp2 * K + k2) * PW + jl2)), j)))))

        i3, j3, k3 = ctx.var("i"), ctx.var("j"), ctx.var("k")
        over_weights = L.For(i3, M, L.For(j3, I(N), L.Store(
            out, i3 * N + j3, finish(L.Reduce("sum", (k3,), (I(K),), x([i3, k3]) * w([j3, k3])), j3))))

        many = L.cmp(">=", M, I(node.attrs["min_rows"]))
        return L.Seq([L.If(many, L.Seq([pack, over_panels])),
                      L.If(L.cmp("<", M, I(node.attrs["min_rows"])), over_weights)])

    def reference(self, x, w, bias=None, *, panel, relu, min_rows):
        y = x @ w.T + (0 if bias is None else bias)
        return np.maximum(y, 0) if relu else y


PACKED_DENSE = register(PackedDense())
