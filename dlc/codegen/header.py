"""The C interface of a compiled program: a header `<name>.h` with typed,
documented functions per entry point, and the C sources implementing them,
which `dlc compile --emit=lib` compiles into the static archive.

Two layers, both over the descriptor the compiled object exports as
`<name>_program()` (runtime/include/dlc/program.h):
  - session functions (`<name>_<entry>(session, syms..., inputs..., outputs...)`)
    run an entry through the runtime's dlc_session_run, which owns and
    allocates the params, state, outputs and scratch; they live in
    `<name>_session.c`, which needs the runtime.
  - no-malloc functions (`<name>_<entry>_run(weights, syms..., inputs...,
    outputs..., workspace, host)`) call the entry directly on regions the
    caller owns, sized by the header's macros and `_workspace_bytes`
    functions; they live in `<name>_bare.c`, which needs only the compiled
    object, so a program linked this way needs no runtime and no malloc.
    Seeded init and weights files in that layout go through the runtime's
    dlc_tensors_* functions (in the session file, so the bare one stays
    runtime-free).
The weights region holds every param, then every optimizer state, in
tensor-table order, each at an offset aligned to L.ALIGNMENT.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

from .. import __version__
from ..errors import DlcError
from ..ir import loops as L
from ..lower import EntrySlots, TensorSlot

C_TYPES = {"f32": "float", "f64": "double", "i32": "int32_t"}
DTYPE_ENUM = {"f32": "DLC_F32", "f64": "DLC_F64", "i32": "DLC_I32"}
KIND_TEXT = {
    "infer": "model {name}: runs the model on its inputs.",
    "train": "train block {name}: one training step (forward, loss, backward and "
             "optimizer update of the params); `loss` receives the loss before the step.",
    "grads": "gradients of train block {base}: the loss and the gradient of each "
             "param it trains (named as the param), without updating anything.",
    "input_grads": "gradients of train block {base}: the loss, the gradient of each param "
                   "it trains (named as the param) and of each float input (named as the "
                   "input), without updating anything.",
    "step_grads": "the first half of a step of train block {base}: the loss and the gradient "
                  "of each param it trains, with the forward pass's writes (batchnorm's "
                  "running statistics, dropout's step) but no update.",
    "apply": "the second half of a step of train block {base}: the optimizer's update of "
             "the params from the given gradients (named as the params), e.g. averaged "
             "across processes.",
}
# C and C++ keywords, and the generated functions' own parameter and local names.
RESERVED = set("""auto break case char const continue default do double else enum extern
float for goto if inline int long register restrict return short signed sizeof static
struct switch typedef union unsigned void volatile while bool class delete new operator
private protected public template this throw try catch virtual namespace using
session weights workspace host table tensors_ syms_ names_ in_ out_ st_ i_""".split())


def c_ident(name: str) -> str:
    """A C identifier for a .dl name: other characters become '_'."""
    s = re.sub(r"[^0-9A-Za-z_]", "_", name)
    return "_" + s if s[:1].isdigit() else s


@dataclass(frozen=True)
class Arg:
    """One parameter of a generated function."""
    c_name: str
    slot: TensorSlot | None = None  # None for a symbol
    index: int = -1                 # tensor-table index


@dataclass(frozen=True)
class Entry:
    index: int          # in the descriptor
    slots: EntrySlots
    c_name: str         # <prefix>_<entry>
    syms: list[int]     # indices of the symbols its inputs bind, program order
    args: list[Arg]     # syms, inputs, outputs


class Interface:
    """What the header and sources are generated from."""

    def __init__(self, prefix: str, source_file: str, prog: L.LoopProgram,
                 entries: list[EntrySlots]):
        self.prefix = c_ident(prefix)
        self.macro = self.prefix.upper()
        self.source_file = source_file
        self.syms = [v.name for v in prog.syms]
        self.tensors = prog.tensors
        # Offsets in the weights region; params precede states in the table.
        self.offsets: dict[int, int] = {}
        self.offset_macros: dict[int, str] = {}
        self.params_bytes = self.weights_bytes = 0
        taken: set[str] = set()
        for i, t in enumerate(self.tensors):
            if t.role in ("param", "state"):
                self.offsets[i] = self.weights_bytes
                self.offset_macros[i] = self._fresh(t.name.upper(), taken)
                self.weights_bytes += -(-self.fixed_bytes(t) // L.ALIGNMENT) * L.ALIGNMENT
                if t.role == "param":
                    self.params_bytes = self.weights_bytes
        self.entries = []
        seen: dict[str, str] = {}
        for k, e in enumerate(entries):
            c_name = f"{self.prefix}_{c_ident(e.name)}"
            if c_name in seen:
                raise DlcError(f"entries '{seen[c_name]}' and '{e.name}' both become the C "
                               f"name {c_name}; rename one")
            seen[c_name] = e.name
            used = {d for i in e.inputs for d in self.tensors[i].dims if isinstance(d, str)}
            syms = [j for j, s in enumerate(self.syms) if s in used]
            names = set(RESERVED)
            args = []
            for j in syms:
                args.append(Arg(self._fresh(self.syms[j], names)))
            for i in [*e.inputs, *e.outputs]:
                args.append(Arg(self._fresh(self.tensors[i].name, names), self.tensors[i], i))
            self.entries.append(Entry(k, e, c_name, syms, args))

    @staticmethod
    def _fresh(name: str, taken: set[str]) -> str:
        c = c_ident(name)
        while c in taken:
            c += "_"
        taken.add(c)
        return c

    @staticmethod
    def fixed_bytes(t: TensorSlot) -> int:
        n = L.DTYPE_BYTES[t.dtype]
        for d in t.dims:
            n *= d
        return n

    def shape(self, t: TensorSlot) -> str:
        return f"{t.dtype}[{', '.join(str(d) for d in t.dims)}]"

    def sym_arg(self, e: Entry, sym: str) -> str:
        return e.args[e.syms.index(self.syms.index(sym))].c_name

    def dim_factors(self, e: Entry, t: TensorSlot) -> list[str]:
        """A tensor's dims as C size_t expressions, in the entry's sym args."""
        return [f"(size_t)({self.sym_arg(e, d)})" if isinstance(d, str) else f"(size_t){d}"
                for d in t.dims]

    def numel_expr(self, e: Entry, t: TensorSlot) -> str:
        return " * ".join(self.dim_factors(e, t)) or "(size_t)1"

    def bytes_expr(self, e: Entry, t: TensorSlot) -> str:
        return " * ".join(self.dim_factors(e, t) + [f"(size_t){L.DTYPE_BYTES[t.dtype]}"])

    @staticmethod
    def range_text(t: TensorSlot) -> str:
        """An integer input's valid values (TensorSlot.valid): "[1, time]"."""
        v = t.valid
        extra = f" or {v.extra}" if v.extra is not None else ""
        if v.sym is None:
            return f"[{v.lo}, {v.hi}]{extra}"
        offset = f" + {v.hi}" if v.hi > 0 else f" - {-v.hi}" if v.hi < 0 else ""
        return f"[{v.lo}, {v.sym}{offset}]{extra}"

    @staticmethod
    def unless_extra(a) -> str:
        """The C condition's exception for an input's extra valid value."""
        extra = a.slot.valid.extra
        return f" && {a.c_name}[i_] != {extra}" if extra is not None else ""

    def hi_expr(self, e: Entry, t: TensorSlot) -> str:
        """A C expression of an integer input's largest valid value."""
        v = t.valid
        if v.sym is None:
            return f"{v.hi}"
        return f"(int64_t){v.hi} + {self.sym_arg(e, v.sym)}" if v.hi else self.sym_arg(e, v.sym)

    def params(self, e: Entry) -> list[str]:
        """The C parameters of entry e's functions: syms, inputs, outputs."""
        out = []
        for a in e.args:
            if a.slot is None:
                out.append(f"int64_t {a.c_name}")
            elif a.slot.role == "input":
                out.append(f"const {C_TYPES[a.slot.dtype]} *{a.c_name}")
            else:
                out.append(f"{C_TYPES[a.slot.dtype]} *{a.c_name}")
        return out


