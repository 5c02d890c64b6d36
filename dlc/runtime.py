"""Python bindings of the dlc C runtime (cffi in ABI mode: no compile step).

Owns the loading of the runtime library, the Program and Session objects
over its handles, and the conversion of numpy arrays to and from its tensors.
Status codes become the exceptions of `dlc.errors`, carrying the runtime's
message.

Where the runtime library comes from, first match wins:
  1. `$DLC_RUNTIME_LIB`, a path to the library;
  2. `dlc/lib/libdlcrt.so` beside this file: an installed wheel (`pip install .`);
  3. a source checkout (this file's parent holds `runtime/CMakeLists.txt`):
     `build/python/runtime/libdlcrt.so`, configured (runtime only) and built
     with cmake on first use and rebuilt when a file under `runtime/` is newer
     than it; its own subdirectory, so `cmake -B build` of the whole project
     can share `build/`;
  4. a source checkout without cmake: the library of an installed dlc wheel,
     found through the package metadata (importing dlc from the repository
     root shadows the installed package, but not its files).
"""
from __future__ import annotations

import fcntl
import importlib.metadata
import math
import os
import shutil
import subprocess
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cffi import FFI

from .errors import (STATUS_ERRORS, InvalidArgumentError, RuntimeError_,
                     ToolError, UnavailableError)
from .ir.loops import ALIGNMENT

