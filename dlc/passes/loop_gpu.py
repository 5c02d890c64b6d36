"""GPU mapping: kernels become loops over the threads of a launch.

`map_to_gpu`: a kernel that is a sequence of loop nests (a weight packed,
then used) is first split into one kernel per nest; launches on one stream
run in order, so the split keeps the order of their effects. Then, per
kernel, the independent outer loops (those each of whose iterations writes
its own elements, `loop_parallel`'s rule) are the parallelism:
  - grid mode: when they enclose a plain body (an elementwise store, or a
    reduction into an accumulator), they are flattened into one index `gid`
    in [0, product of their extents); a `For` of kind `gpu_grid` over `gid`
    spreads the iterations over every thread of the launch and is rendered
    as a grid-stride loop, so any grid size is correct and the launch plan
    may cap it. The original indices are recomputed from `gid` (row-major
    division and remainder). Reductions stay per thread, in serial loops.
  - block mode: when they enclose loops that must run in order (a
    recurrence's time steps), each of their iterations becomes one block
    (`gpu_blocks`); inside it the serial loops run uniformly in every thread
    of the block, and each independent nest within is spread over the
    block's threads (`gpu_threads`, block-stride), with a barrier after each
    statement so that the next one sees its writes. A statement that is
    neither (a scalar store) runs in thread 0.
A kernel with no independent outer loop runs in block mode with one block,
or as one thread when it is one accumulator's life (a scalar result such as
a loss).
The cuda pipeline runs no CPU schedule (parallel, vectorized): the threads
are the parallelism.

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
from .loop_parallel import addresses_by, independent

GRID, BLOCKS, THREADS = L.LOOP_KINDS[-3:]   # "gpu_grid", "gpu_blocks", "gpu_threads"
BLOCK = 256  # threads per block in every launch
TILE = 16    # tiled kernels: TILE x TILE outputs per block (TILE * TILE == BLOCK)
# A sum is spread over a block's threads (one block per output) when it has
# at most this many outputs (a constant count) and not a constant count of
# terms below MIN_REDUCED_TERMS: a thread alone would wait on each load in turn.
MAX_REDUCED_OUTPUTS = 1 << 16
MIN_REDUCED_TERMS = 512


def map_to_gpu(prog: L.LoopProgram) -> L.LoopProgram:
    """Bind every kernel's loops to the grid (pure)."""
    counter = itertools.count()
    entries = [replace(e, kernels=[replace(k, body=k.body if _mapped(k.body) else map_kernel(k.body, counter))
                                   for k in split_kernels(e.kernels)])
               for e in prog.entries]
    return replace(prog, entries=entries)


def split_kernels(kernels: list[L.Kernel]) -> list[L.Kernel]:
    """One kernel per statement of a kernel that is a sequence; names keep
    the layer's, with the part's index."""
    out = []
    for k in kernels:
        parts = k.body.body if isinstance(k.body, L.Seq) else [k.body]
        out += [replace(k, name=k.name if len(parts) == 1 else f"{k.name}_{i}", body=part)
                for i, part in enumerate(parts)]
    return out


def _mapped(body: L.Stmt) -> bool:
    return isinstance(body, L.For) and body.kind in (GRID, BLOCKS)


def launch_threads(kernel: L.Kernel) -> L.Expr:
    """How many threads a mapped kernel wants (the launch uses blocks of BLOCK)."""
    body = kernel.body
    if not _mapped(body):
        raise ValueError(f"kernel {kernel.name} is not mapped to the GPU")
    return body.extent if body.kind == GRID else body.extent * BLOCK


def _outer_loops(body: L.Stmt) -> tuple[list[L.For], L.Stmt]:
    """The perfect nest of loops at the top of body (a sequence of one
    statement counts as that statement), and what it encloses."""
    outer: list[L.For] = []
    while isinstance(body, L.For):
        outer.append(body)
        body = body.body
        while isinstance(body, L.Seq) and len(body.body) == 1:
            body = body.body[0]
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


def _recovered(loops: list[L.For], index: L.Expr) -> dict:
    """Each loop's variable as recovered from one flat index over them all."""
    return dict(zip((lp.var for lp in loops), _unflatten(index, [lp.extent for lp in loops])))


