"""Random well-typed programs, NNSmith style: each model grows a small DAG by
applying an op to a value that suits it (the most recent one, mostly), the
op's attributes drawn at random and kept when the typing rules accept them.
Second operands of `+ - * /` and `concat` come from a value already there,
a new branch (a layer over an earlier value that gives the wanted shape),
the value itself (a value used twice), or a broadcast input.

A program has one to three models (dense, image, sequence or token
families, f32 or f64; a model may take another's output type as input, or
call another model), and one or two train blocks whose loss sums one or two
terms `loss_fn(model(...), target)` (cross_entropy, mse, bce), possibly
through two composed models (`d(g(z))`), with an `sgd` or `adam` optimizer,
sometimes `on` a subset of the models it calls.

`generate(seed, size)` is deterministic in its arguments.
"""
from __future__ import annotations

import random

from .ir import LAYER_OPS, OP_COST, RULES, Block, Invalid, Node, Program, Typer, cost, infer

SIZES = {
    # models, steps per model, train blocks; budgets of ir.cost (compile time)
    "small": dict(models=(1, 2), steps=(2, 5), trains=(1, 2), model_cost=1.6, train_cost=3.5,
                  total_cost=5.0),
    "normal": dict(models=(1, 3), steps=(2, 8), trains=(1, 2), model_cost=2.5, train_cost=5.5,
                   total_cost=9.0, deep=0.03),
}
ABBR = {"dense": "fc", "conv2d": "conv", "batchnorm": "bn", "embedding": "emb", "rnn": "rnn",
        "lstm": "lstm"}


class Builder:
    """Appends nodes to one block, typing each as it goes."""

    def __init__(self, gen: "Gen", block: Block):
        self.gen, self.b, self.r = gen, block, gen.r
        self.seen: dict[str, Node] = {n.id: n for n in block.nodes}
        self.owner: set[str] = set()
        self.bn: list = []

    def input(self, name: str, role: str, dtype: str | None = None, shape=None, derive=None) -> Node:
        attrs = {"role": role}
        if shape is not None:
            attrs.update(dtype=dtype, shape=tuple(shape))
        else:
            attrs["derive"] = derive
        n = Node(name, "input", [], attrs)
        k = sum(1 for m in self.b.nodes if m.op == "input")
        self.b.nodes.insert(k, n)
        self.gen.typer.input(self.b, n)
        self.seen[n.id] = n
        return n

    def drop_input(self, n: Node) -> None:
        self.b.nodes.remove(n)
        del self.seen[n.id]

    def add(self, op: str, args: list, attrs: dict | None = None, inline: bool | None = None,
            pipe: bool | None = None) -> Node | None:
        r = self.r
        n = Node(self.b.fresh_id(), op, list(args), dict(attrs or {}))
        n.inline = r.random() < 0.4 if inline is None else inline
        tensor_first = bool(args) and isinstance(args[0], Node)
        callish = op not in ("+", "-", "*", "/", "neg", "call")
        n.pipe = (r.random() < 0.25 if pipe is None else pipe) and tensor_first and callish
        n.args = [a.id if isinstance(a, Node) else a for a in args]
        self.b.nodes.append(n)
        over = (self.gen.over_budget(self.b) and not self.gen.deep
                and (op in OP_COST or op == "call"))   # elementwise ops are cheap
        self.b.nodes.pop()
        if over:
            return None
        saved = {m.id: (m.dtype, m.shape) for m in self.b.nodes if m.op == "input"}
        self.b.nodes.append(n)
        try:
            xs = [self.seen[a] if isinstance(a, str) else a for a in n.args]
            RULES[op](self.gen.typer, self.b, n, xs, self.seen, self.owner, self.bn)
            if n.dtype is None:
                raise Invalid("untyped")
        except Invalid:
            self.b.nodes.pop()
            for m in self.b.nodes:   # undo derived inputs typed by this failed use
                if m.op == "input" and m.id in saved:
                    m.dtype, m.shape = saved[m.id]
            return None
        self.seen[n.id] = n
        return n