# Mirrors dlc/program.h and dlc/runtime.h; tests/runtime/test_bindings.py
# compiles it against the real headers so the two cannot drift apart.
CDEF = """
typedef enum dlc_dtype { DLC_F32 = 0, DLC_F64 = 1, DLC_I32 = 2 } dlc_dtype;
typedef enum dlc_role { DLC_ROLE_PARAM = 0, DLC_ROLE_STATE = 1,
                        DLC_ROLE_INPUT = 2, DLC_ROLE_OUTPUT = 3 } dlc_role;
typedef enum dlc_init_kind { DLC_INIT_ZEROS = 0, DLC_INIT_ONES = 1,
                             DLC_INIT_UNIFORM = 2, DLC_INIT_NORMAL = 3,
                             DLC_INIT_CONSTANT = 4 } dlc_init_kind;
typedef struct dlc_tensor_desc {
  const char *name;
  int32_t role;
  int32_t dtype;
  int32_t rank;
  int32_t init;
  const int64_t *dims;
  double init_a;
  double init_b;
  int32_t bounded;
  int32_t hi_sym;
  int64_t lo;
  int64_t hi;
  int32_t has_extra;
  int64_t extra;
} dlc_tensor_desc;
typedef int32_t (*dlc_entry_fn)(void *const *tensors, const int64_t *syms,
                                void *workspace);
typedef int64_t (*dlc_workspace_fn)(const int64_t *syms);
typedef enum dlc_entry_kind { DLC_ENTRY_INFER = 0, DLC_ENTRY_TRAIN = 1,
                              DLC_ENTRY_GRADS = 2 } dlc_entry_kind;
typedef struct dlc_entry_desc {
  const char *name;
  int32_t kind;
  int32_t n_inputs;
  const int32_t *inputs;
  int32_t n_outputs;
  const int32_t *outputs;
  dlc_entry_fn run;
  dlc_workspace_fn workspace_bytes;
} dlc_entry_desc;
typedef struct dlc_program_desc {
  int32_t abi_version;
  int32_t n_syms;
  const char *const *sym_names;
  int32_t n_tensors;
  const dlc_tensor_desc *tensors;
  int32_t n_entries;
  const dlc_entry_desc *entries;
} dlc_program_desc;

typedef enum dlc_status {
  DLC_OK = 0, DLC_ERR_INVALID_ARGUMENT = 1, DLC_ERR_NOT_FOUND = 2,
  DLC_ERR_IO = 3, DLC_ERR_FORMAT = 4, DLC_ERR_ABI = 5,
  DLC_ERR_OUT_OF_MEMORY = 6, DLC_ERR_UNAVAILABLE = 7, DLC_ERR_INTERNAL = 8
} dlc_status;
#define DLC_MAX_THREADS 1024
const char *dlc_status_message(void);
const char *dlc_status_name(dlc_status status);
typedef struct dlc_tensor {
  void *data;
  int32_t dtype;
  int32_t rank;
  int64_t dims[8];
} dlc_tensor;
typedef struct dlc_program dlc_program;
dlc_status dlc_program_load(const char *path, dlc_program **out_program);
void dlc_program_release(dlc_program *program);
dlc_status dlc_program_descriptor(const dlc_program *program,
                                  const dlc_program_desc **out_desc);
typedef struct dlc_session dlc_session;
typedef struct dlc_session_options {
  uint64_t seed;
  int32_t num_threads;
} dlc_session_options;
dlc_status dlc_session_options_initialize(dlc_session_options *options);
dlc_status dlc_session_create(dlc_program *program,
                              const dlc_session_options *options,
                              dlc_session **out_session);
void dlc_session_release(dlc_session *session);
dlc_status dlc_session_init_params(dlc_session *session, uint64_t seed);
dlc_status dlc_session_param_count(const dlc_session *session, int32_t *out_count);
dlc_status dlc_session_param_at(dlc_session *session, int32_t i,
                                const char **out_name, dlc_tensor *out_view);
dlc_status dlc_session_state_count(const dlc_session *session, int32_t *out_count);
dlc_status dlc_session_state_at(dlc_session *session, int32_t i,
                                const char **out_name, dlc_tensor *out_view);
dlc_status dlc_session_param(dlc_session *session, const char *name,
                             dlc_tensor *out_view);
dlc_status dlc_session_set_param(dlc_session *session, const char *name,
                                 const dlc_tensor *value);
dlc_status dlc_session_run(dlc_session *session, const char *entry,
                           int32_t n_inputs, const char *const *input_names,
                           const dlc_tensor *inputs, int32_t n_outputs,
                           dlc_tensor *outputs);
dlc_status dlc_session_run_into(dlc_session *session, const char *entry,
                                int32_t n_inputs, const char *const *input_names,
                                const dlc_tensor *inputs, int32_t n_outputs,
                                const dlc_tensor *outputs);
dlc_status dlc_session_set_device_io(dlc_session *session, int32_t enabled);
dlc_status dlc_session_save(const dlc_session *session, const char *path);
dlc_status dlc_session_save_checkpoint(const dlc_session *session, const char *path);
dlc_status dlc_session_load(dlc_session *session, const char *path);
dlc_status dlc_session_load_partial(dlc_session *session, const char *path,
                                    int32_t n_found, uint8_t *found);
dlc_status dlc_program_from_descriptor(const dlc_program_desc *desc,
                                       const char *name, dlc_program **out_program);
dlc_status dlc_tensors_init(const dlc_program_desc *desc, void *const *tensors,
                            uint64_t seed);
dlc_status dlc_tensors_load(const dlc_program_desc *desc, void *const *tensors,
                            const char *path);
dlc_status dlc_tensors_save(const dlc_program_desc *desc, void *const *tensors,
                            const char *path);
dlc_status dlc_tensors_load_memory(const dlc_program_desc *desc, void *const *tensors,
                                   const void *bytes, size_t size);
"""

MAX_RANK = 8
# When an entry's last outputs came to at least this many bytes, `run`
# allocates the next ones and has the entry write into them
# (dlc_session_run_into); smaller ones are copied out of session memory,
# which costs less than sizing and aligning arrays (LeNet at batch 1: 14 us
# a call, 1.5 us of it that).
INTO_MIN_BYTES = 1 << 16
ROLES = ("param", "state", "input", "output")
DTYPES = ("f32", "f64", "i32")
INITS = ("zeros", "ones", "uniform", "normal")
ENTRY_KINDS = ("infer", "train", "grads")
_NP_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32))
_DTYPE_CODE = {dt: i for i, dt in enumerate(_NP_DTYPES)}