def _product(extents: list[L.Expr]) -> L.Expr:
    n: L.Expr = L.Const(1, L.INDEX)
    for e in extents:
        n = n * e
    return n


def _independent_loops_outside(nest: L.Stmt) -> L.Stmt:
    """A perfect nest around one store (a reduction into its output, such as
    a bias gradient summed over batch and steps), with the loops the store
    addresses by moved outside the others: each element then gets one
    thread, and its terms are still summed in their order. Only when the
    value reads the stored buffer at the stored element alone."""
    outer, store = _outer_loops(nest)
    if len(outer) < 2 or not isinstance(store, L.Store) or any(
            L.depends_on(lp.extent, o.var) for lp in outer for o in outer):
        return nest
    if any(isinstance(x, L.Load) and x.buf is store.buf and repr(x.index) != repr(store.index)
           for x in L.subexprs(store.value)):
        return nest
    own = [lp for lp in outer if addresses_by(store.index, lp.var)]
    if not own or len(own) == len(outer):
        return nest
    for lp in reversed(own + [lp for lp in outer if lp not in own]):
        store = L.For(lp.var, lp.extent, store)
    return store


def _parallel_prefix(body: L.Stmt) -> tuple[list[L.For], L.Stmt]:
    """The longest chain of outer loops whose iterations are independent
    (and whose extents do not depend on one another), and what they enclose."""
    outer, _ = _outer_loops(body)
    for n in range(len(outer), 0, -1):
        chain, inner = outer[:n], outer[n - 1].body
        if independent(chain, inner) and not any(
                L.depends_on(lp.extent, o.var) for k, lp in enumerate(chain) for o in chain[:k]):
            return chain, inner
    return [], body


def _spreadable(s: L.Stmt) -> bool:
    """s holds a nest of independent iterations (beyond what a thread runs
    alone: a reduction into its own element, an accumulator's loop)."""
    return any(isinstance(x, L.For) and _parallel_prefix(_independent_loops_outside(x))[0]
               for x in L.stmts_of(s))


def _long_reduction(chain: list[L.For], inner: L.Stmt):
    """(acc, init, reduction loops, term, epilogue) when `inner` is one
    accumulator's sum, `acc = init; for r..: acc = acc + term; epilogue`,
    over more terms than outputs are spread: a bias or weight gradient
    summed over batch and pixels, a loss over the batch. Else None."""
    if not (isinstance(inner, L.Allocate) and isinstance(inner.body, L.Seq) and len(inner.body.body) >= 2):
        return None
    acc, (init, loop, *epilogue) = inner.buf, inner.body.body
    loops, update = _outer_loops(loop)
    if not (loops and isinstance(init, L.Store) and init.buf is acc and isinstance(update, L.Store)
            and update.buf is acc and not update.accumulate and isinstance(update.value, L.Bin)
            and update.value.op == "+" and isinstance(update.value.a, L.Load) and update.value.a.buf is acc):
        return None
    term = update.value.b
    if any(isinstance(x, L.Load) and x.buf is acc for x in L.subexprs(term)) or any(
            L.depends_on(lp.extent, o.var) for lp in loops for o in loops):
        return None
    outputs, terms = _product([lp.extent for lp in chain]), _product([lp.extent for lp in loops])
    if not isinstance(outputs, L.Const) or outputs.value > MAX_REDUCED_OUTPUTS or (
            isinstance(terms, L.Const) and terms.value < MIN_REDUCED_TERMS):
        return None
    return acc, init, loops, term, epilogue


