"""The structure of a kernel as a hashable key. Two kernels with equal keys
compute the same on their own buffers: a model's forward and backward
kernels stand in its train step and again in its grads, input_grads and
inference entries. The loop passes transform one kernel of each structure
(dlc/passes/kernel_sharing.py), and the renderer makes one function of it.
"""
from __future__ import annotations

from ..errors import InternalError
from . import loops as L


class Structure:
    """A kernel's key: buffers and loop variables numbered by first
    appearance (with their dtypes), symbols by identity. Each expression
    node is interned in `table` (shared by the kernels compared), so a key
    holds numbers, not tuples as deep as the expressions. `ids` numbers the
    kernel's buffers and variables: in two kernels of one key, the buffers
    of one number stand in the same places."""

    def __init__(self, syms: set, table: dict[tuple, int]):
        self.syms, self.table = syms, table
        self.ids: dict[object, int] = {}
        self.memo: dict = {}   # fold's: the kernel's expressions share nodes

    def ref(self, x) -> tuple:
        if isinstance(x, L.Var) and x in self.syms:
            return ("sym", x.name)
        n = self.ids.setdefault(x, len(self.ids))
        return ("buf", n, x.dtype) if isinstance(x, L.Buffer) else ("var", n)

    def expr(self, e: L.Expr | None) -> int | None:
        return None if e is None else L.fold(e, self.node, memo=self.memo)

    def node(self, e: L.Expr, kids: list[int]) -> int:
        if isinstance(e, L.Const):
            key = ("c", repr(e.value), e.dtype)   # repr: -0.0 is not 0.0
        elif isinstance(e, L.Var):
            key = self.ref(e)
        elif isinstance(e, L.LaneSum):
            key = ("lanesum", self.ref(e.buf), e.lanes, *kids)
        elif isinstance(e, L.Load):
            key = ("load", self.ref(e.buf), *kids)
        elif isinstance(e, L.Bin):
            key = ("bin", e.op, e.dtype, *kids)
        elif isinstance(e, L.Call):
            key = ("call", e.fn, e.dtype, *kids)
        elif isinstance(e, L.Select):
            key = ("select", *kids)
        elif isinstance(e, L.Cast):
            key = ("cast", e.dtype, *kids)
        elif isinstance(e, L.Reduce):
            key = ("reduce", e.kind, *(self.ref(v) for v in e.vars), "of", *kids)
        else:
            raise InternalError("structure", f"no key for {type(e).__name__}")
        return self.table.setdefault(key, len(self.table))

    def stmt(self, s: L.Stmt) -> int:
        return L.fold(s, self.stmt_node, L.stmt_children)

    def stmt_node(self, s: L.Stmt, kids: list[int]) -> int:
        if isinstance(s, L.For):
            key = ("for", self.ref(s.var), self.expr(s.extent), s.kind, self.expr(s.grain), *kids)
        elif isinstance(s, L.Store):
            key = ("store", self.ref(s.buf), self.expr(s.index), self.expr(s.value), s.accumulate)
        elif isinstance(s, L.Allocate):
            key = ("allocate", self.ref(s.buf), self.expr(s.buf.size), *kids)
        elif isinstance(s, L.If):
            key = ("if", self.expr(s.cond), *kids)
        elif isinstance(s, L.Seq):
            key = ("seq", *kids)
        else:
            raise InternalError("structure", f"no key for {type(s).__name__}")
        return self.table.setdefault(key, len(self.table))

    def buffers(self) -> list[L.Buffer]:
        """The kernel's buffers, by number (after `stmt`)."""
        return [x for x in self.ids if isinstance(x, L.Buffer)]
