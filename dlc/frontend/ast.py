"""The AST of a .dl file: frozen dataclasses, each with the span it came from.

The parser desugars the pipe: `a |> f(b, k=v)` is `Call('f', (a, b), (k=v,))`
and `a |> f` is `Call('f', (a,))`, the call's span being that of `f(...)`.
`unparse` prints a module back as source with every operation explicit
(calls for pipes, parentheses for precedence); `dlc compile --emit=ast` shows it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..errors import Span


# ---------------------------------------------------------------- expressions

@dataclass(frozen=True)
class Name:
    span: Span
    id: str


@dataclass(frozen=True)
class Number:
    span: Span
    value: int | float


@dataclass(frozen=True)
class String:
    span: Span
    value: str


@dataclass(frozen=True)
class Bool:
    span: Span
    value: bool


@dataclass(frozen=True)
class Tuple:
    span: Span
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Keyword:
    """`name=value` in a call; the span covers both."""
    span: Span
    name: str
    value: Expr


@dataclass(frozen=True)
class Call:
    """`func(args..., kwargs...)` of an op or a model; the span starts at `func`."""
    span: Span
    func: str
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...]


@dataclass(frozen=True)
class BinOp:
    """`left op right`; the span is the operator's, where errors point."""
    span: Span
    op: str          # '+' | '-' | '*' | '/'
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Neg:
    span: Span       # the '-'
    operand: Expr


@dataclass(frozen=True)
class Field:
    """`value.name`, an output of a model call; the span is the name's."""
    span: Span
    value: Expr
    name: str


Expr = Union[Name, Number, String, Bool, Tuple, Call, BinOp, Neg, Field]


# ----------------------------------------------------------------- statements

@dataclass(frozen=True)
class Dim:
    span: Span
    value: int | str     # a fixed size or a symbol


@dataclass(frozen=True)
class TypeExpr:
    span: Span           # the dtype name
    dtype: str
    dims: tuple[Dim, ...]


@dataclass(frozen=True)
class Input:
    span: Span           # the input's name
    name: str
    type: TypeExpr


@dataclass(frozen=True)
class Let:
    span: Span           # the bound name
    name: str
    value: Expr


@dataclass(frozen=True)
class Output:
    span: Span           # the output's name
    name: str
    value: Expr


@dataclass(frozen=True)
class Loss:
    span: Span           # the 'loss' keyword
    value: Expr


@dataclass(frozen=True)
class Optimizer:
    """`optimizer = kind(args) on m1, m2`; `on` is empty when not given."""
    span: Span           # the 'optimizer' keyword
    call: Call
    on: tuple[Name, ...]


Stmt = Union[Input, Let, Output, Loss, Optimizer]


@dataclass(frozen=True)
class Block:
    """A `model` or `train` block; the span is the block's name."""
    span: Span
    kind: str            # 'model' | 'train'
    name: str
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class Module:
    file: str
    blocks: tuple[Block, ...]


# -------------------------------------------------------------------- printer

def unparse(node: Module | Block | Stmt | Expr) -> str:
    """Source text for `node`, with pipes as calls and explicit parentheses."""
    match node:
        case Module(blocks=blocks):
            return "".join(unparse(b) for b in blocks)
        case Block(kind=kind, name=name, body=body):
            return f"{kind} {name} {{\n" + "".join(f"    {unparse(s)}\n" for s in body) + "}\n"
        case Input(name=name, type=t):
            return f"input {name}: {t.dtype}[{', '.join(str(d.value) for d in t.dims)}]"
        case Let(name=name, value=v):
            return f"{name} = {unparse(v)}"
        case Output(name=name, value=v):
            return f"output {name} = {unparse(v)}"
        case Loss(value=v):
            return f"loss = {unparse(v)}"
        case Optimizer(call=call, on=on):
            return f"optimizer = {unparse(call)}" + (
                " on " + ", ".join(n.id for n in on) if on else "")
        case Name(id=id):
            return id
        case Number(value=v):
            return repr(v)
        case String(value=v):
            return f'"{v}"'
        case Bool(value=v):
            return "true" if v else "false"
        case Tuple(items=items):
            return "(" + ", ".join(map(unparse, items)) + ("," if len(items) == 1 else "") + ")"
        case Call(func=func, args=args, kwargs=kwargs):
            parts = [unparse(a) for a in args] + [f"{k.name}={unparse(k.value)}" for k in kwargs]
            return f"{func}({', '.join(parts)})"
        case BinOp(op=op, left=left, right=right):
            return f"({unparse(left)} {op} {unparse(right)})"
        case Neg(operand=x):
            return f"(-{unparse(x)})"
        case Field(value=v, name=name):
            return f"{unparse(v)}.{name}"
    raise TypeError(f"not an AST node: {node!r}")