def _block_reduction(chain: list[L.For], found, counter) -> L.Stmt:
    """A block per output: each thread sums every BLOCK-th term, then a tree
    in shared memory adds the BLOCK partial sums (a fixed order: the result
    is deterministic), and thread 0 adds init and runs the epilogue."""
    acc, init, loops, term, epilogue = found
    out, tid = L.Var("out"), L.Var("tid")
    zero = L.Const(0, L.INDEX)
    env = _recovered(chain, out)
    partial = L.Buffer(f"partial{next(counter)}", acc.dtype, "shared", -1, L.Const(BLOCK, L.INDEX))
    add_term = L.Store(acc, zero, L.Load(acc, zero) + L.substitute(term, env))
    stages = [L.For(tid, L.Const(BLOCK, L.INDEX), L.Allocate(acc, L.Seq([
        L.Store(acc, zero, L.const_like(0, acc.dtype)),
        _strided(tid, loops, add_term),
        L.Store(partial, tid, L.Load(acc, zero))])), THREADS), L.Barrier()]
    half = BLOCK // 2
    while half >= 1:
        h = L.Const(half, L.INDEX)
        stages += [L.For(tid, L.Const(BLOCK, L.INDEX), L.If(
            L.cmp("<", tid, h), L.Store(partial, tid, L.Load(partial, tid) + L.Load(partial, tid + h))),
            THREADS), L.Barrier()]
        half //= 2
    finish = L.Allocate(acc, L.Seq([
        L.Store(acc, zero, L.substitute(init.value, env) + L.Load(partial, zero)),
        *(L.substitute_stmt(x, env) for x in epilogue)]))
    stages.append(L.For(tid, L.Const(BLOCK, L.INDEX), L.If(L.cmp("==", tid, zero), finish), THREADS))
    return L.For(out, _product([lp.extent for lp in chain]), L.Seq(stages), BLOCKS)


def map_kernel(body: L.Stmt, counter=None) -> L.Stmt:
    body = _independent_loops_outside(body)
    chain, inner = _parallel_prefix(body)
    extents = [loop.extent for loop in chain]
    found = _long_reduction(chain, inner)
    if found is not None:
        return _block_reduction(chain, found, counter or itertools.count())
    if not chain and not isinstance(body, (L.For, L.Seq, L.If)):
        # One thread: a scalar result (a loss) and its reduction, in one order.
        return L.For(L.Var("gid"), L.Const(1, L.INDEX), body, GRID)
    if chain and not _spreadable(inner):
        gid = L.Var("gid")
        return L.For(gid, _product(extents), L.substitute_stmt(inner, _recovered(chain, gid)), GRID)
    blk = L.Var("blk")
    return L.For(blk, _product(extents), _spread_over_block(L.substitute_stmt(inner, _recovered(chain, blk))),
                 BLOCKS)


def _strided(tid: L.Var, loops: list[L.For], body: L.Stmt) -> L.For:
    """body for thread tid's share of the loops' iterations, flattened:
    tid, tid + BLOCK, ... < n (n - tid + BLOCK - 1 >= 0 as tid < BLOCK)."""
    j = L.Var("tj")
    count = L.binop("/", _product([lp.extent for lp in loops]) - tid + (BLOCK - 1), L.Const(BLOCK, L.INDEX))
    return L.For(j, count, L.substitute_stmt(body, _recovered(loops, tid + j * BLOCK)))


def _spread_over_block(s: L.Stmt) -> L.Stmt:
    """s, run by every thread of a block alike (its control flow uniform):
    independent nests spread over the threads, barriers between statements."""
    if isinstance(s, L.Seq):
        return L.Seq([x for part in s.body for x in (_spread_over_block(part), L.Barrier())])
    if isinstance(s, L.If):
        return L.If(s.cond, _spread_over_block(s.then))
    s = _independent_loops_outside(s)
    chain, inner = _parallel_prefix(s)
    tid = L.Var("tid")
    if chain:
        return L.For(tid, L.Const(BLOCK, L.INDEX), _strided(tid, chain, inner), THREADS)
    if isinstance(s, L.For) and s.kind == "serial":
        # An iteration's threads read what others wrote in the one before.
        body = _spread_over_block(s.body)
        if not (isinstance(body, L.Seq) and isinstance(body.body[-1], L.Barrier)):
            body = L.Seq([body, L.Barrier()])
        return L.For(s.var, s.extent, body)
    # Anything else (a scalar store, a local accumulator's whole life) in one thread.
    return L.For(tid, L.Const(BLOCK, L.INDEX),
                 L.If(L.cmp("==", tid, L.Const(0, L.INDEX)), s), THREADS)


# ------------------------------------------------------------ tiling

def tile_matmuls(prog: L.LoopProgram) -> L.LoopProgram:
    """Shared-memory tiling of every matmul-like kernel, kernels split into
    their nests first (pure)."""
    counter = itertools.count()
    entries = [replace(e, kernels=[replace(k, body=tile_kernel(k.body, counter) or k.body)
                                   for k in split_kernels(e.kernels)])
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
