"""GPU mapping: kernels become loops over the threads of a launch.

`map_to_gpu`: the perfectly nested loops at the top of a kernel (the loops
over the output's shape that `lower` writes) are flattened into one index
`gid` in [0, product of their extents); a `For` of kind `gpu_grid` over
`gid` means "these iterations are spread over every thread of the launch"
and is rendered as a grid-stride loop, so any grid size is correct and the
launch plan may cap it. The original indices are recomputed from `gid`
(row-major division and remainder). Everything inside (reduction loops,
accumulators, update temporaries) stays per thread, in serial loops: the
cuda pipeline runs no CPU schedule (parallel, vectorized), as the threads
are the parallelism. A kernel with no outer loop (a scalar result
such as a loss) runs as a grid loop of one iteration.

`tile_matmuls` (before it): a kernel whose innermost two outer loops (r, c)
hold a sum over k of A * B, A independent of c and B of r - a matmul, a
dense layer and its gradients, whatever the fused epilogue - is tiled for
shared memory: each block of BLOCK threads computes a TILE x TILE tile of
(r, c); per step of TILE along k, the threads stage A's and B's tiles in
shared memory (zero-filled outside the bounds), synchronise, accumulate,
synchronise. Loops: `gpu_blocks` (a grid-stride loop over tiles, uniform in
a block, so barriers are legal) around `gpu_threads` (one iteration per
thread of the block). The summation order over k is unchanged.

Both passes are generic on the loop IR: they know no op, so new ops map
without GPU-specific code.
"""
from __future__ import annotations

import itertools
from dataclasses import replace

from ..ir import loops as L

GRID, BLOCKS, THREADS = L.LOOP_KINDS[-3:]   # "gpu_grid", "gpu_blocks", "gpu_threads"
BLOCK = 256  # threads per block in every launch
TILE = 16    # tiled kernels: TILE x TILE outputs per block (TILE * TILE == BLOCK)


def map_to_gpu(prog: L.LoopProgram) -> L.LoopProgram:
    """Bind every kernel's outer loops to the grid (pure)."""
    entries = [replace(e, kernels=[L.Kernel(k.name, k.body if _mapped(k.body) else map_kernel(k.body))
                                   for k in e.kernels])
               for e in prog.entries]
    return replace(prog, entries=entries)


def _mapped(body: L.Stmt) -> bool:
    return isinstance(body, L.For) and body.kind in (GRID, BLOCKS)


def launch_threads(kernel: L.Kernel) -> L.Expr:
    """How many threads a mapped kernel wants (the launch uses blocks of BLOCK)."""
    body = kernel.body
    if not _mapped(body):
        raise ValueError(f"kernel {kernel.name} is not mapped to the GPU")
    return body.extent if body.kind == GRID else body.extent * BLOCK


def _outer_loops(body: L.Stmt) -> tuple[list[L.For], L.Stmt]:
    outer: list[L.For] = []
    while isinstance(body, L.For):
        outer.append(body)
        body = body.body
    return outer, body


def _unflatten(index: L.Expr, extents: list[L.Expr]) -> list[L.Expr]:
    """Row-major indices of a flat index into `extents`."""
    out: list[L.Expr] = []
    # Innermost first: i_k = index % e_k, index = index / e_k.
    for k in range(len(extents) - 1, 0, -1):
        quotient = L.binop("/", index, extents[k])
        out.append(index - quotient * extents[k])
        index = quotient
    return ([index] if extents else []) + out[::-1]


def _product(extents: list[L.Expr]) -> L.Expr:
    n: L.Expr = L.Const(1, L.INDEX)
    for e in extents:
        n = n * e
    return n


def map_kernel(body: L.Stmt) -> L.Stmt:
    outer, inner = _outer_loops(body)
    gid = L.Var("gid")
    extents = [loop.extent for loop in outer]
    env = dict(zip((loop.var for loop in outer), _unflatten(gid, extents)))
    return L.For(gid, _product(extents), L.substitute_stmt(inner, env), GRID)


# ------------------------------------------------------------ tiling

def tile_matmuls(prog: L.LoopProgram) -> L.LoopProgram:
    """Shared-memory tiling of every matmul-like kernel (pure)."""
    counter = itertools.count()
    entries = [replace(e, kernels=[L.Kernel(k.name, tile_kernel(k.body, counter) or k.body)
                                   for k in e.kernels])
               for e in prog.entries]
    return replace(prog, entries=entries)


def _vars(e: L.Expr) -> set:
    return {x for x in L.subexprs(e) if isinstance(x, L.Var)}


def _reads(e: L.Expr, kinds: tuple[str, ...]) -> bool:
    return any(isinstance(x, L.Load) and x.buf.kind in kinds for x in L.subexprs(e))


def _k_contiguous(f: L.Expr, k: L.Var) -> bool:
    """Whether consecutive k read consecutive elements (a single load whose
    index has stride 1 in k): then threads adjacent in x stage along k."""
    if not isinstance(f, L.Load):
        return True

    def ev(e, kv):
        def value(x, args):
            if isinstance(x, L.Const):
                return x.value
            if isinstance(x, L.Var):
                return kv if x is k else 3  # any sizes: strides are affine
            if isinstance(x, L.Bin) and x.op in ("+", "-", "*"):
                a, b = args
                return a + b if x.op == "+" else a - b if x.op == "-" else a * b
            raise ValueError(x)
        return L.fold(e, value)
    try:
        return ev(f.index, 1) - ev(f.index, 0) == 1
    except ValueError:
        return True


