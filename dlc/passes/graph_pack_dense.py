"""Dense layers over weight panels: in inference entries, a dense layer's
product x W^T (a `gemm` with transposed b, W a param) becomes
`packed_dense` (dlc/ops/packed.py), absorbing the bias add and a relu after
it where the values before them have no other reader and are not outputs.

Train entries keep `gemm`: their step changes W, so the panels would be
re-laid on every call. The pass is for the cpu target (the driver runs it
there only).
"""
from __future__ import annotations

from dataclasses import replace

from ..ir.graph import Function, Node, Program, Value
from ..ops.elementwise import RELU
from ..ops.nn import GEMM
from ..ops.packed import PACKED_DENSE
from ..ops.shape import BROADCAST_TO
from .graph_chains import Build, bias_relu_chain, rewrite_chains, sole_reader_of
from .graph_dce import eliminate_dead_code

# Panel widths, widest first: two vectors of 16 lanes per k step (measured
# on the Intel Xeon, one thread: PW 32 at MR 8 and PW 64 at MR 4 within 2%),
# else one. Layers of other widths keep `gemm`.
PANELS = (32, 16)
# Fewer rows than this compute from W directly: the comparison with the
# panels' copy of W costs more than the panels save (MLP 784-256-256-10,
# 2 threads, Intel Xeon: panels 2.3x slower at batch 4, 1.2x at 16, even at 24-32).
MIN_ROWS = 32
# Smaller weights stay in L1 as they are (moons' 16 x 16): panels gain nothing
# there and would cost the session two copies.
MIN_K, MIN_UNITS = 64, 32


def pack_dense(program: Program) -> Program:
    """Replace the eligible dense products of inference entries (pure)."""
    out = replace(program, functions={})
    for fn in program.functions.values():
        out.functions[fn.name] = _function(fn) if fn.kind == "model" else fn
    return eliminate_dead_code(out)


def _panel(n: Node) -> int | None:
    x, w = n.inputs
    if n.attrs["ta"] or not n.attrs["tb"] or w.kind != "param" or x.type.rank != 2 \
            or w.type.rank != 2 or x.type.dtype != "f32" or w.type.shape[1] < MIN_K \
            or w.type.shape[0] < MIN_UNITS:
        return None
    return next((p for p in PANELS if w.type.shape[0] % p == 0), None)


def _bias(v: Value, units: int) -> Value | None:
    """b where v = broadcast_to(b), b of [units]."""
    if v.node is None or v.node.op is not BROADCAST_TO:
        return None
    b = v.node.inputs[0]
    return b if b.type.shape == (units,) else None


def _function(fn: Function) -> Function:
    sole_reader = sole_reader_of(fn)
    plans: dict[int, Build] = {}
    absorbed: set[int] = set()
    for n in fn.nodes:
        panel = _panel(n) if n.op is GEMM else None
        if panel is None:
            continue
        chain, bias = bias_relu_chain(n, sole_reader, lambda v, n=n: _bias(v, n.out.type.shape[1]))
        plans[id(chain[-1])] = lambda m, n=n, bias=bias, relu=chain[-1].op is RELU, panel=panel: \
            _replacement(n, [m(v) for v in n.inputs] + ([m(bias)] if bias is not None else []), panel, relu)
        absorbed.update(id(c) for c in chain[:-1])
    return rewrite_chains(fn, plans, absorbed)


def _replacement(gemm: Node, ins: list[Value], panel: int, relu: bool) -> Node:
    attrs = {"panel": panel, "relu": relu, "min_rows": MIN_ROWS}
    return Node(PACKED_DENSE, tuple(ins), attrs, PACKED_DENSE.infer([v.type for v in ins], attrs), gemm.span)