def _doc_args(itf: Interface, e: Entry) -> list[str]:
    width = max(len(a.c_name) for a in e.args)
    lines = []
    for a in e.args:
        if a.slot is None:
            lines.append(f" *   {a.c_name:<{width}}  a symbolic size, >= 1")
        else:
            io = "in " if a.slot.role == "input" else "out"
            valid = f", values in {itf.range_text(a.slot)}" if a.slot.valid else ""
            lines.append(f" *   {a.c_name:<{width}}  {io} {itf.shape(a.slot)}{valid}")
    return lines


def _kind_text(e: Entry) -> str:
    """The entry's description, wrapped for a comment opened with '/* '."""
    base, _, suffix = e.slots.name.rpartition(".")
    kind = suffix if suffix in ("input_grads", "step_grads", "apply") else e.slots.kind
    text = KIND_TEXT[kind].format(name=e.slots.name, base=base or e.slots.name)
    return "\n * ".join(textwrap.wrap(text, 74))


def header(itf: Interface) -> str:
    p, m = itf.prefix, itf.macro
    syms = ", ".join(itf.syms) or "(none)"
    out = [f"""/* {p}.h - the C interface of {itf.source_file}.
 * Generated by dlc {__version__} (`dlc compile --emit=lib`); do not edit.
 *
 * Link with lib{p}.a and the dlc runtime's static library, e.g.
 *   cc app.c lib{p}.a PREFIX/lib/libdlcrt.a -lm -ldl
 * (CMake: find_package(dlc), dlc_add_program(), target dlc::dlcrt). A
 * program calling only the no-malloc functions without _init/_load/_save
 * needs no runtime: lib{p}.a and -lm suffice. See docs/embedding.md.
 *
 * Tensors are dense and row-major (C order): f32 is float, f64 double, i32
 * int32_t. Symbolic sizes ({syms}) are given as int64_t arguments, each
 * >= 1; the other dims are fixed. Output arrays must not overlap inputs.
 *
 * With a runtime session (the runtime allocates params, optimizer state,
 * outputs and scratch):
 *   dlc_program *program; dlc_session *session;
 *   {p}_open(&program);
 *   dlc_session_create(program, NULL, &session);  (params from seed 0)
 *   dlc_session_load(session, "weights.safetensors");
 *   {itf.entries[0].c_name if itf.entries else p + "_ENTRY"}(session, ...);
 *
 * No-malloc (nothing is allocated; the caller passes every region):
 *   a weights region of {m}_WEIGHTS_BYTES bytes, filled by
 *   {p}_init_weights, {p}_load_weights or the caller; the inputs and outputs
 *   ({m}_<ENTRY>_<TENSOR>_BYTES(sizes)); a workspace of
 *   <entry>_workspace_bytes(sizes) bytes; then {p}_<entry>_run(...).
 */
#ifndef {m}_H
#define {m}_H

#include <stddef.h>
#include <stdint.h>

#include "dlc/runtime.h"

#ifdef __cplusplus
extern "C" {{
#endif

/* The compiled program's descriptor (dlc/program.h): static data, valid for
 * the life of the process. */
const dlc_program_desc *{p}_program(void);

/* ---- with a runtime session ------------------------------------------- */

/* A dlc_program for the program linked in (validated as dlc_program_load
 * does; errors ABI and FORMAT), for dlc_session_create and the rest of
 * dlc/runtime.h. Release it with dlc_program_release. */
dlc_status {p}_open(dlc_program **out_program);

"""]
    for e in itf.entries:
        out.append(f"/* {_kind_text(e)}\n *\n" + "\n".join(_doc_args(itf, e)) + f"""
 *
 * Runs entry '{e.slots.name}' of `session` (created from {p}_open) and
 * copies each output into the caller's array (an output given as NULL is
 * not copied). Errors are those of dlc_session_run, with its message in
 * dlc_status_message(). */
dlc_status {e.c_name}(dlc_session *session, {", ".join(itf.params(e))});

""")
    out.append(f"""/* ---- no-malloc -------------------------------------------------------- */

/* The alignment, in bytes, of the weights region and the workspace (inputs
 * and outputs need only their element's alignment). */
#define {m}_ALIGNMENT {L.ALIGNMENT}
/* The number of entries of the descriptor's tensor table. */
#define {m}_N_TENSORS {len(itf.tensors)}
/* The weights region: every param, then every optimizer state. */
#define {m}_WEIGHTS_BYTES {itf.weights_bytes}
/* The params alone: the first {m}_PARAMS_BYTES bytes of the region. */
#define {m}_PARAMS_BYTES {itf.params_bytes}
/* Where each param and state is in the weights region, in bytes. */
""")
    for i, off in itf.offsets.items():
        t = itf.tensors[i]
        # A state that does not start at zero (a learning rate) says its value:
        # an application that fills the weights itself must write it.
        start = f", starts at {t.init.a!r}" if t.role == "state" and t.init.kind == "constant" else ""
        out.append(f"#define {m}_{itf.offset_macros[i]}_OFFSET {off} /* {t.role} {itf.shape(t)}{start} */\n")
    out.append("""
/* Sizes in bytes of the inputs and outputs, from the symbolic sizes. */
""")
    for e in itf.entries:
        sym_params = ", ".join(a.c_name for a in e.args if a.slot is None)
        for a in e.args:
            if a.slot is not None:
                out.append(f"#define {e.c_name.upper()}_{a.c_name.upper()}_BYTES({sym_params}) "
                           f"({itf.bytes_expr(e, a.slot)})\n")
    out.append(f"""
/* The weights region as a tensor table (one pointer per tensor, NULL for
 * inputs and outputs), for dlc_tensors_init, _load and _save of
 * dlc/runtime.h. */
void {p}_weights_table(void *weights, void *table[{m}_N_TENSORS]);

/* Fills the params of the weights region by their init rules from `seed`,
 * with the values a session gets, and the optimizer state (zero moments,
 * the program's learning rates). Allocates nothing; needs the runtime. */
dlc_status {p}_init_weights(void *weights, uint64_t seed);

/* Loads the params of the weights region from a safetensors file (as saved
 * by dlc_session_save or Python's save), all or nothing; and saves them.
 * Need the runtime; loading allocates while it reads. */
dlc_status {p}_load_weights(void *weights, const char *path);
dlc_status {p}_save_weights(void *weights, const char *path);
""")
    for e in itf.entries:
        syms = ", ".join(f"int64_t {a.c_name}" for a in e.args if a.slot is None) or "void"
        out.append(f"""
/* Bytes of scratch memory entry '{e.slots.name}' needs (0: none, and the
 * workspace may be NULL). */
size_t {e.c_name}_workspace_bytes({syms});

/* {_kind_text(e)}
 * Runs on caller memory and allocates nothing:
""" + "\n".join(_doc_args(itf, e)) + f"""
 * `weights` is the weights region; `workspace` has {e.c_name}_workspace_bytes()
 * bytes; `host` offers a thread pool to the compiled code (dlc/program.h),
 * or is NULL to run on the calling thread. Returns DLC_OK;
 * DLC_ERR_INVALID_ARGUMENT (no message) for a size < 1, a NULL or
 * misaligned region, or an integer input outside its values;
 * DLC_ERR_INTERNAL if the compiled code failed. */
dlc_status {e.c_name}_run(void *weights, {", ".join(itf.params(e))},
    void *workspace, const dlc_host *host);
""")
    out.append(f"""
#ifdef __cplusplus
}}
#endif
#endif /* {m}_H */
""")
    return "".join(out)


