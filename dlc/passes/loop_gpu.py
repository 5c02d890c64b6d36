"""GPU mapping: each kernel's outer loop nest becomes one loop over the
whole grid of threads.

The perfectly nested loops at the top of a kernel (the loops over the
output's shape that `lower` writes) are flattened into one index `gid` in
[0, product of their extents); a `For` of kind `gpu_grid` over `gid` means
"these iterations are spread over every thread of the launch" and is
rendered as a grid-stride loop, so any grid size is correct and the launch
plan may cap it. The original indices are recomputed from `gid` (row-major
division and remainder). Everything inside (reduction loops, accumulators,
update temporaries) stays per thread. CPU schedules (parallel, vectorized)
inside a kernel are reset to serial: on the GPU the threads are the
parallelism. A kernel with no outer loop (a scalar result such as a loss)
runs as a grid loop of one iteration.

The pass is generic on the loop IR: it knows no op, so new ops map without
GPU-specific code.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import loops as L

GRID = "gpu_grid"


def map_to_gpu(prog: L.LoopProgram) -> L.LoopProgram:
    """Bind every kernel's outer loops to the grid (pure)."""
    entries = [replace(e, kernels=[L.Kernel(k.name, map_kernel(k.body)) for k in e.kernels])
               for e in prog.entries]
    return replace(prog, entries=entries)


def grid_loop(kernel: L.Kernel) -> L.For:
    """The grid loop of a mapped kernel: its extent is the launch's thread count."""
    body = kernel.body
    if not (isinstance(body, L.For) and body.kind == GRID):
        raise ValueError(f"kernel {kernel.name} is not mapped to the GPU")
    return body


def map_kernel(body: L.Stmt) -> L.Stmt:
    outer: list[L.For] = []
    s = body
    while isinstance(s, L.For):
        outer.append(s)
        s = s.body
    gid = L.Var("gid")
    env: dict[L.Var, L.Expr] = {}
    rest = gid
    # Innermost index first: i_k = rest % e_k, rest = rest / e_k.
    for k, loop in reversed(list(enumerate(outer))):
        if k == 0:
            env[loop.var] = rest
        else:
            quotient = L.binop("/", rest, loop.extent)
            env[loop.var] = rest - quotient * loop.extent
            rest = quotient
    extent: L.Expr = L.Const(1, L.INDEX)
    for loop in outer:
        extent = extent * loop.extent
    return L.For(gid, extent, substitute(s, env), GRID)


def substitute(s: L.Stmt, env: dict[L.Var, L.Expr]) -> L.Stmt:
    """s with the variables in env replaced, and every loop made serial."""
    if isinstance(s, L.For):
        return L.For(s.var, subst_expr(s.extent, env), substitute(s.body, env), "serial")
    if isinstance(s, L.Store):
        return L.Store(s.buf, subst_expr(s.index, env), subst_expr(s.value, env), s.accumulate)
    if isinstance(s, L.Allocate):
        return L.Allocate(s.buf, substitute(s.body, env))
    if isinstance(s, L.If):
        return L.If(subst_expr(s.cond, env), substitute(s.then, env))
    if isinstance(s, L.Seq):
        return L.Seq([substitute(b, env) for b in s.body])
    raise TypeError(s)


def subst_expr(e: L.Expr, env: dict[L.Var, L.Expr]) -> L.Expr:
    if isinstance(e, L.Var):
        return env.get(e, e)
    if isinstance(e, L.Const):
        return e
    if isinstance(e, L.Load):
        return L.Load(e.buf, subst_expr(e.index, env))
    if isinstance(e, L.Bin):
        return L.Bin(e.op, subst_expr(e.a, env), subst_expr(e.b, env), e.dtype)
    if isinstance(e, L.Call):
        return L.Call(e.fn, tuple(subst_expr(a, env) for a in e.args), e.dtype)
    if isinstance(e, L.Select):
        return L.Select(*(subst_expr(x, env) for x in (e.cond, e.a, e.b)))
    if isinstance(e, L.Cast):
        return L.Cast(subst_expr(e.value, env), e.dtype)
    raise TypeError(e)
