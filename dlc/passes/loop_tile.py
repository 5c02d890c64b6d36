"""Loop tiling: register-blocked, vectorized micro-kernels for matmul-like
kernels (dense forward and both gradients, convolution as implicit GEMM).

A loop nest qualifies when it is a nest of output loops storing an
expression that holds one `sum` Reduce of a product of two operands:

    for o...:  out[f(o)] = g(sum(r...: a(o, r) * b(o, r)), o)

It is usually a whole kernel; it may also be a step of one (a statement of
a sequence, the body of another loop: a recurrence's per-step product).

Two micro-kernel forms, chosen from how the operands are laid out:

  outer  some output loop j writes `out` contiguously, operand b reads
         contiguously along j and a does not use j (C = A B; dX = dY W;
         dW = dY^T X; convolution over the output row). Each k step
         broadcasts MR values of a against NR vectors of b into an MR x NR
         block of vector accumulators (W lanes each): C[i0+ii, j0+jv*W+l].
  dot    both operands read contiguously along the innermost reduction var k
         (C = A B^T: dense forward). MR x NR dot products at once, each in a
         vector accumulator over k, summed across lanes at the end.

The other operand's output var i (used by a, not by b) is blocked by MR.
The accumulators are a local buffer of constant size indexed by unrolled and
vectorized loops only, so LLVM keeps them in registers. Tiles are loops
(other output loops, then j tiles, then i tiles: tiles that follow each other
share b's panel). A tile that crosses the end of a symbolic or ragged extent
is the same micro-kernel at full speed on clamped indices: rows (and dot
columns) past the end reread the last one and are not stored, outer columns
past it are masked vector lanes. Kernels that do not qualify are left alone
(their Reduce is lowered by `lower_reductions`).

Block sizes come from a register model (`choose_blocks`): for the host's
vector width W and register count R, the (MR, NR) with MR*NR accumulators
plus the registers each k step needs fitting in R that maximizes
FMAs per load, MR*NR / (MR + NR), over the blocks covering each constant
extent, edge blocks at their cost (`_fmas_per_load`); at most MAX_BLOCK
accumulators (code size).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..codegen.compiler import vector_registers
from ..ir import loops as L

MAX_MR, MAX_NR = 8, 4
# The micro-kernel is unrolled MR x NR times in each of its variants: beyond
# 16 accumulators the gain is small and LLVM's compile time is not.
MAX_BLOCK = 16
MIN_LANES = 8
# A band of a's rows read again for every j tile: a quarter of a 1 MiB L2
# leaves room for b's panels and the other operands (SGEMM 1024 on Zen 4,
# 2 threads: 0.73 of the FMA peak unbanded, 0.78 / 0.80 / 0.81 with 128 /
# 256 / 512 KiB bands).
L2_BAND_BYTES = 256 << 10
# A reduction over a run-time extent whose operands together pass this many
# bytes (a weight gradient summed over batch x time) runs in blocks of its outer var that
# fit, each adding into the output: unblocked, every tile streamed both
# operands whole from memory (the LSTM's recurrent weight gradient at batch
# 128: 6,400 rows of 2.5 KB for each of 340 tiles).
L2_BLOCK_BYTES = 1 << 20
ZERO = L.Const(0, L.INDEX)


def tile(prog: L.LoopProgram) -> L.LoopProgram:
    """Rewrite every matmul-like loop nest into tiled micro-kernels (pure)."""
    vbytes, regs = vector_registers()
    entries = [replace(e, kernels=[replace(k, body=_tile_steps(k.body, vbytes, regs))
                                   for k in e.kernels])
               for e in prog.entries]
    return replace(prog, entries=entries)


def _tile_steps(s: L.Stmt, vbytes: int, regs: int) -> L.Stmt:
    """s tiled if it is a matmul-like nest, else the matmul-like nests
    inside it (a statement-level lowering's steps: the per-step product of a
    recurrence sits in its time loop)."""
    return L.rewrite(s, lambda x: _tile_kernel(x, vbytes, regs))


@dataclass
class Match:
    loops: list[L.For]      # the output loops, outermost first
    store: L.Store
    red: L.Reduce
    a: L.Expr               # the operand blocked along i (broadcast in `outer`)
    b: L.Expr               # the operand read contiguously along j (`outer`) or k (`dot`)
    form: str               # outer | dot
    i: L.Var | None
    j: L.Var | None
    p: L.Var | None = None  # outer form, rows of b blocked by NR when j fits one vector


def _uses(e: L.Expr, v: L.Var | None) -> bool:
    return v is not None and L.depends_on(e, v)


def _contiguous(e: L.Expr, v: L.Var) -> bool:
    """e loads something that moves with v, and every such load moves by one
    element."""
    loads = [x for x in L.subexprs(e) if isinstance(x, L.Load) and L.depends_on(x.index, v)]
    return bool(loads) and all(L.stride_of(x.index, v) == 1 for x in loads)


def match(body: L.Stmt) -> Match | None:
    loops, s = [], body
    while isinstance(s, L.For) and s.kind == "serial":
        loops.append(s)
        s = s.body
    if not loops or not isinstance(s, L.Store):
        return None
    reds = [x for x in L.subexprs(s.value) if isinstance(x, L.Reduce)]
    if len(reds) != 1 or any(isinstance(x, L.Reduce) for x in L.subexprs(s.index)):
        return None
    red = reds[0]
    prod = red.body
    if red.kind != "sum" or red.dtype not in ("f32", "f64") or not isinstance(prod, L.Bin) \
            or prod.op != "*" or any(isinstance(x, L.Reduce) for x in list(L.subexprs(prod))[1:]):
        return None
    outs = [lp.var for lp in loops]

    def inner_var(a: L.Expr, b: L.Expr, skip) -> L.Var | None:
        """The innermost output var a uses and b does not."""
        return next((v for v in reversed(outs) if v is not skip and _uses(a, v) and not _uses(b, v)),
                    None)

    j = outs[-1]
    # An output row narrower than a useful vector (a convolution's weight
    # gradient along kx) leaves the reduction to vectorize: the dot form.
    narrow = (_const(loops[-1].extent) or MIN_LANES) < MIN_LANES
    # Every load moving with j moves by one element (masked at an edge).
    if L.stride_of(s.index, j) == 1 and not narrow and _contiguous(s.value, j):
        for a, b in ((prod.a, prod.b), (prod.b, prod.a)):
            if not _uses(a, j) and _contiguous(b, j):
                return Match(loops, s, red, a, b, "outer", inner_var(a, b, j), j)
    k = red.vars[-1]
    if _contiguous(prod.a, k) and _contiguous(prod.b, k):
        for a, b in ((prod.a, prod.b), (prod.b, prod.a)):
            jv = inner_var(b, a, None)
            if jv is not None and (outs[-1] is jv or not _uses(a, outs[-1])):
                return Match(loops, s, red, a, b, "dot", inner_var(a, b, jv), jv)
    return None


def _const(e: L.Expr) -> int | None:
    return e.value if isinstance(e, L.Const) else None


def choose_blocks(form: str, m: int | None, n: int | None, width: int, regs: int,
                  symbolic_rows: bool = False) -> tuple[int, int]:
    """(MR, NR) by the register model in the module docstring. m, n: the
    extents along i and the NR axis (None when symbolic or absent: full
    blocks are then assumed to cover it); symbolic_rows: m is only the
    usual row count of a symbolic extent (`_usual_rows`); width: the NR
    axis's elements per NR."""
    best, best_score = (1, 1), -1.0
    for mr in range(1, MAX_MR + 1):
        for nr in range(1, MAX_NR + 1):
            # outer: MR*NR accumulators, NR vectors of b, one broadcast of a;
            # dot: MR*NR accumulators, MR vectors of a (b is an FMA operand).
            need = mr * nr + (nr + 1 if form == "outer" else mr + 1)
            if need > regs or mr * nr > MAX_BLOCK:
                continue
            score = _fmas_per_load(mr, nr, m, n, width, symbolic_rows or m is None)
            if score > best_score + 1e-9 or (abs(score - best_score) <= 1e-9 and mr * nr > best[0] * best[1]):
                best, best_score = (mr, nr), score
    return best