ffi = FFI()
ffi.cdef(CDEF)

_LIB_NAME = "libdlcrt.dylib" if sys.platform == "darwin" else "libdlcrt.so"
_PKG_DIR = Path(__file__).resolve().parent
_lib = None
_lib_lock = threading.Lock()


def _source_root() -> Path | None:
    root = _PKG_DIR.parent
    return root if (root / "runtime" / "CMakeLists.txt").is_file() else None


def _newest_source(root: Path) -> float:
    paths = [root / "CMakeLists.txt", *(root / "runtime").rglob("*")]
    return max(p.stat().st_mtime for p in paths if p.is_file())


def _build_in_tree(root: Path, cmake: str) -> Path:
    """Builds the runtime into root/build/python, once, under a file lock so
    that concurrent processes (pytest-xdist) do not build over each other."""
    build = root / "build" / "python"
    lib = build / "runtime" / _LIB_NAME
    build.mkdir(parents=True, exist_ok=True)
    with open(build / ".dlc-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if lib.is_file() and lib.stat().st_mtime >= _newest_source(root):
            return lib
        commands = []
        if not (build / "CMakeCache.txt").is_file():
            commands.append([cmake, "-S", str(root), "-B", str(build),
                             "-DCMAKE_BUILD_TYPE=Release", "-DDLC_BUILD_TESTS=OFF",
                             "-DDLC_BUILD_EXAMPLES=OFF"])
        commands.append([cmake, "--build", str(build), "--target", "dlcrt"])
        for cmd in commands:
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise ToolError(cmd, done.stdout + done.stderr)
        # The build may be up to date yet older than a touched source.
        lib.touch()
        return lib


def _installed_library() -> Path | None:
    try:
        found = importlib.metadata.distribution("dlc").locate_file(f"dlc/lib/{_LIB_NAME}")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(found) if Path(found).is_file() else None


def find_library() -> Path:
    """The runtime library this process uses (see the module docstring)."""
    env = os.environ.get("DLC_RUNTIME_LIB")
    if env:
        return Path(env)
    packaged = _PKG_DIR / "lib" / _LIB_NAME
    if packaged.is_file():
        return packaged
    root = _source_root()
    cmake = shutil.which("cmake")
    if root is not None and cmake is not None:
        return _build_in_tree(root, cmake)
    installed = _installed_library()
    if installed is not None:
        return installed
    raise UnavailableError(
        f"cannot find the dlc runtime library {_LIB_NAME}: install dlc with "
        "`pip install .`, put cmake on PATH to build it from this checkout, or "
        "set DLC_RUNTIME_LIB to its path")


def _runtime():
    global _lib
    if _lib is None:
        with _lib_lock:
            if _lib is None:
                # RTLD_GLOBAL: compiled programs may call back into the runtime.
                _lib = ffi.dlopen(str(find_library()), ffi.RTLD_NOW | ffi.RTLD_GLOBAL)
    return _lib


def _raise(status: int):
    message = ffi.string(_lib.dlc_status_message()).decode("utf-8", "replace")
    raise STATUS_ERRORS.get(status, RuntimeError_)(message)


def _check(status: int):
    if status:
        _raise(status)


def _path(path) -> bytes:
    p = os.fsencode(os.fspath(path))
    if b"\0" in p:   # C would see the path cut short at the NUL
        raise InvalidArgumentError(f"path {os.fspath(path)!r} contains a NUL character")
    return p


def _int_in(what: str, value, lo: int, hi: int, hint: str) -> int:
    """`value` if it is an integer in [lo, hi], else InvalidArgumentError
    (cffi would raise OverflowError or TypeError)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise InvalidArgumentError(f"{what} is {value!r}; {hint}")
    return int(value)


def _seed(seed) -> int:
    return _int_in("seed", seed, 0, 2**64 - 1, "use an integer from 0 to 2**64 - 1")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    role: str               # 'param' | 'state' | 'input' | 'output'
    dtype: str              # 'f32' | 'f64' | 'i32'
    dims: tuple[int | str, ...]
    init: str               # 'zeros' | 'ones' | 'uniform' | 'normal'
    init_a: float
    init_b: float


@dataclass(frozen=True)
class EntryInfo:
    name: str
    kind: str               # 'infer' | 'train' | 'grads'
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


def _as_input(what: str, value, dtype: np.dtype) -> np.ndarray:
    """`value` as a C-contiguous array of `dtype`, converting within a kind
    (f64 -> f32, i64 -> i32) but never across kinds."""
    a = value if isinstance(value, np.ndarray) else np.asarray(value)
    if a.dtype == dtype and a.flags.c_contiguous:
        return a
    kind = a.dtype.kind
    if dtype.kind == "f" and kind != "f":
        raise InvalidArgumentError(
            f"{what}: expected floating-point values ({DTYPES[_DTYPE_CODE[dtype]]}), "
            f"got an array of {a.dtype}; convert it explicitly")
    if dtype.kind == "i":
        if kind not in "iu":
            raise InvalidArgumentError(
                f"{what}: expected integers (i32), got an array of {a.dtype}; "
                "convert it explicitly")
        if a.size and a.dtype.itemsize >= 4 and (a.min() < -2**31 or a.max() >= 2**31):
            raise InvalidArgumentError(f"{what}: values do not fit in i32")
    return np.ascontiguousarray(a, dtype=dtype)


def _aligned_empty(shape: tuple, dtype: np.dtype) -> np.ndarray:
    """An uninitialised array whose data is ALIGNMENT-aligned."""
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _fill(t, a: np.ndarray, what: str):
    if a.ndim > MAX_RANK:
        raise InvalidArgumentError(f"{what}: rank {a.ndim} is above the limit of {MAX_RANK}")
    t.data = ffi.from_buffer(a)
    t.dtype = _DTYPE_CODE.get(a.dtype, -1)
    t.rank = a.ndim
    t.dims[0:a.ndim] = a.shape


class _EntryPlan:
    """What a run of one entry needs, computed once per program."""
    __slots__ = ("name", "c_name", "inputs", "c_input_names", "n_outputs", "outputs",
                 "input_ranks", "output_dims", "sized")

    def __init__(self, info: EntryInfo):
        self.name = info.name
        self.c_name = ffi.new("char[]", info.name.encode())
        c_names = [ffi.new("char[]", t.name.encode()) for t in info.inputs]
        # (name, numpy dtype, message prefix) per input, declaration order.
        self.inputs = [(t.name, _NP_DTYPES[DTYPES.index(t.dtype)],
                        f"input '{t.name}' of entry '{info.name}'") for t in info.inputs]
        self.c_input_names = (c_names, ffi.new("const char *[]", c_names))
        self.n_outputs = len(info.outputs)
        self.outputs = [(t.name, _NP_DTYPES[DTYPES.index(t.dtype)]) for t in info.outputs]
        # To size the outputs from the inputs: each output dim a number or
        # (input, axis) of the input dim that binds its symbol; the inputs'
        # ranks, checked first (the runtime says what is wrong with others).
        binds = {}
        for k, t in enumerate(info.inputs):
            for j, d in enumerate(t.dims):
                if isinstance(d, str):
                    binds.setdefault(d, (k, j))
        self.input_ranks = [(k, len(t.dims)) for k, t in enumerate(info.inputs)]
        self.output_dims = [tuple(binds.get(d) if isinstance(d, str) else d for d in t.dims)
                            for t in info.outputs]
        self.sized = all(None not in dims for dims in self.output_dims)

    def output_shapes(self, arrays: list) -> list[tuple] | None:
        """The outputs' shapes for these inputs; None where an input's rank
        is not the declared one."""
        if not self.sized or any(arrays[k].ndim != r for k, r in self.input_ranks):
            return None
        return [tuple(d if type(d) is int else arrays[d[0]].shape[d[1]] for d in dims)
                for dims in self.output_dims]


class _Scratch:
    """One entry's tensor arrays in a session, reused by its runs, and the
    shapes they were last filled with."""
    __slots__ = ("plan", "tin", "tout", "in_shapes", "out_shapes")

    def __init__(self, plan: _EntryPlan):
        self.plan = plan
        self.tin = ffi.new("dlc_tensor[]", max(len(plan.inputs), 1))
        self.tout = ffi.new("dlc_tensor[]", max(plan.n_outputs, 1))
        self.in_shapes: list[tuple | None] = [None] * len(plan.inputs)
        self.out_shapes: list[tuple] | None = None   # after the last run from in_shapes


class Program:
    """A loaded program library. Immutable; sessions may be made from any thread."""

    def __init__(self, path):
        lib = _runtime()
        out = ffi.new("dlc_program **")
        _check(lib.dlc_program_load(_path(path), out))
        self._ptr = ffi.gc(out[0], lib.dlc_program_release)
        pdesc = ffi.new("const dlc_program_desc **")
        _check(lib.dlc_program_descriptor(self._ptr, pdesc))
        d = pdesc[0]
        self.path = os.fspath(path)
        self.syms: list[str] = [ffi.string(d.sym_names[i]).decode() for i in range(d.n_syms)]
        self.tensors: list[TensorInfo] = [self._tensor(d.tensors[i]) for i in range(d.n_tensors)]
        self.entries: dict[str, EntryInfo] = {}
        for i in range(d.n_entries):
            e = d.entries[i]
            name = ffi.string(e.name).decode()
            self.entries[name] = EntryInfo(
                name, ENTRY_KINDS[e.kind],
                [self.tensors[e.inputs[k]] for k in range(e.n_inputs)],
                [self.tensors[e.outputs[k]] for k in range(e.n_outputs)])
        self._plans = {name: _EntryPlan(info) for name, info in self.entries.items()}

    def _tensor(self, t) -> TensorInfo:
        dims = tuple(int(t.dims[k]) if t.dims[k] >= 0 else self.syms[-t.dims[k] - 1]
                     for k in range(t.rank))
        return TensorInfo(ffi.string(t.name).decode(), ROLES[t.role], DTYPES[t.dtype],
                          dims, INITS[t.init] if 0 <= t.init < len(INITS) else "zeros",
                          float(t.init_a), float(t.init_b))

    def session(self, seed: int = 0, num_threads: int = 0) -> Session:
        return Session(self, seed, num_threads)

    def __repr__(self) -> str:
        return f"<dlc.Program {self.path!r} entries={list(self.entries)}>"


def load_program(path) -> Program:
    """Loads a compiled program library (.so)."""
    return Program(path)


class _View:
    """Exposes session memory to numpy; the array's base keeps `owner` (the
    session handle) alive."""
    __slots__ = ("__array_interface__", "_owner")

    def __init__(self, owner, address: int, shape: tuple, dtype: np.dtype):
        self._owner = owner
        self.__array_interface__ = {"data": (address, False), "shape": shape,
                                    "typestr": dtype.str, "version": 3}


class Session:
    """Params, optimizer state and scratch memory of one program.

    Thread-safe: calls from several threads run one at a time (runs share
    the workspace and the params), each with the GIL released while the
    native code runs; sessions of one program run in parallel. `params`
    are live views of session memory, unsynchronised: reading them while
    another thread trains can see a step half applied."""

    def __init__(self, program: Program, seed: int = 0, num_threads: int = 0):
        lib = _runtime()
        self.program = program
        self.num_threads = _int_in(
            "num_threads", num_threads, 0, lib.DLC_MAX_THREADS,
            f"use 0 for one per core, or a count from 1 to {lib.DLC_MAX_THREADS}")
        opts = ffi.new("dlc_session_options *")
        lib.dlc_session_options_initialize(opts)
        opts.seed = _seed(seed)
        opts.num_threads = self.num_threads
        # Held by run: its scratch tensors and output bookkeeping are per
        # session (the runtime's own lock guards the session's memory).
        self._lock = threading.Lock()
        out = ffi.new("dlc_session **")
        _check(lib.dlc_session_create(program._ptr, opts, out))
        self._ptr = ffi.gc(out[0], lib.dlc_session_release)
        # Per-entry scratch: input and output tensor arrays, reused by runs.
        self._scratch = {}
        self._into = True   # outputs written into arrays we allocate (not for cuda)
        self._large_outputs = set()   # entries whose last outputs were (INTO_MIN_BYTES)
        self._params = self._views(lib.dlc_session_param_count, lib.dlc_session_param_at)
        self.params = types.MappingProxyType(self._params)
        self._states = self._views(lib.dlc_session_state_count, lib.dlc_session_state_at)
        self.states = types.MappingProxyType(self._states)

    def _views(self, count_fn, at_fn) -> dict[str, np.ndarray]:
        """name -> numpy view of each session tensor that count_fn/at_fn list."""
        views = {}
        view = ffi.new("dlc_tensor *")
        name = ffi.new("const char **")
        count = ffi.new("int32_t *")
        _check(count_fn(self._ptr, count))
        for i in range(count[0]):
            _check(at_fn(self._ptr, i, name, view))
            shape = tuple(view.dims[0:view.rank])
            # The views hold the session handle, not the Session, so dropping
            # the Session frees it at once unless a view is still in use.
            views[ffi.string(name[0]).decode()] = np.asarray(_View(
                self._ptr, int(ffi.cast("uintptr_t", view.data)), shape,
                _NP_DTYPES[view.dtype]))
        return views

    def refresh_params(self):
        """CUDA sessions: asking the runtime for the params copies them back
        from the device (the views keep their addresses)."""
        view = ffi.new("dlc_tensor *")
        name = ffi.new("const char **")
        for i in range(len(self._params)):
            _check(_lib.dlc_session_param_at(self._ptr, i, name, view))

    def init_params(self, seed: int):
        """Re-initialises the params from `seed` and the optimizer state."""
        _check(_lib.dlc_session_init_params(self._ptr, _seed(seed)))

    def set_param(self, name: str, value):
        view = self._params.get(name)
        if view is None:  # let the runtime name the params in its message
            t = ffi.new("dlc_tensor *")
            _check(_lib.dlc_session_set_param(self._ptr, name.encode(), t))
        a = _as_input(f"param '{name}'", value, view.dtype)
        t = ffi.new("dlc_tensor *")
        _fill(t, a, f"param '{name}'")
        _check(_lib.dlc_session_set_param(self._ptr, name.encode(), t))

    def save(self, path, optimizer: bool = False):
        """Writes the params as safetensors; with `optimizer`, the optimizer
        state too (a checkpoint that `load` resumes exactly)."""
        save = _lib.dlc_session_save_checkpoint if optimizer else _lib.dlc_session_save
        _check(save(self._ptr, _path(path)))

    def load(self, path, strict: bool = True) -> list[str]:
        """Reads the params from safetensors; on any error they are unchanged.
        strict: the file must hold exactly the program's params (returns []).
        Not strict: it loads the params the file holds, ignores its tensors
        the program lacks, and returns the sorted names of the params it
        did not find, which keep their values."""
        if strict:
            _check(_lib.dlc_session_load(self._ptr, _path(path)))
            return []
        found = ffi.new("uint8_t[]", max(len(self.program.tensors), 1))
        _check(_lib.dlc_session_load_partial(self._ptr, _path(path), len(found), found))
        return sorted(t.name for i, t in enumerate(self.program.tensors)
                      if t.role == "param" and not found[i])

    def run(self, entry: str, inputs: dict) -> dict[str, np.ndarray]:
        """Runs `entry` on `inputs` (name -> array); returns its outputs, arrays
        of their own."""
        with self._lock:
            return self._run(entry, inputs)

    def _run(self, entry: str, inputs: dict) -> dict[str, np.ndarray]:
        scratch = self._scratch.get(entry)
        if scratch is None:
            scratch = self._make_scratch(entry)
        plan, tin, tout = scratch.plan, scratch.tin, scratch.tout
        if len(inputs) != len(plan.inputs):
            return self._run_unmatched(plan, inputs)
        keep, same_shapes = [], True
        for i, (name, dtype, what) in enumerate(plan.inputs):
            try:
                value = inputs[name]
            except KeyError:
                return self._run_unmatched(plan, inputs)
            a = _as_input(what, value, dtype)
            keep.append(a)
            # A tensor's dtype, rank and dims stay from the last call when
            # its shape does (batch-1 inference: ~0.4 us of ~3 per call).
            if a.shape == scratch.in_shapes[i]:
                tin[i].data = ffi.from_buffer(a)
            else:
                same_shapes = False
                scratch.in_shapes[i] = None   # in case _fill refuses it
                _fill(tin[i], a, what)
                scratch.in_shapes[i] = a.shape
        if not same_shapes:
            scratch.out_shapes = None
        shapes = plan.output_shapes(keep) if self._into and entry in self._large_outputs else None
        if shapes is not None:
            # Into arrays of our own: no copy out of session memory.
            outs = [_aligned_empty(shape, dtype) for shape, (_, dtype) in zip(shapes, plan.outputs)]
            for k, (o, (name, _)) in enumerate(zip(outs, plan.outputs)):
                _fill(tout[k], o, name)
            status = _lib.dlc_session_run_into(self._ptr, plan.c_name, len(keep),
                                               plan.c_input_names[1], tin, plan.n_outputs, tout)
            if status == 0:
                return {name: o for (name, _), o in zip(plan.outputs, outs)}
            if status != _lib.DLC_ERR_UNAVAILABLE:
                _raise(status)
            self._into = False   # a session of a cuda program
        status = _lib.dlc_session_run(self._ptr, plan.c_name, len(keep),
                                      plan.c_input_names[1], tin, plan.n_outputs, tout)
        if status:
            _raise(status)
        # The outputs' shapes follow from the inputs': read once per shape.
        out_shapes = scratch.out_shapes
        if out_shapes is None:
            out_shapes = scratch.out_shapes = [tuple(tout[k].dims[0:tout[k].rank])
                                               for k in range(plan.n_outputs)]
        result, total = {}, 0
        for k, (name, dtype) in enumerate(plan.outputs):
            out = np.empty(out_shapes[k], dtype)
            if out.nbytes:
                ffi.memmove(ffi.from_buffer(out), tout[k].data, out.nbytes)
            result[name] = out
            total += out.nbytes
        if total >= INTO_MIN_BYTES:
            self._large_outputs.add(entry)
        else:
            self._large_outputs.discard(entry)
        return result

    def _make_scratch(self, entry: str) -> _Scratch:
        plan = self.program._plans.get(entry)
        if plan is None:  # let the runtime list the entries in its message
            _check(_lib.dlc_session_run(self._ptr, entry.encode(), 0, ffi.NULL, ffi.NULL,
                                        0, ffi.NULL))
        scratch = self._scratch[entry] = _Scratch(plan)
        return scratch

    def _run_unmatched(self, plan: _EntryPlan, inputs: dict):
        """Inputs that do not name the entry's inputs exactly: the runtime
        reports which name is unknown, missing or repeated."""
        names = [ffi.new("char[]", str(n).encode()) for n in inputs]
        tensors = ffi.new("dlc_tensor[]", max(len(names), 1))
        status = _lib.dlc_session_run(self._ptr, plan.c_name, len(names),
                                      ffi.new("const char *[]", names), tensors,
                                      plan.n_outputs, ffi.new("dlc_tensor[]", max(plan.n_outputs, 1)))
        # Names are checked before data, so a mismatch always fails here.
        _check(status)
        raise InvalidArgumentError(f"entry '{plan.name}': inputs do not match")

    def __repr__(self) -> str:
        return f"<dlc.Session of {self.program.path!r}>"
