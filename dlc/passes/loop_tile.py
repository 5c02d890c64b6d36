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
share b's panel); a partial tile at an edge of a symbolic or ragged extent
falls back to MR = 1 rows and narrower columns. Kernels that do not qualify
are left alone (their Reduce is lowered by `lower_reductions`).

Block sizes come from a register model (`choose_blocks`): for the host's
vector width W and register count R, the (MR, NR) with MR*NR accumulators
plus the registers each k step needs fitting in R that maximizes
FMAs per load, MR*NR / (MR + NR), weighted by how much of each constant
extent full blocks cover; at most MAX_BLOCK accumulators (code size).
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
ZERO = L.Const(0, L.INDEX)


def tile(prog: L.LoopProgram) -> L.LoopProgram:
    """Rewrite every matmul-like loop nest into tiled micro-kernels (pure)."""
    vbytes, regs = vector_registers()
    entries = [replace(e, kernels=[L.Kernel(k.name, _tile_steps(k.body, vbytes, regs))
                                   for k in e.kernels])
               for e in prog.entries]
    return replace(prog, entries=entries)


def _tile_steps(s: L.Stmt, vbytes: int, regs: int) -> L.Stmt:
    """s tiled if it is a matmul-like nest, else the matmul-like nests
    inside it (a statement-level lowering's steps: the per-step product of a
    recurrence sits in its time loop)."""
    tiled = _tile_kernel(s, vbytes, regs)
    if tiled is not None:
        return tiled
    if isinstance(s, L.Seq):
        return L.Seq([_tile_steps(b, vbytes, regs) for b in s.body])
    if isinstance(s, L.For):
        return L.For(s.var, s.extent, _tile_steps(s.body, vbytes, regs), s.kind, s.grain)
    if isinstance(s, L.If):
        return L.If(s.cond, _tile_steps(s.then, vbytes, regs))
    if isinstance(s, L.Allocate):
        return L.Allocate(s.buf, _tile_steps(s.body, vbytes, regs))
    return s


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


def _uses(e: L.Expr, v: L.Var | None) -> bool:
    return v is not None and L.depends_on(e, v)


def _contiguous(e: L.Expr, v: L.Var) -> bool:
    """Every load in e that moves with v moves by one element."""
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
    if L.stride_of(s.index, j) == 1 and not narrow:
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