def _fmas_per_load(mr: int, nr: int, m: int | None, n: int | None, width: int,
                   symbolic_rows: bool) -> float:
    """Useful vector FMAs per load of MR x NR blocks over m rows (None: whole
    blocks) and n elements along the NR axis (None: whole blocks). A full
    block does MR*NR per MR+NR loads. An edge block runs the full one on
    clamped indices (its loads, part of its FMAs wasted), except where the
    rows are symbolic: there the rows of a ragged edge, of either axis, run
    one by one (`Tiler.tile_body`: a batch of one must not cost MR rows),
    1+NR loads per row. (The LSTM's input projection on AVX2, 64 columns in
    blocks of 24, ran a third of its tiles row by row: 3.7x slower than in
    blocks of 16.)"""
    rows = mr if m is None else m
    full_rows, ragged_rows = divmod(rows, mr)
    full_cols, ragged_cols = (1, 0) if n is None else divmod(n, nr * width)
    col_blocks = full_cols + (ragged_cols > 0)
    useful = rows * (nr * width if n is None else n) / width
    if not symbolic_rows:
        return useful / ((full_rows + (ragged_rows > 0)) * col_blocks * (mr + nr))
    loads = full_rows * (full_cols * (mr + nr) + (ragged_cols > 0) * mr * (1 + nr)) \
        + ragged_rows * col_blocks * (1 + nr)
    return useful / loads


