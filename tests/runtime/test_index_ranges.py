"""Integer inputs used as indices (tokens, class labels, sequence lengths)
are checked by the runtime against the range their readers require before
an entry runs: a bad value is an InvalidArgumentError naming the input, the
element, its value and the range, and nothing is written (params and
optimizer state as before). They used to give NaN outputs and losses and
write NaN into the params. The same checks guard the generated C functions
(--emit=lib) and sessions of CUDA programs, with device pointers too."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dlc
from dlc.cli import main as dlc_main
from dlc.errors import InvalidArgumentError
from dlc.runtime import find_library

ROOT = Path(__file__).resolve().parents[2]
SENTIMENT = (ROOT / "examples" / "sentiment.dl").read_text()   # vocab 24, 2 classes
# Tokens and lengths in a program small enough to compile quickly for cuda.
PICK = """
model pick {
    input tokens: i32[batch, time]
    input lengths: i32[batch]
    output y = last(embedding(tokens, 24, 4, name="emb"), lengths)
}
"""


@pytest.fixture(scope="module")
def sentiment():
    return dlc.compile(SENTIMENT)


def batch():
    rng = np.random.default_rng(0)
    return {"tokens": rng.integers(0, 24, (4, 6)).astype(np.int32),
            "lengths": np.array([6, 3, 1, 5], np.int32),
            "label": np.array([0, 1, 0, 1], np.int32)}


def bad(name, index, value):
    b = batch()
    b[name][index] = value
    return b


@pytest.mark.parametrize("inputs, message", [
    (bad("lengths", 1, 0), r"input 'lengths' of entry 'fit': lengths\[1\] is 0, outside "
                           r"the valid range \[1, time\] = \[1, 6\]"),
    (bad("lengths", 3, 7), r"lengths\[3\] is 7, outside the valid range \[1, time\] = \[1, 6\]"),
    (bad("lengths", 0, -1), r"lengths\[0\] is -1"),
    (bad("tokens", (2, 4), 24), r"input 'tokens' of entry 'fit': tokens\[2, 4\] is 24, outside "
                                r"the valid range \[0, 23\]"),
    (bad("tokens", (0, 0), -5), r"tokens\[0, 0\] is -5"),
    (bad("label", 2, 2), r"input 'label' of entry 'fit': label\[2\] is 2, outside the valid "
                         r"range \[0, 1\]"),
])
def test_bad_indices_are_refused_and_change_nothing(sentiment, inputs, message):
    prog = sentiment
    prog.init_params(1)
    prog.train("fit", **batch())   # Adam's moments and step count are not zero
    before = {k: v.copy() for k, v in prog.params.items()}
    with pytest.raises(InvalidArgumentError, match=message):
        prog.train("fit", **inputs)
    with pytest.raises(InvalidArgumentError, match=message.replace("'fit'", "'fit.grads'")):
        prog.grads("fit", **inputs)
    if "label" not in message:
        model_inputs = {k: v for k, v in inputs.items() if k != "label"}
        with pytest.raises(InvalidArgumentError, match=message.replace("'fit'", "'sentiment'")):
            prog.run("sentiment", **model_inputs)
    for k, v in before.items():
        np.testing.assert_array_equal(prog.params[k], v)
    # The optimizer state is untouched too: the next step is as without them.
    loss = prog.train("fit", **batch())
    after = {k: v.copy() for k, v in prog.params.items()}
    prog.init_params(1)
    prog.train("fit", **batch())
    assert prog.train("fit", **batch()) == loss
    for k, v in after.items():
        np.testing.assert_array_equal(prog.params[k], v)


def test_ranges_follow_reshapes_and_intersect():
    """Tokens reach the embedding through flatten; an input that is both
    tokens (vocab 5) and labels (3 classes) must satisfy both."""
    prog = dlc.compile("""
model m {
    input tok: i32[batch, 2, 3]
    output y = embedding(flatten(tok), 5, 4, name="emb") |> flatten |> dense(3, name="fc")
}
train fit {
    input tok: i32[batch, 2, 3]
    input t: i32[batch]
    h = embedding(t, 5, 3, name="lab")
    loss = cross_entropy(m(tok) + h, t)
    optimizer = sgd(lr=0.1)
}""")
    tok = np.zeros((2, 2, 3), np.int32)
    prog.run("m", tok=tok)
    tok[1, 1, 2] = 5
    with pytest.raises(InvalidArgumentError, match=r"tok\[1, 1, 2\] is 5, outside the valid range \[0, 4\]"):
        prog.run("m", tok=tok)
    prog.train("fit", tok=np.zeros((2, 2, 3), np.int32), t=np.array([2, 0], np.int32))
    with pytest.raises(InvalidArgumentError, match=r"t\[0\] is 3, outside the valid range \[0, 2\]"):
        prog.train("fit", tok=np.zeros((2, 2, 3), np.int32), t=np.array([3, 0], np.int32))


DRIVE = r"""
#include <stdio.h>
#include <stdlib.h>
#include "sent.h"

