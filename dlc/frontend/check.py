"""AST to graph IR: names, types, shapes and parameters, with every user
error reported at its source span.

Each `model` becomes a Function of kind 'model' and each `train` block one of
kind 'train' (outputs {'loss': ...} and an OptimizerSpec). Ops come from
`dlc.ops.REGISTRY`; each call binds its arguments with `bind` and asks the op
to build itself, so shape rules live with the ops and this module only turns
their `OpError`s into located diagnostics.

Model calls are inlined: the callee's body is evaluated again in a fresh
environment whose inputs are the call's arguments (checked against the
declared types, a symbol binding to one dim per call). Each model is also
compiled on its own first; when that fails its calls fail silently, so one
mistake is reported once. Recursion is reported at the call that closes the
cycle.

Automatic layer names: a layer (an op with `owns_params`, e.g. dense) called
without `name=` is named `<block>.<op><k>`, where k counts that op's unnamed
calls in the block's body in source order from 0: the second unnamed dense of
model `moons` is `moons.dense1`, its parameters `moons.dense1.weight` and
`moons.dense1.bias`. The name depends only on where the call is written, so a
model called twice, or from two train blocks, shares its parameters.

Error recovery: a failed statement binds its target to a poison value, and
uses of poison fail without a new message, so independent errors are all
reported (up to MAX_ERRORS) and dependent ones are not.

No Python recursion: expressions nest and models call models as deep as the
program text makes them, so the evaluating methods are coroutines. Where one
would call another, it yields the callee's generator; `_drive` runs that on
an explicit stack and sends its result back (or throws its exception in).
"""
from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import CompileError, Diagnostic, Span
from ..ir.graph import (DTYPES, Builder, Function, OptimizerSpec, Program, TensorType, Value, dim_product,
                        type_error)
from ..ops import OPTIMIZERS, REGISTRY
from ..ops.base import Arg, ModelOutputs, OpError, Size, bind, describe, suggest
from ..ops.slicing import subscript
from . import ast

MAX_ERRORS = 20
# Integers in a program (sizes, attributes, constants) are int64, as in the
# runtime and the generated code.
INT_MAX = 2**63 - 1

BINARY_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}

