"""The checks one program goes through, differential and metamorphic.

Differential (against `oracle.Reference`, PyTorch in float64 from the
compiled program's initial `prog.params`):
- params       the parameter names, shapes and dtypes the program declares;
               their initial values within PyTorch's default initialisation
- forward      every model's outputs at batch 1, 3, 17 and 64 (and several
               sequence lengths), inference semantics (batchnorm's running
               statistics, dropout off)
- grads        `prog.grads` of every train block: the set of parameters
               (the ones the loss reaches, restricted by `on`) and values
- train        three steps of every train block (interleaved), each checked
               from the program's parameters of the moment (the reference
               resyncs to them): the loss `prog.train` returns, the gradients
               (`prog.grads` just before), the update of every trained
               parameter against torch.optim (SGD / Adam, clip_grad_norm_,
               whose state goes on across steps), batchnorm's buffers, and
               the parameters the block does not train (unchanged). torch.optim
               is fed the program's own gradients, so the update comparison
               measures the step's arithmetic and state, with a slack of 4x
               what gradient rounding noise and float32 arithmetic move it
               (see check_train, taint).
Metamorphic:
- side_effect  run/grads change no parameter
- batch        each of a few examples alone equals its row of a batch of 17
- determinism  two calls with the same inputs are bit-identical (1 thread);
               save + load into a session of another seed restores the
               parameters and the outputs bit for bit
- threads      a 2-thread session: initial parameters bit-identical, outputs,
               gradients and 3 training steps close to the 1-thread session's
               and bit-identical between two 2-thread sessions / calls
- nan          one NaN in one input example: exactly the outputs PyTorch
               makes NaN are NaN (IEEE propagation, no NaN lost or leaked)

Tolerances: f32 programs rtol 1e-4, atol 1e-5 against the float64 answer;
an element outside them still passes when its error is within 10x that of
PyTorch's own float32 evaluation of the same network (`exact=False`), i.e.
the difference is conditioning (a long product chain, a sum that cancels),
not the compiler. f64 programs: rtol 1e-7, atol 1e-9 (PyTorch float64 is the
same precision; the margin covers summation order amplified by the chain).
Comparisons whose reference meets a numerical hazard (see oracle) are
skipped and counted. Equal infinities and NaN against NaN count as equal.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

import numpy as np
import torch

import dlc
from dlc.api import CompiledProgram
from dlc.errors import CompileError

from .ir import Invalid, Program, concrete, emit, infer
from .oracle import Reference

TOL = {"f32": (1e-4, 1e-5), "f64": (1e-7, 1e-9)}
GROUPS = ("params", "forward", "grads", "train", "batch", "determinism", "threads", "nan")
BATCHES = (1, 3, 17, 64)
TIMES = (1, 2, 3, 5, 7, 12, 30)
KIND_GROUP = {"crash": None, "runtime_error": None, "harness_error": None, "generator_bug": None,
              "params": "params", "forward": "forward", "grads": "grads", "grad_keys": "grads",
              "train_loss": "train", "train_grads": "train", "train_params": "train",
              "train_update": "train",
              "side_effect": "forward", "batch_invariance": "batch", "determinism": "determinism",
              "threads": "threads", "thread_determinism": "threads", "init": "params",
              "save_load": "determinism", "nan": "nan"}


@dataclass
class Failure:
    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.where}: {self.detail}"


@dataclass
class Outcome:
    text: str = ""
    failures: list[Failure] = field(default_factory=list)
    comparisons: int = 0
    skipped: int = 0
    compile_s: float = 0.0
    check_s: float = 0.0


# ------------------------------------------------------------------ inputs

def _merge(spec: dict, sub: dict) -> None:
    if sub.get("kind") and sub["kind"] != "float":
        spec["kind"] = sub["kind"]
    if "vocab" in sub:
        spec["vocab"] = min(spec.get("vocab", sub["vocab"]), sub["vocab"])
    if "classes" in sub:
        spec["classes"] = sub["classes"]
    if "scale" in sub:
        spec["scale"] = sub["scale"]
    spec.setdefault("maxlen", []).extend(sub.get("maxlen", []))


def input_spec(prog: Program, block: str, iid: str) -> dict:
    """What values input `iid` of `block` may take: float (N(0, 1)), prob
    (U(0, 1)), tokens (< vocab), lengths (1..min maxlen), labels (< classes)."""
    b = prog.block(block)
    n = b.get(iid)
    role = n.attrs.get("role", "x")
    spec: dict = {"kind": role if role in ("tokens", "lengths", "labels", "prob") else "float",
                  "maxlen": []}
    if "scale" in n.attrs:
        spec["scale"] = n.attrs["scale"]
    for m in b.nodes:
        if m.op == "embedding" and m.args[0] == iid:
            spec["kind"] = "tokens"
            spec["vocab"] = min(spec.get("vocab", m.attrs["vocab"]), m.attrs["vocab"])
        if m.attrs.get("lengths") == iid:
            spec["kind"] = "lengths"
            spec["maxlen"].append(b.get(m.args[0]).shape[1])
        if m.op == "cross_entropy" and m.args[1] == iid:
            spec["classes"] = b.get(m.args[0]).shape[1]
        if m.op == "call" and iid in m.args:
            callee = prog.block(m.attrs["model"])
            decl = callee.inputs()
            binding = {}
            for a, d in zip(m.args, decl):
                for want, got in zip(d.shape, b.get(a).shape):
                    if isinstance(want, str):
                        binding[want] = got
            for j, a in enumerate(m.args):
                if a == iid:
                    sub = input_spec(prog, callee.name, decl[j].id)
                    sub["maxlen"] = [binding.get(d, d) if isinstance(d, str) else d
                                     for d in sub.get("maxlen", [])]
                    _merge(spec, sub)
    return spec


def make_inputs(prog: Program, block: str, batch: int, time_: int, rng: np.random.Generator):
    b = prog.block(block)
    syms = {"batch": batch, "time": time_}
    out = {}
    for n in b.inputs():
        shape = concrete(n.shape, syms)
        spec = input_spec(prog, block, n.id)
        kind = spec["kind"]
        if kind == "tokens":
            v = rng.integers(0, spec.get("vocab", 1), size=shape).astype(np.int32)
        elif kind == "lengths":
            top = min([concrete((d,), syms)[0] for d in spec["maxlen"]] or [time_])
            v = rng.integers(1, top + 1, size=shape).astype(np.int32)
            if v.size >= 2:
                i, j = rng.choice(v.size, 2, replace=False)
                v[i], v[j] = top, 1
        elif kind == "labels":
            v = rng.integers(0, spec.get("classes", 1), size=shape).astype(np.int32)
        elif kind == "prob":
            v = rng.uniform(0, 1, size=shape).astype(n.dtype.replace("f", "float"))
        else:
            v = (spec.get("scale", 1.0) * rng.normal(size=shape)).astype(
                {"f32": np.float32, "f64": np.float64}[n.dtype])
        out[n.id] = v
    return out


def has_batchnorm(prog: Program, block: str) -> bool:
    b = prog.block(block)
    return any(n.op == "batchnorm" for n in b.nodes) or any(
        has_batchnorm(prog, n.attrs["model"]) for n in b.nodes if n.op == "call")


# ------------------------------------------------------------- comparing

class Comparer:
    def __init__(self, outcome: Outcome):
        self.o = outcome

    def close(self, kind: str, where: str, got, want, dtype: str, fallback=None, ignore=None) -> bool:
        """got (the program's) against want (float64 reference); fallback():
        PyTorch's own-precision value of the same thing, asked for lazily;
        ignore: elements not to compare (see Checker.taint)."""
        self.o.comparisons += 1
        got = np.asarray(got)
        want = np.asarray(want, dtype=np.float64)
        rtol, atol = TOL[dtype]
        if got.shape != want.shape:
            self.o.failures.append(Failure(kind, where, f"shape {got.shape}, expected {want.shape}"))
            return False
        g = got.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            err = np.abs(g - want)
        bad = ~(err <= atol + rtol * np.abs(want))     # NaN counts as bad
        bad &= ~((g == want) | (np.isnan(g) & np.isnan(want)))   # the same inf, or both NaN
        if ignore is not None:
            bad &= ~ignore
        if bad.any() and fallback is not None and dtype == "f32":
            own = np.asarray(fallback(), dtype=np.float64)
            if own.shape == want.shape:
                with np.errstate(invalid="ignore", over="ignore"):
                    bad &= ~(err <= 10 * np.abs(own - want) + atol + rtol * np.abs(want))
        if not bad.any():
            return True
        i = np.unravel_index(np.argmax(np.where(bad, np.nan_to_num(err, nan=np.inf), -1)), bad.shape)
        self.o.failures.append(Failure(kind, where, (
            f"{int(bad.sum())}/{bad.size} elements differ; at {tuple(int(k) for k in i)}: "
            f"got {g[i]!r}, expected {want[i]!r} (rtol {rtol}, atol {atol})")))
        return False

    def same(self, kind: str, where: str, a, b) -> bool:
        self.o.comparisons += 1
        a, b = np.asarray(a), np.asarray(b)
        if a.shape == b.shape and a.tobytes() == b.tobytes():
            return True
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64)) if a.shape == b.shape else None
        what = (f"max difference {np.nanmax(diff)!r} in {int((a != b).sum())} of {a.size} elements"
                if diff is not None else f"shapes {a.shape} and {b.shape}")
        self.o.failures.append(Failure(kind, where, f"not bit-identical: {what}"))
        return False

    def skip(self, n: int = 1) -> None:
        self.o.skipped += n


# ------------------------------------------------------------------ checks

def classify(e: BaseException) -> str:
    """'crash' for an exception raised inside dlc (a traceback the user would
    see), 'runtime_error' for the runtime refusing inputs, 'harness_error' for
    one of the fuzzer's own."""
    from dlc.errors import RuntimeError_
    if isinstance(e, RuntimeError_):
        return "runtime_error"
    import os
    root = os.path.dirname(dlc.__file__) + os.sep
    tb, inside = e.__traceback__, False
    while tb is not None:
        inside |= tb.tb_frame.f_code.co_filename.startswith(root)
        tb = tb.tb_next
    return "crash" if inside else "harness_error"


class Checker:
    def __init__(self, prog: Program, seed: int, groups=GROUPS, data_seed: int | None = None):
        self.pir, self.seed = prog, seed
        self.groups = set(groups)
        self.rng = np.random.default_rng(seed if data_seed is None else data_seed)
        self.o = Outcome()
        self.cmp = Comparer(self.o)

    def run(self) -> Outcome:
        text, names = emit(self.pir)
        infer(self.pir, names)
        self.names, self.o.text = names, text
        t0 = time.perf_counter()
        try:
            prog = dlc.compile(text, seed=self.seed, num_threads=1)
        except CompileError as e:
            self.o.failures.append(Failure("generator_bug", "compile", e.render()))
            return self.o
        except Exception as e:
            self.o.failures.append(Failure(classify(e), "compile", traceback.format_exc(limit=-8)))
            return self.o
        finally:
            self.o.compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.prog = prog
        self.params0 = {k: np.array(v, copy=True) for k, v in prog.params.items()}
        for g in GROUPS:
            if g not in self.groups:
                continue
            try:
                getattr(self, f"check_{g}")()
            except Invalid as e:
                self.o.failures.append(Failure("generator_bug", f"oracle ({g})", str(e)))
            except Exception as e:
                self.o.failures.append(Failure(classify(e), f"run ({g})", traceback.format_exc(limit=-8)))
        self.o.check_s = time.perf_counter() - t0
        return self.o

    # helpers

    def dtype_of(self, block: str, output: str | None = None) -> str:
        """The dtype that sets the tolerance: a train block's loss's, or an output's."""
        b = self.pir.block(block)
        if b.kind == "train":
            return b.get(b.loss).dtype
        outs = dict(b.outputs)
        dt = b.get(outs[output] if output else b.outputs[0][1]).dtype
        return "f64" if dt == "f64" else "f32"

    def ref(self, exact=True, params=None) -> Reference:
        return Reference(self.pir, self.names, self.params0 if params is None else params, exact)

    def plan(self, block: str, batches=BATCHES):
        """(batch, time) pairs: every batch size, a different length each."""
        times = list(TIMES)
        self.rng.shuffle(times)
        return [(b, times[i % len(times)]) for i, b in enumerate(batches)]

    def session(self, threads: int) -> CompiledProgram:
        p = self.prog
        return CompiledProgram(p.graph, p.library, self.seed, threads, p.target, p.loops)

    def owned(self, block: str) -> set[str] | None:
        b = self.pir.block(block)
        on = b.optimizer.get("on") or []
        if not on:
            return None
        typer = infer(self.pir, self.names)
        out = set()
        for m in on:
            out |= typer.owned[m]
        return out

    def trained(self, block: str, ref_grads: dict) -> list[str]:
        owned = self.owned(block)
        return sorted(k for k in ref_grads if owned is None or k in owned)

    def train_batches(self, block: str):
        return (3, 17, 64) if has_batchnorm(self.pir, block) else (1, 3, 17, 64)

    # the checks

    def check_params(self):
        self.check_init()
        want = infer(self.pir, self.names).params
        got = {k: (str(v.dtype), tuple(v.shape)) for k, v in self.prog.params.items()}
        np_dtype = {"f32": "float32", "f64": "float64", "i32": "int32"}
        want = {k: (np_dtype[d], tuple(s)) for k, (d, s) in want.items()}
        self.o.comparisons += 1
        if got != want:
            missing = sorted(set(want) - set(got))
            extra = sorted(set(got) - set(want))
            differ = sorted(k for k in set(got) & set(want) if got[k] != want[k])
            self.o.failures.append(Failure("params", "prog.params", (
                f"missing {missing}, unexpected {extra}, "
                f"differ {[(k, got[k], want[k]) for k in differ]}")))

    def check_init(self):
        """PyTorch's default initialisation: the bounds of each layer's
        uniform, batchnorm's ones and zeros, embedding's N(0, 1)."""
        for b in self.pir.blocks:
            for n in b.nodes:
                if n.op not in ("dense", "conv2d", "rnn", "lstm", "batchnorm", "embedding"):
                    continue
                name = self.names[(b.name, n.id)]
                x = b.get(n.args[0])
                if n.op == "dense":
                    bound = 1 / np.sqrt(x.shape[1])
                elif n.op == "conv2d":
                    k = n.attrs["kernel"]
                    k = (k, k) if isinstance(k, int) else k
                    bound = 1 / np.sqrt(x.shape[1] // n.attrs.get("groups", 1) * k[0] * k[1])
                elif n.op in ("rnn", "lstm"):
                    bound = 1 / np.sqrt(n.attrs["hidden"])
                else:
                    bound = None
                for k, v in self.params0.items():
                    if not k.startswith(name + ".") or "." in k[len(name) + 1:]:
                        continue
                    part = k[len(name) + 1:]
                    self.o.comparisons += 1
                    if bound is not None:
                        ok = np.all(np.abs(v) <= bound * (1 + 1e-6)) and (v.size < 32 or np.abs(v).max() > 0.5 * bound)
                    elif n.op == "embedding":
                        ok = np.isfinite(v).all() and (v.size < 64 or 0.7 < v.std() < 1.3)
                    else:
                        want = {"weight": 1, "bias": 0, "running_mean": 0, "running_var": 1,
                                "num_batches_tracked": 0}[part]
                        ok = np.all(v == want)
                    if not ok:
                        self.o.failures.append(Failure("init", k, (
                            f"initial values outside PyTorch's default (bound {bound}): "
                            f"min {v.min()!r}, max {v.max()!r}")))

    def check_save_load(self):
        import os
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "w.safetensors")
            self.prog.save(path)
            fresh = CompiledProgram(self.prog.graph, self.prog.library, self.seed + 1, 1,
                                    self.prog.target, self.prog.loops)
            fresh.load(path)
        for k, v in fresh.params.items():
            if not self.cmp.same("save_load", f"{k} saved and loaded", v, self.params0[k]):
                return
        for m in self.pir.models:
            inputs = make_inputs(self.pir, m.name, 3, int(self.rng.choice(TIMES)), self.rng)
            a, b = self.prog.run(m.name, **inputs), fresh.run(m.name, **inputs)
            for o in a:
                self.cmp.same("save_load", f"{m.name}.{o} after save and load", b[o], a[o])

    def check_nan(self):
        """One NaN in one input example: the outputs it reaches are NaN in
        PyTorch; they must be NaN here too, and only they."""
        ref = self.ref()
        for m in self.pir.models:
            floats = [n for n in m.inputs() if n.dtype in ("f32", "f64") and n.shape[:1] == ("batch",)]
            if not floats:
                continue
            batch, time_ = 3, int(self.rng.choice(TIMES))
            inputs = make_inputs(self.pir, m.name, batch, time_, self.rng)
            ref.flags = []
            ref.forward(m.name, inputs)
            if ref.flags:             # infinities already: inf - inf, 0 * inf are NaN
                self.cmp.skip()
                continue
            x = self.rng.choice([n.id for n in floats])
            flat = inputs[x].reshape(-1)
            at = int(self.rng.integers(flat.size))
            flat[at] = np.nan
            out = self.prog.run(m.name, **inputs)
            try:
                want = ref.forward(m.name, inputs)
            except RuntimeError:      # torch's bce refuses a NaN prediction
                self.cmp.skip()
                continue
            for o, w in want.items():
                self.o.comparisons += 1
                got_nan, want_nan = np.isnan(out[o]), np.isnan(w)
                if (got_nan != want_nan).any():
                    lost = int((want_nan & ~got_nan).sum())
                    extra = int((got_nan & ~want_nan).sum())
                    self.o.failures.append(Failure("nan", f"{m.name}.{o}, NaN at {x}[{np.unravel_index(at, inputs[x].shape)}] (batch {batch}, time {time_})", (
                        f"{lost} elements NaN in PyTorch are not NaN here, {extra} NaN here are not "
                        f"in PyTorch (of {w.size}; PyTorch has {int(want_nan.sum())} NaN)")))

    def check_forward(self):
        ref = self.ref()
        for m in self.pir.models:
            for batch, time_ in self.plan(m.name):
                inputs = make_inputs(self.pir, m.name, batch, time_, self.rng)
                out = self.prog.run(m.name, **inputs)
                ref.flags = []
                want = ref.forward(m.name, inputs)
                if ref.flags:
                    self.cmp.skip(len(want))
                    continue
                for oname, w in want.items():
                    self.cmp.close("forward", f"{m.name}.{oname} at batch {batch}, time {time_}",
                                   out[oname], w, self.dtype_of(m.name, oname),
                                   lambda: self.ref(exact=False).forward(m.name, inputs)[oname])
        self.no_side_effect("run")

    def no_side_effect(self, what: str):
        for k, v in self.prog.params.items():
            if not self.cmp.same("side_effect", f"{k} after {what}", v, self.params0[k]):
                break

    def compare_grads(self, kind, block, inputs, got, want, where, dt, fallback):
        trained = self.trained(block, want)
        self.o.comparisons += 1
        if sorted(got) != trained:
            self.o.failures.append(Failure("grad_keys", where, (
                f"gradients for {sorted(got)}, expected {trained}")))
        for k in sorted(set(got) & set(trained)):
            self.cmp.close(kind, f"{where}: d loss / d {k}", got[k], want[k].numpy(),
                           "f64" if got[k].dtype == np.float64 else "f32",
                           None if fallback is None else (lambda k=k: fallback()[k].numpy()))

    def check_grads(self):
        ref = self.ref()
        for b in self.pir.trains:
            dt = self.dtype_of(b.name)
            for batch, time_ in self.plan(b.name, self.train_batches(b.name)):
                inputs = make_inputs(self.pir, b.name, batch, time_, self.rng)
                got = self.prog.grads(b.name, **inputs)
                ref.flags = []
                _, want = ref.loss_and_grads(b.name, inputs)
                if ref.flags:
                    self.cmp.skip(len(want))
                    continue
                self.compare_grads("grads", b.name, inputs, got, want,
                                   f"{b.name}.grads at batch {batch}, time {time_}", dt,
                                   lambda: self.ref(exact=False).loss_and_grads(b.name, inputs)[1])
        self.no_side_effect("grads")

    def steps(self):
        """The train-step inputs: 3 rounds over the train blocks."""
        if not hasattr(self, "_steps"):
            seq = []
            for step in range(3):
                for b in self.pir.trains:
                    batch = int(self.rng.choice(self.train_batches(b.name)))
                    time_ = int(self.rng.choice(TIMES))
                    seq.append((step, b.name, make_inputs(self.pir, b.name, batch, time_, self.rng)))
            self._steps = seq
        return self._steps

    def check_train(self):
        if not self.pir.trains:
            return
        sess = self.session(1)
        ref = self.ref()
        opts: dict[str, torch.optim.Optimizer] = {}
        shadows: dict = {}
        taint: dict[str, np.ndarray] = {}
        for step, block, inputs in self.steps():
            b = self.pir.block(block)
            dt = self.dtype_of(block)
            where = f"{block} step {step + 1}"
            got_g = sess.grads(block, **inputs)
            before = {k: np.array(v, copy=True) for k, v in sess.params.items()}
            loss = sess.train(block, **inputs)
            # Each step is checked from the program's own parameters: the
            # reference resyncs to them (its optimizer state goes on).
            with torch.no_grad():
                for k, v in before.items():
                    t = ref.buffers[k] if k in ref.buffers else ref.P[k]
                    t.copy_(torch.from_numpy(np.array(v, copy=True)).to(t.dtype))
            ref.flags = []
            want_loss, want_g = ref.loss_and_grads(block, inputs, mode="train")
            trained = self.trained(block, want_g)
            if ref.flags:
                self.cmp.skip()
                return    # the trajectories can't be followed further
            own: dict = {}      # PyTorch in the program's precision, from the same params

            def own_result():
                if not own:
                    own["r"] = self.ref(False, before).loss_and_grads(block, inputs)
                return own["r"]

            self.cmp.close("train_loss", f"{where}: loss", np.float64(loss), want_loss, dt,
                           lambda: own_result()[0])
            self.compare_grads("train_grads", block, inputs, got_g, want_g, where, dt,
                               lambda: own_result()[1])
            if sorted(got_g) != trained:
                return
            self.taint(taint, {k: want_g[k].numpy() for k in trained}, got_g)
            params = [ref.P[k] for k in trained]
            if block not in opts:
                opts[block] = self.optimizer(b.optimizer, params)
            clip = b.optimizer["hp"].get("clip")
            # The step from the exact gradients, then (from the same state)
            # from the program's own: their difference is how much the
            # gradient's rounding noise moves this update (a normalised Adam
            # step amplifies it where m nearly cancels), the slack allowed
            # between the program's step, whose own gradient has such noise,
            # and torch.optim's.
            before_ref = {k: ref.P[k].detach().clone() for k in trained}
            state = self.save_state(opts[block])
            u_exact = self.torch_step(opts[block], ref, trained, {k: want_g[k] for k in trained}, clip)
            self.load_state(opts[block], state)
            with torch.no_grad():
                for k in trained:
                    ref.P[k].copy_(before_ref[k])
            u_prog = self.torch_step(opts[block], ref, trained, got_g, clip)
            # And torch.optim in the program's own precision, from its
            # parameters and gradients: the rounding of the step's arithmetic
            # (the clip's norm over many squares, Adam's m where the
            # gradients of two steps nearly cancel).
            if block not in shadows:
                shadows[block] = (ref.__class__(self.pir, self.names, {k: before[k] for k in trained}, False),)
                shadows[block] += (self.optimizer(b.optimizer, [shadows[block][0].P[k] for k in trained]),)
            shadow, shadow_opt = shadows[block]
            with torch.no_grad():
                for k in trained:
                    shadow.P[k].copy_(torch.from_numpy(before[k]))
            u_own = self.torch_step(shadow_opt, shadow, trained, got_g, clip)
            for k in trained:
                # the update itself, far more sensitive than the parameter
                # (an update is ~lr * g, often below the parameter's tolerance)
                got_u = sess.params[k].astype(np.float64) - before[k].astype(np.float64)
                own = shadow.P[k].detach().numpy().astype(np.float64) - before[k].astype(np.float64)
                slack = 4 * (np.abs(u_prog[k] - u_exact[k]) + np.abs(own - u_prog[k]))
                self.update_close(f"{where}: update of {k}", got_u, u_prog[k], before[k], taint.get(k),
                                  slack)
            for k, v in sess.params.items():
                if k not in ref.buffers and k not in trained:
                    self.cmp.same("train_params", f"{where}: {k} (not trained by {block})", v, before[k])
                    continue
                want = ref.buffers[k] if k in ref.buffers else ref.P[k]
                want = want.detach().numpy()
                if k.endswith("num_batches_tracked"):
                    self.o.comparisons += 1
                    if int(v) != int(want):
                        self.o.failures.append(Failure("train_params", f"{where}: {k}",
                                                       f"got {int(v)}, expected {int(want)}"))
                    continue
                self.cmp.close("train_params", f"{where}: {k}", v, want,
                               "f64" if v.dtype == np.float64 else "f32", ignore=taint.get(k))

    @staticmethod
    def torch_step(opt, ref, trained, grads, clip) -> dict:
        """One torch.optim step from `grads`; the updates, as arrays."""
        before = {k: ref.P[k].detach().clone() for k in trained}
        for k in trained:
            g = grads[k]
            g = g if torch.is_tensor(g) else torch.from_numpy(np.array(g, copy=True))
            ref.P[k].grad = g.detach().clone().to(ref.P[k].dtype)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([ref.P[k] for k in trained], clip)
        with torch.no_grad():
            opt.step()
        return {k: (ref.P[k].detach() - before[k]).numpy() for k in trained}

    @staticmethod
    def save_state(opt) -> dict:
        return {p: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
                for p, st in opt.state.items()}

    @staticmethod
    def load_state(opt, saved: dict) -> None:
        opt.state.clear()
        for p, st in saved.items():
            opt.state[p] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}

    @staticmethod
    def taint(taint: dict, exact: dict, approx: dict) -> None:
        """Where the exact gradient is 0 up to rounding (a bias before
        batchnorm or a softmax, which shift it away), a step moves the
        parameter by the rounding noise of the float computation, which
        differs between two equally valid ones (the grads entry's kernels and
        the step's own, 1 thread's and 2's): by lr times noise with SGD, by
        up to ±lr with Adam, which divides a gradient by its own running
        magnitude. Such elements, where |exact| <= 10 max |exact - approx|
        (over the tensor) + 1e-6 * (the block's largest gradient), are left
        out of the update and parameter comparisons from then on (their
        optimizer state diverged)."""
        scale = max((float(np.abs(v).max()) for v in exact.values() if v.size), default=0.0)
        for k, e in exact.items():
            if k not in approx or not e.size:
                continue
            with np.errstate(invalid="ignore", over="ignore"):
                noise = float(np.abs(e - approx[k].astype(np.float64)).max())
            noisy = np.abs(e) <= 10 * noise + 1e-6 * scale
            taint[k] = taint.get(k, np.zeros(e.shape, bool)) | noisy

    def update_close(self, where: str, got, want, param, ignore=None, slack=0.0) -> None:
        """An update against torch.optim's: rtol 1e-3, plus the rounding of
        the parameter it was added to (4 ulps of its dtype), plus `slack`."""
        self.o.comparisons += 1
        eps = np.finfo(param.dtype).eps
        tol = 1e-3 * np.abs(want) + 4 * eps * np.abs(param.astype(np.float64)) + 1e-12 + slack
        bad = ~(np.abs(got - want) <= tol)
        if ignore is not None:
            bad &= ~ignore
        if bad.any():
            i = np.unravel_index(np.argmax(np.where(bad, np.abs(got - want), -1)), bad.shape)
            self.o.failures.append(Failure("train_update", where, (
                f"{int(bad.sum())}/{bad.size} elements differ; at {tuple(int(k) for k in i)}: "
                f"the step moved it by {got[i]!r}, torch.optim by {want[i]!r}")))

    @staticmethod
    def optimizer(spec: dict, params):
        hp = spec["hp"]
        if spec["kind"] == "sgd":
            return torch.optim.SGD(params, lr=hp["lr"], momentum=hp.get("momentum", 0.0),
                                   weight_decay=hp.get("weight_decay", 0.0))
        return torch.optim.Adam(params, lr=hp["lr"], betas=(hp.get("beta1", 0.9), hp.get("beta2", 0.999)),
                                eps=hp.get("eps", 1e-8), weight_decay=hp.get("weight_decay", 0.0))

    def check_batch(self):
        for m in self.pir.models:
            batch, time_ = 17, int(self.rng.choice(TIMES))
            inputs = make_inputs(self.pir, m.name, batch, time_, self.rng)
            full = self.prog.run(m.name, **inputs)
            batched = {n.id for n in m.inputs() if n.shape and n.shape[0] == "batch"}
            outs = {o for o, nid in m.outputs if m.get(nid).shape[:1] == ("batch",)}
            for row in (0, 8, 16):
                one = {k: (v[row:row + 1] if k in batched else v) for k, v in inputs.items()}
                single = self.prog.run(m.name, **one)
                for o in outs:
                    self.cmp.close("batch_invariance", f"{m.name}.{o}: example {row} alone vs in a "
                                   f"batch of {batch} (time {time_})", single[o], full[o][row:row + 1],
                                   self.dtype_of(m.name, o))

    def check_determinism(self):
        self.check_save_load()
        for m in self.pir.models:
            inputs = make_inputs(self.pir, m.name, 64, int(self.rng.choice(TIMES)), self.rng)
            a, b = self.prog.run(m.name, **inputs), self.prog.run(m.name, **inputs)
            for o in a:
                self.cmp.same("determinism", f"{m.name}.{o}, two calls", a[o], b[o])
        for blk in self.pir.trains:
            inputs = make_inputs(self.pir, blk.name, 64, int(self.rng.choice(TIMES)), self.rng)
            a, b = self.prog.grads(blk.name, **inputs), self.prog.grads(blk.name, **inputs)
            for k in a:
                self.cmp.same("determinism", f"{blk.name}.grads {k}, two calls", a[k], b[k])

    def check_threads(self):
        one, two, again = self.session(1), self.session(2), self.session(2)
        for k, v in two.params.items():
            if not self.cmp.same("threads", f"initial {k}, 2 threads vs 1", v, self.params0[k]):
                break
        for m in self.pir.models:
            inputs = make_inputs(self.pir, m.name, 64, int(self.rng.choice(TIMES)), self.rng)
            a, b, c = one.run(m.name, **inputs), two.run(m.name, **inputs), two.run(m.name, **inputs)
            for o in a:
                self.cmp.close("threads", f"{m.name}.{o}: 2 threads vs 1", b[o], a[o],
                               self.dtype_of(m.name, o))
                self.cmp.same("thread_determinism", f"{m.name}.{o}: 2 threads, two calls", b[o], c[o])
        for blk in self.pir.trains:
            dt = self.dtype_of(blk.name)
            inputs = make_inputs(self.pir, blk.name, 64, int(self.rng.choice(TIMES)), self.rng)
            a = one.grads(blk.name, **inputs)
            b, c = two.grads(blk.name, **inputs), two.grads(blk.name, **inputs)
            for k in a:
                self.cmp.close("threads", f"{blk.name}.grads {k}: 2 threads vs 1", b[k], a[k], dt)
                self.cmp.same("thread_determinism", f"{blk.name}.grads {k}: 2 threads, two calls",
                              b[k], c[k])
        if not self.pir.trains:
            return
        losses = {id(s): [] for s in (one, two, again)}
        taint: dict[str, np.ndarray] = {}
        for step, block, inputs in self.steps():
            g1 = one.grads(block, **inputs)
            self.taint(taint, {k: v.astype(np.float64) for k, v in g1.items()},
                       two.grads(block, **inputs))
            for s in (one, two, again):
                losses[id(s)].append(s.train(block, **inputs))
        dt = self.dtype_of(self.pir.trains[0].name)
        self.cmp.close("threads", "train losses: 2 threads vs 1", losses[id(two)], losses[id(one)], dt)
        self.cmp.same("thread_determinism", "train losses: two 2-thread sessions",
                      np.array(losses[id(two)]), np.array(losses[id(again)]))
        for k in one.params:
            a, b, c = one.params[k], two.params[k], again.params[k]
            if a.dtype.kind == "f":
                self.cmp.close("threads", f"{k} after 3 steps: 2 threads vs 1", b, a,
                               "f64" if a.dtype == np.float64 else "f32", ignore=taint.get(k))
            self.cmp.same("thread_determinism", f"{k} after 3 steps: two 2-thread sessions", b, c)


def check(prog: Program, seed: int, groups=GROUPS) -> Outcome:
    """Compile `prog` (params from `seed`) and run the checks of `groups`."""
    return Checker(prog, seed, groups).run()
