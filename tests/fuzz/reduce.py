"""Delta debugging of a failing program: greedy, over program edits that
keep it well typed, from the coarsest (drop a train block, a model, an
output) to the finest (drop a node, simplify an attribute, halve a size),
restarting after each edit that keeps the failure. A candidate the typing
rules reject is dropped without compiling, so each step costs one compile.

`still_fails(candidate) -> bool` decides; the caller makes it check only
the group of checks that failed, for the same kind of failure.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from .ir import LAYER_OPS, Block, Invalid, Node, Program, emit, infer


OP_WEIGHT = {"lstm": 2, "rnn": 1, "maxpool": 1}
SIMPLE_UNARY = ("exp", "log", "sqrt", "softmax", "log_softmax", "sigmoid", "leaky_relu", "neg",
                "dropout", "relu")


def valid(prog: Program) -> bool:
    try:
        infer(prog)
        _, names = emit(prog)
        infer(prog, names)
        return True
    except Invalid:
        return False


def size(prog: Program) -> tuple:
    """What the reducer minimises: blocks, nodes and outputs, then the sum of
    sizes and attributes."""
    nodes = sum(len(b.nodes) + len(b.outputs) + 1 for b in prog.blocks)
    total = 0
    for b in prog.blocks:
        for n in b.nodes:
            total += len([k for k in n.attrs if k not in ("_name", "role", "derive", "dtype", "shape")])
            total += OP_WEIGHT.get(n.op, 1 if n.op in SIMPLE_UNARY else 0)
            for v in n.attrs.values():
                if isinstance(v, bool):
                    total += v
                elif isinstance(v, int):
                    total += abs(v)
                elif isinstance(v, tuple) and all(isinstance(e, int) for e in v):
                    total += sum(abs(e) for e in v)
            if n.op == "input" and "shape" in n.attrs:
                total += sum(d for d in n.attrs["shape"] if isinstance(d, int))
        if b.optimizer:
            total += len(b.optimizer["hp"]) + len(b.optimizer.get("on") or [])
    return nodes, total


def replace_refs(b: Block, old: str, new: str) -> None:
    for n in b.nodes:
        n.args = [new if a == old else a for a in n.args]
        if n.attrs.get("lengths") == old:
            n.attrs["lengths"] = new
    b.outputs = [(o, new if i == old else i) for o, i in b.outputs]
    if b.loss == old:
        b.loss = new


def prune(prog: Program) -> Program:
    """Drop the train blocks' inputs nothing reads any more (a model's stay:
    they are its signature; `drop_model_input` removes one with its
    arguments)."""
    for b in prog.trains:
        uses = b.uses()
        b.nodes = [n for n in b.nodes if n.op != "input" or uses.get(n.id)]
    return prog


def drop_model_input(prog: Program, m: Block, idx: int) -> None:
    inp = m.inputs()[idx]
    m.nodes.remove(inp)
    for b in prog.blocks:
        for n in b.nodes:
            if n.op == "call" and n.attrs["model"] == m.name:
                del n.args[idx]


def candidates(prog: Program) -> Iterator[Program]:
    # whole blocks
    for b in prog.blocks:
        p = prog.clone()
        p.blocks = [x for x in p.blocks if x.name != b.name]
        yield prune(p)
    # outputs
    for b in prog.models:
        if len(b.outputs) > 1:
            for k in range(len(b.outputs)):
                p = prog.clone()
                pb = p.block(b.name)
                gone = pb.outputs.pop(k)[0]
                for x in p.blocks:
                    for n in x.nodes:
                        if n.op == "call" and n.attrs["model"] == b.name and n.attrs.get("field") == gone:
                            n.attrs["field"] = pb.outputs[0][0]
                yield p
    # a loss term
    for b in prog.trains:
        loss = b.get(b.loss)
        for a in loss.args:
            if isinstance(a, str) and loss.op in ("+", "-", "*", "/"):
                p = prog.clone()
                p.block(b.name).loss = a
                yield prune(drop_dead(p))
    # every dead node at once, then nodes one by one (the last first)
    p = drop_dead(prog.clone())
    if size(p) != size(prog):
        yield p
    for b in prog.blocks:
        for n in reversed(b.nodes):
            if n.op == "input" or n.id == b.loss:
                continue
            for a in dict.fromkeys(x for x in n.args if isinstance(x, str)):
                p = prog.clone()
                pb = p.block(b.name)
                replace_refs(pb, n.id, a)
                pb.nodes = [x for x in pb.nodes if x.id != n.id]
                yield prune(drop_dead(p))
    # model inputs nothing reads
    for m in prog.models:
        uses = m.uses()
        for k, inp in enumerate(m.inputs()):
            if not uses.get(inp.id):
                p = prog.clone()
                drop_model_input(p, p.block(m.name), k)
                yield prune(p)
    # optimizer
    for b in prog.trains:
        opt = b.optimizer
        if opt.get("on"):
            p = prog.clone()
            p.block(b.name).optimizer["on"] = []
            yield p
        for k in opt["hp"]:
            if k != "lr":
                p = prog.clone()
                del p.block(b.name).optimizer["hp"][k]
                yield p
        if opt["kind"] == "adam":
            p = prog.clone()
            p.block(b.name).optimizer.update(kind="sgd", hp={"lr": 0.1})
            yield p
    # attributes and sizes
    for b in prog.blocks:
        for n in b.nodes:
            for change in simplifications(n):
                p = prog.clone()
                change(p.block(b.name).get(n.id))
                yield p
    # printing style: plain statements
    for b in prog.blocks:
        for n in b.nodes:
            if n.inline or n.pipe:
                p = prog.clone()
                m = p.block(b.name).get(n.id)
                m.inline = m.pipe = False
                yield p


def drop_dead(prog: Program) -> Program:
    for b in prog.blocks:
        while True:
            uses = b.uses()
            dead = [n for n in b.nodes if n.op != "input" and not uses.get(n.id)]
            if not dead:
                break
            b.nodes = [n for n in b.nodes if n not in dead]
    return prog


def simplifications(n: Node) -> list[Callable[[Node], None]]:
    out: list[Callable[[Node], None]] = []
    a = n.attrs

    def setter(key, value):
        def f(m: Node):
            if value is None:
                m.attrs.pop(key, None)
            else:
                m.attrs[key] = value
        return f

    def smaller(v):
        if isinstance(v, tuple):
            return [tuple(max(1, e // 2) for e in v), v[0]] if v != (1, 1) else []
        return sorted({1, max(1, v // 2), v - 1} - {v}) if v > 1 else []

    if n.op in LAYER_OPS and a.get("name"):
        out.append(setter("name", None))
    for key in ("stride", "padding", "dilation", "groups", "bidirectional", "lengths", "eps",
                "momentum", "slope", "seed", "_kw", "axis"):
        if key in a and key != "axis":
            out.append(setter(key, None))
    if "axis" in a and a["axis"] < 0:
        out.append(setter("axis", None))
    if a.get("bias") is False:
        out.append(setter("bias", None))
    if n.op == "lstm":
        out.append(lambda m: setattr(m, "op", "rnn"))
    if n.op == "maxpool":
        out.append(lambda m: setattr(m, "op", "avgpool"))
    for key in ("units", "filters", "hidden", "vocab", "dim", "kernel", "size"):
        if key in a:
            for v in smaller(a[key]):
                out.append(setter(key, v))
    if n.op == "input" and "shape" in a:
        for i, d in enumerate(a["shape"]):
            if isinstance(d, int):
                for v in smaller(d):
                    def f(m, i=i, v=v):
                        s = list(m.attrs["shape"])
                        s[i] = v
                        m.attrs["shape"] = tuple(s)
                    out.append(f)
    if n.op in SIMPLE_UNARY:
        out.append(lambda m: (setattr(m, "op", "tanh"), m.attrs.clear()))
    return out


def reduce(prog: Program, still_fails: Callable[[Program], bool], seconds: float,
           log: Callable[[str], None] = lambda s: None) -> tuple[Program, int]:
    """The smallest variant of prog found within `seconds` that still fails;
    and how many candidates were tried (compiled)."""
    best = prog.clone()
    deadline = time.monotonic() + seconds
    tried = 0
    progress = True
    while progress and time.monotonic() < deadline:
        progress = False
        for cand in candidates(best):
            if time.monotonic() > deadline:
                break
            if size(cand) >= size(best) and not _style_only(cand, best):
                continue
            if not valid(cand):
                continue
            tried += 1
            if still_fails(cand):
                log(f"  reduced to {size(cand)}")
                best = cand
                progress = True
                break
    return best, tried


def _style_only(a: Program, b: Program) -> bool:
    """a differs from b only in printing (kept when it prints plainer)."""
    style = lambda p: sum(n.inline + n.pipe for x in p.blocks for n in x.nodes)
    return size(a) == size(b) and style(a) < style(b)