# Valid optimizer hyperparameters, as torch.optim checks them.
HPARAM_RULES = {
    "lr": (lambda v: v > 0, "positive"),
    "eps": (lambda v: v > 0, "positive"),
    "momentum": (lambda v: v >= 0, "at least 0"),
    "weight_decay": (lambda v: v >= 0, "at least 0"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "alpha": (lambda v: v >= 0, "at least 0"),
    "lr_decay": (lambda v: v >= 0, "at least 0"),
    "initial_accumulator_value": (lambda v: v >= 0, "at least 0"),
    "clip": (lambda v: v > 0, "positive"),
}


class _Poison:
    """The value of a name whose statement failed."""

    def __repr__(self) -> str:
        return "<poison>"


POISON = _Poison()


class _Abort(Exception):
    """Unwinds the current statement; its error is already recorded."""


class _TooMany(Exception):
    """MAX_ERRORS diagnostics are recorded; stop checking."""


T = TypeVar("T")
# A checking coroutine returning T: it yields the coroutines it waits for.
Co = Generator[Generator, Any, T]


def _drive(co: Co[T]) -> T:
    """Run coroutine `co` to its result on an explicit stack."""
    stack, value, error = [co], None, None
    while stack:
        try:
            sub = stack[-1].send(value) if error is None else stack[-1].throw(error)
        except StopIteration as done:
            stack.pop()
            value, error = done.value, None
        except Exception as e:   # _Abort, _TooMany: to the yield that waits for it
            stack.pop()
            value, error = None, e
        else:
            stack.append(sub)
            value, error = None, None
    if error is not None:
        raise error
    return value


@dataclass
class _Scope:
    """One evaluation of a block's body: standalone (inputs declared on the
    function) or inlined into a caller (inputs bound to `args`)."""
    block: ast.Block
    builder: Builder
    outputs: dict[str, Value]
    used: set[str]                            # models called, transitively
    args: dict[str, Value] | None = None      # inlined: the call's arguments
    env: dict[str, Any] = field(default_factory=dict)


def check(module: ast.Module, source: str) -> Program:
    """The graph IR of `module`; raises CompileError listing every error."""
    return _Checker(module, source).run()


class _Checker:
    def __init__(self, module: ast.Module, source: str):
        self.module, self.source = module, source
        self.program = Program(file=module.file, source=source)
        self.diagnostics: list[Diagnostic] = []
        self.seen: set[tuple[Span | None, str]] = set()
        self.entries: dict[str, ast.Block] = {}
        self.models: dict[str, ast.Block] = {}    # callable models
        self.ok: dict[str, bool] = {}             # model -> compiled without error
        self.active: list[str] = []               # models being evaluated, outermost first
        self.auto_names: dict[int, str] = {}      # by id(call): AST nodes hash deeply
        self.fields: dict[Value, tuple[str, dict[str, Value]]] = {}   # op results' named parts (s.h_n)

    # ------------------------------------------------------------ reporting

    def report(self, span: Span | None, message: str) -> None:
        if (span, message) in self.seen:
            return
        self.seen.add((span, message))
        self.diagnostics.append(Diagnostic(span, message))
        if len(self.diagnostics) >= MAX_ERRORS:
            raise _TooMany

    def fail(self, span: Span | None, message: str):
        self.report(span, message)
        raise _Abort

    # -------------------------------------------------------------- program

    def run(self) -> Program:
        try:
            blocks = self.declare()
            for block in blocks:
                if block.kind == "train":
                    _drive(self.compile_train(block))
                elif block.name not in self.ok:
                    _drive(self.compile_model(block))
        except _TooMany:
            pass
        if self.diagnostics:
            raise CompileError(self.diagnostics, self.source)
        return self.program

    def declare(self) -> list[ast.Block]:
        """Register every entry; returns the blocks to compile."""
        blocks = []
        for block in self.module.blocks:
            first = self.entries.get(block.name)
            if first is not None:
                self.report(block.span, f"'{block.name}' is already defined "
                                        f"(a {first.kind} at line {first.span.line})")
                continue
            self.entries[block.name] = block
            self.program.functions[block.name] = Function(block.name, block.kind, span=block.span)
            if block.kind == "model":
                if _op(block.name) is not None:
                    self.report(block.span, f"model name '{block.name}' is taken by an op; "
                                            f"pick another name")
                else:
                    self.models[block.name] = block
            self.auto_names.update(_auto_names(block))
            blocks.append(block)
        return blocks

    def compile_model(self, block: ast.Block) -> Co[None]:
        fn = self.program.functions[block.name]
        scope = _Scope(block, Builder(self.program, fn, block.span), fn.outputs, set())
        self.active.append(block.name)
        try:
            ok = yield self.body(scope)
        finally:
            self.active.pop()
        if not any(isinstance(s, ast.Output) for s in block.body):
            self.report(block.span, f"model '{block.name}' has no output; "
                                    f"add one such as 'output y = ...'")
            ok = False
        self.ok[block.name] = ok

    def compile_train(self, block: ast.Block) -> Co[None]:
        fn = self.program.functions[block.name]
        scope = _Scope(block, Builder(self.program, fn, block.span), fn.outputs, set())
        opt = next((s for s in block.body if isinstance(s, ast.Optimizer)), None)
        if (yield self.body(scope)) and opt is not None:
            for n in opt.on:
                if n.id not in scope.used:
                    self.report(n.span, f"the loss of '{block.name}' does not use model "
                                        f"'{n.id}', so 'on {n.id}' would train nothing")
        kinds = {type(s) for s in block.body}
        if ast.Loss not in kinds:
            self.report(block.span, f"train block '{block.name}' has no loss; add 'loss = ...'")
        if ast.Optimizer not in kinds:
            self.report(block.span, f"train block '{block.name}' has no optimizer; "
                                    f"add one such as 'optimizer = sgd(lr=0.01)'")

    # ------------------------------------------------------------ statements

    def body(self, s: _Scope) -> Co[bool]:
        """Evaluate a block's statements; False if any failed. Inlined, a
        failure aborts the call instead."""
        ok = True
        for stmt in s.block.body:
            try:
                yield self.statement(stmt, s)
            except _Abort:
                if s.args is not None:
                    raise
                ok = False
                if isinstance(stmt, (ast.Input, ast.Let, ast.Output)):
                    s.env[stmt.name] = POISON
        return ok

    def statement(self, stmt, s: _Scope) -> Co[None]:
        kind = s.block.kind
        match stmt:
            case ast.Input():
                s.env[stmt.name] = s.args[stmt.name] if s.args is not None else self.input(stmt, s)
            case ast.Let():
                s.env[stmt.name] = yield self.eval(stmt.value, s)
            case ast.Output():
                if kind == "train":
                    self.fail(stmt.span, "a train block has no outputs; it computes 'loss = ...' "
                                         "(outputs belong in a model)")
                if stmt.name in s.outputs:
                    self.fail(stmt.span, f"duplicate output '{stmt.name}'")
                s.env[stmt.name] = s.outputs[stmt.name] = yield self.tensor(stmt.value, s, "an output")
                if s.args is None and any("*" in str(d) for d in s.outputs[stmt.name].type.shape):
                    # an entry's dims are numbers or symbols (the runtime's descriptor)
                    self.fail(_expr_span(stmt.value), f"an output's dims must be integers or single "
                                                      f"symbols, got {s.outputs[stmt.name].type}; "
                                                      f"reshape it to separate the symbols")
            case ast.Loss():
                yield self.loss(stmt, s)
            case ast.Optimizer():
                yield self.optimizer(stmt, s)

    def input(self, stmt: ast.Input, s: _Scope) -> Value:
        t = stmt.type
        if t.dtype not in DTYPES:
            self.fail(t.span, f"unknown dtype '{t.dtype}'{suggest(t.dtype, DTYPES)}; "
                              f"dtypes are {', '.join(DTYPES)}")
        for d in t.dims:
            if isinstance(d.value, int) and d.value < 1:
                self.fail(d.span, f"a dim must be at least 1, got {d.value}")
            self.integer(d.value, d.span)
        fn = s.builder.fn
        if any(v.name == stmt.name for v in fn.inputs):
            self.fail(stmt.span, f"duplicate input '{stmt.name}'")
        type = TensorType(t.dtype, tuple(d.value for d in t.dims))
        if (message := type_error(type)) is not None:
            self.fail(t.span, message)
        return s.builder.input(stmt.name, type)

    def loss(self, stmt: ast.Loss, s: _Scope) -> Co[None]:
        if s.block.kind == "model":
            self.fail(stmt.span, "'loss' belongs in a train block; a model declares "
                                 "its results with 'output y = ...'")
        if "loss" in s.outputs:
            self.fail(stmt.span, f"train block '{s.block.name}' has more than one loss")
        v = yield self.tensor(stmt.value, s, "the loss")
        if not v.type.is_float or v.type.shape != ():
            self.fail(_expr_span(stmt.value), f"the loss must be a floating-point scalar "
                                              f"(f32[] or f64[]), got {v.type}")
        s.outputs["loss"] = v

    def optimizer(self, stmt: ast.Optimizer, s: _Scope) -> Co[None]:
        fn = s.builder.fn
        if s.block.kind == "model":
            self.fail(stmt.span, "'optimizer' belongs in a train block")
        if fn.optimizer is not None:
            self.fail(stmt.span, f"train block '{s.block.name}' has more than one optimizer")
        call = stmt.call
        if call.func not in OPTIMIZERS:
            self.fail(call.span, f"unknown optimizer '{call.func}'{suggest(call.func, OPTIMIZERS)}; "
                                 f"dlc has {', '.join(OPTIMIZERS)}")
        hparams = yield self.bind(call, call.func, OPTIMIZERS[call.func], s)
        hparams = {k: v for k, v in hparams.items() if v is not None}   # options not given
        for name, v in hparams.items():
            valid, words = HPARAM_RULES.get(name, (lambda v: True, ""))
            if not valid(v):
                self.fail(_arg_span(call, OPTIMIZERS[call.func], name),
                          f"'{name}' of '{call.func}' must be {words}, got {v:g}")
        on: list[str] = []
        for n in stmt.on:
            if n.id not in self.models:
                self.report(n.span, f"unknown model '{n.id}' after 'on'{suggest(n.id, self.models)}")
            elif n.id in on:
                self.report(n.span, f"model '{n.id}' is listed twice after 'on'")
            else:
                on.append(n.id)
        if len(on) != len(stmt.on):
            raise _Abort
        fn.optimizer = OptimizerSpec(call.func, hparams, tuple(on), stmt.span)

    # ----------------------------------------------------------- expressions

    def tensor(self, e: ast.Expr, s: _Scope, what: str) -> Co[Value]:
        v = yield self.eval(e, s)
        if not isinstance(v, Value):
            self.fail(_expr_span(e), f"{what} must be a tensor, got {describe(v)}")
        return v

    def eval(self, e: ast.Expr, s: _Scope) -> Co[Any]:
        match e:
            case ast.Number():
                return self.integer(e.value, e.span)
            case ast.String() | ast.Bool():
                return e.value
            case ast.Tuple():
                items = []
                for i in e.items:
                    items.append((yield self.eval(i, s)))
                    if isinstance(items[-1], tuple):   # no op takes one
                        self.fail(_expr_span(i), "a tuple can't contain a tuple")
                return tuple(items)
            case ast.Name():
                return self.lookup(e, s)
            case ast.Neg():
                return (yield self.neg(e, s))
            case ast.BinOp():
                return (yield self.binop(e, s))
            case ast.Call() if e.func in self.models:
                outputs = yield self.call_model(e, s)
                return next(iter(outputs.values())) if len(outputs) == 1 else ModelOutputs(e.func, outputs)
            case ast.Call():
                return (yield self.call_op(e, s))
            case ast.Field():
                return (yield self.field(e, s))
            case ast.Subscript():
                return (yield self.subscript(e, s))
        raise TypeError(f"not an expression: {e!r}")

    def lookup(self, e: ast.Name, s: _Scope) -> Any:
        if e.id in s.env:
            v = s.env[e.id]
            if v is POISON:
                raise _Abort
            return v
        size = self.symbol(e.id, s)
        if size is not None:
            return size
        if e.id in self.models or _op(e.id) is not None:
            what = "a model" if e.id in self.models else "an op"
            self.fail(e.span, f"'{e.id}' is {what}; call it, as in {e.id}(x)")
        self.fail(e.span, f"undefined name '{e.id}'{suggest(e.id, s.env)}")

    def symbol(self, name: str, s: _Scope) -> int | Size | None:
        """The size that symbol `name` of the block's inputs has in this
        evaluation (a number when an inlined call binds it to one), or None."""
        for stmt in s.block.body:
            if isinstance(stmt, ast.Input) and isinstance(s.env.get(stmt.name), Value):
                for d, got in zip(stmt.type.dims, s.env[stmt.name].type.shape):
                    if d.value == name:
                        return got if isinstance(got, int) else Size(got)
        return None

    def neg(self, e: ast.Neg, s: _Scope) -> Co[Any]:
        v = yield self.eval(e.operand, s)
        if _is_number(v):
            return -v
        if not isinstance(v, Value):
            self.fail(e.span, f"can't negate {describe(v)}")
        s.builder.span = e.span
        # `neg` is an internal op (no signature), so it is built as a node.
        return self.build(e.span, lambda: s.builder.node(REGISTRY["neg"], [v]))

    def binop(self, e: ast.BinOp, s: _Scope) -> Co[Any]:
        a = yield self.eval(e.left, s)
        b = yield self.eval(e.right, s)
        if _is_number(a) and _is_number(b):
            return self.integer(self.fold(e, a, b), e.span)
        if any(isinstance(v, Size) for v in (a, b)):   # a product of sizes, as reshape takes
            if e.op != "*" or not all(isinstance(v, Size) or (type(v) is int and v >= 1) for v in (a, b)):
                self.fail(e.span, f"sizes can only be multiplied by sizes (as in batch * time), "
                                  f"not combined by '{e.op}' with {describe(b if isinstance(a, Size) else a)}")
            return Size(dim_product([v.dim if isinstance(v, Size) else v for v in (a, b)]))
        if not all(isinstance(v, Value) or _is_number(v) for v in (a, b)):
            self.fail(e.span, f"can't apply '{e.op}' to {describe(a)} and {describe(b)}")
        s.builder.span = e.span
        a = self.constant(a, b, e.left, s)
        b = self.constant(b, a, e.right, s)
        op = REGISTRY[BINARY_OPS[e.op]]
        return self.build(e.span, lambda: op.build(s.builder, {"a": a, "b": b}))

    def integer(self, v, span: Span):
        """v, unless it is an integer too large for int64."""
        if isinstance(v, int) and abs(v) > INT_MAX:
            self.fail(span, f"integer too large: integers must fit in 64 bits "
                            f"(at most {INT_MAX} in magnitude)")
        return v

    def fold(self, e: ast.BinOp, a, b):
        """Arithmetic on two numbers is done now, as in `lr = 1 / 3`."""
        match e.op:
            case "+":
                return a + b
            case "-":
                return a - b
            case "*":
                return a * b
        if b == 0:
            self.fail(e.span, "division by zero")
        return a / b

    def constant(self, v, other: Value, e: ast.Expr, s: _Scope) -> Value:
        """A number operand becomes a scalar constant of the tensor's dtype."""
        if isinstance(v, Value):
            return v
        if isinstance(v, float) and not other.type.is_float:
            self.fail(_expr_span(e), f"the number {v:g} can't be combined with the "
                                     f"integer tensor {other.type}")
        return REGISTRY["constant"].build(s.builder, {"value": float(v), "dtype": other.type.dtype})

    def call_op(self, e: ast.Call, s: _Scope) -> Co[Value]:
        op = _op(e.func)
        if op is None:
            if e.func in self.entries:
                self.fail(e.span, f"'{e.func}' is a train block; only ops and models can be called")
            if e.func in s.env:
                v = s.env[e.func]
                if v is POISON:
                    raise _Abort
                self.fail(e.span, f"'{e.func}' is {describe(v)}, not an op or model")
            callable_ = [n for n in REGISTRY if _op(n)] + list(self.models)
            self.fail(e.span, f"unknown op '{e.func}'{suggest(e.func, callable_)}")
        args = yield self.bind(e, op.name, op.signature, s)
        if op.owns_params and args.get("name") is None:
            args["name"] = self.auto_names[id(e)]
        s.builder.span = e.span
        out = self.build(e.span, lambda: op.build(s.builder, args), e, op.signature)
        if isinstance(out, tuple):   # (result, named parts read as `result.name`: an lstm's h_n)
            out, fields = out
            self.fields[out] = (op.name, fields)
        if not op.owns_params and isinstance(out, Value):
            s.builder.layer(self.auto_names[id(e)], op.name, out)
        return out

    def bind(self, e: ast.Call, name: str, signature: tuple[Arg, ...], s: _Scope) -> Co[dict[str, Any]]:
        """Evaluate a call's arguments and match them to `signature`."""
        if e.kwargs:
            first = e.kwargs[0].span
            for a in e.args:
                if (_expr_span(a).line, _expr_span(a).col) > (first.line, first.col):
                    self.fail(_expr_span(a), "positional argument after keyword argument")
        names: set[str] = set()
        for k in e.kwargs:
            if k.name in names:
                self.fail(k.span, f"argument '{k.name}' is given twice")
            names.add(k.name)
        pos = []
        for a in e.args:
            pos.append((yield self.eval(a, s)))
        kw = {}
        for k in e.kwargs:
            kw[k.name] = yield self.eval(k.value, s)
        try:
            return bind(name, signature, pos, kw)
        except OpError as err:
            self.fail(_arg_span(e, signature, err.arg), err.message)

    def build(self, span: Span, make, call: ast.Call | None = None,
              signature: tuple[Arg, ...] | None = None) -> Value:
        """Run an op's build; its OpErrors become diagnostics at the argument
        they name. Any other exception is a bug in the op and propagates."""
        try:
            return make()
        except OpError as err:
            if call is not None:
                span = _arg_span(call, signature, err.arg)
            self.fail(span, err.message)

    # ---------------------------------------------------------- model calls

    def call_model(self, e: ast.Call, s: _Scope) -> Co[dict[str, Value]]:
        """Inline model `e.func` into the caller; returns its outputs."""
        callee = self.models[e.func]
        if e.func in self.active:
            cycle = self.active[self.active.index(e.func):] + [e.func]
            self.fail(e.span, f"recursive model call: {' -> '.join(cycle)}")
        if e.func not in self.ok:
            yield self.compile_model(callee)
        if not self.ok[e.func]:
            raise _Abort
        declared = self.program.functions[e.func].inputs
        signature = tuple(Arg(v.name, "tensor") for v in declared)
        args = yield self.bind(e, e.func, signature, s)
        self.check_arguments(e, declared, args, signature)
        s.used.add(e.func)
        inner = _Scope(callee, s.builder, {}, s.used, args)
        self.active.append(e.func)
        try:
            yield self.body(inner)
        finally:
            self.active.pop()
        return inner.outputs

    def check_arguments(self, e: ast.Call, declared: list[Value], args: dict[str, Value],
                        signature: tuple[Arg, ...]) -> None:
        """Each argument has its input's type; a symbol is one dim per call."""
        bound: dict[str, tuple[Any, str]] = {}   # symbol -> (dim, argument that bound it)
        for decl in declared:
            want, got = decl.type, args[decl.name].type
            span = _arg_span(e, signature, decl.name)
            msg = f"argument '{decl.name}' of model '{e.func}' must be {want}, got {got}"
            if want.dtype != got.dtype or want.rank != got.rank:
                self.fail(span, msg)
            for d, g in zip(want.shape, got.shape):
                if isinstance(d, int):
                    if d != g:
                        self.fail(span, msg)
                elif d in bound and bound[d][0] != g:
                    self.fail(span, f"{msg}: '{d}' is {bound[d][0]} in argument '{bound[d][1]}'")
                else:
                    bound.setdefault(d, (g, decl.name))

    def field(self, e: ast.Field, s: _Scope) -> Co[Value]:
        if isinstance(e.value, ast.Call) and e.value.func in self.models:
            outputs = yield self.call_model(e.value, s)
            if e.name not in outputs:
                self.fail(e.span, f"model '{e.value.func}' has no output '{e.name}'"
                                  f"{suggest(e.name, outputs)}; its outputs are {', '.join(outputs)}")
            return outputs[e.name]
        v = yield self.eval(e.value, s)
        if isinstance(v, ModelOutputs):
            if e.name not in v.outputs:
                self.fail(e.span, f"model '{v.model}' has no output '{e.name}'"
                                  f"{suggest(e.name, v.outputs)}; its outputs are {', '.join(v.outputs)}")
            return v.outputs[e.name]
        if isinstance(v, Value) and v in self.fields:
            op, fields = self.fields[v]
            if e.name not in fields:
                self.fail(e.span, f"'{op}' has no result '{e.name}'; "
                                  f"its results are {', '.join(fields)}")
            return fields[e.name]
        self.fail(e.span, f"'.{e.name}' selects an output of a model call, as in "
                          f"net(x).{e.name}; here it is applied to {describe(v)}")


    def subscript(self, e: ast.Subscript, s: _Scope) -> Co[Value]:
        v = yield self.eval(e.value, s)
        if not isinstance(v, Value):
            self.fail(e.span, f"only a tensor can be subscripted; this is {describe(v)}")
        items, spans = [], []
        for item in e.items:
            bounds = (item.start, item.stop) if isinstance(item, ast.Slice) else (item,)
            values = []
            for bound in bounds:
                value = None if bound is None else (yield self.eval(bound, s))
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    self.fail(_expr_span(bound), f"a subscript must be an integer, got {describe(value)}")
                values.append(value)
            items.append(tuple(values) if isinstance(item, ast.Slice) else values[0])
            spans.append(item.span if isinstance(item, ast.Slice) else _expr_span(item))
        s.builder.span = e.span
        try:
            return subscript(s.builder, v, items)
        except OpError as err:
            self.fail(spans[err.arg] if isinstance(err.arg, int) and err.arg < len(spans) else e.span,
                      err.message)


# ------------------------------------------------------------------ helpers

def _op(name: str):
    """The language-level op called `name`, or None (internal ops have no signature)."""
    op = REGISTRY.get(name)
    return op if op is not None and op.signature is not None else None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _expr_span(e: ast.Expr) -> Span:
    """Where an expression starts (a binary operation: its left operand)."""
    while isinstance(e, (ast.BinOp, ast.Field, ast.Subscript)):
        e = e.left if isinstance(e, ast.BinOp) else e.value
    return e.span


def _arg_span(call: ast.Call, signature: tuple[Arg, ...] | None, arg: str | None) -> Span:
    """The span of argument `arg` of `call`, or the call's if not written."""
    for k in call.kwargs:
        if k.name == arg:
            return k.span
    names = [a.name for a in signature or ()]
    if arg in names and names.index(arg) < len(call.args):
        return _expr_span(call.args[names.index(arg)])
    return call.span


def _auto_names(block: ast.Block) -> dict[int, str]:
    """Names for the block's unnamed layer calls (see the module docstring),
    and, counted the same way, for its calls of ops without parameters
    (relu, maxpool, ...), which summaries list as layers too."""
    unnamed = []
    for stmt in block.body:
        if isinstance(stmt, (ast.Let, ast.Output, ast.Loss)):
            for c in ast.postorder(stmt.value):
                op = _op(c.func) if isinstance(c, ast.Call) else None
                if op is None:
                    continue
                if op.owns_params:
                    index = [a.name for a in op.signature].index("name")
                    if len(c.args) > index or any(k.name == "name" for k in c.kwargs):
                        continue
                unnamed.append(c)
    unnamed.sort(key=lambda c: (c.span.line, c.span.col))
    counts: dict[str, int] = {}
    names = {}
    for c in unnamed:
        k = counts.get(c.func, 0)
        counts[c.func] = k + 1
        names[id(c)] = f"{block.name}.{c.func}{k}"
    return names