int main(void) {
  void *weights = aligned_alloc(SENT_ALIGNMENT, SENT_WEIGHTS_BYTES);
  void *ws = aligned_alloc(SENT_ALIGNMENT, 1 << 20);
  int32_t tokens[2 * 3] = {1, 2, 3, 4, 5, 6}, lengths[2] = {3, 2};
  float y[2 * 4];
  if (sent_init_weights(weights, 0) != DLC_OK || sent_pick_workspace_bytes(2, 3) > (1 << 20))
    return 9;
  printf("%d", (int)sent_pick_run(weights, 2, 3, tokens, lengths, y, ws, NULL));
  lengths[1] = 4; /* above time */
  printf(" %d", (int)sent_pick_run(weights, 2, 3, tokens, lengths, y, ws, NULL));
  lengths[1] = 2;
  tokens[5] = 24; /* outside the vocabulary */
  printf(" %d", (int)sent_pick_run(weights, 2, 3, tokens, lengths, y, ws, NULL));
  dlc_program *program;
  dlc_session *session;
  if (sent_open(&program) != DLC_OK || dlc_session_create(program, NULL, &session) != DLC_OK)
    return 9;
  printf(" %d %s\n", (int)sent_pick(session, 2, 3, tokens, lengths, y),
         dlc_status_message());
  dlc_session_release(session);
  dlc_program_release(program);
  free(weights);
  free(ws);
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_generated_c_functions_check_ranges(tmp_path):
    (tmp_path / "sent.dl").write_text(PICK)
    assert dlc_main(["compile", str(tmp_path / "sent.dl"), "--emit=lib", "-o", str(tmp_path / "sent")]) == 0
    assert "lengths  in  i32[batch], values in [1, time]" in (tmp_path / "sent.h").read_text()
    (tmp_path / "drive.c").write_text(DRIVE)
    lib = find_library()
    cmd = ["cc", "-std=c11", "-Wall", "-Wextra", "-pedantic", "-Werror", f"-I{tmp_path}",
           f"-I{ROOT / 'runtime' / 'include'}", str(tmp_path / "drive.c"), str(tmp_path / "libsent.a"),
           str(lib), f"-Wl,-rpath,{lib.parent}", "-lm", "-o", str(tmp_path / "drive")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = subprocess.run([str(tmp_path / "drive")], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ("0 1 1 1 input 'tokens' of entry 'pick': tokens[1, 2] is 24, "
                           "outside the valid range [0, 23]")


CUDA_SCRIPT = r"""
import ctypes, sys
sys.path.insert(0, sys.argv[1])
import emulator
emulator.install()
import numpy as np
import dlc
from dlc.errors import InvalidArgumentError
from dlc.runtime import ffi, find_library

prog = dlc.compile(sys.argv[2], target="cuda", seed=0)
tokens = np.array([[1, 2, 3], [4, 5, 24]], np.int32)
lengths = np.array([3, 2], np.int32)
try:
    prog.run("pick", tokens=tokens, lengths=lengths)
    sys.exit("no error")
except InvalidArgumentError as e:
    print(e)
# With device pointers: the runtime reads the values back to check them.
cu = ctypes.CDLL(emulator.os.environ["DLC_LIBCUDA"])
ctx, dev = ctypes.c_void_p(), ctypes.c_int()
assert cu.cuInit(0) == 0 and cu.cuDeviceGet(ctypes.byref(dev), 0) == 0
assert cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0 and cu.cuCtxPushCurrent_v2(ctx) == 0
ptrs = []
for a in (np.array([[1, 2, 3], [4, 5, 6]], np.int32), np.array([3, 4], np.int32)):
    p = ctypes.c_uint64()
    assert cu.cuMemAlloc_v2(ctypes.byref(p), ctypes.c_size_t(a.nbytes)) == 0
    assert cu.cuMemcpyHtoD_v2(p, a.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(a.nbytes)) == 0
    ptrs.append(p.value)
address = lambda cdata: ctypes.c_void_p(int(ffi.cast("uintptr_t", cdata)))
session = address(prog._session._ptr)
runtime = ctypes.CDLL(str(find_library()))
runtime.dlc_status_message.restype = ctypes.c_char_p
assert runtime.dlc_session_set_device_io(session, 1) == 0
tin, tout = ffi.new("dlc_tensor[2]"), ffi.new("dlc_tensor[1]")
for k, (p, shape) in enumerate(zip(ptrs, ((2, 3), (2,)))):
    tin[k].data = ffi.cast("void *", p)
    tin[k].dtype, tin[k].rank = 2, len(shape)
    tin[k].dims[0:len(shape)] = shape
names = [ffi.new("char[]", b"tokens"), ffi.new("char[]", b"lengths")]
cnames = ffi.new("const char *[2]", names)
status = runtime.dlc_session_run(session, b"pick", 2, address(cnames), address(tin), 1, address(tout))
print(status, runtime.dlc_status_message().decode())
"""


def test_cuda_sessions_check_ranges(tmp_path):
    """On the CPU emulator of the CUDA driver (tests/cuda/emulator.py), with
    host inputs and with device pointers (dlc_session_set_device_io)."""
    env = {**os.environ, "DLC_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", CUDA_SCRIPT, str(ROOT / "tests" / "cuda"), PICK],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "input 'tokens' of entry 'pick': tokens[1, 2] is 24, outside the valid range [0, 23]",
        "1 input 'lengths' of entry 'pick': lengths[1] is 4, outside the valid range "
        "[1, time] = [1, 3]"]