def choose_blocks(form: str, m: int | None, n: int | None, lanes: int, regs: int) -> tuple[int, int]:
    """(MR, NR) by the register model in the module docstring. m, n: the
    constant extents along i and j (None when symbolic or absent: then
    full blocks are assumed to cover it)."""
    best, best_score = (1, 1), -1.0
    for mr in range(1, MAX_MR + 1):
        for nr in range(1, MAX_NR + 1):
            # outer: MR*NR accumulators, NR vectors of b, one broadcast of a;
            # dot: MR*NR accumulators, MR vectors of a (b is an FMA operand).
            need = mr * nr + (nr + 1 if form == "outer" else mr + 1)
            if need > regs or mr * nr > MAX_BLOCK:
                continue
            width = nr * lanes if form == "outer" else nr
            score = mr * nr / (mr + nr)
            for ext, blk in ((m, mr), (n, width)):
                if ext is not None:
                    score *= (ext // blk) * blk / ext if ext >= blk else 0.0
            if score > best_score + 1e-9 or (abs(score - best_score) <= 1e-9 and mr * nr > best[0] * best[1]):
                best, best_score = (mr, nr), score
    return best


def _replace(e: L.Expr, old: L.Expr, new: L.Expr) -> L.Expr:
    """e with the node `old` (by identity) replaced by `new`."""
    if e is old:
        return new
    if isinstance(e, (L.Const, L.Var)):
        return e
    if isinstance(e, L.LaneSum):
        return L.LaneSum(e.buf, _replace(e.index, old, new), e.lanes)
    if isinstance(e, L.Load):
        return L.Load(e.buf, _replace(e.index, old, new))
    if isinstance(e, L.Bin):
        return L.Bin(e.op, _replace(e.a, old, new), _replace(e.b, old, new), e.dtype)
    if isinstance(e, L.Call):
        return L.Call(e.fn, tuple(_replace(a, old, new) for a in e.args), e.dtype)
    if isinstance(e, L.Select):
        return L.Select(_replace(e.cond, old, new), _replace(e.a, old, new), _replace(e.b, old, new))
    if isinstance(e, L.Cast):
        return L.Cast(_replace(e.value, old, new), e.dtype)
    raise TypeError(e)


def _div(a: L.Expr, c: int) -> L.Expr:
    if isinstance(a, L.Const):
        return L.Const(a.value // c, L.INDEX)
    return a if c == 1 else L.binop("/", a, L.Const(c, L.INDEX))


def _ceil_div(a: L.Expr, c: int) -> L.Expr:
    return _div(a + (c - 1), c)


class Tiler:
    def __init__(self, mt: Match, lanes: int, mr: int, nr: int):
        self.mt, self.w, self.mr, self.nr = mt, lanes, mr, nr
        ext = {lp.var: lp.extent for lp in mt.loops}
        one = L.Const(1, L.INDEX)
        self.m = ext.get(mt.i, one) if mt.i is not None else one
        self.n = ext.get(mt.j, one) if mt.j is not None else one
        # columns per full tile
        self.nj = nr * lanes if mt.form == "outer" else nr

    # ---- micro-kernels
    def micro(self, i0: L.Expr, j0: L.Expr, mr: int, nr: int, w: int) -> L.Stmt:
        """out over rows i0..i0+mr and columns j0.. (outer: nr vectors of w
        lanes; dot: nr columns, w lanes along k)."""
        mt = self.mt
        ii, jv, lane = L.Var("ii"), L.Var("jv"), L.Var("l")
        acc = L.Buffer(f"acc_{mt.form}", mt.red.dtype, "local", -1, L.Const(mr * nr * w, L.INDEX))
        slot = (ii * nr + jv) * w
        env = {}
        if mt.i is not None:
            env[mt.i] = i0 + ii
        zero = L.const_like(0, acc.dtype)

        def block(stmt_of_lane, lane_kind: str = "vectorized") -> L.Stmt:
            body = L.loop(lane, w, stmt_of_lane, lane_kind)
            return L.loop(ii, mr, L.loop(jv, nr, body, "unrolled"), "unrolled")

        init = block(L.Store(acc, slot + lane, zero))
        red = mt.red
        if mt.form == "outer":
            env[mt.j] = j0 + jv * w + lane
            prod = L.substitute(mt.a, env) * L.substitute(mt.b, env)
            update = block(L.Store(acc, slot + lane, L.Load(acc, slot + lane) + prod))
            reduction = update
            for v, x in reversed(list(zip(red.vars, red.extents))):
                reduction = L.For(v, x, reduction)
            result = L.Load(acc, slot + lane)
            epilogue = block(L.Store(mt.store.buf, L.substitute(mt.store.index, env),
                                     L.substitute(_replace(mt.store.value, red, result), env)))
            return L.Allocate(acc, L.Seq([init, reduction, epilogue]))
        # dot: vectorized along k, a scalar tail into lane 0, lanes summed at the end
        if mt.j is not None:
            env[mt.j] = j0 + jv
        k, kext = red.vars[-1], red.extents[-1]
        ko, kt = L.Var("ko"), L.Var("kt")
        main_env = {**env, k: ko * w + lane}
        prod = L.substitute(mt.a, main_env) * L.substitute(mt.b, main_env)
        main = L.loop(ko, _div(kext, w), block(L.Store(acc, slot + lane, L.Load(acc, slot + lane) + prod)))
        tail_env = {**env, k: _div(kext, w) * w + kt}
        tprod = L.substitute(mt.a, tail_env) * L.substitute(mt.b, tail_env)
        rest = kext - _div(kext, w) * w
        tail = L.loop(kt, rest, L.loop(ii, mr, L.loop(
            jv, nr, L.Store(acc, slot, L.Load(acc, slot) + tprod), "unrolled"), "unrolled"))
        reduction = L.Seq([main, tail])
        for v, x in reversed(list(zip(red.vars[:-1], red.extents[:-1]))):
            reduction = L.For(v, x, reduction)
        total = L.LaneSum(acc, slot, w) if w > 1 else L.Load(acc, slot)
        epilogue = L.loop(ii, mr, L.loop(jv, nr, L.Store(
            mt.store.buf, L.substitute(mt.store.index, env),
            L.substitute(_replace(mt.store.value, red, total), env), mt.store.accumulate),
            "unrolled"), "unrolled")
        return L.Allocate(acc, L.Seq([init, reduction, epilogue]))

    # ---- tiles
    def tile_body(self, i0: L.Expr, j0: L.Expr) -> L.Stmt:
        mr, nr, nj, w = self.mr, self.nr, self.nj, self.w
        outer = self.mt.form == "outer"
        full = self.micro(i0, j0, mr, nr, w)
        m, n = _const(self.m), _const(self.n)
        # Edges that a constant extent never has are not generated.
        ragged_i = m is None or m % mr != 0
        ragged_j = n is None or n % nj != 0
        if not ragged_i and not ragged_j:
            return full
        rows = L.minimum(L.Const(mr, L.INDEX), self.m - i0) if ragged_i else L.Const(mr, L.INDEX)
        cols = L.minimum(L.Const(nj, L.INDEX), self.n - j0) if ragged_j else L.Const(nj, L.INDEX)
        ii, jj = L.Var("ri"), L.Var("rj")
        full_row = self.micro(i0 + ii, j0, 1, nr, w)
        if not ragged_j:
            partial: L.Stmt = L.loop(ii, rows, full_row)
        else:
            if outer:
                narrow = L.Seq([
                    L.loop(jj, _div(cols, w), self.micro(i0 + ii, j0 + jj * w, 1, 1, w)),
                    L.loop(jj, cols - _div(cols, w) * w,
                           self.micro(i0 + ii, j0 + _div(cols, w) * w + jj, 1, 1, 1))])
            else:
                narrow = L.loop(jj, cols, self.micro(i0 + ii, j0 + jj, 1, 1, w))
            partial = L.loop(ii, rows, L.Seq([L.If(L.cmp("==", cols, nj), full_row),
                                              L.If(L.cmp("<", cols, nj), narrow)]))
        return L.Seq([L.If(L.cmp("==", rows * cols, mr * nj), full),
                      L.If(L.cmp("<", rows * cols, mr * nj), partial)])

    def build(self) -> L.Stmt:
        mt = self.mt
        it, jt = L.Var("it"), L.Var("jt")
        i0 = it * self.mr if mt.i is not None else ZERO
        j0 = jt * self.nj if mt.j is not None else ZERO
        body = self.tile_body(i0, j0)
        if mt.i is not None:
            body = L.For(it, _ceil_div(self.m, self.mr), body)
        if mt.j is not None:
            body = L.For(jt, _ceil_div(self.n, self.nj), body)
        for lp in reversed(mt.loops):
            if lp.var is not mt.i and lp.var is not mt.j:
                body = L.For(lp.var, lp.extent, body)
        return body


def _tile_kernel(body: L.Stmt, vbytes: int, regs: int) -> L.Stmt | None:
    mt = match(body)
    if mt is None:
        return None
    lanes = vbytes // L.DTYPE_BYTES[mt.red.dtype]
    ext = {lp.var: lp.extent for lp in mt.loops}
    m = _const(ext[mt.i]) if mt.i is not None else 1
    n = _const(ext[mt.j]) if mt.j is not None else 1
    # The vectorized extent: along k (dot) or j (outer). Below MIN_LANES
    # elements a vector does not pay; below a full vector, narrower ones.
    vext = _const(mt.red.extents[-1]) if mt.form == "dot" else n
    if vext is not None:
        if vext < MIN_LANES:
            return None
        lanes = min(lanes, 1 << (vext.bit_length() - 1))
    mr, nr = choose_blocks(mt.form, m, n, lanes, regs)
    return Tiler(mt, lanes, mr, nr).build()