def match_matmul(body: L.Stmt):
    """(outer loops, acc, init, k loop, A, B, epilogue) of a kernel
    `for ..r, c: acc = init; for k: acc = acc + A * B; epilogue`, with A
    independent of c, B of r, both reading memory; else None."""
    outer, inner = _outer_loops(body)
    if len(outer) < 2 or not isinstance(inner, L.Allocate) or not isinstance(inner.body, L.Seq):
        return None
    acc, seq = inner.buf, inner.body.body
    if len(seq) < 3:
        return None
    init, loop, *epilogue = seq
    if not isinstance(loop, L.For):
        return None
    update = loop.body.body[0] if isinstance(loop.body, L.Seq) and len(loop.body.body) == 1 else loop.body
    if not (isinstance(init, L.Store) and init.buf is acc and isinstance(update, L.Store)
            and update.buf is acc and not update.accumulate
            and all(isinstance(x, L.Store) for x in epilogue)):
        return None
    v = update.value
    if not (isinstance(v, L.Bin) and v.op == "+" and isinstance(v.a, L.Load) and v.a.buf is acc
            and isinstance(v.b, L.Bin) and v.b.op == "*"):
        return None
    r, c = outer[-2].var, outer[-1].var
    a, b = v.b.a, v.b.b
    if c in _vars(a) or r in _vars(b):
        a, b = b, a  # products commute exactly
    if (c in _vars(a) or r in _vars(b) or {r, c} & _vars(loop.extent)
            or not _reads(a, ("tensor", "workspace")) or not _reads(b, ("tensor", "workspace"))
            or _reads(a, ("local",)) or _reads(b, ("local",))):
        return None
    return outer, acc, init, loop, a, b, epilogue


def tile_kernel(body: L.Stmt, counter) -> L.Stmt | None:
    m = match_matmul(body)
    if m is None:
        return None
    outer, acc, init, loop, a, b, epilogue = m
    T, pad = TILE, TILE + 1  # rows of TILE + 1: staging and reads hit distinct banks
    n = next(counter)
    leading, (rl, cl) = outer[:-2], outer[-2:]
    R, C, K, k = rl.extent, cl.extent, loop.extent, loop.var

    def tiles(extent):
        return L.binop("/", extent + (T - 1), L.Const(T, L.INDEX))
    tile, t, kt, kk = L.Var("tile"), L.Var("t"), L.Var("kt"), L.Var("kk")
    *lead_idx, tr, tc = _unflatten(tile, [x.extent for x in leading] + [tiles(R), tiles(C)])
    env = dict(zip((x.var for x in leading), lead_idx))
    ty, tx = _unflatten(t, [L.Const(T, L.INDEX), L.Const(T, L.INDEX)])
    row, col = tr * T + ty, tc * T + tx

    def stage(f: L.Expr, var: L.Var, base: L.Expr, extent: L.Expr, name: str):
        """Threads copy f's TILE x TILE tile at (base.., kt*TILE..) into
        shared memory, element (i, j) at [i * pad + j]."""
        buf = L.Buffer(f"{name}{n}", f.dtype, "shared", -1, L.Const(T * pad, L.INDEX))
        i, j = (ty, tx) if _k_contiguous(f, k) else (tx, ty)
        gi, gj = base + i, kt * T + j
        value = L.substitute(f, {**env, var: gi, k: gj})
        slot = i * pad + j
        inside = L.Bin("and", L.cmp("<", gi, extent), L.cmp("<", gj, K), "bool")
        return buf, L.Seq([L.Store(buf, slot, L.const_like(0, f.dtype)), L.If(inside, L.Store(buf, slot, value))])
    sa, load_a = stage(a, rl.var, tr * T, R, "sha")
    sb, load_b = stage(b, cl.var, tc * T, C, "shb")
    zero = L.Const(0, L.INDEX)
    step = L.Store(acc, zero, L.Load(acc, zero) + L.Load(sa, ty * pad + kk) * L.Load(sb, tx * pad + kk))
    out_env = {**env, rl.var: row, cl.var: col}
    inside = L.Bin("and", L.cmp("<", row, R), L.cmp("<", col, C), "bool")
    per_thread = L.Allocate(acc, L.Seq([
        L.Store(acc, zero, L.substitute(init.value, out_env)),
        L.For(kt, tiles(K), L.Seq([load_a, load_b, L.Barrier(),
                                   L.For(kk, L.Const(T, L.INDEX), step), L.Barrier()])),
        L.If(inside, L.Seq([L.substitute_stmt(x, out_env) for x in epilogue]))]))
    n_tiles = _product([x.extent for x in leading] + [tiles(R), tiles(C)])
    return L.For(tile, n_tiles, L.For(t, L.Const(BLOCK, L.INDEX), per_thread, THREADS), BLOCKS)