class Gen:
    def __init__(self, seed: int, size: str = "normal"):
        self.r = random.Random(seed)
        self.cfg = SIZES[size]
        self.prog = Program()
        self.typer = Typer(self.prog)
        self.counter = 0
        self.deep = False       # building a long elementwise chain (no budget)

    # ------------------------------------------------------------ helpers

    def layer_name(self, op: str) -> str | None:
        """An explicit name (unique in the program), or None (automatic)."""
        if self.r.random() < 0.5:
            return None
        self.counter += 1
        return f"{ABBR[op]}{self.counter}"

    def size(self, common: list[int], big: list[int], p: float = 0.12) -> int:
        """A size: mostly small, sometimes past the compiler's tile and
        block sizes (ragged edges, several blocks, parallel splits)."""
        return self.r.choice(big if self.r.random() < p else common)

    def pick(self, values: list[Node]) -> Node:
        """Mostly the most recent value."""
        if self.r.random() < 0.8:
            return values[-1]
        return self.r.choice(values)

    def floats(self, bb: Builder) -> list[Node]:
        return [n for n in bb.b.nodes if n.dtype in ("f32", "f64") and n.shape is not None
                and n.op not in ("cross_entropy", "mse", "bce")
                and n.attrs.get("role") not in ("aux",)]

    def over_budget(self, b: Block) -> bool:
        cfg = self.cfg
        try:
            c = cost(self.prog, b)
            total = sum(cost(self.prog, x) for x in self.prog.blocks)
        except Invalid:
            return False
        return c > cfg["model_cost" if b.kind == "model" else "train_cost"] or total > cfg["total_cost"]

    # ------------------------------------------------------------ program

    def program(self) -> Program:
        r, cfg = self.r, self.cfg
        n_models = r.randint(*cfg["models"])
        for i in range(n_models):
            try:
                self.model(f"m{i}", first=(i == 0))
            except Invalid:
                if i == 0:
                    raise
                self.prog.blocks = [b for b in self.prog.blocks if b.name != f"m{i}"]
                break
        trainable = [m for m in self.prog.models if not m.infer_only]
        for k in range(r.randint(*cfg["trains"])):
            for _ in range(6):
                if self.train(f"fit{k}", trainable):
                    break
        return self.prog

    def model(self, name: str, first: bool) -> None:
        r = self.r
        b = Block(name, "model")
        b.infer_only = not first and r.random() < 0.15
        self.prog.blocks.append(b)
        bb = Builder(self, b)
        others = [m for m in self.prog.models if m is not b and not m.infer_only]
        choice = r.random()
        dtype = "f64" if r.random() < 0.3 else "f32"
        start = None
        if others and choice < 0.2:
            # composes: the input is another model's output type
            src = r.choice(others)
            oname, nid = r.choice(src.outputs)
            start = bb.input("z", "x", derive=("output", src.name, oname))
        elif others and choice < 0.35:
            # calls another model, then goes on
            src = r.choice(others)
            args = [bb.input(f"{i.id}", i.attrs["role"], i.dtype, i.shape) for i in src.inputs()]
            fld = r.choice(src.outputs)[0] if (len(src.outputs) > 1 or r.random() < 0.3) else None
            start = bb.add("call", args, {"model": src.name, "field": fld})
        if start is None:
            start = self.family_input(bb, dtype)
        if r.random() < self.cfg.get("deep", 0.0):
            self.chain(bb, r.randint(30, 200))
        steps = r.randint(*self.cfg["steps"])
        for _ in range(steps):
            for _ in range(8):
                if self.step(bb):
                    break
        if not any(n.op in LAYER_OPS or n.op == "call" for n in b.nodes):
            for _ in range(8):
                v = self.pick(self.floats(bb))
                if self.layer(bb, v):
                    break
        vals = [n for n in self.floats(bb) if n.op != "input"]
        if not vals:
            vals = [bb.add("tanh", [self.floats(bb)[-1]])]
        outs = [vals[-1]]
        uses = b.uses()
        dangling = [n for n in vals[:-1] if not uses.get(n.id)]
        if dangling and r.random() < 0.7:
            # the dangling value with the most layers behind it
            def depth(n):
                seen, todo = set(), [n.id]
                while todo:
                    m = b.get(todo.pop())
                    if m.id not in seen:
                        seen.add(m.id)
                        todo += [a for a in m.args if isinstance(a, str)]
                return sum(1 for i in seen if b.get(i).op in LAYER_OPS)
            outs.append(max(dangling, key=depth))
        elif len(vals) > 1 and r.random() < 0.2:
            outs.append(r.choice(vals[:-1]))
        roll = r.random()
        if roll < 0.06:
            outs.append(outs[0])                        # one value, two outputs
        elif roll < 0.1:
            x = next(n for n in b.nodes if n.op == "input")
            if x.dtype != "i32":
                outs.append(x)                          # an input, as it came
        elif roll < 0.18:
            x = self.floats(bb)[0]                      # a view of an input
            if x.op == "input":
                v = self.r.choice([self.flatten, self.transpose, self.reshape])(bb, x)
                if v is not None:
                    outs.append(v)
        if r.random() < 0.08 and len(outs[0].shape) == 2:
            loss = self.loss_of(bb, outs[0])            # a model that outputs its loss
            if loss is not None:
                outs = [loss] + (outs[1:] if r.random() < 0.5 else [])
        b.outputs = [(f"o{k}", n.id) for k, n in enumerate(outs)]
        self.typer.block(b)

    def chain(self, bb: Builder, depth: int) -> None:
        """A deep program: a long chain of cheap elementwise ops (one fused
        expression, or many kernels), each reading the last value or two."""
        r = self.r
        self.deep = True
        vals = [self.floats(bb)[-1]]
        for _ in range(depth):
            v = vals[-1]
            roll = r.random()
            if roll < 0.4:
                out = bb.add(r.choice(["tanh", "sigmoid", "relu", "leaky_relu", "neg"]), [v])
            elif roll < 0.75:
                out = bb.add(r.choice(["+", "-", "*"]), [v, r.choice([0.9, 0.5, 1.1, 0.1])])
            else:
                out = bb.add(r.choice(["+", "-", "*"]), [v, r.choice(vals[-4:])])
            if out is not None:
                out.inline = r.random() < 0.8
                vals.append(out)
        self.deep = False

    def family_input(self, bb: Builder, dtype: str) -> Node:
        x = self._family_input(bb, dtype)
        if x.op == "input" and self.r.random() < 0.15:
            x.attrs["scale"] = self.r.choice([10.0, 100.0, 0.01])   # large logits, tiny values
        return x

    def batch(self):
        """The batch dim: the symbol, or (rarely) a fixed size."""
        return "batch" if self.r.random() < 0.93 else self.r.choice([1, 2, 5])

    def _family_input(self, bb: Builder, dtype: str) -> Node:
        r = self.r
        fam = r.choice(["vec", "vec", "img", "img", "seq", "tok"])
        if fam == "vec":
            return bb.input("x", "x", dtype, (self.batch(), self.size([1, 2, 3, 4, 5, 7, 8, 12], [33, 64, 130])))
        if fam == "img":
            shape = (self.batch(), self.size([1, 2, 3, 4], [8, 16]), self.size(list(range(1, 10)), [12, 17, 20]),
                     self.size(list(range(1, 10)), [12, 17, 20]))
            return bb.input("x", "x", dtype, shape)
        time = "time" if r.random() < 0.8 else r.randint(1, 6)
        if fam == "seq":
            return bb.input("x", "x", dtype, (self.batch(), time, self.size([1, 2, 3, 5], [16, 33])))
        shape = r.choice([("batch", time), ("batch", time), ("batch",)])
        tok = bb.input("tok", "tokens", "i32", shape)
        e = bb.add("embedding", [tok], {"vocab": r.choice([1, 2, 5, 11]), "dim": r.choice([1, 2, 3, 4, 6]),
                                        "name": self.layer_name("embedding")})
        if e is None:
            raise Invalid("no budget left for a model")
        return e

    # ------------------------------------------------------------ steps

    def step(self, bb: Builder) -> bool:
        r = self.r
        vals = self.floats(bb)
        v = self.pick(vals)
        rank = len(v.shape)
        acts = [("unary", 3), ("scalar", 1), ("binary", 2), ("concat", 1), ("layer", 4)]
        if rank == 4:
            acts += [("pool", 2), ("gap", 0.5), ("flatten", 1), ("bn", 1), ("transpose", 0.7),
                     ("reshape", 0.7)]
        elif rank == 3:
            acts += [("last", 1.5), ("transpose", 0.5), ("flatten", 0.5), ("reshape", 0.5)]
        elif rank == 2:
            acts += [("reshape", 0.8)]
        kinds, weights = zip(*acts)
        act = r.choices(kinds, weights)[0]
        return bool(getattr(self, act)(bb, v))

    def unary(self, bb: Builder, v: Node):
        r = self.r
        op = r.choice(["relu", "relu", "sigmoid", "tanh", "leaky_relu", "softmax", "log_softmax",
                       "exp", "log", "sqrt", "dropout", "neg"])
        attrs: dict = {}
        if op == "exp" and v.op not in ("tanh", "sigmoid", "softmax", "log_softmax") and r.random() < 0.7:
            v = bb.add("tanh", [v]) or v
        if op in ("log", "sqrt") and not v.pos:
            v = bb.add(r.choice(["sigmoid", "exp", "softmax"]), [v])
            if v is None:
                return None
        if op == "leaky_relu" and r.random() < 0.7:
            attrs["slope"] = r.choice([0.2, 0.01, 0.1, 0.5])
            if r.random() < 0.5:
                attrs["_kw"] = ("slope",)
        if op == "dropout":
            p = r.choice([0.3, 0.5]) if bb.b.infer_only and r.random() < 0.6 else 0.0
            if p != 0.5 or r.random() < 0.5:    # the default p is 0.5
                attrs["p"] = p
                if r.random() < 0.5:
                    attrs["_kw"] = ("p",)
            if r.random() < 0.3:
                attrs["seed"] = r.randint(0, 9)
        return bb.add(op, [v], attrs)

    def scalar(self, bb: Builder, v: Node):
        r = self.r
        c = r.choice([0.5, 2, 1.5, 3.0, 0.25, 1])
        op = r.choice(["+", "-", "*", "/"])
        args = [v, c] if r.random() < 0.6 or op == "/" else [c, v]
        return bb.add(op, args)

    def positive(self, bb: Builder, v: Node):
        """A positive value made from v, kept away from 0 (a divisor)."""
        s = bb.add(self.r.choice(["sigmoid", "sigmoid", "exp"]), [bb.add("tanh", [v]) or v])
        return bb.add("+", [s, self.r.choice([0.5, 1])]) if s is not None else None

    def binary(self, bb: Builder, v: Node):
        r = self.r
        op = r.choice(["+", "-", "*", "/"])
        if r.random() < 0.3:
            other = self.broadcast_partner(bb, v)
        else:
            other = self.partner(bb, v)
        if other is None:
            return None
        if op == "/":
            other = self.positive(bb, other)
            if other is None:
                return None
        args = [v, other] if r.random() < 0.6 or op == "/" else [other, v]
        return bb.add(op, args)

    def partner(self, bb: Builder, v: Node, axis: int | None = None):
        """A value of v's shape (but any size along `axis`)."""
        r = self.r
        vals = self.floats(bb)

        def fits(n: Node) -> bool:
            if n is v or n.dtype != v.dtype or len(n.shape) != len(v.shape):
                return False
            return all(a == b for i, (a, b) in enumerate(zip(n.shape, v.shape)) if i != axis)

        ready = [n for n in vals if fits(n)]
        if ready and r.random() < 0.4:
            return r.choice(ready)
        if axis is None and r.random() < 0.1:
            return v              # v op v: one value, both operands
        roll = r.random()
        if roll < 0.3 and (axis is None or isinstance(v.shape[axis], int)):
            return bb.add(r.choice(["sigmoid", "tanh", "relu", "neg"]), [v])
        size = None if axis is None else r.choice([1, 2, 3, 4])
        rank = len(v.shape)
        srcs = [n for n in vals if n.dtype == v.dtype and len(n.shape) == rank]
        r.shuffle(srcs)
        for src in srcs[:4]:
            if rank == 2 and axis in (None, 1, -1) and isinstance(src.shape[1], int):
                out = bb.add("dense", [src], {"units": size or v.shape[1],
                                              "name": self.layer_name("dense")})
            elif rank == 4 and axis in (None, 1) and src.shape[2:] == v.shape[2:]:
                k = r.choice([1, 3])
                out = bb.add("conv2d", [src], {"filters": size or v.shape[1], "kernel": k,
                                               "padding": k // 2, "name": self.layer_name("conv2d")})
            elif rank == 3 and axis in (None, 2) and src.shape[1] == v.shape[1] and isinstance(src.shape[2], int):
                width = size or v.shape[2]
                op = r.choice(["rnn", "lstm"])
                attrs = {"hidden": width, "name": self.layer_name(op)}
                if width % 2 == 0 and r.random() < 0.3:
                    attrs.update(hidden=width // 2, bidirectional=True)
                out = bb.add(op, [src], attrs)
            else:
                continue
            if out is not None and fits(out):
                return out
        if axis is not None and isinstance(v.shape[axis], int):
            return v   # concat(v, v)
        return None

    def broadcast_partner(self, bb: Builder, v: Node):
        r = self.r
        rank = len(v.shape)
        fixed_tail = 0
        for d in reversed(v.shape):
            if not isinstance(d, int):
                break
            fixed_tail += 1
        if fixed_tail and r.random() < 0.5:
            k = r.randint(1, min(fixed_tail, 3))
            mask = tuple(r.random() < 0.4 for _ in range(k))
            name = f"s{sum(1 for n in bb.b.nodes if n.attrs.get('role') == 'aux')}"
            return bb.input(name, "aux", derive=("bcast", k, mask))
        src_vals = [n for n in self.floats(bb) if n.dtype == v.dtype and len(n.shape) == rank]
        src = r.choice(src_vals) if src_vals else v
        if rank == 2 and isinstance(src.shape[1], int):
            return bb.add("dense", [src], {"units": 1, "name": self.layer_name("dense")})
        if rank == 4 and src.shape[2:] == v.shape[2:] and isinstance(src.shape[1], int):
            if r.random() < 0.5:
                return bb.add("conv2d", [src], {"filters": 1, "kernel": 1, "name": self.layer_name("conv2d")})
            c = bb.add("conv2d", [src], {"filters": v.shape[1], "kernel": 1, "name": self.layer_name("conv2d")})
            return bb.add("global_avgpool", [c]) if c is not None else None
        if rank == 4 and src.shape[1] == v.shape[1]:
            return bb.add("global_avgpool", [src])
        if rank == 3 and src.shape[1] == v.shape[1] and isinstance(src.shape[2], int):
            return bb.add(r.choice(["rnn", "lstm"]), [src], {"hidden": 1, "name": self.layer_name("rnn")})
        return None

    def concat(self, bb: Builder, v: Node):
        r = self.r
        rank = len(v.shape)
        axes = [a for a in range(1, rank) if isinstance(v.shape[a], int)]
        if not axes:
            return None
        axis = r.choice(axes)
        other = self.partner(bb, v, axis)
        if other is None:
            return None
        attrs = {}
        if axis != 1 or r.random() < 0.5:
            attrs["axis"] = axis - rank if r.random() < 0.3 else axis
        args = [v, other] if r.random() < 0.5 else [other, v]
        return bb.add("concat", args, attrs)

    def layer(self, bb: Builder, v: Node):
        r = self.r
        rank = len(v.shape)
        if rank == 2:
            return self.dense(bb, v)
        if rank == 4:
            return self.conv(bb, v)
        if rank == 3:
            return self.recurrent(bb, v)
        return None

    def dense(self, bb: Builder, v: Node):
        r = self.r
        if not isinstance(v.shape[1], int):
            return None
        shared = [n for m in self.prog.blocks for n in m.nodes
                  if n.op == "dense" and n.attrs.get("name") and n.dtype == v.dtype
                  and n.args and self.in_features(m, n) == v.shape[1]]
        if shared and r.random() < 0.25:
            src = r.choice(shared)
            attrs = {"units": src.attrs["units"], "name": src.attrs["name"]}
            if not src.attrs.get("bias", True):
                attrs["bias"] = False
            return bb.add("dense", [v], attrs)
        attrs = {"units": self.size([1, 2, 3, 4, 5, 6, 8, 10, 16], [33, 64, 130]),
                 "name": self.layer_name("dense")}
        if r.random() < 0.2:
            attrs["bias"] = False
        return bb.add("dense", [v], attrs)

    @staticmethod
    def in_features(block: Block, n: Node):
        src = block.get(n.args[0])
        return src.shape[1] if src.shape else None

    def conv(self, bb: Builder, v: Node):
        r = self.r
        c = v.shape[1]
        if not isinstance(c, int):
            return None
        for _ in range(6):
            groups = 1
            if r.random() < 0.25:
                groups = r.choice([d for d in range(1, c + 1) if c % d == 0])
            filters = groups * r.choice([1, 2, 3]) if groups > 1 else self.size([1, 2, 3, 4, 6, 8], [16, 33])
            kernel = r.choice([1, 2, 3, 3, 3, (1, 3), (3, 2), (2, 1)])
            attrs = {"filters": filters, "kernel": kernel, "name": self.layer_name("conv2d")}
            if r.random() < 0.4:
                attrs["stride"] = r.choice([1, 2, (2, 1), (1, 2)])
            if r.random() < 0.5:
                attrs["padding"] = r.choice([0, 1, 2, (1, 0), (0, 1)])
            if r.random() < 0.2:
                attrs["dilation"] = r.choice([1, 2, (2, 1)])
            if groups > 1 or r.random() < 0.1:
                attrs["groups"] = groups
            if r.random() < 0.2:
                attrs["bias"] = False
            out = bb.add("conv2d", [v], attrs)
            if out is not None:
                return out
        return None

    def recurrent(self, bb: Builder, v: Node):
        r = self.r
        if not isinstance(v.shape[2], int):
            return None
        op = r.choice(["rnn", "lstm"])
        attrs = {"hidden": self.size([1, 2, 3, 4, 6], [20, 36, 65]), "name": self.layer_name(op)}
        if r.random() < 0.3:
            attrs["bidirectional"] = True
        elif r.random() < 0.1:
            attrs["bidirectional"] = False
            attrs["_kw"] = ("bidirectional",)
        return self.with_lengths(bb, op, v, attrs, 0.4)

    def with_lengths(self, bb: Builder, op: str, v: Node, attrs: dict, p: float):
        """op(v, attrs), with lengths=n (made when missing) with probability p."""
        made = None
        if self.r.random() < p:
            n = next((n for n in bb.b.nodes if n.op == "input" and n.attrs.get("role") == "lengths"), None)
            if n is None:
                n = made = bb.input("n", "lengths", "i32", ("batch",))
            attrs["lengths"] = n.id
        out = bb.add(op, [v], attrs)
        if out is None and made is not None:
            bb.drop_input(made)
        return out

    def last(self, bb: Builder, v: Node):
        return self.with_lengths(bb, "last", v, {}, 0.5)

    def pool(self, bb: Builder, v: Node):
        r = self.r
        for _ in range(5):
            attrs = {"size": r.choice([1, 2, 2, 3, (2, 1), (1, 2), (3, 2)])}
            if r.random() < 0.5:
                attrs["stride"] = r.choice([1, 2, 3, (1, 2)])
            if r.random() < 0.4:
                attrs["padding"] = r.choice([0, 1, (1, 0), (0, 1)])
            out = bb.add(r.choice(["maxpool", "avgpool"]), [v], attrs)
            if out is not None:
                return out
        return None

    def gap(self, bb: Builder, v: Node):
        return bb.add("global_avgpool", [v])

    def flatten(self, bb: Builder, v: Node):
        return bb.add("flatten", [v])

    def bn(self, bb: Builder, v: Node):
        r = self.r
        attrs = {"name": self.layer_name("batchnorm")}
        if r.random() < 0.3:
            attrs["eps"] = r.choice([1e-5, 1e-3, 0.01])
        if r.random() < 0.3:
            attrs["momentum"] = r.choice([0.1, 0.5, 0.9, 1.0, 0.0])
        return bb.add("batchnorm", [v], attrs)

    def transpose(self, bb: Builder, v: Node):
        r = self.r
        rest = list(range(1, len(v.shape)))
        r.shuffle(rest)
        return bb.add("transpose", [v], {"dims": (0, *rest)})

    def reshape(self, bb: Builder, v: Node):
        r = self.r
        if not all(isinstance(d, int) for d in v.shape[1:]):
            return None
        total = 1
        for d in v.shape[1:]:
            total *= d
        rank = r.choice([2, 3, 3, 4, 4])
        dims = []
        left = total
        for _ in range(rank - 2):
            divs = [d for d in range(1, left + 1) if left % d == 0]
            d = r.choice(divs)
            dims.append(d)
            left //= d
        dims.append(left)
        return bb.add("reshape", [v], {"dims": (-1, *dims)})

    # ------------------------------------------------------------ train

    def train(self, name: str, trainable: list[Block]) -> bool:
        r = self.r
        if not trainable:
            return False
        b = Block(name, "train")
        self.prog.blocks.append(b)
        bb = Builder(self, b)
        terms = []
        dtype = None
        for _ in range(r.choice([1, 1, 2])):
            for _ in range(5):
                t = self.term(bb, trainable, dtype)
                if t is not None:
                    terms.append(t)
                    dtype = t.dtype
                    break
        if not terms:
            self.prog.blocks.remove(b)
            return False
        loss = terms[0]
        for t in terms[1:]:
            if r.random() < 0.5:
                t = bb.add("*", [t, r.choice([0.5, 2, 0.1])]) or t
            loss = bb.add(r.choice(["+", "+", "-"]), [loss, t]) or loss
        b.loss = loss.id
        used = sorted({n.attrs["model"] for n in b.nodes if n.op == "call"})
        on = []
        if len(used) > 1 and r.random() < 0.5:
            on = sorted(r.sample(used, r.randint(1, len(used) - 1)))
        elif r.random() < 0.15:
            on = used
        b.optimizer = self.optimizer(on)
        try:
            self.typer.block(b)
        except Invalid:
            self.prog.blocks.remove(b)
            return False
        return True

    def optimizer(self, on: list[str]) -> dict:
        r = self.r
        hp: dict = {}
        if r.random() < 0.55:
            kind = "sgd"
            hp["lr"] = r.choice([0.1, 0.05, 0.01, 0.2])
            if r.random() < 0.5:
                hp["momentum"] = r.choice([0.9, 0.5])
            if r.random() < 0.3:
                hp["weight_decay"] = r.choice([0.01, 0.1])
        else:
            kind = "adam"
            hp["lr"] = r.choice([0.01, 0.003, 0.001])
            if r.random() < 0.3:
                hp["beta1"] = r.choice([0.5, 0.8])
            if r.random() < 0.3:
                hp["beta2"] = r.choice([0.99, 0.9])
            if r.random() < 0.2:
                hp["eps"] = 1e-6
            if r.random() < 0.2:
                hp["weight_decay"] = r.choice([0.01, 0.1])
        if r.random() < 0.25:
            hp["clip"] = r.choice([0.5, 2.0, 100.0, 0.01, 1e-4])
        return {"kind": kind, "hp": hp, "on": on}

    def call(self, bb: Builder, m: Block, first_arg: Node | None = None,
             fld: str | None = None) -> Node | None:
        """m(...) with fresh train inputs for its arguments (or first_arg)."""
        r = self.r
        args, made = [], []
        for i, inp in enumerate(m.inputs()):
            if i == 0 and first_arg is not None:
                args.append(first_arg)
                continue
            k = sum(1 for n in bb.b.nodes if n.op == "input")
            a = bb.input(f"a{k}", inp.attrs.get("role", "x"), derive=("arg",))
            made.append(a)
            args.append(a)
        if fld is None and (len(m.outputs) > 1 or r.random() < 0.3):
            fld = r.choice(m.outputs)[0]
        out = bb.add("call", args, {"model": m.name, "field": fld})
        if out is None:
            for a in made:
                bb.drop_input(a)
        return out

    def term(self, bb: Builder, trainable: list[Block], dtype: str | None) -> Node | None:
        r = self.r
        m = r.choice(trainable)
        mark = ([n.id for n in bb.b.nodes], len(bb.bn))
        # compose: a model whose input is m's output type
        nexts = [d for d in trainable if d.inputs() and d.inputs()[0].attrs.get("derive")
                 and d.inputs()[0].attrs["derive"][:2] == ("output", m.name)]
        d = r.choice(nexts) if nexts and r.random() < 0.6 else None
        fld = d.inputs()[0].attrs["derive"][2] if d is not None else None
        if fld is not None and len(m.outputs) == 1 and r.random() < 0.5:
            fld = None
        pred = self.call(bb, m, fld=fld)
        if pred is not None and d is not None:
            pred = self.call(bb, d, pred)
        if pred is None or (dtype is not None and pred.dtype != dtype):
            self.rollback(bb, mark)
            return None
        if r.random() < 0.2:
            pred = bb.add(r.choice(["tanh", "*"]), [pred] if r.random() < 0.5 else [pred, 0.5]) or pred
        if len(pred.shape) == 2 and isinstance(pred.shape[1], int) and r.random() < 0.12:
            # a layer of the train block's own
            pred = bb.add("dense", [pred], {"units": r.choice([1, 2, 3]), "name": self.layer_name("dense")}) or pred
        out = pred if pred.shape == () else self.loss_of(bb, pred)
        keys = [x for x in bb.bn]
        if out is None or len(set(keys)) != len(keys):
            self.rollback(bb, mark)
            return None
        return out

    def loss_of(self, bb: Builder, pred: Node) -> Node | None:
        """A loss comparing pred with a new target input."""
        r = self.r
        kind = r.choice(["mse", "bce", "cross_entropy", "cross_entropy"])
        if kind == "cross_entropy" and (len(pred.shape) != 2 or not isinstance(pred.shape[1], int)):
            kind = "mse"
        k = sum(1 for n in bb.b.nodes if n.op == "input")
        if kind == "bce" and not pred.prob:
            pred = bb.add("sigmoid", [pred])
            if pred is None:
                return None
        role = {"bce": "prob", "mse": "target", "cross_entropy": "labels"}[kind]
        tgt = bb.input(f"t{k}", role, derive=("target",))
        out = bb.add(kind, [pred, tgt])
        if out is None:
            bb.drop_input(tgt)
        return out

    def rollback(self, bb: Builder, mark) -> None:
        keep = set(mark[0])
        bb.b.nodes = [n for n in bb.b.nodes if n.id in keep]
        bb.seen = {k: v for k, v in bb.seen.items() if k in keep}
        del bb.bn[mark[1]:]


def generate(seed: int, size: str = "normal") -> Program:
    """A valid program (typed without names), deterministic in seed and size."""
    for attempt in range(20):
        gen = Gen(seed * 1000 + attempt, size)
        try:
            prog = gen.program()
        except Invalid:
            continue
        if prog.trains or attempt >= 10:
            try:
                infer(prog)
            except Invalid:
                continue
            return prog
    raise RuntimeError(f"no program for seed {seed}")
