"""The fuzzer's own program representation: blocks of single-op nodes, typed
by rules that mirror the language's, printed as `.dl` text.

A `Program` is a list of `Block`s (models and train blocks). Each block is
an ordered list of `Node`s, one op each; an argument is another node's id or
a number (the scalar operand of `+ - * /`). Types are not stored by the
generator but inferred (`infer`), so the reducer can delete nodes, shrink
sizes and retype what follows; a change that breaks a rule raises `Invalid`
and the candidate is dropped without compiling.

Input nodes may take their type from where they are used ("derived"): a
train block's inputs from the model input they feed or the prediction their
loss compares them with, a broadcast operand from its partner, a model input
from another model's output (so `d(g(z))` keeps composing when `g` shrinks).

`emit` prints the text and returns the parameter-owning layers' names,
computing the automatic ones (`<block>.<op><k>`, k in source order of the
op name) from the positions of the calls in the printed text.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from dlc.ir.graph import TensorType
from dlc.ops.base import OpError, broadcast_shapes
from dlc.ops.shape import filled_dims

LAYER_OPS = ("dense", "conv2d", "batchnorm", "embedding", "rnn", "lstm")
UNARY_OPS = ("relu", "sigmoid", "tanh", "leaky_relu", "softmax", "log_softmax", "exp", "log",
             "sqrt", "dropout", "neg")
BINARY_OPS = ("+", "-", "*", "/")
LOSS_OPS = ("cross_entropy", "mse", "bce")
SYMBOLS = ("batch", "time")
GATES = {"rnn": 1, "lstm": 4}
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class Invalid(Exception):
    """The program breaks a typing rule (or a rule of the fuzzer's own)."""


@dataclass
class Node:
    id: str
    op: str
    args: list = field(default_factory=list)    # node ids, or numbers for binary ops
    attrs: dict = field(default_factory=dict)
    inline: bool = False                        # printed inside its only consumer
    pipe: bool = False                          # printed as `first |> op(rest)`
    # inferred
    dtype: str | None = None
    shape: tuple | None = None
    pos: bool = False                           # every element > 0 (safe for log, sqrt)
    prob: bool = False                          # a sigmoid's output (a bce prediction)


@dataclass
class Block:
    name: str
    kind: str                                   # 'model' | 'train'
    nodes: list[Node] = field(default_factory=list)
    outputs: list = field(default_factory=list)   # [(output name, node id)]
    loss: str | None = None
    optimizer: dict | None = None               # {'kind', 'hp': {...}, 'on': [...]}
    infer_only: bool = False                    # may hold dropout p > 0; never trained

    def get(self, nid: str) -> Node:
        for n in self.nodes:
            if n.id == nid:
                return n
        raise Invalid(f"{self.name}: no node {nid}")

    def has(self, nid: str) -> bool:
        return any(n.id == nid for n in self.nodes)

    def inputs(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "input"]

    def uses(self) -> dict[str, int]:
        count: dict[str, int] = {}
        for n in self.nodes:
            for a in n.args:
                if isinstance(a, str):
                    count[a] = count.get(a, 0) + 1
            ln = n.attrs.get("lengths")
            if ln:
                count[ln] = count.get(ln, 0) + 1
        for _, nid in self.outputs:
            count[nid] = count.get(nid, 0) + 1
        if self.loss:
            count[self.loss] = count.get(self.loss, 0) + 1
        return count

    def fresh_id(self, prefix: str = "h") -> str:
        taken = {n.id for n in self.nodes} | {o for o, _ in self.outputs}
        k = len(self.nodes)
        while f"{prefix}{k}" in taken:
            k += 1
        return f"{prefix}{k}"


@dataclass
class Program:
    blocks: list[Block] = field(default_factory=list)

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise Invalid(f"no block {name}")

    def has(self, name: str) -> bool:
        return any(b.name == name for b in self.blocks)

    @property
    def models(self) -> list[Block]:
        return [b for b in self.blocks if b.kind == "model"]

    @property
    def trains(self) -> list[Block]:
        return [b for b in self.blocks if b.kind == "train"]

    def clone(self) -> "Program":
        return copy.deepcopy(self)


def node_refs(n: Node) -> list[str]:
    """The ids a node reads (its tensor arguments and its lengths)."""
    refs = [a for a in n.args if isinstance(a, str)]
    if n.attrs.get("lengths"):
        refs.append(n.attrs["lengths"])
    return refs


def layer_key(b: Block, n: Node):
    """Identifies a layer's parameters: its explicit name, else its place."""
    return ("name", n.attrs["name"]) if n.attrs.get("name") else (b.name, n.id)


def reached(prog: Program, b: Block, nid: str, memo: dict | None = None) -> set:
    """Keys of the layers whose parameters a gradient from node nid reaches."""
    memo = {} if memo is None else memo
    if (b.name, nid) in memo:
        return memo[(b.name, nid)]
    out: set = set()
    memo[(b.name, nid)] = out
    n = b.get(nid)
    if n.op in LAYER_OPS:
        out.add(layer_key(b, n))
    if n.op == "call":
        callee = prog.block(n.attrs["model"])
        outs = dict(callee.outputs)
        out |= reached(prog, callee, outs[n.attrs.get("field") or next(iter(outs))], memo)
    args = n.args[:1] if n.op in LOSS_OPS else n.args
    for a in args:
        if isinstance(a, str):
            out |= reached(prog, b, a, memo)
    return out


def owned_keys(prog: Program, m: str) -> set:
    """Keys of the layers a model's body declares (its calls' included)."""
    b = prog.block(m)
    out = {layer_key(b, n) for n in b.nodes if n.op in LAYER_OPS}
    for n in b.nodes:
        if n.op == "call":
            out |= owned_keys(prog, n.attrs["model"])
    return out


OP_COST = {"rnn": 1.0, "lstm": 1.2, "conv2d": 0.3, "dense": 0.15, "embedding": 0.2,
           "batchnorm": 0.2, "maxpool": 0.15, "avgpool": 0.15, "global_avgpool": 0.1,
           "concat": 0.1, "input": 0.0}


def cost(prog: Program, b: Block) -> float:
    """A rough compile-time cost of a block (a train block's counts twice:
    its step and its gradient entry; recurrences dominate)."""
    total = 0.0
    for n in b.nodes:
        if n.op == "call":
            total += cost(prog, prog.block(n.attrs["model"]))
        else:
            c = OP_COST.get(n.op, 0.05)
            total += 2 * c if n.attrs.get("bidirectional") else c
    return 2 * total if b.kind == "train" else total


def callees(b: Block) -> list[str]:
    """Models a block depends on: called, or giving a derived input its type."""
    out = []
    for n in b.nodes:
        if n.op == "call":
            out.append(n.attrs["model"])
        elif n.op == "input" and n.attrs.get("derive", (None,))[0] == "output":
            out.append(n.attrs["derive"][1])
    return out


def order(prog: Program) -> list[Block]:
    """Models in dependency order, then train blocks; Invalid on a cycle."""
    done: list[Block] = []
    state: dict[str, int] = {}

    def visit(b: Block):
        if state.get(b.name) == 2:
            return
        if state.get(b.name) == 1:
            raise Invalid(f"cycle through {b.name}")
        state[b.name] = 1
        for m in callees(b):
            callee = prog.block(m)
            if callee.kind != "model":
                raise Invalid(f"{b.name} calls train block {m}")
            visit(callee)
        state[b.name] = 2
        done.append(b)

    for b in prog.models:
        visit(b)
    for b in prog.trains:
        visit(b)
    return done


# ------------------------------------------------------------------ typing

def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def window_out(size, kernel, stride, pad, dilation) -> int:
    if not isinstance(size, int):
        raise Invalid("symbolic spatial size")
    span = dilation * (kernel - 1) + 1
    if span > size + 2 * pad:
        raise Invalid("window larger than the padded input")
    return (size + 2 * pad - span) // stride + 1


def broadcast(a: tuple, b: tuple) -> tuple:
    """dlc's own broadcasting rule (validity, not the oracle's semantics)."""
    try:
        return broadcast_shapes(a, b)
    except OpError as e:
        raise Invalid(f"no broadcast {a} {b}") from e


def _float(n: Node) -> Node:
    if n.dtype not in ("f32", "f64"):
        raise Invalid(f"{n.id} is not float")
    return n


def _resolve(inp: Node, dtype: str, shape: tuple) -> None:
    """Give a derived input its type at its first use; later uses must agree."""
    shape = tuple(shape)
    if inp.shape is None:
        inp.dtype, inp.shape = dtype, shape
    elif (inp.dtype, inp.shape) != (dtype, shape):
        raise Invalid(f"input {inp.id} used as {dtype}{shape} and {inp.dtype}{inp.shape}")


def _need(n) -> Node:
    if not isinstance(n, Node):
        raise Invalid("expected a tensor")
    if n.shape is None:
        raise Invalid(f"{n.id} has no type here")
    return n


def _bcast_shape(partner: tuple, k: int, mask: tuple) -> tuple:
    if k > len(partner):
        raise Invalid("broadcast operand of higher rank")
    tail = partner[len(partner) - k:]
    out = tuple(1 if m else d for d, m in zip(tail, mask))
    if any(not isinstance(d, int) for d in out):
        raise Invalid("broadcast operand would need a symbol")
    return out


class Typer:
    """Types a program in place; collects the parameters it declares."""

    def __init__(self, prog: Program):
        self.prog = prog
        self.params: dict[str, tuple[str, tuple]] = {}
        self.owned: dict[str, set[str]] = {}     # model -> params its body declares
        self.bn_uses: dict[str, list[tuple[str, str]]] = {}   # block -> BN nodes it inlines
        self.dropout_models: set[str] = set()    # models holding dropout p > 0

    def run(self) -> "Typer":
        names = [b.name for b in self.prog.blocks]
        if len(set(names)) != len(names):
            raise Invalid("duplicate block names")
        for b in order(self.prog):
            self.block(b)
        return self

    def param(self, name: str, dtype: str, shape: tuple, owner: set) -> None:
        have = self.params.get(name)
        if have is not None and have != (dtype, tuple(shape)):
            raise Invalid(f"param {name} declared twice with different types")
        self.params[name] = (dtype, tuple(shape))
        owner.add(name)

    def block(self, b: Block) -> None:
        for n in b.nodes:
            n.dtype = n.shape = None
            n.pos = n.prob = False
        ids = [n.id for n in b.nodes]
        if len(set(ids)) != len(ids):
            raise Invalid("duplicate node ids")
        seen: dict[str, Node] = {}
        owner: set[str] = set()
        bn: list[tuple[str, str]] = []
        for n in b.nodes:
            if n.op == "input":
                self.input(b, n)
            else:
                for r in node_refs(n):
                    if r not in seen:
                        raise Invalid(f"{n.id} reads {r} before it is defined")
                args = [seen[a] if isinstance(a, str) else a for a in n.args]
                RULES[n.op](self, b, n, args, seen, owner, bn)
                if n.dtype is None:
                    raise Invalid(f"{n.id} untyped")
            seen[n.id] = n
        for n in b.nodes:
            if n.op == "input" and n.shape is None:
                raise Invalid(f"derived input {n.id} is never used")
        if b.kind == "model":
            if not b.outputs or b.loss or b.optimizer:
                raise Invalid("a model needs outputs only")
            names = [o for o, _ in b.outputs]
            if len(set(names)) != len(names):
                raise Invalid("duplicate outputs")
            for oname, nid in b.outputs:
                if oname in seen or not b.has(nid):
                    raise Invalid("an output named like a node, or of nothing")
            self.owned[b.name] = owner
        else:
            if b.outputs or b.loss is None or b.optimizer is None:
                raise Invalid("a train block needs a loss and an optimizer")
            loss = b.get(b.loss)
            if loss.shape != () or loss.dtype not in ("f32", "f64"):
                raise Invalid("loss must be a float scalar")
            used = {n.attrs["model"] for n in b.nodes if n.op == "call"}
            closure = set()
            for m in used:
                closure |= self.model_closure(m)
            if any(m in self.dropout_models for m in closure):
                raise Invalid("a trained model holds dropout p > 0")
            for m in b.optimizer.get("on", []):
                if m not in closure:
                    raise Invalid(f"'on {m}' names a model the loss does not call")
            reach = reached(self.prog, b, b.loss)
            on = b.optimizer.get("on") or []
            if on:
                reach &= set().union(*(owned_keys(self.prog, m) for m in on))
            if not reach:
                raise Invalid("the loss reaches no trained parameter")
        keys = [k for k in bn]
        if b.kind == "train" and len(set(keys)) != len(keys):
            raise Invalid("a batchnorm layer used twice in one train block")
        self.bn_uses[b.name] = bn
        if b.kind == "model" and any(n.op == "dropout" and n.attrs.get("p", 0.5) > 0 for n in b.nodes):
            if not b.infer_only:
                raise Invalid("dropout p > 0 outside an inference-only model")
            self.dropout_models.add(b.name)

    def model_closure(self, m: str) -> set[str]:
        out = {m}
        for c in callees(self.prog.block(m)):
            out |= self.model_closure(c)
        return out

    def input(self, b: Block, n: Node) -> None:
        a = n.attrs
        if "shape" in a:
            shape = tuple(a["shape"])
            if a["dtype"] not in ("f32", "f64", "i32"):
                raise Invalid("dtype")
            if any(isinstance(d, int) and d < 1 for d in shape):
                raise Invalid("dim < 1")
            if any(isinstance(d, str) and d not in SYMBOLS for d in shape):
                raise Invalid("unknown symbol")
            n.dtype, n.shape = a["dtype"], shape
        elif a["derive"][0] == "output":
            _, m, oname = a["derive"]
            src = self.prog.block(m)
            nid = dict(src.outputs).get(oname)
            if nid is None:
                raise Invalid(f"{m} has no output {oname}")
            out = src.get(nid)
            n.dtype, n.shape = out.dtype, out.shape
            if any(isinstance(d, str) and d not in SYMBOLS for d in n.shape):
                raise Invalid("unknown symbol")
        # else: typed by its first use


# Each rule types node n from args (Nodes or numbers); seen: the block's
# nodes so far; owner: params declared by this block; bn: batchnorm uses.

def _unary(t, b, n, args, seen, owner, bn):
    if len(args) != 1:
        raise Invalid("arity")
    x = _float(_need(args[0]))
    op = n.op
    if op in ("log", "sqrt") and not x.pos:
        raise Invalid(f"{op} of a value not known to be positive")
    if op in ("softmax", "log_softmax") and len(x.shape) == 0:
        raise Invalid("softmax of a scalar")
    if op == "dropout":
        p = n.attrs.get("p", 0.5)
        if not 0 <= p < 1:
            raise Invalid("dropout p")
    n.dtype, n.shape = x.dtype, x.shape
    n.pos = (op in ("sigmoid", "exp", "softmax", "sqrt")) or (op == "dropout" and x.pos)
    n.prob = op == "sigmoid"


def _binary(t, b, n, args, seen, owner, bn):
    if len(args) != 2:
        raise Invalid("arity")
    nodes = [a for a in args if isinstance(a, Node)]
    if not nodes:
        raise Invalid("two numbers")
    for a in nodes:
        if a.shape is None and a.op == "input" and a.attrs.get("derive", (None,))[0] == "bcast":
            other = [x for x in args if isinstance(x, Node) and x is not a]
            if not other or other[0].shape is None:
                raise Invalid("broadcast operand without a partner")
            _, k, mask = a.attrs["derive"]
            _resolve(a, other[0].dtype, _bcast_shape(other[0].shape, k, tuple(mask)))
    for a in nodes:
        _float(_need(a))
    if len({a.dtype for a in nodes}) > 1:
        raise Invalid("mixed dtypes")
    shape = nodes[0].shape if len(nodes) == 1 else broadcast(nodes[0].shape, nodes[1].shape)
    n.dtype, n.shape = nodes[0].dtype, shape
    pos = [a.pos if isinstance(a, Node) else a > 0 for a in args]
    n.pos = n.op in ("+", "*", "/") and all(pos)


def _dense(t, b, n, args, seen, owner, bn):
    x = _float(_need(args[0]))
    units = n.attrs["units"]
    if len(x.shape) != 2 or not isinstance(x.shape[1], int) or units < 1:
        raise Invalid("dense")
    name = n.attrs.get("_name")
    if name:
        t.param(f"{name}.weight", x.dtype, (units, x.shape[1]), owner)
        if n.attrs.get("bias", True):
            t.param(f"{name}.bias", x.dtype, (units,), owner)
    n.dtype, n.shape = x.dtype, (x.shape[0], units)


def _conv2d(t, b, n, args, seen, owner, bn):
    x = _float(_need(args[0]))
    a = n.attrs
    if len(x.shape) != 4 or not all(isinstance(d, int) for d in x.shape[1:]):
        raise Invalid("conv2d input")
    c, groups, filters = x.shape[1], a.get("groups", 1), a["filters"]
    if groups < 1 or filters < 1 or c % groups or filters % groups:
        raise Invalid("conv2d groups")
    k, s, p, d = (_pair(a.get(key, dflt)) for key, dflt in
                  (("kernel", 1), ("stride", 1), ("padding", 0), ("dilation", 1)))
    if min(k) < 1 or min(s) < 1 or min(p) < 0 or min(d) < 1:
        raise Invalid("conv2d attrs")
    oh = window_out(x.shape[2], k[0], s[0], p[0], d[0])
    ow = window_out(x.shape[3], k[1], s[1], p[1], d[1])
    name = a.get("_name")
    if name:
        t.param(f"{name}.weight", x.dtype, (filters, c // groups) + k, owner)
        if a.get("bias", True):
            t.param(f"{name}.bias", x.dtype, (filters,), owner)
    n.dtype, n.shape = x.dtype, (x.shape[0], filters, oh, ow)


def _pool(t, b, n, args, seen, owner, bn):
    x = _float(_need(args[0]))
    a = n.attrs
    if len(x.shape) != 4:
        raise Invalid("pool input")
    k = _pair(a["size"])
    s = k if a.get("stride") is None else _pair(a["stride"])
    p = _pair(a.get("padding", 0))
    if min(k) < 1 or min(s) < 1 or min(p) < 0 or any(2 * pp > kk for pp, kk in zip(p, k)):
        raise Invalid("pool attrs")
    oh = window_out(x.shape[2], k[0], s[0], p[0], 1)
    ow = window_out(x.shape[3], k[1], s[1], p[1], 1)
    n.dtype, n.shape = x.dtype, x.shape[:2] + (oh, ow)
    n.pos = x.pos   # every window holds at least one element of x (2 * padding <= size)


def _global_avgpool(t, b, n, args, seen, owner, bn):
    x = _float(_need(args[0]))
    if len(x.shape) != 4 or not all(isinstance(d, int) for d in x.shape[2:]):
        raise Invalid("global_avgpool")
    n.dtype, n.shape, n.pos = x.dtype, x.shape[:2] + (1, 1), x.pos


def _flatten(t, b, n, args, seen, owner, bn):
    x = _need(args[0])
    if len(x.shape) < 2 or not all(isinstance(d, int) for d in x.shape[1:]):
        raise Invalid("flatten")
    n.dtype, n.shape, n.pos = x.dtype, (x.shape[0], math.prod(x.shape[1:])), x.pos


def _count(shape):
    fixed = math.prod(d for d in shape if isinstance(d, int))
    return fixed, sorted(d for d in shape if isinstance(d, str))


def _reshape(t, b, n, args, seen, owner, bn):
    x = _need(args[0])
    if not n.attrs["dims"]:
        raise Invalid("reshape dims")
    try:
        dims = filled_dims(TensorType(x.dtype, tuple(x.shape)), tuple(n.attrs["dims"]))
    except OpError as e:
        raise Invalid("reshape dims") from e
    if _count(dims) != _count(x.shape):
        raise Invalid("reshape count")
    n.dtype, n.shape, n.pos = x.dtype, dims, x.pos


def _transpose(t, b, n, args, seen, owner, bn):
    x = _need(args[0])
    dims = tuple(n.attrs["dims"])
    if sorted(dims) != list(range(len(x.shape))):
        raise Invalid("transpose dims")
    n.dtype, n.shape, n.pos = x.dtype, tuple(x.shape[d] for d in dims), x.pos


def _concat(t, b, n, args, seen, owner, bn):
    x, y = _need(args[0]), _need(args[1])
    axis = n.attrs.get("axis", 1)
    if x.dtype != y.dtype or len(x.shape) != len(y.shape):
        raise Invalid("concat types")
    r = len(x.shape)
    if not -r <= axis < r:
        raise Invalid("concat axis")
    axis %= r
    if not isinstance(x.shape[axis], int) or not isinstance(y.shape[axis], int):
        raise Invalid("concat symbolic axis")
    if any(d != e for i, (d, e) in enumerate(zip(x.shape, y.shape)) if i != axis):
        raise Invalid("concat dims")
    shape = list(x.shape)
    shape[axis] = x.shape[axis] + y.shape[axis]
    n.dtype, n.shape, n.pos = x.dtype, tuple(shape), x.pos and y.pos


def _batchnorm(t, b, n, args, seen, owner, bn):
    x = _float(_need(args[0]))
    if len(x.shape) != 4 or not isinstance(x.shape[1], int):
        raise Invalid("batchnorm input")
    if not 0 <= n.attrs.get("momentum", 0.1) <= 1:
        raise Invalid("batchnorm momentum")
    name = n.attrs.get("_name")
    if name:
        c = (x.shape[1],)
        for part in ("weight", "bias", "running_mean", "running_var"):
            t.param(f"{name}.{part}", x.dtype, c, owner)
        t.param(f"{name}.num_batches_tracked", "i32", (), owner)
    bn.append((b.name, n.id))
    n.dtype, n.shape = x.dtype, x.shape


def _embedding(t, b, n, args, seen, owner, bn):
    tok = _need(args[0])
    if tok.op != "input" or tok.dtype != "i32" or len(tok.shape) < 1:
        raise Invalid("embedding tokens must be an i32 input")
    vocab, dim = n.attrs["vocab"], n.attrs["dim"]
    if vocab < 1 or dim < 1:
        raise Invalid("embedding sizes")
    name = n.attrs.get("_name")
    if name:
        t.param(f"{name}.weight", "f32", (vocab, dim), owner)
    n.dtype, n.shape = "f32", tok.shape + (dim,)


def _lengths(b, n, x, seen):
    ln = n.attrs.get("lengths")
    if not ln:
        return
    v = seen[ln]
    if v.op != "input" or v.attrs.get("role") != "lengths":
        raise Invalid("lengths must be a lengths input")
    if v.shape is None:
        _resolve(v, "i32", x.shape[:1])
    if (v.dtype, v.shape) != ("i32", x.shape[:1]):
        raise Invalid("lengths type")


def _recurrent(t, b, n, args, seen, owner, bn):
    x = _float(_need(args[0]))
    hidden = n.attrs["hidden"]
    if len(x.shape) != 3 or not isinstance(x.shape[2], int) or hidden < 1:
        raise Invalid("recurrent input")
    _lengths(b, n, x, seen)
    name = n.attrs.get("_name")
    bi = n.attrs.get("bidirectional", False)
    if name:
        rows = GATES[n.op] * hidden
        for sfx in ("", "_reverse") if bi else ("",):
            t.param(f"{name}.weight_ih{sfx}", x.dtype, (rows, x.shape[2]), owner)
            t.param(f"{name}.weight_hh{sfx}", x.dtype, (rows, hidden), owner)
            t.param(f"{name}.bias_ih{sfx}", x.dtype, (rows,), owner)
            t.param(f"{name}.bias_hh{sfx}", x.dtype, (rows,), owner)
    n.dtype, n.shape = x.dtype, x.shape[:2] + ((2 if bi else 1) * hidden,)


def _last(t, b, n, args, seen, owner, bn):
    h = _need(args[0])
    if len(h.shape) < 3:
        raise Invalid("last input")
    _lengths(b, n, h, seen)
    n.dtype, n.shape, n.pos = h.dtype, h.shape[:1] + h.shape[2:], h.pos


def _loss(t, b, n, args, seen, owner, bn):
    p, tgt = args
    p = _float(_need(p))
    if not (isinstance(tgt, Node) and tgt.op == "input"):
        raise Invalid("loss target must be an input")
    role = tgt.attrs.get("role")
    if n.op == "cross_entropy":
        if len(p.shape) != 2 or role != "labels":
            raise Invalid("cross_entropy shapes")
        if not isinstance(p.shape[1], int):
            raise Invalid("cross_entropy classes")
        _resolve(tgt, "i32", p.shape[:1])
    else:
        if role != ("prob" if n.op == "bce" else "target"):
            raise Invalid("target role")
        if n.op == "bce" and not p.prob:
            raise Invalid("bce needs a sigmoid's output (fuzzer's rule)")
        _resolve(tgt, p.dtype, p.shape)
    n.dtype, n.shape = p.dtype, ()


def _call(t, b, n, args, seen, owner, bn):
    callee = t.prog.block(n.attrs["model"])
    if callee.kind != "model":
        raise Invalid("call of a train block")
    decl = callee.inputs()
    if len(args) != len(decl):
        raise Invalid("call arity")
    bound: dict[str, object] = {}
    for a, d in zip(args, decl):
        if not isinstance(a, Node):
            raise Invalid("model argument must be a tensor")
        if a.shape is None and a.op == "input" and a.attrs.get("derive", (None,))[0] == "arg":
            _resolve(a, d.dtype, d.shape)
        _need(a)
        if a.dtype != d.dtype or len(a.shape) != len(d.shape):
            raise Invalid("model argument type")
        for want, got in zip(d.shape, a.shape):
            if isinstance(want, int):
                if want != got:
                    raise Invalid("model argument dim")
            elif want in bound and bound[want] != got:
                raise Invalid("symbol bound twice")
            else:
                bound.setdefault(want, got)
    outs = dict(callee.outputs)
    fld = n.attrs.get("field")
    if fld is None:
        if len(outs) != 1:
            raise Invalid("a call of a model with several outputs needs a field")
        fld = next(iter(outs))
    if fld not in outs:
        raise Invalid("no such output")
    out = callee.get(outs[fld])

    def subst(d):
        return bound.get(d, d) if isinstance(d, str) else d

    shape = tuple(subst(d) for d in out.shape)
    n.dtype, n.shape, n.pos, n.prob = out.dtype, shape, out.pos, out.prob
    bn.extend(t.bn_uses.get(callee.name, []))
    owner |= t.owned.get(callee.name, set())


RULES = {op: _unary for op in UNARY_OPS}
RULES.update({op: _binary for op in BINARY_OPS})
RULES.update({"dense": _dense, "conv2d": _conv2d, "maxpool": _pool, "avgpool": _pool,
              "global_avgpool": _global_avgpool, "flatten": _flatten, "reshape": _reshape,
              "transpose": _transpose, "concat": _concat, "batchnorm": _batchnorm,
              "embedding": _embedding, "rnn": _recurrent, "lstm": _recurrent, "last": _last,
              "call": _call})
RULES.update({op: _loss for op in LOSS_OPS})


def infer(prog: Program, names: dict | None = None) -> Typer:
    """Type `prog` in place; with `names` (from `emit`), also its params."""
    if names is not None:
        for b in prog.blocks:
            for n in b.nodes:
                if n.op in LAYER_OPS:
                    n.attrs["_name"] = names[(b.name, n.id)]
    try:
        return Typer(prog).run()
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as e:
        raise Invalid(f"{type(e).__name__}: {e}") from None


# ---------------------------------------------------------------- printing

def fmt_num(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    r = repr(float(v))
    return r if ("." in r or "e" in r) else r + ".0"


def fmt_pair(v) -> str:
    return str(v) if isinstance(v, int) else f"({v[0]}, {v[1]})"


def fmt_ints(v) -> str:
    v = tuple(v)
    return f"({v[0]},)" if len(v) == 1 else "(" + ", ".join(str(d) for d in v) + ")"


def fmt_type(dtype: str, shape: tuple) -> str:
    return f"{dtype}[{', '.join(str(d) for d in shape)}]"


MARK, END = "\x01", "\x02"
ATOM, UNARY, PRODUCT, SUM, PIPE = 4, 3, 2, 1, 0


class Printer:
    def __init__(self, prog: Program, b: Block):
        self.prog, self.b = prog, b
        self.uses = b.uses()
        self.out_ids = {nid for _, nid in b.outputs}

    def bound(self, n: Node) -> bool:
        """Printed as a statement of its own (else inside its one consumer)."""
        return (n.op == "input" or not n.inline or self.uses.get(n.id, 0) != 1
                or n.id == self.b.loss or n.id in self.out_ids)

    def ref(self, a) -> tuple[str, int]:
        if not isinstance(a, str):
            return fmt_num(a), ATOM
        n = self.b.get(a)
        if self.bound(n):
            return n.id, ATOM
        return self.expr(n)

    def wrap(self, a, least: int) -> str:
        s, p = self.ref(a)
        return s if p >= least else f"({s})"

    def expr(self, n: Node) -> tuple[str, int]:
        op, a = n.op, n.attrs
        if op in BINARY_OPS:
            level = SUM if op in "+-" else PRODUCT
            return f"{self.wrap(n.args[0], level)} {op} {self.wrap(n.args[1], level + 1)}", level
        if op == "neg":
            return f"-{self.wrap(n.args[0], UNARY)}", UNARY
        if op == "call":
            args = ", ".join(self.ref(x)[0] for x in n.args)
            s = f"{a['model']}({args})"
            return (s + f".{a['field']}" if a.get("field") else s), ATOM
        rest = self.call_args(n)
        name = (MARK + n.id + END + op) if op in LAYER_OPS else op
        if n.pipe and n.args and isinstance(n.args[0], str):
            first = self.ref(n.args[0])[0]
            rest = [self.ref(x)[0] for x in n.args[1:]] + rest
            return (f"{first} |> {name}({', '.join(rest)})" if rest or op in LAYER_OPS
                    else f"{first} |> {name}"), PIPE
        first = [self.ref(x)[0] for x in n.args]
        return f"{name}({', '.join(first + rest)})", ATOM

    def call_args(self, n: Node) -> list[str]:
        """The arguments after the tensor ones, in the style the node asks."""
        op, a = n.op, n.attrs
        out: list[str] = []
        kw = a.get("_kw", ())      # attributes written as keywords even when positional works
        if op == "dense":
            out.append(str(a["units"]))
            if a.get("name"):
                out.append(f'name="{a["name"]}"')
            if not a.get("bias", True):
                out.append("bias=false")
        elif op == "conv2d":
            out += [str(a["filters"]), fmt_pair(a["kernel"])]
            for key, dflt in (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)):
                if key in a and (a[key] != dflt or key in kw):
                    out.append(f"{key}={fmt_pair(a[key])}")
            if not a.get("bias", True):
                out.append("bias=false")
            if a.get("name"):
                out.append(f'name="{a["name"]}"')
        elif op in ("maxpool", "avgpool"):
            out.append(fmt_pair(a["size"]))
            if a.get("stride") is not None:
                out.append(f"stride={fmt_pair(a['stride'])}")
            if a.get("padding", 0) != 0 or "padding" in kw:
                out.append(f"padding={fmt_pair(a.get('padding', 0))}")
        elif op in ("reshape", "transpose"):
            out.append(fmt_ints(a["dims"]))
        elif op == "concat":
            if "axis" in a:
                out.append(f"axis={a['axis']}")
        elif op == "batchnorm":
            for key in ("eps", "momentum"):
                if key in a:
                    out.append(f"{key}={fmt_num(a[key])}")
            if a.get("name"):
                out.append(f'name="{a["name"]}"')
        elif op == "dropout":
            if "p" in a:
                out.append(f"p={fmt_num(a['p'])}" if "p" in kw else fmt_num(a["p"]))
            if "seed" in a:
                out.append(f"seed={a['seed']}")
        elif op == "leaky_relu":
            if "slope" in a:
                out.append(f"slope={fmt_num(a['slope'])}" if "slope" in kw else fmt_num(a["slope"]))
        elif op == "embedding":
            out += [str(a["vocab"]), str(a["dim"])]
            if a.get("name"):
                out.append(f'name="{a["name"]}"')
        elif op in ("rnn", "lstm"):
            out.append(str(a["hidden"]))
            if a.get("name"):
                out.append(f'name="{a["name"]}"')
            if a.get("lengths"):
                out.append(f"lengths={a['lengths']}")
            if a.get("bidirectional") or "bidirectional" in kw:
                out.append(f"bidirectional={fmt_num(bool(a.get('bidirectional')))}")
        elif op == "last":
            if a.get("lengths"):
                out.append(a["lengths"])
        return out

    def lines(self) -> list[str]:
        b = self.b
        head = f"{'model' if b.kind == 'model' else 'train'} {b.name} {{"
        out = [head]
        outputs = {nid: [o for o, i in b.outputs if i == nid] for _, nid in b.outputs}
        for n in b.nodes:
            if n.op == "input":
                out.append(f"    input {n.id}: {fmt_type(n.dtype, n.shape)}")
                continue
            if not self.bound(n):
                continue
            text, _ = self.expr(n)
            if n.id == b.loss:
                out.append(f"    loss = {text}")
                continue
            onames = outputs.get(n.id, [])
            if onames and self.uses.get(n.id, 0) == 1 and n.inline:
                out.append(f"    output {onames[0]} = {text}")
                continue
            out.append(f"    {n.id} = {text}")
            for o in onames:
                out.append(f"    output {o} = {n.id}")
        for oname, nid in b.outputs:
            if b.get(nid).op == "input":
                out.append(f"    output {oname} = {nid}")
        if b.kind == "train":
            opt = b.optimizer
            hp = ", ".join(f"{k}={fmt_num(v)}" for k, v in opt["hp"].items())
            on = f" on {', '.join(opt['on'])}" if opt.get("on") else ""
            out.append(f"    optimizer = {opt['kind']}({hp}){on}")
        out.append("}")
        return out


def emit(prog: Program) -> tuple[str, dict]:
    """The program's `.dl` text, and {(block, node id): layer name}."""
    lines: list[str] = ["# generated by tests/fuzz"]
    names: dict[tuple[str, str], str] = {}
    for b in prog.blocks:
        lines.append("")
        calls: list[tuple[int, int, str]] = []
        for line in Printer(prog, b).lines():
            clean = ""
            i = 0
            while i < len(line):
                if line[i] == MARK:
                    j = line.index(END, i)
                    calls.append((len(lines), len(clean), line[i + 1:j]))
                    i = j + 1
                else:
                    clean += line[i]
                    i += 1
            lines.append(clean)
        counts: dict[str, int] = {}
        for _, _, nid in sorted(calls):
            n = b.get(nid)
            if n.attrs.get("name"):
                names[(b.name, nid)] = n.attrs["name"]
            else:
                k = counts.get(n.op, 0)
                counts[n.op] = k + 1
                names[(b.name, nid)] = f"{b.name}.{n.op}{k}"
        for n in b.nodes:   # layers printed nowhere: none (every node is printed)
            if n.op in LAYER_OPS and (b.name, n.id) not in names:
                raise Invalid(f"layer {n.id} not printed")
    return "\n".join(lines) + "\n", names


def expected_params(prog: Program, names: dict) -> dict[str, tuple[str, tuple]]:
    """name -> (dtype, shape) of every parameter the program declares."""
    return infer(prog, names).params


def concrete(shape: tuple, syms: dict) -> tuple:
    return tuple(syms[d] if isinstance(d, str) else d for d in shape)