def _usual_rows(extent: L.Expr) -> int | None:
    """The constant c of a symbolic extent min(c, ...): the rows of every
    block but the last of a loop over blocks of c (a recurrence's examples)."""
    if isinstance(extent, L.Bin) and extent.op == "min":
        return next((c for c in map(_const, (extent.a, extent.b)) if c is not None), None)
    return None


def _replace(e: L.Expr, old: L.Expr, new: L.Expr) -> L.Expr:
    """e with the node `old` (by identity) replaced by `new`."""
    return L.fold(e, lambda x, kids: new if x is old else L.with_children(x, kids))


def _div(a: L.Expr, c: int) -> L.Expr:
    if isinstance(a, L.Const):
        return L.Const(a.value // c, L.INDEX)
    return a if c == 1 else L.binop("/", a, L.Const(c, L.INDEX))


def _ceil_div(a: L.Expr, c: int) -> L.Expr:
    return _div(a + (c - 1), c)


class Tiler:
    def __init__(self, mt: Match, lanes: int, mr: int, nr: int):
        self.mt, self.w, self.mr, self.nr = mt, lanes, mr, nr
        self.resume: L.Expr | None = None   # with reduction blocks: not the first block
        ext = {lp.var: lp.extent for lp in mt.loops}
        one = L.Const(1, L.INDEX)
        self.m = ext.get(mt.i, one) if mt.i is not None else one
        self.n = ext.get(mt.j, one) if mt.j is not None else one
        self.np = ext[mt.p] if mt.p is not None else one
        # columns (nj) and p rows (npr) per full tile
        if mt.p is not None:
            self.nj, self.npr = lanes, nr     # one vector in each of NR rows
        elif mt.form == "outer":
            self.nj, self.npr = nr * lanes, 1
        else:
            self.nj, self.npr = nr, 1

    # ---- micro-kernels
    def micro(self, i0: L.Expr, j0: L.Expr, p0: L.Expr, mr: int,
              rows_edge: bool, cols_edge: bool, p_edge: bool = False) -> L.Stmt:
        """out over rows i0..i0+mr and columns j0..j0+NJ (outer: NR vectors
        of W lanes, or one vector in each of NR rows p0.. of p; dot: NR
        columns, W lanes along k). At an edge, rows, p rows and dot columns
        past the extent read the last one (clamped) and are not stored;
        outer columns past it are masked vector lanes."""
        mt, nr, w = self.mt, self.nr, self.w
        ii, jv, lane = L.Var("ii"), L.Var("jv"), L.Var("l")
        acc = L.Buffer(f"acc_{mt.form}", mt.red.dtype, "local", -1, L.Const(mr * nr * w, L.INDEX))
        slot = (ii * nr + jv) * w
        env = {}
        inside = []   # conditions for storing the block's element
        if mt.i is not None:
            env[mt.i] = L.minimum(i0 + ii, self.m - 1) if rows_edge else i0 + ii
            inside += [L.cmp("<", i0 + ii, self.m)] * rows_edge
        zero = L.const_like(0, acc.dtype)
        lanes = L.Const(w, L.INDEX)
        if mt.p is not None:
            env[mt.p] = L.minimum(p0 + jv, self.np - 1) if p_edge else p0 + jv
            inside += [L.cmp("<", p0 + jv, self.np)] * p_edge
            env[mt.j] = j0 + lane
            if cols_edge:
                lanes = L.minimum(lanes, self.n - j0)
        elif mt.form == "outer":
            env[mt.j] = j0 + jv * w + lane
            if cols_edge:
                lanes = L.minimum(lanes, self.n - (j0 + jv * w))
        elif mt.j is not None:
            env[mt.j] = L.minimum(j0 + jv, self.n - 1) if cols_edge else j0 + jv
            inside += [L.cmp("<", j0 + jv, self.n)] * cols_edge

        def block(stmt: L.Stmt, guard: bool = False, active: L.Expr = lanes) -> L.Stmt:
            """stmt for every (active) lane of every accumulator (only those
            stored when guarded)."""
            body = L.loop(lane, active, stmt, "vectorized") if w > 1 else \
                L.substitute_stmt(stmt, {lane: ZERO})
            if guard and inside:
                body = L.If(L.all_of(inside), body)
            return L.loop(ii, mr, L.loop(jv, nr, body, "unrolled"), "unrolled")

        def accumulate(env_k: dict, at: L.Expr, only: L.Expr | None = None) -> L.Stmt:
            """acc[at] += a * b (where `only` holds)."""
            prod = L.substitute(mt.a, env_k) * L.substitute(mt.b, env_k)
            old = L.Load(acc, at)
            return L.Store(acc, at, old + prod if only is None else L.Select(only, old + prod, old))

        def reduce_over(inner: L.Stmt, keep_last: bool) -> L.Stmt:
            pairs = list(zip(mt.red.vars, mt.red.extents))
            return L.nest(pairs if keep_last else pairs[:-1], inner)

        def epilogue(total: L.Expr) -> L.Stmt:
            return L.Store(mt.store.buf, L.substitute(mt.store.index, env),
                           L.substitute(_replace(mt.store.value, mt.red, total), env),
                           mt.store.accumulate)

        # A later block of the reduction adds to the earlier ones' sums.
        earlier = L.Select(self.resume, L.Load(mt.store.buf, L.substitute(mt.store.index, env)), zero) \
            if self.resume is not None else None
        init = block(L.Store(acc, slot + lane, earlier if earlier is not None and mt.form == "outer" else zero))
        if mt.form == "outer":
            reduction = reduce_over(block(accumulate(env, slot + lane)), True)
            out = block(epilogue(L.Load(acc, slot + lane)), guard=True)
            return L.Allocate(acc, L.Seq([init, reduction, out]))
        # dot: vectorized along k, a masked vector for the rest of k, lanes
        # summed at the end
        k, kext = mt.red.vars[-1], mt.red.extents[-1]
        ko = L.Var("ko")
        steps = [L.loop(ko, _div(kext, w), block(accumulate({**env, k: ko * w + lane}, slot + lane)))]
        rest = kext - _div(kext, w) * w
        if _const(rest) != 0:   # inactive lanes hold garbage: the sum must not see them
            steps.append(block(accumulate({**env, k: _div(kext, w) * w + lane}, slot + lane,
                                          L.cmp("<", lane, rest)),
                               active=L.minimum(L.Const(w, L.INDEX), rest)))
        total = L.LaneSum(acc, slot, w) if w > 1 else L.Load(acc, slot)
        if earlier is not None:
            total = total + earlier
        out = L.loop(ii, mr, L.loop(jv, nr, L.If(L.all_of(inside), epilogue(total)) if inside
                                    else epilogue(total), "unrolled"), "unrolled")
        return L.Allocate(acc, L.Seq([init, reduce_over(L.Seq(steps), False), out]))

    # ---- tiles
    def tile_body(self, i0: L.Expr, j0: L.Expr, p0: L.Expr) -> L.Stmt:
        """The full block, or where the extents end inside it, the edge
        block: clamped rows when the row extent is a constant (the block
        sizes were chosen for it), else row by row (a batch of 1 must not
        cost MR rows)."""
        mr, nj, npr = self.mr, self.nj, self.npr
        m, n, np_ = _const(self.m), _const(self.n), _const(self.np)
        # Edges that a constant extent never has are not generated.
        ragged_i = m is None or m % mr != 0
        ragged_j = n is None or n % nj != 0
        ragged_p = np_ % npr != 0
        if not (ragged_i or ragged_j or ragged_p):
            return self.micro(i0, j0, p0, mr, False, False)
        if m is None:
            ri = L.Var("ri")
            edge = L.loop(ri, L.minimum(L.Const(mr, L.INDEX), self.m - i0),
                          self.micro(i0 + ri, j0, p0, 1, False, ragged_j, ragged_p))
        else:
            edge = self.micro(i0, j0, p0, mr, ragged_i, ragged_j, ragged_p)
        if (m is not None and m < mr) or (n is not None and n < nj) or np_ < npr:
            return edge   # no full block fits
        if self.mt.form == "dot" and m is not None:
            # The edge block of a dot product differs from the full one only
            # in its clamped addresses (invariant in its reduction loops) and
            # guarded stores: it serves every tile, in half the code (the
            # convolutions' weight gradients: CIFAR CNN compile 2.6 -> 2.4 s).
            return edge
        size = L.Const(1, L.INDEX)
        for ragged, block, extent, start in ((ragged_i, mr, self.m, i0), (ragged_j, nj, self.n, j0),
                                             (ragged_p, npr, self.np, p0)):
            size = size * (L.minimum(L.Const(block, L.INDEX), extent - start) if ragged else block)
        full = mr * nj * npr
        return L.Seq([L.If(L.cmp("==", size, full), self.micro(i0, j0, p0, mr, False, False)),
                      L.If(L.cmp("<", size, full), edge)])

    def band_tiles(self) -> int | None:
        """i tiles per band of a that fits L2_BAND_BYTES, or None when a
        fits whole (or has no rows to band, or a symbolic reduction)."""
        if self.mt.i is None:
            return None
        k = 1
        for e in self.mt.red.extents:
            if _const(e) is None:
                return None
            k *= _const(e)
        rows = max(self.mr, L2_BAND_BYTES // (k * L.DTYPE_BYTES[self.mt.red.dtype]) // self.mr * self.mr)
        m = _const(self.m)
        if m is not None and m <= rows:
            return None
        return rows // self.mr

    def reduction_block(self) -> L.Expr | None:
        """Iterations of the reduction's outer var per block (module
        docstring, L2_BLOCK_BYTES), or None: an epilogue that would see
        partial sums, non-constant output extents, a dot-form reduction of
        one var (its vectors run along it), or a reduction of constant
        extent (a product over a weight's inputs: the bands of a keep its
        operands in L2; blocks measured 0.66 -> 0.54 of the peak on SGEMM
        1024). A sum over the batch (a weight gradient) is blocked, into
        one block when it fits."""
        mt = self.mt
        if mt.store.value is not mt.red or mt.store.accumulate \
                or None in (_const(lp.extent) for lp in mt.loops) \
                or (mt.form == "dot" and len(mt.red.vars) < 2) \
                or all(_const(e) is not None for e in mt.red.extents):
            return None
        # Both operands' elements per step of the outer var: each load's span
        # over the output loops and the inner reduction vars of constant
        # extent (a convolution's windows overlap: spans, not products).
        spans = {lp.var: _const(lp.extent) for lp in mt.loops}
        symbolic = []
        for v, e in zip(mt.red.vars[1:], mt.red.extents[1:]):
            if _const(e) is None:
                symbolic.append(e)
            else:
                spans[v] = _const(e)
        elements = sum(_span(x.index, spans) for x in L.subexprs(mt.red.body) if isinstance(x, L.Load))
        step = L.Const(max(L2_BLOCK_BYTES // (elements * L.DTYPE_BYTES[mt.red.dtype]), 1), L.INDEX)
        if not symbolic:
            return step
        inner = symbolic[0]
        for e in symbolic[1:]:
            inner = inner * e
        return L.maximum(step / inner, L.Const(1, L.INDEX))

    def build(self) -> L.Stmt:
        block = self.reduction_block()
        if block is None:
            return self.tiles()
        # Blocks of the reduction's outer var, outermost and serial (the
        # `parallelize` pass shares out the tiles inside).
        mt, kb, kv = self.mt, L.Var("kb"), L.Var(self.mt.red.vars[0].name)
        k0 = mt.red.vars[0]
        red = L.Reduce(mt.red.kind, (kv,) + mt.red.vars[1:],
                       (L.minimum(block, mt.red.extents[0] - kb * block),) + mt.red.extents[1:],
                       L.substitute(mt.red.body, {k0: kb * block + kv}))
        prod = red.body
        a, b = (prod.a, prod.b) if mt.a is mt.red.body.a else (prod.b, prod.a)
        self.mt = replace(mt, red=red, a=a, b=b, store=replace(mt.store, value=red))
        self.resume = L.cmp(">", kb, ZERO)
        return L.For(kb, (mt.red.extents[0] + block - 1) / block, self.tiles())

    def tiles(self) -> L.Stmt:
        mt = self.mt
        it, jt, pt = L.Var("it"), L.Var("jt"), L.Var("pt")
        i0 = it * self.mr if mt.i is not None else ZERO
        j0 = jt * self.nj if mt.j is not None else ZERO
        p0 = pt * self.npr if mt.p is not None else ZERO
        # i tiles innermost: the tiles that follow each other share b's
        # panel. When a's rows do not fit the L2 budget together, the i
        # tiles are split into bands that do, outermost, so each band of a
        # is reread from L2 for every j tile rather than from memory.
        tiles_i = _ceil_div(self.m, self.mr)
        band = self.band_tiles()
        ib = L.Var("ib")
        if band is not None:
            it_in = L.Var("it")
            it = ib * band + it_in
            i0 = it * self.mr
        body = self.tile_body(i0, j0, p0)
        if band is not None:
            body = L.loop(it_in, L.minimum(L.Const(band, L.INDEX), tiles_i - ib * band), body)
        elif mt.i is not None:
            body = L.loop(it, tiles_i, body)
        for v, tvar, extent, block in ((mt.p, pt, self.np, self.npr), (mt.j, jt, self.n, self.nj)):
            if v is not None:
                body = L.loop(tvar, _ceil_div(extent, block), body)
        if band is not None:
            body = L.loop(ib, _ceil_div(tiles_i, band), body)
        for lp in reversed(mt.loops):
            if lp.var not in (mt.i, mt.j, mt.p):
                body = L.For(lp.var, lp.extent, body)
        return body


def _tile_kernel(body: L.Stmt, vbytes: int, regs: int) -> L.Stmt | None:
    mt = match(body)
    if mt is None:
        return None
    lanes = vbytes // L.DTYPE_BYTES[mt.red.dtype]
    ext = {lp.var: lp.extent for lp in mt.loops}
    m = _const(ext[mt.i]) if mt.i is not None else 1
    symbolic_rows = m is None
    if symbolic_rows:
        m = _usual_rows(ext[mt.i])
    n = _const(ext[mt.j]) if mt.j is not None else 1
    # The vectorized extent: along k (dot) or j (outer). Below MIN_LANES
    # elements a vector does not pay; below a full vector, narrower ones.
    vext = _const(mt.red.extents[-1]) if mt.form == "dot" else n
    if vext is not None:
        if vext < MIN_LANES:
            return None
        if mt.form == "outer" and vext <= lanes:
            # A row that fits one vector: block NR rows of another output
            # loop of b's instead (a convolution's output rows), one vector each.
            mt.p = _row_var(mt, ext)
        if mt.p is None:
            lanes = min(lanes, 1 << (vext.bit_length() - 1))
        else:
            lanes = min(lanes, 1 << (vext - 1).bit_length())
    if mt.p is not None:
        mr, nr = choose_blocks(mt.form, m, _const(ext[mt.p]), 1, regs, symbolic_rows)
    else:
        mr, nr = choose_blocks(mt.form, m, n, lanes if mt.form == "outer" else 1, regs, symbolic_rows)
    return Tiler(mt, lanes, mr, nr).build()


def _span(index: L.Expr, extents: dict) -> int:
    """Elements an affine index covers as the vars in `extents` run over
    them; a var it uses other than by a constant stride counts whole."""
    span, whole = 1, 1
    for v, e in extents.items():
        stride = L.stride_of(index, v)
        if stride is None:
            whole *= e
        else:
            span += abs(stride) * (e - 1)
    return span * whole


def _row_var(mt: Match, ext: dict) -> L.Var | None:
    """The innermost other output loop of constant extent that b uses and a
    does not."""
    return next((lp.var for lp in reversed(mt.loops)
                 if lp.var not in (mt.i, mt.j) and _const(ext[lp.var]) is not None
                 and _uses(mt.b, lp.var) and not _uses(mt.a, lp.var)), None)
