"""Reverse-mode differentiation: a train block becomes a training step
(forward, loss, backward, optimizer update) and a gradient entry.

Each train block `fit` gives two functions: `fit` (kind 'train': outputs the
loss, assigns new values to parameters and optimizer states) and
`fit.grads` (kind 'grads': outputs the loss and one gradient per trained
parameter, named as the parameter); a block with float inputs gets a third,
`fit.input_grads` (kind 'grads': those outputs, then the gradient of each
float input, named as the input). Input gradients have an entry of their
own so that `fit.grads` (and its C signature) does no work for them.

The step also comes in two halves, for data-parallel training (gradients
averaged across processes between them): `fit.apply` (kind 'apply': the
optimizer's update from gradients given as inputs, named as the params,
clipping included) and, when the forward pass writes something (batchnorm's
running statistics, dropout's step), `fit.step_grads` (kind 'step_grads':
`fit.grads` with those writes); without such writes `fit.grads` is that half.

Gradients come from each op's `grad` rule, written as graph ops, so the
backward pass is ordinary graph IR.
"""
from __future__ import annotations

from dataclasses import replace

from .errors import CompileError, Diagnostic
from .ir.graph import Builder, Function, Node, Program, Value
from .ops.elementwise import add, scalar_like
from .ops.optim import updates

FLOAT_DTYPES = ("f32", "f64")


def clone_function(fn: Function, name: str, kind: str) -> Function:
    """A copy with fresh values, so two entries never share identities."""
    new = Function(name, kind, optimizer=fn.optimizer, span=fn.span)
    vmap: dict[int, Value] = {}
    for v in fn.inputs:
        nv = Value(v.type, "input", v.name)
        new.inputs.append(nv)
        vmap[id(v)] = nv
    for pname, v in fn.params.items():
        new.params[pname] = vmap[id(v)] = Value(v.type, "param", pname)
    for sname, v in fn.states.items():
        new.states[sname] = vmap[id(v)] = Value(v.type, "state", sname)
    for n in fn.nodes:
        m = Node(n.op, tuple(vmap[id(v)] for v in n.inputs), n.attrs, n.out.type, n.span)
        new.nodes.append(m)
        vmap[id(n.out)] = m.out
    new.outputs = {k: vmap[id(v)] for k, v in fn.outputs.items()}
    new.assigns = [(vmap[id(t)], vmap[id(v)]) for t, v in fn.assigns]
    return new


def backward(b: Builder, fn: Function, y: Value, wrt: dict[str, Value]) -> dict[str, Value]:
    """d y / d v for each value v of `wrt` (by name) that y depends on."""
    grads: dict[int, Value] = {id(y): scalar_like(b, 1.0, y)}
    for node in reversed(list(fn.nodes)):
        g = grads.get(id(node.out))
        if g is None:
            continue
        b.span = node.span
        for v, gv in zip(node.inputs, node.op.grad(b, node, g)):
            if gv is not None:
                grads[id(v)] = add(b, grads[id(v)], gv) if id(v) in grads else gv
    return {name: grads[id(v)] for name, v in wrt.items() if id(v) in grads}


def trained_params(program: Program, fn: Function) -> list[str]:
    """The params the optimizer may update: all the block uses, or only the
    `on` models' ones."""
    names = list(fn.params)
    if fn.optimizer and fn.optimizer.on:
        owned = {p for m in fn.optimizer.on for p in program.functions[m].params}
        names = [p for p in names if p in owned]
    return names


def _nothing_to_train(program: Program, fn: Function) -> None:
    """A step that updates nothing is a mistake (torch.optim refuses an empty
    parameter list too): an error at the optimizer, for sgd and adam alike."""
    opt = fn.optimizer
    of = f" of {', '.join(repr(m) for m in opt.on)}" if opt.on else ""
    raise CompileError([Diagnostic(opt.span, (
        f"the loss of '{fn.name}' depends on no parameter{of} (no gradient reaches one), "
        f"so '{opt.kind}' would train nothing"))], program.source)


def differentiate(program: Program) -> Program:
    """Pure: returns a new program whose train blocks are full steps."""
    # States declared by the check (dropout's step counter) stay; the
    # optimizer's are added by `updates`.
    out = replace(program, functions={}, states=dict(program.states))
    for fn in program.functions.values():
        if fn.kind != "train":
            out.functions[fn.name] = fn
            continue
        wrt = trained_params(program, fn)
        step = clone_function(fn, fn.name, "train")
        b = Builder(out, step)
        grads = backward(b, step, step.outputs["loss"], {p: step.params[p] for p in wrt})
        if not grads:
            _nothing_to_train(program, fn)
        step.trained = list(grads)
        step.gradients = grads
        b.span = fn.optimizer.span if fn.optimizer else fn.span
        # After the forward pass's own writes (batchnorm's running stats,
        # dropout's step), the optimizer's.
        step.assigns += updates(b, fn.optimizer, {p: step.params[p] for p in grads}, grads, fn.name)

        out.functions[step.name] = step
        gfn = gradient_entry(out, fn, f"{fn.name}.grads", wrt, inputs=False)
        out.functions[gfn.name] = gfn
        if any(v.type.dtype in FLOAT_DTYPES for v in fn.inputs):
            ifn = gradient_entry(out, fn, f"{fn.name}.input_grads", wrt, inputs=True)
            out.functions[ifn.name] = ifn
        if fn.assigns:
            sfn = gradient_entry(out, fn, f"{fn.name}.step_grads", wrt, inputs=False, writes=True)
            out.functions[sfn.name] = sfn
        afn = apply_entry(out, fn, step.trained)
        out.functions[afn.name] = afn
    return out


def gradient_entry(program: Program, fn: Function, name: str, wrt: list[str],
                   inputs: bool, writes: bool = False) -> Function:
    """A 'grads' function of train block `fn`: the loss, the gradient of each
    param in `wrt` and, with `inputs`, of each float input (zeros where the
    loss does not depend on it). It changes nothing; with `writes`, a
    'step_grads' function that keeps the forward pass's writes."""
    gfn = clone_function(fn, name, "step_grads" if writes else "grads")
    if not writes:
        gfn.assigns = []
    b = Builder(program, gfn)
    # Input names never contain a dot, param names always do: no clash.
    floats = {v.name: v for v in gfn.inputs if inputs and v.type.dtype in FLOAT_DTYPES}
    grads = backward(b, gfn, gfn.outputs["loss"], {**{p: gfn.params[p] for p in wrt}, **floats})
    gfn.trained = [p for p in grads if p not in floats]
    gfn.outputs.update({p: grads[p] for p in gfn.trained})
    gfn.outputs.update({n: grads[n] if n in grads else scalar_like(b, 0.0, v)
                        for n, v in floats.items()})
    return gfn


def apply_entry(program: Program, fn: Function, trained: list[str]) -> Function:
    """The 'apply' function of train block `fn`: its optimizer's update of
    the `trained` params from gradients given as inputs named as the params
    (the optimizer's state is the step's: `fit.lr`, `fit.step`, ...)."""
    afn = Function(f"{fn.name}.apply", "apply", optimizer=fn.optimizer, span=fn.span)
    grads = {}
    for p in trained:
        t = fn.params[p].type
        afn.params[p] = Value(t, "param", p)
        grads[p] = Value(t, "input", p)
        afn.inputs.append(grads[p])
    afn.trained = list(trained)
    b = Builder(program, afn)
    b.span = fn.optimizer.span
    afn.assigns = updates(b, fn.optimizer, dict(afn.params), grads, fn.name)
    return afn
