"""The oracle: the fuzzer's program evaluated op by op in PyTorch, from the
compiled program's own parameters (`prog.params`, PyTorch layouts and names).

`Reference(prog, names, params, exact=True)` computes in float64 whatever
the program's dtype (the exact answer an f32 program approximates);
`exact=False` computes in the program's own dtypes (PyTorch's own f32
rounding, which the checks use to tell a compiler bug from conditioning).

Evaluation notes where an op misbehaves numerically; a comparison against
such a result is skipped, not failed (`flags`): a non-finite or huge value
(> 1e6), a log/sqrt of a value near 0, a division by a value near 0, a
bce prediction that saturates to 0 or 1.
"""
from __future__ import annotations

import numpy as np
import torch

from .ir import BN_BUFFERS, Block, Invalid, Program

F = torch.nn.functional
PARTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
HUGE = 1e6


class Reference:
    def __init__(self, prog: Program, names: dict, params: dict[str, np.ndarray], exact: bool = True):
        self.prog, self.names, self.exact = prog, names, exact
        self.P: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        for k, v in params.items():
            t = self.tensor(v).clone()
            if k.rsplit(".", 1)[-1] in BN_BUFFERS:
                self.buffers[k] = t
            else:
                self.P[k] = t.requires_grad_(t.is_floating_point())
        self.flags: list[str] = []
        self._modules: dict = {}

    def tensor(self, v) -> torch.Tensor:
        a = np.asarray(v)
        t = torch.from_numpy(np.array(a, copy=True))
        if a.dtype.kind == "f" and self.exact:
            t = t.to(torch.float64)
        return t

    # ----------------------------------------------------------- entries

    def forward(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A model's inference entry: {output name: array}."""
        b = self.prog.block(model)
        with torch.no_grad():
            env = self.block(b, {k: self.tensor(v) for k, v in inputs.items()}, "infer")
        return {o: env[nid].detach().numpy() for o, nid in b.outputs}

    def loss_and_grads(self, block: str, inputs: dict[str, np.ndarray], mode: str = "grads"):
        """(loss, {param: gradient}) of a train block; mode 'train' also
        updates the batchnorm running statistics, as a training step does."""
        for p in self.P.values():
            p.grad = None
        b = self.prog.block(block)
        env = self.block(b, {k: self.tensor(v) for k, v in inputs.items()}, mode)
        loss = env[b.loss]
        loss.backward()
        grads = {k: p.grad.detach().clone() for k, p in self.P.items() if p.grad is not None}
        return loss.item(), grads

    # -------------------------------------------------------------- blocks

    def block(self, b: Block, args: dict[str, torch.Tensor], mode: str) -> dict[str, torch.Tensor]:
        env: dict[str, torch.Tensor] = {}
        for n in b.nodes:
            if n.op == "input":
                env[n.id] = args[n.id]
                continue
            xs = [env[a] if isinstance(a, str) else a for a in n.args]
            y = self.op(b, n, xs, env, mode)
            if y.is_floating_point():
                with torch.no_grad():
                    if not torch.isfinite(y).all():
                        self.flag(f"non-finite value at {b.name}.{n.id} ({n.op})")
                    elif y.numel() and y.abs().max() > HUGE:
                        self.flag(f"huge value at {b.name}.{n.id} ({n.op})")
            env[n.id] = y
        return env

    def flag(self, why: str) -> None:
        if why not in self.flags:
            self.flags.append(why)

    def saturation(self, b: Block, n, y):
        """y, flagged when a tanh (an rnn's state) is within a few ulps of
        +-1 in the program's dtype: its derivative 1 - y^2 is then rounding
        noise in both dlc and PyTorch (0 in one, 1e-7 in the other: seed 5191)."""
        eps = 6e-8 if (n.dtype or "f32") == "f32" else 1.2e-16
        with torch.no_grad():
            if y.numel() and y.abs().max() > 1 - 4 * eps:
                self.flag(f"tanh saturated at {b.name}.{n.id} ({n.op})")
        return y

    def name(self, b: Block, n) -> str:
        return self.names[(b.name, n.id)]

    def op(self, b: Block, n, xs, env, mode):
        op, a = n.op, n.attrs
        x = xs[0] if xs else None
        if op == "relu":
            return torch.relu(x)
        if op == "sigmoid":
            return torch.sigmoid(x)
        if op == "tanh":
            return self.saturation(b, n, torch.tanh(x))
        if op == "leaky_relu":
            return F.leaky_relu(x, a.get("slope", 0.01))
        if op == "softmax":
            return torch.softmax(x, -1)
        if op == "log_softmax":
            with torch.no_grad():
                # x - logsumexp(x) cancels: an f32 result near -9 from inputs
                # near 2e4 carries their rounding, 1e-3 absolute (seed 6607).
                if (n.dtype or "f32") == "f32" and x.numel() and x.abs().max() > 1e3:
                    self.flag(f"log_softmax of values beyond 1e3 at {b.name}.{n.id}")
            return torch.log_softmax(x, -1)
        if op == "exp":
            return torch.exp(x)
        if op in ("log", "sqrt"):
            with torch.no_grad():
                if x.numel() and x.min() < 1e-4:
                    self.flag(f"{op} of a value near 0 at {b.name}.{n.id}")
            return torch.log(x) if op == "log" else torch.sqrt(x)
        if op == "dropout":
            if mode != "infer" and a.get("p", 0.5) > 0:
                raise Invalid("dropout p > 0 in training has no reference")
            return x
        if op == "neg":
            return -x
        if op in ("+", "-", "*", "/"):
            l, r = xs
            if op == "/":
                with torch.no_grad():
                    d = r.abs().min() if isinstance(r, torch.Tensor) else abs(r)
                    if d < 1e-3:
                        self.flag(f"division by a value near 0 at {b.name}.{n.id}")
            return {"+": lambda: l + r, "-": lambda: l - r, "*": lambda: l * r,
                    "/": lambda: l / r}[op]()
        if op == "dense":
            name = self.name(b, n)
            return F.linear(x, self.P[f"{name}.weight"],
                            self.P[f"{name}.bias"] if a.get("bias", True) else None)
        if op == "conv2d":
            name = self.name(b, n)
            return F.conv2d(x, self.P[f"{name}.weight"],
                            self.P[f"{name}.bias"] if a.get("bias", True) else None,
                            stride=a.get("stride", 1), padding=a.get("padding", 0),
                            dilation=a.get("dilation", 1), groups=a.get("groups", 1))
        if op in ("maxpool", "avgpool"):
            size = a["size"]
            stride = a.get("stride") or size
            if op == "maxpool":
                return F.max_pool2d(x, size, stride, a.get("padding", 0))
            return F.avg_pool2d(x, size, stride, a.get("padding", 0), count_include_pad=True)
        if op == "global_avgpool":
            return x.mean(dim=(2, 3), keepdim=True)
        if op == "flatten":
            return x.flatten(1)
        if op == "reshape":
            return x.reshape(tuple(a["dims"]))
        if op == "transpose":
            return x.permute(*a["dims"])
        if op == "concat":
            return torch.cat([xs[0], xs[1]], dim=a.get("axis", 1))
        if op == "batchnorm":
            return self.batchnorm(b, n, x, mode)
        if op == "embedding":
            return F.embedding(x.long(), self.P[f"{self.name(b, n)}.weight"])
        if op in ("rnn", "lstm"):
            ln = env[a["lengths"]] if a.get("lengths") else None
            return self.saturation(b, n, self.recurrent(b, n, x, ln))
        if op == "last":
            if a.get("lengths"):
                ln = env[a["lengths"]].long()
                return x[torch.arange(x.shape[0]), ln - 1]
            return x[:, -1]
        if op == "cross_entropy":
            return F.cross_entropy(x, xs[1].long())
        if op == "mse":
            return F.mse_loss(x, xs[1])
        if op == "bce":
            with torch.no_grad():
                if x.numel() and (x.min() < 1e-6 or x.max() > 1 - 1e-6):
                    self.flag(f"bce of a saturated prediction at {b.name}.{n.id}")
            # Written out: F.binary_cross_entropy raises on a NaN input where
            # dlc (and PyTorch's own formula) give a NaN loss. Logs clamped at
            # -100, as PyTorch's.
            t = xs[1]
            logs = t * torch.log(x).clamp(min=-100) + (1 - t) * torch.log(1 - x).clamp(min=-100)
            return -logs.mean()
        if op == "call":
            callee = self.prog.block(a["model"])
            sub = {inp.id: v for inp, v in zip(callee.inputs(), xs)}
            out = self.block(callee, sub, mode)
            outs = dict(callee.outputs)
            return out[outs[a.get("field") or next(iter(outs))]]
        raise AssertionError(f"the oracle has no rule for op {op!r}, which the generator emitted")

    def batchnorm(self, b, n, x, mode):
        name = self.name(b, n)
        w, bias = self.P[f"{name}.weight"], self.P[f"{name}.bias"]
        rm, rv = self.buffers[f"{name}.running_mean"], self.buffers[f"{name}.running_var"]
        eps, momentum = n.attrs.get("eps", 1e-5), n.attrs.get("momentum", 0.1)
        if mode == "infer":
            return F.batch_norm(x, rm, rv, w, bias, False, momentum, eps)
        if x.numel() // x.shape[1] <= 1:
            self.flag("batchnorm over one value per channel")
            return (x - x) * w.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)   # torch raises here
        if mode == "train":   # the running statistics' update, as a side effect
            with torch.no_grad():
                F.batch_norm(x, rm, rv, None, None, True, momentum, eps)
            self.buffers[f"{name}.num_batches_tracked"] += 1
        # Batch statistics written out: torch 2.13's batch_norm backward is
        # wrong for an [N, C, H, 1] input whose gradient arrives permuted
        # (finite differences agree with dlc; a fuzzer finding, seed 5105).
        mean = x.mean((0, 2, 3), keepdim=True)
        var = x.var((0, 2, 3), unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps) * w.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)

    def recurrent(self, b, n, x, lengths):
        name, hidden = self.name(b, n), n.attrs["hidden"]
        bi = bool(n.attrs.get("bidirectional"))
        key = (n.op, x.shape[2], hidden, bi, x.dtype)
        mod = self._modules.get(key)
        if mod is None:
            cls = torch.nn.LSTM if n.op == "lstm" else torch.nn.RNN
            mod = cls(x.shape[2], hidden, batch_first=True, bidirectional=bi).to(x.dtype)
            self._modules[key] = mod
        weights = {f"{part}_l0{sfx}": self.P[f"{name}.{part}{sfx}"]
                   for sfx in (("", "_reverse") if bi else ("",)) for part in PARTS}
        if lengths is None:
            y, _ = torch.func.functional_call(mod, weights, (x,))
            return y
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths.long().cpu(), batch_first=True,
                                                         enforce_sorted=False)
        out, _ = torch.func.functional_call(mod, weights, (packed,))
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return y