def session_source(itf: Interface) -> str:
    """The functions that need the runtime."""
    p, m = itf.prefix, itf.macro
    out = [f"""/* Generated by dlc {__version__}; do not edit. The functions of {p}.h
 * that use the runtime. */
#include <string.h>

#include "{p}.h"

dlc_status {p}_open(dlc_program **out_program) {{
  return dlc_program_from_descriptor({p}_program(), "{p}", out_program);
}}

static size_t nbytes(const dlc_tensor *t) {{
  size_t n = t->dtype == DLC_F64 ? 8 : 4;
  for (int32_t k = 0; k < t->rank; k++)
    n *= (size_t)t->dims[k];
  return n;
}}

dlc_status {p}_init_weights(void *weights, uint64_t seed) {{
  void *table[{m}_N_TENSORS];
  {p}_weights_table(weights, table);
  return dlc_tensors_init({p}_program(), table, seed);
}}

dlc_status {p}_load_weights(void *weights, const char *path) {{
  void *table[{m}_N_TENSORS];
  {p}_weights_table(weights, table);
  return dlc_tensors_load({p}_program(), table, path);
}}

dlc_status {p}_save_weights(void *weights, const char *path) {{
  void *table[{m}_N_TENSORS];
  {p}_weights_table(weights, table);
  return dlc_tensors_save({p}_program(), table, path);
}}
"""]
    for e in itf.entries:
        ins = [a for a in e.args if a.slot is not None and a.slot.role == "input"]
        outs = [a for a in e.args if a.slot is not None and a.slot.role == "output"]
        body = [f"  static const char *const names_[{max(len(ins), 1)}] = "
                f"{{{', '.join(chr(34) + a.slot.name + chr(34) for a in ins) or 'NULL'}}};",
                f"  dlc_tensor in_[{max(len(ins), 1)}], out_[{max(len(outs), 1)}];",
                "  memset(in_, 0, sizeof in_);"]
        for k, a in enumerate(ins):
            body.append(f"  in_[{k}].data = (void *){a.c_name};")
            body.append(f"  in_[{k}].dtype = {DTYPE_ENUM[a.slot.dtype]};")
            body.append(f"  in_[{k}].rank = {len(a.slot.dims)};")
            for j, d in enumerate(a.slot.dims):
                body.append(f"  in_[{k}].dims[{j}] = {itf.sym_arg(e, d) if isinstance(d, str) else d};")
        body.append(f"  dlc_status st_ = dlc_session_run(session, \"{e.slots.name}\", {len(ins)}, "
                    f"names_, in_, {len(outs)}, out_);")
        body.append("  if (st_ != DLC_OK)\n    return st_;")
        for k, a in enumerate(outs):
            body.append(f"  if ({a.c_name} != NULL)\n    memcpy({a.c_name}, out_[{k}].data, nbytes(&out_[{k}]));")
        body.append("  return DLC_OK;")
        out.append(f"\ndlc_status {e.c_name}(dlc_session *session, {', '.join(itf.params(e))}) {{\n"
                   + "\n".join(body) + "\n}\n")
    return "".join(out)


