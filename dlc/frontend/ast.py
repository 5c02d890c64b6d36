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


@dataclass(frozen=True)
class Slice:
    """`start:stop` inside a subscript, either bound optional."""
    span: Span       # the ':'
    start: "Expr | None"
    stop: "Expr | None"


@dataclass(frozen=True)
class Subscript:
    """`value[item, ...]`, each item an index expression or a Slice; the
    span is the '['."""
    span: Span
    value: "Expr"
    items: tuple


Expr = Union[Name, Number, String, Bool, Tuple, Call, BinOp, Neg, Field, Subscript]


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


# -------------------------------------------------------------------- walking

def children(e: Expr) -> tuple[Expr, ...]:
    """The direct subexpressions of e, in source order (keyword values after
    the positional arguments)."""
    match e:
        case Call(args=args, kwargs=kwargs):
            return (*args, *(k.value for k in kwargs))
        case BinOp(left=left, right=right):
            return (left, right)
        case Neg(operand=x) | Field(value=x):
            return (x,)
        case Tuple(items=items):
            return items
        case Subscript(value=value, items=items):
            return (value, *(b for i in items
                             for b in ((i.start, i.stop) if isinstance(i, Slice) else (i,)) if b is not None))
    return ()


def postorder(e: Expr):
    """Each subexpression of e after its children, with an explicit stack:
    expressions nest as deep as the source text does."""
    stack = [(e, False)]
    while stack:
        x, expanded = stack.pop()
        if expanded:
            yield x
        else:
            stack.append((x, True))
            stack.extend((c, False) for c in reversed(children(x)))


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
    if not isinstance(node, Expr.__args__):
        raise TypeError(f"not an AST node: {node!r}")
    text: dict[int, str] = {}   # by id, until the parent's text is made
    for x in postorder(node):
        cs = children(x)
        text[id(x)] = _expr_text(x, [text[id(c)] for c in cs])
        for c in cs:
            text.pop(id(c), None)
    return text[id(node)]


def _expr_text(e: Expr, kids: list[str]) -> str:
    """e's text, given its children's."""
    match e:
        case Name(id=id):
            return id
        case Number(value=v):
            return repr(v)
        case String(value=v):
            return f'"{v}"'
        case Bool(value=v):
            return "true" if v else "false"
        case Tuple():
            return "(" + ", ".join(kids) + ("," if len(kids) == 1 else "") + ")"
        case Call(func=func, args=args, kwargs=kwargs):
            kw = [f"{k.name}={t}" for k, t in zip(kwargs, kids[len(args):])]
            return f"{func}({', '.join(kids[:len(args)] + kw)})"
        case BinOp(op=op):
            return f"({kids[0]} {op} {kids[1]})"
        case Neg():
            return f"(-{kids[0]})"
        case Field(name=name):
            return f"{kids[0]}.{name}"
        case Subscript(items=items):
            rest = iter(kids[1:])
            parts = [":".join("" if b is None else next(rest) for b in (i.start, i.stop))
                     if isinstance(i, Slice) else next(rest) for i in items]
            return f"{kids[0]}[{', '.join(parts)}]"