def bare_source(itf: Interface) -> str:
    """The no-malloc functions: only the compiled object is needed."""
    p, m = itf.prefix, itf.macro
    n_syms = max(len(itf.syms), 1)
    out = [f"""/* Generated by dlc {__version__}; do not edit. The no-malloc functions of
 * {p}.h: they call the compiled entries directly and need no runtime. */
#include "{p}.h"

static int misaligned(const void *p) {{
  return ((uintptr_t)p & ({m}_ALIGNMENT - 1)) != 0;
}}

void {p}_weights_table(void *weights, void *table[{m}_N_TENSORS]) {{
  for (int32_t i = 0; i < {m}_N_TENSORS; i++)
    table[i] = NULL;
"""]
    for i, off in itf.offsets.items():
        out.append(f"  table[{i}] = (char *)weights + {off};\n")
    out.append("}\n")
    for e in itf.entries:
        sym_args = [a for a in e.args if a.slot is None]
        syms = ", ".join(f"int64_t {a.c_name}" for a in sym_args) or "void"
        set_syms = "".join(f"  syms_[{j}] = {a.c_name};\n" for j, a in zip(e.syms, sym_args))
        out.append(f"""
size_t {e.c_name}_workspace_bytes({syms}) {{
  int64_t syms_[{n_syms}] = {{0}};
{set_syms}  return (size_t){p}_program()->entries[{e.index}].workspace_bytes(syms_);
}}
""")
        checks = [f"{a.c_name} < 1" for a in sym_args]
        checks += ["weights == NULL", "misaligned(weights)"]
        for a in e.args:
            if a.slot is not None:
                checks.append(f"{a.c_name} == NULL")
        checks.append("misaligned(workspace)")
        ws_call = f"{e.c_name}_workspace_bytes({', '.join(a.c_name for a in sym_args)})"
        condition = " ||\n      ".join(checks)
        # Integer inputs outside their ranges (tokens, labels, lengths), as
        # dlc_session_run refuses them.
        ranges = "".join(f"""  for (size_t i_ = 0; i_ < {itf.numel_expr(e, a.slot)}; i_++)
    if (({a.c_name}[i_] < {a.slot.valid.lo} || {a.c_name}[i_] > {itf.hi_expr(e, a.slot)}){itf.unless_extra(a)})
      return DLC_ERR_INVALID_ARGUMENT;
""" for a in e.args if a.slot is not None and a.slot.valid is not None)
        set_tensors = "".join(f"  tensors_[{a.index}] = (void *){a.c_name};\n"
                              for a in e.args if a.slot is not None)
        out.append(f"""
dlc_status {e.c_name}_run(void *weights, {", ".join(itf.params(e))},
    void *workspace, const dlc_host *host) {{
  if ({condition} ||
      (workspace == NULL && {ws_call} > 0))
    return DLC_ERR_INVALID_ARGUMENT;
{ranges}  void *tensors_[{m}_N_TENSORS];
  int64_t syms_[{n_syms}] = {{0}};
  {p}_weights_table(weights, tensors_);
{set_syms}{set_tensors}  return {p}_program()->entries[{e.index}].run(tensors_, syms_, workspace, host) == 0
             ? DLC_OK : DLC_ERR_INTERNAL;
}}
""")
    return "".join(out)
